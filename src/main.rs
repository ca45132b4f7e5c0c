//! The `cognito-facade` binary: configuration, telemetry, the Cognito client,
//! a bound listener and the shutdown signal, handed to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use cognito_facade::{
    cognito::Cognito,
    config::{Cli, Config},
    server, telemetry,
};

/// Exit code for configuration errors (as clap uses for bad flags).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0.
        Err(err) if !err.use_stderr() => err.exit(),
        // clap's own report spans several lines; operators get one.
        Err(err) => {
            let report = err.to_string();
            let first = report.lines().next().unwrap_or_default();
            return config_error(format!(
                "{} (see --help)",
                first.trim_start_matches("error: ")
            ));
        }
    };
    let config = match Config::try_from(cli) {
        Ok(config) => config,
        Err(err) => return config_error(err),
    };
    if let Err(err) = telemetry::check_sensitive_logging_off() {
        return config_error(err);
    }
    let ansi = std::io::stdout().is_terminal();
    let filter = telemetry::filter_from_env();
    let subscriber = match telemetry::subscriber(config.log_format, &filter, ansi, std::io::stdout)
    {
        Ok(subscriber) => subscriber,
        Err(err) => return config_error(err),
    };
    if let Err(err) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("cognito-facade: installing the log subscriber: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cognito-facade: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let cognito = match Cognito::from_config(&config.upstream).await {
        Ok(cognito) => cognito,
        Err(err) => return config_error(err),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %config.listen_addr, error = %err, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match server::run(listener, config, cognito, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr, exit code 2.
fn config_error(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("cognito-facade: {err}");
    ExitCode::from(EXIT_CONFIG)
}

/// Completes on SIGTERM (Kubernetes, Docker) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

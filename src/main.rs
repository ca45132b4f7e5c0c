//! The `cognito-facade` binary: configuration, telemetry, metrics, the Cognito
//! client, bound listeners and the shutdown signal, handed to the library.
//! Also `cognito-facade healthcheck`.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use cognito_facade::{
    cognito::Cognito,
    config::{Cli, Command, Config, HealthcheckArgs},
    healthcheck, metrics, server, telemetry,
};
use tokio::net::TcpListener;
use tonic_health::pb::health_check_response::ServingStatus;

/// mimalloc instead of glibc's malloc: the profile in `bench/PROFILE.md`
/// found a fifth of the service's CPU time in glibc's allocator (arena locks
/// and consolidation when tasks free on another thread than they allocated).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration errors (as clap uses for bad flags).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
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
    if let Some(Command::Healthcheck(args)) = cli.command.take() {
        return runtime.block_on(run_healthcheck(args));
    }
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
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let cognito = match Cognito::from_config(&config.upstream).await {
        Ok(cognito) => cognito,
        Err(err) => return config_error(err),
    };
    let metrics_listener = match config.metrics_addr {
        Some(addr) => match bind(addr).await {
            Some(listener) => Some(listener),
            None => return ExitCode::FAILURE,
        },
        None => None,
    };
    let Some(listener) = bind(config.listen_addr).await else {
        return ExitCode::FAILURE;
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(metrics_listener) = metrics_listener {
        let handle = match metrics::install() {
            Ok(handle) => handle,
            Err(err) => {
                tracing::error!(error = %err, "cannot install the metrics recorder");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(async move {
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            if let Err(err) = metrics::serve(metrics_listener, handle, stopped).await {
                tracing::error!(error = %err, "metrics listener failed");
            }
        });
    }
    let result = server::run(listener, config, cognito, shutdown_signal()).await;
    let _ = stop_metrics.send(());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr`, logging why not.
async fn bind(addr: std::net::SocketAddr) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::error!(%addr, error = %err, "cannot listen");
            None
        }
    }
}

/// `healthcheck`: exit 0 only on SERVING; one line on stderr otherwise.
async fn run_healthcheck(args: HealthcheckArgs) -> ExitCode {
    match healthcheck::check(&args).await {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("cognito-facade healthcheck: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("cognito-facade healthcheck: {err}");
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

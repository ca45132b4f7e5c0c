//! The `cognito-facade` binary: the command line ([`cli`]), telemetry, and
//! the library's [`Application`] run until SIGTERM or SIGINT. Also
//! `cognito-facade healthcheck`.

mod cli;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use cognito_facade::{
    app::{self, Application},
    config::LogFormat,
    healthcheck,
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cli::{Cli, Command, HealthcheckArgs};

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
    let runtime = match app::runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cognito-facade: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck(args)) = cli.command.take() {
        return runtime.block_on(run_healthcheck(args));
    }
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(err) => return config_error(err),
    };
    if let Err(err) = install_logging(config.log_format) {
        return err;
    }
    runtime.block_on(serve(config))
}

/// Installs the log subscriber; the exit code if it cannot be.
fn install_logging(format: LogFormat) -> Result<(), ExitCode> {
    app::check_sensitive_logging_off().map_err(config_error)?;
    let ansi = std::io::stdout().is_terminal();
    let filter = app::filter_from_env();
    let subscriber =
        app::subscriber(format, &filter, ansi, std::io::stdout).map_err(config_error)?;
    tracing::subscriber::set_global_default(subscriber).map_err(|err| {
        eprintln!("cognito-facade: installing the log subscriber: {err}");
        ExitCode::FAILURE
    })
}

/// Builds the application and serves until SIGTERM or SIGINT.
async fn serve(config: cognito_facade::config::Config) -> ExitCode {
    // Before anything listens: a SIGTERM sent as soon as the service is up
    // finds its handler (not the default action, which would kill it).
    let shutdown = shutdown_signal();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) if err.is_config() => return config_error(err),
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// `healthcheck`: exit 0 only on SERVING; one line on stderr otherwise.
async fn run_healthcheck(args: HealthcheckArgs) -> ExitCode {
    match healthcheck::check(args.addr(), args.service(), args.timeout()).await {
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

/// Completes on SIGTERM (Kubernetes, Docker) or SIGINT (Ctrl-C). The
/// handlers are installed when this is called, not when it is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

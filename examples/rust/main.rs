//! A Rust (tonic) client of cognito-facade: calls GetUserAuthFactors and
//! prints the user's factors, or the error with its `google.rpc` details,
//! retrying what the README's error tables mark retryable.
//!
//! `cargo run --example client -- --addr 127.0.0.1:50051 --token TOKEN`
//! (`--ca ca.pem` or `--tls` for TLS)

use std::{
    hash::{BuildHasher as _, RandomState},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use cognito_facade::proto::{
    GetUserAuthFactorsRequest, GetUserAuthFactorsResponse,
    identity_provider_service_client::IdentityProviderServiceClient,
};
use tokio::time::Instant;
use tonic::{
    Code, Status,
    metadata::MetadataMap,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::{ErrorInfo, StatusExt as _};

/// The `ErrorInfo` reasons the README's error tables mark retryable. An
/// error without `ErrorInfo` is retried only when it is UNAVAILABLE (the
/// service itself unreachable, or draining).
const RETRYABLE: &[&str] = &[
    "TOO_MANY_REQUESTS",
    "COGNITO_INTERNAL_ERROR",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_UNREACHABLE",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_RATE_LIMITED",
    "OVERLOADED",
];
/// The first backoff; doubled after each attempt, jittered.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// The service, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The user's access token.
    #[arg(long)]
    token: String,
    /// TLS, trusting the system's roots.
    #[arg(long)]
    tls: bool,
    /// TLS, trusting this PEM CA bundle.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Seconds, every attempt included.
    #[arg(long, default_value_t = 5.0, value_parser = positive)]
    timeout: f64,
    /// Attempts at most, the first included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,
}

fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(seconds),
        _ => Err("a positive number of seconds".to_owned()),
    }
}

/// An error status and what its details say.
struct Failure {
    status: Status,
    info: Option<ErrorInfo>,
    retry_delay: Option<Duration>,
}

impl Failure {
    fn new(status: Status) -> Self {
        let info = status.get_details_error_info();
        let retry_delay = status
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay);
        Self {
            status,
            info,
            retry_delay,
        }
    }

    fn reason(&self) -> &str {
        self.info.as_ref().map_or("-", |info| info.reason.as_str())
    }

    fn retryable(&self) -> bool {
        match &self.info {
            Some(info) => RETRYABLE.contains(&info.reason.as_str()),
            None => self.status.code() == Code::Unavailable,
        }
    }
}

/// One attempt, within `deadline`: the timeout travels as `grpc-timeout`, and
/// the local timer stops the wait if the answer never comes.
async fn attempt(
    client: &mut IdentityProviderServiceClient<Channel>,
    token: &str,
    deadline: Instant,
) -> Result<tonic::Response<GetUserAuthFactorsResponse>, Status> {
    // The token goes in metadata; the request's field stays empty.
    let mut request = tonic::Request::new(GetUserAuthFactorsRequest::default());
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token is not a valid metadata value"))?;
    request.metadata_mut().insert("authorization", bearer);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    tokio::time::timeout_at(deadline, client.get_user_auth_factors(request))
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline passed")))
}

/// Calls until an answer, an error not worth retrying, the last attempt, or
/// a wait that would pass the deadline.
async fn call(
    client: &mut IdentityProviderServiceClient<Channel>,
    args: &Args,
) -> (
    Result<tonic::Response<GetUserAuthFactorsResponse>, Failure>,
    u32,
) {
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut number = 1;
    loop {
        let failure = match attempt(client, &args.token, deadline).await {
            Ok(response) => return (Ok(response), number),
            Err(status) => Failure::new(status),
        };
        if number >= args.attempts || !failure.retryable() {
            return (Err(failure), number);
        }
        let backoff = FIRST_BACKOFF * 2u32.pow(number - 1);
        let wait = failure.retry_delay.unwrap_or_else(|| jittered(backoff));
        if Instant::now() + wait >= deadline {
            return (Err(failure), number);
        }
        let how = match failure.retry_delay {
            Some(delay) => format!("in {}ms (RetryInfo)", delay.as_millis()),
            None => "after backoff".to_owned(),
        };
        let code = code_name(failure.status.code());
        println!("retry {number} {how}: {code} {}", failure.reason());
        tokio::time::sleep(wait).await;
        number += 1;
    }
}

/// Between half and all of `backoff` (std's hasher keys are random).
fn jittered(backoff: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    backoff.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
}

/// The canonical name of a code, as other gRPC libraries print it:
/// `NotFound` becomes `NOT_FOUND`.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn metadata<'a>(map: &'a MetadataMap, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|value| value.to_str().ok())
}

fn print_failure(failure: &Failure, attempts: u32) {
    let status = &failure.status;
    println!("error: {}: {}", code_name(status.code()), status.message());
    if let Some(source) = metadata(status.metadata(), "x-cognito-facade-source") {
        println!("source: {source}");
    }
    if let Some(info) = &failure.info {
        println!("reason: {}", info.reason);
        println!("domain: {}", info.domain);
        let mut entries: Vec<_> = info.metadata.iter().collect();
        entries.sort();
        for (key, value) in entries {
            println!("metadata {key}: {value}");
        }
    }
    if let Some(delay) = failure.retry_delay {
        println!("retry delay: {}ms", delay.as_millis());
    }
    let retryable = if failure.retryable() { "yes" } else { "no" };
    println!("retryable: {retryable}");
    println!("attempts: {attempts}");
}

fn print_answer(response: &tonic::Response<GetUserAuthFactorsResponse>, attempts: u32) {
    let headers = response.metadata();
    let source = metadata(headers, "x-cognito-facade-source").unwrap_or("-");
    println!("source: {source}");
    if let Some(age) = metadata(headers, "x-cognito-facade-age-seconds") {
        println!("age: {age}s");
    }
    let factors = response.get_ref();
    println!("username: {}", factors.username);
    if factors.preferred_mfa_setting.is_some() {
        let preferred = factors.preferred_mfa_setting().as_str_name();
        println!("preferred MFA: {preferred}");
    }
    for mfa in factors.user_mfa_setting_list() {
        println!("MFA: {}", mfa.as_str_name());
    }
    for factor in factors.configured_user_auth_factors() {
        println!("factor: {}", factor.as_str_name());
    }
    println!("attempts: {attempts}");
}

/// A channel that connects on first use, so an unreachable service is an
/// UNAVAILABLE status like any other, and can be retried.
fn channel(args: &Args) -> Result<Channel, Box<dyn std::error::Error>> {
    let tls = args.tls || args.ca.is_some();
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.addr))?;
    if let Some(ca) = &args.ca {
        let roots = Certificate::from_pem(std::fs::read(ca)?);
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(roots))?;
    } else if tls {
        endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?;
    }
    Ok(endpoint.connect_lazy())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut client = IdentityProviderServiceClient::new(channel(&args)?);
    match call(&mut client, &args).await {
        (Ok(response), attempts) => {
            print_answer(&response, attempts);
            Ok(ExitCode::SUCCESS)
        }
        (Err(failure), attempts) => {
            print_failure(&failure, attempts);
            Ok(ExitCode::FAILURE)
        }
    }
}

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
    AuthFactorType, GetUserAuthFactorsRequest, GetUserAuthFactorsResponse, MfaType,
    identity_provider_service_client::IdentityProviderServiceClient,
};
use tokio::time::Instant;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};
use tonic_types::{ErrorInfo, FieldViolation, StatusExt as _};

/// The `ErrorInfo` reasons the README's error tables mark retryable. An
/// error without `ErrorInfo` is retried only when it is UNAVAILABLE (the
/// service itself unreachable, or draining).
const RETRYABLE: &[&str] = &[
    "TOO_MANY_REQUESTS",
    "COGNITO_INTERNAL_ERROR",
    "UPSTREAM_UNAVAILABLE",
    "UPSTREAM_UNREACHABLE",
    "CREDENTIALS_SOURCE_FAILED",
    "UPSTREAM_TIMEOUT",
    "UPSTREAM_BAD_RESPONSE",
    "UPSTREAM_RATE_LIMITED",
    "OVERLOADED",
    "REQUEST_BYTES_EXHAUSTED",
];
/// The first backoff; doubled after each attempt up to `MAX_BACKOFF`,
/// jittered.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// No retry with less of the deadline left.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// The service, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The user's access token (visible ASCII: it goes in metadata).
    #[arg(long, value_parser = visible_ascii)]
    token: String,
    /// TLS, trusting the system's roots.
    #[arg(long)]
    tls: bool,
    /// TLS, trusting this PEM CA bundle.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Seconds, every attempt included (at most 3600).
    #[arg(long, default_value = "5", value_parser = seconds)]
    timeout: Duration,
    /// Attempts at most, the first included (1 to 10).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    attempts: u32,
}

fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds > 0.0 && seconds <= 3600.0 => Ok(Duration::from_secs_f64(seconds)),
        _ => Err("more than 0 and at most 3600 seconds".to_owned()),
    }
}

fn visible_ascii(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err("visible ASCII, to be sent as metadata".to_owned())
    }
}

/// An error status and what its details say.
struct Failure {
    status: Status,
    info: Option<ErrorInfo>,
    /// RetryInfo's delay, when it gives at least 1 ms.
    retry_delay: Option<Duration>,
    violations: Vec<FieldViolation>,
}

impl Failure {
    fn new(status: Status) -> Self {
        // Details that do not decode count as none.
        let info = status.get_details_error_info();
        let retry_delay = status
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay)
            .filter(|delay| delay.as_millis() > 0);
        let violations = status
            .get_details_bad_request()
            .map(|bad| bad.field_violations)
            .unwrap_or_default();
        Self {
            status,
            info,
            retry_delay,
            violations,
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
    bearer: &MetadataValue<Ascii>,
    deadline: Instant,
) -> Result<tonic::Response<GetUserAuthFactorsResponse>, Status> {
    // The token goes in metadata; the request's field stays empty.
    let mut request = tonic::Request::new(GetUserAuthFactorsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
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
    let deadline = Instant::now() + args.timeout;
    // Visible ASCII (checked with the flags), so always a valid value.
    let bearer = MetadataValue::try_from(format!("Bearer {}", args.token))
        .expect("a visible-ASCII token is a valid metadata value");
    let mut number = 1;
    loop {
        let failure = match attempt(client, &bearer, deadline).await {
            Ok(response) => return (Ok(response), number),
            Err(status) => Failure::new(status),
        };
        if number >= args.attempts || !failure.retryable() {
            return (Err(failure), number);
        }
        let backoff = (FIRST_BACKOFF * 2u32.pow((number - 1).min(10))).min(MAX_BACKOFF);
        let wait = failure.retry_delay.unwrap_or_else(|| jittered(backoff));
        if Instant::now() + wait + MIN_ATTEMPT >= deadline {
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
    map.get(key)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
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
    for violation in &failure.violations {
        println!("violation {}: {}", violation.field, violation.description);
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
    if let Some(source) = metadata(headers, "x-cognito-facade-source") {
        println!("source: {source}");
    }
    if let Some(age) = metadata(headers, "x-cognito-facade-age-seconds") {
        println!("age: {age}s");
    }
    let factors = response.get_ref();
    println!("username: {}", factors.username);
    // The raw numbers, so a value newer than this client's proto prints as
    // its number rather than vanishing.
    let mfa_name = |n: i32| MfaType::try_from(n).map_or(n.to_string(), |m| m.as_str_name().into());
    if let Some(preferred) = factors.preferred_mfa_setting {
        println!("preferred MFA: {}", mfa_name(preferred));
    }
    for &mfa in &factors.user_mfa_setting_list {
        println!("MFA: {}", mfa_name(mfa));
    }
    for &factor in &factors.configured_user_auth_factors {
        let name =
            AuthFactorType::try_from(factor).map_or(factor.to_string(), |f| f.as_str_name().into());
        println!("factor: {name}");
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
async fn main() -> ExitCode {
    let args = Args::parse();
    let channel = match channel(&args) {
        Ok(channel) => channel,
        Err(error) => {
            eprintln!("cannot set up the channel: {error}");
            return ExitCode::from(2);
        }
    };
    let mut client = IdentityProviderServiceClient::new(channel);
    match call(&mut client, &args).await {
        (Ok(response), attempts) => {
            print_answer(&response, attempts);
            ExitCode::SUCCESS
        }
        (Err(failure), attempts) => {
            print_failure(&failure, attempts);
            ExitCode::FAILURE
        }
    }
}

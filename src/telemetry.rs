//! Log subscriber setup: a format, a filter from `RUST_LOG`, a writer, and a
//! guard that keeps secrets out of every line whatever the filter says.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, FilterFn},
    fmt::MakeWriter,
    layer::SubscriberExt as _,
};

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// The AWS SDK prints whole HTTP requests, body included, at TRACE under this
/// target ("transmitting request"); the body holds the access token. Those
/// events are dropped at every filter setting.
const SDK_WIRE_TRACE_TARGET: &str = "aws_smithy_runtime::client::orchestrator";

/// An env var that makes the AWS SDK log response bodies (usernames) even for
/// outputs its model marks sensitive.
pub const SDK_SENSITIVE_BODIES_VAR: &str = "LOG_SENSITIVE_BODIES";

/// Refuses to start when [`SDK_SENSITIVE_BODIES_VAR`] is set: this service
/// promises that no username reaches a log.
pub fn check_sensitive_logging_off() -> Result<(), String> {
    match std::env::var_os(SDK_SENSITIVE_BODIES_VAR) {
        Some(_) => Err(format!(
            "{SDK_SENSITIVE_BODIES_VAR} is set; unset it: this service never logs access tokens or usernames"
        )),
        None => Ok(()),
    }
}

/// Whether an event or span may be recorded at all (the secret guard).
fn is_safe(meta: &Metadata<'_>) -> bool {
    !(*meta.level() == Level::TRACE && meta.target().starts_with(SDK_WIRE_TRACE_TARGET))
}

/// Builds the subscriber: `format` lines through `filter` (a `RUST_LOG`
/// directive string) into `writer`. Tests pass a buffer as the writer.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<impl Subscriber + Send + Sync + 'static, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env_filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|err| format!("RUST_LOG is not a valid filter ({filter:?}): {err}"))?;
    let filter = env_filter.and(FilterFn::new(is_safe));
    let layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    };
    Ok(tracing_subscriber::registry().with(layer.with_filter(filter)))
}

/// The filter directives from `RUST_LOG`, or [`DEFAULT_FILTER`].
pub fn filter_from_env() -> String {
    std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| DEFAULT_FILTER.to_owned())
}

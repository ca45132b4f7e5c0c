//! Log subscriber setup: a format, a filter from `RUST_LOG`, a writer, and a
//! guard that keeps secrets out of every line whatever the filter says.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, FilterFn},
    fmt::MakeWriter,
    layer::SubscriberExt as _,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, for log pipelines (the default).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

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
/// directive string) into `writer`, with colours only if `ansi` (a terminal).
/// Tests pass a buffer as the writer.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    ansi: bool,
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
            // Rendering the span into each JSON line re-parses its fields for
            // every event; the lines that matter carry the method themselves.
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    Ok(tracing_subscriber::registry().with(layer.with_filter(filter)))
}

/// The filter directives from `RUST_LOG`, or [`DEFAULT_FILTER`].
pub fn filter_from_env() -> String {
    std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| DEFAULT_FILTER.to_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn capture(format: LogFormat, filter: &str, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, filter, false, buffer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_sdk_wire_trace_is_dropped_even_at_trace() {
        for format in [LogFormat::Json, LogFormat::Text] {
            let logs = capture(format, "trace", || {
                tracing::trace!(
                    target: "aws_smithy_runtime::client::orchestrator",
                    body = "AccessToken-SECRET",
                    "transmitting request"
                );
                tracing::debug!(target: "aws_smithy_runtime::client::orchestrator", "kept debug");
                tracing::trace!(target: "h2::codec", "kept trace");
            });
            assert!(!logs.contains("SECRET"), "{logs}");
            assert!(
                logs.contains("kept debug") && logs.contains("kept trace"),
                "{logs}"
            );
        }
    }

    #[test]
    fn the_filter_applies_and_json_is_one_object_a_line() {
        let logs = capture(LogFormat::Json, "warn", || {
            tracing::info!("dropped");
            tracing::warn!(answer = 42, "kept");
        });
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 1, "{logs}");
        assert!(
            lines[0].starts_with('{') && lines[0].contains("\"answer\":42"),
            "{logs}"
        );
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_rust_log() {
        let err = subscriber(LogFormat::Text, "info,[", false, Buffer::default())
            .err()
            .unwrap();
        assert!(err.contains("RUST_LOG"), "{err}");
    }
}

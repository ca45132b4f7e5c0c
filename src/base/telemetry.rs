//! Log subscriber setup: a format, a filter from `RUST_LOG`, a writer, and a
//! guard that keeps secrets out of every line whatever the filter says.

use std::{
    cell::RefCell,
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::ser::{SerializeMap as _, Serializer as _};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_serde::{AsSerde as _, fields::AsMap as _};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, FilterFn},
    fmt::{
        FmtContext, FormatEvent, FormatFields, MakeWriter,
        format::{JsonFields, Writer},
        time::{FormatTime as _, SystemTime},
    },
    layer::SubscriberExt as _,
    registry::LookupSpan,
};

use crate::base::expiring::lock;

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
pub(crate) const SDK_SENSITIVE_BODIES_VAR: &str = "LOG_SENSITIVE_BODIES";

/// At most one event per interval, for warnings that a hostile caller or a
/// failing dependency could otherwise repeat thousands of times a second.
#[derive(Debug)]
pub(crate) struct Every {
    interval: Duration,
    state: Mutex<EveryState>,
}

#[derive(Debug, Default)]
struct EveryState {
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    /// Lets the first event through, then one per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// `Some(events held back since the last one let through)` when this one
    /// may be logged; `None` when it is to be held back.
    pub(crate) fn ready(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        if state.last.is_some_and(|at| at.elapsed() < self.interval) {
            state.suppressed += 1;
            return None;
        }
        state.last = Some(Instant::now());
        Some(std::mem::take(&mut state.suppressed))
    }
}

/// Refuses to start when [`SDK_SENSITIVE_BODIES_VAR`] is set: this service
/// promises that no username reaches a log.
pub fn check_sensitive_logging_off() -> Result<(), String> {
    // `LOG_SIGNABLE_BODY` makes aws-sigv4 log the signed body (a username).
    for var in [SDK_SENSITIVE_BODIES_VAR, "LOG_SIGNABLE_BODY"] {
        if std::env::var_os(var).is_some() {
            return Err(format!(
                "{var} is set; unset it: this service never logs access tokens or usernames"
            ));
        }
    }
    Ok(())
}

/// Whether an event or span may be recorded at all (the secret guard).
fn is_safe(meta: &Metadata<'_>) -> bool {
    // aws-sigv4 prints the request it signs at TRACE.
    !(*meta.level() == Level::TRACE
        && (meta.target().starts_with(SDK_WIRE_TRACE_TARGET)
            || meta.target().starts_with("aws_sigv4")))
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
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    Ok(tracing_subscriber::registry().with(layer.with_filter(filter)))
}

/// One JSON object a line: byte for byte what tracing-subscriber's JSON
/// format writes with the current span and span list off (`timestamp`,
/// `level`, `fields`, `target`), built into one buffer and handed to the
/// line writer once. tracing-subscriber's own formatter passes each of
/// serde_json's tokens (every quote, colon and comma) through an `io::Write`
/// adaptor that checks it is UTF-8 again: about 11,000 of the call line's
/// 25,000 instructions (bench/PROFILE.md). Spans are not rendered: rendering
/// one re-parses its fields for every event, and the lines that matter carry
/// the method themselves. The test below holds the two formats equal.
///
/// Events keep their own metadata: nothing here bridges the `log` crate, so
/// there is no log record's metadata to normalise.
#[derive(Debug, Clone, Copy)]
struct JsonLines;

thread_local! {
    /// The line being built, kept between events on each thread.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A line buffer grown past this (a very long event, say at `trace`) is
/// given back after its line rather than kept by its thread.
const LINE_KEPT_BYTES: usize = 16 * 1024;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fresh = Vec::new();
        LINE.with(|kept| {
            // An event recorded while one is being written (a field's own
            // formatting logging something) gets a buffer of its own.
            let mut kept = kept.try_borrow_mut();
            let line = kept.as_deref_mut().unwrap_or(&mut fresh);
            line.clear();
            json_line(line, event)?;
            let text = std::str::from_utf8(line).map_err(|_| fmt::Error)?;
            let written = writer.write_str(text);
            if line.capacity() > LINE_KEPT_BYTES {
                *line = Vec::new();
            }
            written
        })
    }
}

/// Appends `event` to `line` as one JSON object and a newline.
fn json_line(line: &mut Vec<u8>, event: &Event<'_>) -> fmt::Result {
    let mut timestamp = String::with_capacity(32);
    SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
    let meta = event.metadata();
    let mut serializer = serde_json::Serializer::new(&mut *line);
    let mut map = serializer.serialize_map(None).map_err(|_| fmt::Error)?;
    map.serialize_entry("timestamp", &timestamp)
        .and_then(|()| map.serialize_entry("level", &meta.level().as_serde()))
        .and_then(|()| map.serialize_entry("fields", &event.field_map()))
        .and_then(|()| map.serialize_entry("target", meta.target()))
        .and_then(|()| map.end())
        .map_err(|_| fmt::Error)?;
    line.push(b'\n');
    Ok(())
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

    /// A line with its timestamp's value replaced by `T`, after checking it
    /// is RFC 3339 UTC with microseconds.
    fn without_timestamp(line: &str) -> String {
        let (head, rest) = line.split_once("{\"timestamp\":\"").expect(line);
        let (timestamp, tail) = rest.split_once('"').expect(line);
        let shape: String = timestamp
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        assert_eq!(shape, "0000-00-00T00:00:00.000000Z", "{line}");
        format!("{head}{{\"timestamp\":\"T\"{tail}")
    }

    #[test]
    fn json_lines_are_byte_for_byte_tracing_subscribers_json_format() {
        let events = || {
            tracing::info!(
                rpc.method = "GetUserAuthFactors",
                latency_us = 1234_u64,
                delta = -3_i64,
                ratio = 0.5_f64,
                big = 170_141_183_460_469_231_731_687_303_715_884_105_727_i128,
                ok = true,
                "call finished"
            );
            tracing::warn!(
                error = "quote \" backslash \\ newline \n tab \t é ✓ \u{1} \u{7f}",
                "call failed"
            );
            let err = std::io::Error::other("disk on fire");
            tracing::error!(error = &err as &dyn std::error::Error, "an error value");
            tracing::info!(list = ?vec![1, 2], shown = %"display", "formatted {} {:?}", 1, "two");
            tracing::info!(target: "custom::target", empty = "", "");
            let span = tracing::info_span!("outer", field = "in a span");
            let _entered = span.enter();
            tracing::debug!(inside = 1_u64, "inside a span");
            tracing::trace!("no fields");
        };
        let ours = capture(LogFormat::Json, "trace", events);

        let buffer = Buffer::default();
        let reference = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(reference, events);
        let theirs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();

        let ours: Vec<String> = ours.lines().map(without_timestamp).collect();
        let theirs: Vec<String> = theirs.lines().map(without_timestamp).collect();
        assert_eq!(ours.len(), 7, "{ours:#?}");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_long_line_is_written_whole_and_its_buffer_is_not_kept() {
        let long = "x".repeat(4 * LINE_KEPT_BYTES);
        let logs = capture(LogFormat::Json, "info", || {
            tracing::info!(long = long.as_str(), "long");
            tracing::info!("short");
        });
        assert!(logs.lines().next().unwrap().contains(&long));
        assert_eq!(logs.lines().count(), 2);
        let kept = LINE.with(|line| line.borrow().capacity());
        assert!(kept <= LINE_KEPT_BYTES, "{kept}");
        assert!(kept > 0, "the short line's buffer is kept");
    }

    #[test]
    fn every_lets_one_event_through_per_interval_and_counts_the_rest() {
        let every = Every::new(Duration::from_millis(200));
        assert_eq!(every.ready(), Some(0));
        assert_eq!(every.ready(), None);
        assert_eq!(every.ready(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(every.ready(), Some(2));
        assert_eq!(every.ready(), None);
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_rust_log() {
        let err = subscriber(LogFormat::Text, "info,[", false, Buffer::default())
            .err()
            .unwrap();
        assert!(err.contains("RUST_LOG"), "{err}");
    }
}

//! Distributed tracing with OpenTelemetry: trace context in (W3C
//! `traceparent` and `tracestate` by default, `OTEL_PROPAGATORS` for the
//! rest the library offers), and, when the standard OpenTelemetry
//! environment asks for it, spans out over OTLP (`grpc` or `http/protobuf`).
//!
//! With no export configured nothing is built: no provider, no queue, no
//! task, and a call's cost is reading its trace headers, if it has any.
//! Export goes through a bounded queue drained by one task: when the
//! collector is slow or away, spans are dropped and counted
//! (`cognito_facade_trace_spans_dropped_total`), never waited for.

use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tonic::codegen::http::HeaderMap;

use crate::{base::expiring::lock, base::metric_names};

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "cognito-facade";

/// The standard variables that turn export on, any one of them.
const EXPORT_VARS: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
];

/// Tracing settings, read from the standard OpenTelemetry environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingConfig {
    /// Whether spans are exported over OTLP.
    pub export: bool,
    /// The propagators, by their `OTEL_PROPAGATORS` names.
    pub propagators: Vec<String>,
    /// Most spans waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue: usize,
    /// Most spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch: usize,
    /// Longest wait before a partial batch goes (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
    /// Bound on one export (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    /// No export; W3C trace context and baggage in; the specification's
    /// batch defaults.
    fn default() -> Self {
        Self {
            export: false,
            propagators: vec!["tracecontext".to_owned(), "baggage".to_owned()],
            max_queue: 2048,
            max_batch: 512,
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

/// A setting of the OpenTelemetry environment that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct TracingEnvError {
    var: &'static str,
    message: String,
}

impl TracingConfig {
    /// Reads the standard environment: export is on when an OTLP endpoint is
    /// set or `OTEL_TRACES_EXPORTER=otlp`, and off with
    /// `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`.
    pub fn from_env() -> Result<Self, TracingEnvError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut config = Self::default();
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        config.export = match var("OTEL_TRACES_EXPORTER").as_deref() {
            Some("none") => false,
            Some("otlp") => true,
            Some(other) => {
                return Err(TracingEnvError {
                    var: "OTEL_TRACES_EXPORTER",
                    message: format!("{other:?} is not offered; use otlp or none"),
                });
            }
            None => EXPORT_VARS.iter().any(|name| var(name).is_some()),
        } && !disabled;
        if let Some(list) = var("OTEL_PROPAGATORS") {
            config.propagators = list.split(',').map(|p| p.trim().to_owned()).collect();
            if let Some(unknown) = config
                .propagators
                .iter()
                .find(|p| !matches!(p.as_str(), "tracecontext" | "baggage" | "none"))
            {
                return Err(TracingEnvError {
                    var: "OTEL_PROPAGATORS",
                    message: format!(
                        "{unknown:?} is not offered by this build; use tracecontext, baggage or none"
                    ),
                });
            }
        }
        let millis = |name: &'static str, into: &mut Duration| -> Result<(), TracingEnvError> {
            if let Some(text) = var(name) {
                let ms: u64 = text.parse().map_err(|_| TracingEnvError {
                    var: name,
                    message: format!("{text:?} is not a number of milliseconds"),
                })?;
                *into = Duration::from_millis(ms.max(1));
            }
            Ok(())
        };
        millis("OTEL_BSP_SCHEDULE_DELAY", &mut config.schedule_delay)?;
        millis("OTEL_BSP_EXPORT_TIMEOUT", &mut config.export_timeout)?;
        let count = |name: &'static str, into: &mut usize| -> Result<(), TracingEnvError> {
            if let Some(text) = var(name) {
                *into = text
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| TracingEnvError {
                        var: name,
                        message: format!("{text:?} is not a positive number"),
                    })?;
            }
            Ok(())
        };
        count("OTEL_BSP_MAX_QUEUE_SIZE", &mut config.max_queue)?;
        count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &mut config.max_batch)?;
        config.max_batch = config.max_batch.min(config.max_queue);
        Ok(config)
    }
}

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up OTLP trace export: {0}")]
pub struct TracingSetupError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The tracing of the process: propagation always, export when configured.
/// Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tracing {
    propagator: Arc<TextMapCompositePropagator>,
    /// Only when exporting.
    export: Option<Arc<Export>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("export", &self.export.is_some())
            .finish_non_exhaustive()
    }
}

struct Export {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    queue: Arc<Queue>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Tracing {
    /// Propagation of W3C trace context, no export.
    fn default() -> Self {
        Self::propagation_only(&TracingConfig::default())
    }
}

impl Tracing {
    fn propagation_only(config: &TracingConfig) -> Self {
        let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
        for name in &config.propagators {
            match name.as_str() {
                "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
                "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
                _ => {}
            }
        }
        Self {
            propagator: Arc::new(TextMapCompositePropagator::new(propagators)),
            export: None,
        }
    }

    /// Sets up tracing from `config`. With export on, builds the OTLP
    /// exporter (from the standard environment: endpoint, protocol, headers,
    /// timeout), the resource and sampler (also from it), and starts the
    /// export task: call it inside the runtime.
    pub(crate) fn new(config: &TracingConfig) -> Result<Self, TracingSetupError> {
        let mut tracing = Self::propagation_only(config);
        if !config.export {
            return Ok(tracing);
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().build()?;
        let mut resource = Resource::builder();
        let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
            || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
        if !named {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        let resource = resource.build();
        exporter.set_resource(&resource);
        let (sender, receiver) = mpsc::channel(config.max_queue);
        let queue = Arc::new(Queue {
            sender: Mutex::new(Some(sender)),
        });
        let task = tokio::spawn(export_spans(exporter, receiver, config.clone()));
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(QueueProcessor(Arc::clone(&queue)))
            .build();
        let tracer = provider.tracer("cognito-facade");
        tracing.export = Some(Arc::new(Export {
            tracer,
            provider,
            queue,
            task: Mutex::new(Some(task)),
        }));
        Ok(tracing)
    }

    /// The caller's trace context from request headers.
    pub(crate) fn extract(&self, headers: &HeaderMap) -> Context {
        self.propagator
            .extract_with_context(&Context::new(), &Headers(headers))
    }

    /// Starts the server span of one call as a child of `parent`, named
    /// `name` (`service/method`); without export, `parent` itself (so the log
    /// line still names the trace).
    pub(crate) fn server_span(
        &self,
        parent: Context,
        name: &'static str,
        service: &'static str,
        method: &'static str,
    ) -> Context {
        let Some(export) = &self.export else {
            return parent;
        };
        let span = export
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ])
            .start_with_context(&export.tracer, &parent);
        parent.with_span(span)
    }

    /// Starts the client span of a call to Cognito's `operation`, a child
    /// of `server`.
    pub(crate) fn client_span(
        &self,
        server: &Context,
        operation: &'static str,
        region: &Arc<str>,
    ) -> Context {
        let Some(export) = &self.export else {
            return server.clone();
        };
        let span = export
            .tracer
            .span_builder(format!("CognitoIdentityProvider/{operation}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("rpc.system", "aws-api"),
                KeyValue::new("rpc.service", "CognitoIdentityProvider"),
                KeyValue::new("rpc.method", operation),
                KeyValue::new("cloud.region", Arc::clone(region)),
            ])
            .start_with_context(&export.tracer, server);
        server.with_span(span)
    }

    /// Stops accepting spans and exports those still queued, for at most
    /// `within`.
    pub(crate) async fn shutdown(&self, within: Duration) {
        let Some(export) = &self.export else {
            return;
        };
        // Closing the queue ends the task once it has exported the rest.
        export.queue.close();
        let task = lock(&export.task).take();
        if let Some(task) = task
            && tokio::time::timeout(within, task).await.is_err()
        {
            tracing::warn!(
                ?within,
                "trace export did not finish within the grace; spans dropped"
            );
        }
        let _ = export.provider.shutdown();
    }
}

/// Ends the server span in `cx` with the call's outcome: the gRPC code, the
/// ErrorInfo reason of a failure, and where the answer came from.
pub(crate) fn end_server_span(
    cx: &Context,
    code: tonic::Code,
    reason: &str,
    source: &'static str,
    caller: &str,
) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    span.set_attribute(KeyValue::new("cognito_facade.source", source));
    span.set_attribute(KeyValue::new("cognito_facade.caller", caller.to_owned()));
    if !reason.is_empty() {
        span.set_attribute(KeyValue::new("error.type", reason.to_owned()));
    }
    // The semantic conventions: a server span is an error only for codes
    // that are the server's fault.
    if matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    ) {
        span.set_status(Status::error(Cow::Borrowed(crate::error::code_name(code))));
    }
    span.end();
}

/// Ends the client span of a call to Cognito in `cx` with its outcome:
/// Cognito's request id, and on failure the reason and an error status. The
/// HTTP status and each attempt were recorded by the SDK interceptor in
/// [`crate::upstream`].
pub(crate) fn end_client_span(
    cx: &Context,
    request_id: Option<&str>,
    failure: Option<&'static str>,
) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    if let Some(id) = request_id {
        span.set_attribute(KeyValue::new("aws.request_id", id.to_owned()));
    }
    if let Some(reason) = failure {
        span.set_attribute(KeyValue::new("error.type", reason));
        span.set_status(Status::error(Cow::Borrowed(reason)));
    }
    span.end();
}

/// The trace and span ids of `cx` for a log line, or empty strings.
pub(crate) fn ids(cx: &Context) -> (String, String) {
    let span = cx.span();
    let context = span.span_context();
    if context.is_valid() {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    } else {
        (String::new(), String::new())
    }
}

/// Request headers as the propagators read them.
struct Headers<'h>(&'h HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The bounded queue between ended spans and the export task.
#[derive(Debug)]
struct Queue {
    sender: Mutex<Option<mpsc::Sender<SpanData>>>,
}

impl Queue {
    fn close(&self) {
        lock(&self.sender).take();
    }
}

/// Puts each ended span on the queue, or drops and counts it when the queue
/// is full (the collector is slow or away) or closed (shutting down).
#[derive(Debug)]
struct QueueProcessor(Arc<Queue>);

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let sender = lock(&self.0.sender);
        let sent = match sender.as_ref() {
            Some(sender) => sender.try_send(span).is_ok(),
            None => false,
        };
        if !sent {
            metrics::counter!(metric_names::TRACE_SPANS_DROPPED, "reason" => "queue_full")
                .increment(1);
        }
    }

    /// Not offered, and said so: the SDK calls this synchronously, from
    /// whichever thread asks the provider to flush, while the export runs as
    /// a task on the async runtime; blocking a runtime worker until that
    /// task has exported could deadlock it. The specification lets a flush
    /// fail as long as the caller learns it did, so this answers an error
    /// rather than claim spans went out. Nothing here calls it: the queue is
    /// drained at shutdown by `Tracing::shutdown`, within the grace.
    fn force_flush(&self) -> OTelSdkResult {
        Err(OTelSdkError::InternalFailure(
            "force_flush is not offered; spans are exported by the queue's task and drained \
             at shutdown"
                .to_owned(),
        ))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.close();
        Ok(())
    }
}

/// The export task: batches of at most `max_batch` spans, sent when full or
/// after `schedule_delay`, each export bounded by `export_timeout`; spans of
/// a failed export are counted as dropped. Ends when the queue is closed
/// and drained.
async fn export_spans(
    exporter: opentelemetry_otlp::SpanExporter,
    mut receiver: mpsc::Receiver<SpanData>,
    config: TracingConfig,
) {
    let mut batch = Vec::with_capacity(config.max_batch);
    loop {
        let deadline = tokio::time::sleep(config.schedule_delay);
        tokio::pin!(deadline);
        let closed = loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= config.max_batch {
                            break false;
                        }
                    }
                    None => break true,
                },
                () = &mut deadline => break false,
            }
        };
        if !batch.is_empty() {
            let spans = std::mem::take(&mut batch);
            let count = spans.len() as u64;
            let exported =
                tokio::time::timeout(config.export_timeout, exporter.export(spans)).await;
            if !matches!(exported, Ok(Ok(()))) {
                metrics::counter!(metric_names::TRACE_SPANS_DROPPED, "reason" => "export_failed")
                    .increment(count);
            }
        }
        if closed {
            return;
        }
    }
}

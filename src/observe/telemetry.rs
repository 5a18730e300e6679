//! Logs and traces: one subscriber, set up once at start-up.
//!
//! Logs are JSON lines (the default when stdout is not a terminal: a
//! container, a service manager) or pretty text. Every line logged inside a
//! job carries the job span's fields: job id, type, masked number, attempt,
//! the W3C trace id of the request that asked for the code and, once known,
//! the Twilio message SID. Log lines never carry a verification code, a token
//! or a full phone number: the types that hold them print masked forms.
//!
//! OpenTelemetry export is off unless configured the standard way: when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, job spans are exported over OTLP/HTTP (protobuf), each a child of the
//! producer's `traceparent`.

use std::io::IsTerminal;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace_context::TraceParent;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// One JSON object per line: for containers and log shippers.
    Json,
    /// Compact text for a person at a terminal.
    Pretty,
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes exported spans.
#[derive(Default)]
pub(crate) struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the exporter (blocking: call it off the async
    /// threads, e.g. with `spawn_blocking`).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("sms-dispatch: flushing traces failed: {e}");
        }
    }
}

/// The OTLP endpoint variables; exporting is on when one is set.
const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogTarget {
    /// The worker: logs are its output.
    Stdout,
    /// Commands whose stdout is their answer (`send`, `dlq`).
    Stderr,
}

/// Installs the global subscriber: logs to `target` in `format` (or the
/// default for the terminal), filtered by `RUST_LOG` (default `info`), plus
/// the OTLP exporter when configured. A second call changes nothing.
pub(crate) fn init(format: Option<LogFormat>, target: LogTarget) -> Telemetry {
    let writer = move || -> Box<dyn std::io::Write> {
        match target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::Stderr => Box::new(std::io::stderr()),
        }
    };
    // Format and colour follow the stream the logs go to: a terminal gets
    // pretty, coloured text; a pipe or file gets JSON without escape codes.
    let terminal = match target {
        LogTarget::Stdout => std::io::stdout().is_terminal(),
        LogTarget::Stderr => std::io::stderr().is_terminal(),
    };
    let format = format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .with_writer(writer)
    });
    let pretty = (format == LogFormat::Pretty).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_ansi(terminal)
            .with_writer(writer)
    });
    let provider = otlp_provider();
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("sms-dispatch")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(pretty)
        .with(otel)
        .try_init()
        .is_ok();
    Telemetry {
        tracer_provider: provider.filter(|_| installed),
    }
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    let configured = OTLP_ENDPOINT_VARS
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("sms-dispatch: OTLP export disabled: {e}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("sms-dispatch");
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// Makes the producer's trace the parent of `span` for exported traces. (The
/// log lines carry the trace id through the span's `trace_id` field either
/// way.)
pub(crate) fn set_remote_parent(span: &tracing::Span, parent: &TraceParent) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&parent.trace_id),
        SpanId::from_hex(&parent.parent_id),
    ) else {
        return;
    };
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(cx);
}

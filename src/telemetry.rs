//! Logs: one subscriber, JSON lines or pretty text, set up once at start-up.
//!
//! JSON is the default when stdout is not a terminal (a container, a service
//! manager); every line carries the fields of the job span it was logged in
//! (job id, type, masked number, attempt, trace id and, once known, the Twilio
//! message SID). Log lines never carry a verification code, a token or a full
//! phone number: the types that hold them print masked forms.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`).
/// Logs go to stdout; calling it twice is harmless (the second call is
/// ignored).
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
        LogFormat::Pretty => builder.with_target(false).compact().try_init(),
    };
}

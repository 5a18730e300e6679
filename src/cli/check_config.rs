//! `check-config`: validates the configuration and shows what each template
//! costs (encoding and segments), with warnings an operator should act on.

use std::fmt::Write as _;

use serde_json::json;

use super::error::CliError;
use super::output::emit;
use crate::config::Config;
use crate::encoding;
use crate::job::{Payload, TemplateType};
use crate::twilio::{Sender, TwilioAuth};

/// The sample a template is measured with: a six-digit code and a typical
/// invitation link.
fn sample_payload() -> Payload {
    let mut vars = serde_json::Map::new();
    vars.insert("code".to_owned(), json!("123456"));
    vars.insert(
        "link".to_owned(),
        json!("https://example.com/invitation/0123456789abcdef"),
    );
    Payload::new(vars)
}

pub(crate) fn check_config(config: &Config) -> Result<(), CliError> {
    let templates = config.templates_required()?;
    let twilio = config.twilio_required()?;
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", config.source);
    let sender = match &twilio.sender {
        Sender::MessagingService(sid) => format!("Messaging Service {sid}"),
        Sender::From(from) => format!("From {from}"),
    };
    let auth = match &twilio.auth {
        TwilioAuth::AuthToken(_) => "auth token".to_owned(),
        TwilioAuth::ApiKey { sid, .. } => format!("API key {sid}"),
    };
    let _ = writeln!(
        out,
        "Twilio account {} ({auth}), sending from {sender}, via {}",
        twilio.account_sid, twilio.base_url
    );
    let _ = writeln!(
        out,
        "broker {} (queue type {}, prefetch {})",
        config.broker.url_for_logs(),
        config.broker.queue_type.as_str(),
        config.broker.prefetch
    );
    let _ = match &config.redis {
        Some(redis) => writeln!(
            out,
            "duplicate protection: fleet-wide, Redis {} (key prefix {})",
            redis.url_for_logs(),
            redis.prefix
        ),
        None => writeln!(
            out,
            "duplicate protection: per worker (set SMS_DISPATCH_REDIS_URL to share it across the fleet)"
        ),
    };
    let _ = writeln!(out, "abuse limits:");
    for line in config.limits.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<26} {:<8} {:<8} {:>5} {:>8}",
        "TYPE", "LOCALE", "ENCODING", "UNITS", "SEGMENTS"
    );
    let sample = sample_payload();
    let mut warnings = Vec::new();
    for template in templates.all() {
        let rendered = template.render(&sample);
        let segments = encoding::segments(&rendered);
        let _ = writeln!(
            out,
            "{:<26} {:<8} {:<8} {:>5} {:>8}",
            template.kind().as_str(),
            template.locale().unwrap_or("-"),
            segments.encoding.as_str(),
            segments.units,
            segments.count
        );
        if segments.count > 1 {
            warnings.push(format!(
                "{} ({}) takes {} segments in {}: every message costs {} times one SMS",
                template.kind(),
                template.locale().unwrap_or("no locale"),
                segments.count,
                segments.encoding,
                segments.count
            ));
        }
    }
    let _ = writeln!(
        out,
        "(units: GSM-7 septets or UTF-16 code units, measured with a 6-digit code and a 47-character invitation link)"
    );
    for kind in TemplateType::FULL_FLOW {
        let own = templates.all().iter().any(|t| t.kind() == kind);
        if !own {
            let some_generic = templates
                .all()
                .iter()
                .any(|t| t.kind() == TemplateType::Generic);
            let fallback = if kind != TemplateType::Generic && templates.covers(kind) {
                "its jobs will use the Generic template"
            } else if kind != TemplateType::Generic && some_generic {
                "its jobs are sent only in the locales Generic has; the rest are dead-lettered no_template"
            } else {
                "its jobs will be dead-lettered no_template"
            };
            warnings.push(format!(
                "no {kind} template, which a full Logto sign-in flow needs: {fallback}"
            ));
        }
    }
    if !warnings.is_empty() {
        out.push('\n');
        for warning in &warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    emit(&out)
}

//! The environment on top of the file (contract section 2, plus a few of our
//! own, listed in the README): one table from variable to field.

use secrecy::SecretString;

use super::raw::{Raw, Sourced};

type Slot = fn(&mut Raw) -> &mut Option<Sourced<String>>;
type SecretSlot = fn(&mut Raw) -> &mut Option<Sourced<SecretString>>;

/// Plain variables and the field each one overrides.
const PLAIN: &[(&str, Slot)] = &[
    ("TWILIO_ACCOUNT_SID", |r| &mut r.account_sid),
    ("TWILIO_API_KEY", |r| &mut r.api_key),
    ("SMS_DISPATCH_TWILIO_BASE_URL", |r| &mut r.twilio_base_url),
    ("SMS_DISPATCH_AMQP_URL", |r| &mut r.amqp_url),
    ("SMS_DISPATCH_PREFETCH", |r| &mut r.prefetch),
    ("SMS_DISPATCH_QUEUE_TYPE", |r| &mut r.queue_type),
    ("SMS_DISPATCH_RECONNECT_DEADLINE_SECS", |r| {
        &mut r.reconnect_deadline_secs
    }),
    ("SMS_DISPATCH_HTTP_ADDR", |r| &mut r.http_addr),
    ("SMS_DISPATCH_LOG_FORMAT", |r| &mut r.log_format),
    ("SMS_DISPATCH_DEFAULT_TTL_SECS", |r| &mut r.default_ttl_secs),
    ("SMS_DISPATCH_MAX_ATTEMPTS", |r| &mut r.max_attempts),
    ("SMS_DISPATCH_SHUTDOWN_GRACE_SECS", |r| {
        &mut r.shutdown_grace_secs
    }),
    ("SMS_DISPATCH_REDIS_PREFIX", |r| &mut r.redis_prefix),
    ("SMS_DISPATCH_PUBLIC_URL", |r| &mut r.public_url),
    ("SMS_DISPATCH_EVENTS", |r| &mut r.events),
    ("SMS_DISPATCH_LIMIT_PER_NUMBER", |r| &mut r.limit_per_number),
    ("SMS_DISPATCH_LIMIT_PER_IP", |r| &mut r.limit_per_ip),
    ("SMS_DISPATCH_COUNTRIES_ALLOW", |r| &mut r.countries_allow),
    ("SMS_DISPATCH_COUNTRIES_DENY", |r| &mut r.countries_deny),
    ("SMS_DISPATCH_COUNTRY_BUDGET_PER_HOUR", |r| {
        &mut r.country_budget_per_hour
    }),
];

/// Secret variables and the field each one overrides.
const SECRET: &[(&str, SecretSlot)] = &[
    ("TWILIO_AUTH_TOKEN", |r| &mut r.auth_token),
    ("TWILIO_API_SECRET", |r| &mut r.api_secret),
    ("SMS_DISPATCH_INGEST_TOKEN", |r| &mut r.ingest_token),
    ("SMS_DISPATCH_REDIS_URL", |r| &mut r.redis_url),
    ("TWILIO_AUTH_TOKEN_PREVIOUS", |r| &mut r.auth_token_previous),
];

/// Applies the variables that are set (and not blank); `env` looks one up.
pub(crate) fn apply(raw: &mut Raw, env: &impl Fn(&str) -> Option<String>) {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    for (name, slot) in PLAIN {
        if let Some(value) = var(name) {
            *slot(raw) = Some(Sourced { value, key: name });
        }
    }
    for (name, slot) in SECRET {
        if let Some(value) = var(name) {
            *slot(raw) = Some(Sourced {
                value: SecretString::from(value),
                key: name,
            });
        }
    }
    // One sender; with both set, the contract prefers the Messaging Service.
    if let Some(value) = var("TWILIO_MESSAGING_SERVICE_SID") {
        raw.messaging_service_sid = Some(Sourced {
            value,
            key: "TWILIO_MESSAGING_SERVICE_SID",
        });
        raw.from = None;
    } else if let Some(value) = var("TWILIO_FROM") {
        raw.from = Some(Sourced {
            value,
            key: "TWILIO_FROM",
        });
        raw.messaging_service_sid = None;
    }
}

//! The project's own file format (TOML). Unknown keys are errors, so a typo
//! cannot silently leave a default in place. See
//! `deploy/sms-dispatch.example.toml` for every key.

use secrecy::SecretString;
use serde::Deserialize;

use super::error::ConfigError;
use super::raw::{Raw, RawTemplate, sourced, without_quoted};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    twilio: TomlTwilio,
    #[serde(default)]
    amqp: TomlAmqp,
    #[serde(default)]
    http: TomlHttp,
    #[serde(default)]
    jobs: TomlJobs,
    #[serde(default)]
    retry: TomlRetry,
    #[serde(default)]
    shutdown: TomlShutdown,
    #[serde(default)]
    redis: TomlRedis,
    #[serde(default)]
    limits: TomlLimits,
    #[serde(default)]
    templates: Vec<TomlTemplate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlLimits {
    per_number: Option<Vec<String>>,
    per_ip: Option<Vec<String>>,
    countries_allow: Option<Vec<String>>,
    countries_deny: Option<Vec<String>>,
    country_budget_per_hour: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRedis {
    url: Option<SecretString>,
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTwilio {
    account_sid: Option<String>,
    auth_token: Option<SecretString>,
    auth_token_previous: Option<SecretString>,
    api_key: Option<String>,
    api_secret: Option<SecretString>,
    messaging_service_sid: Option<String>,
    from: Option<String>,
    base_url: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    risk_check: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlAmqp {
    url: Option<String>,
    prefetch: Option<i64>,
    queue_type: Option<String>,
    reconnect_deadline_secs: Option<i64>,
    events: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlHttp {
    addr: Option<String>,
    ingest_token: Option<SecretString>,
    public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlJobs {
    default_ttl_secs: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRetry {
    max_attempts: Option<i64>,
    base_delay_ms: Option<i64>,
    max_delay_ms: Option<i64>,
    in_process_wait_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlShutdown {
    grace_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTemplate {
    #[serde(rename = "type", alias = "usageType", alias = "usage_type")]
    kind: String,
    locale: Option<String>,
    content: String,
}

/// A TOML list as the environment writes it: comma-separated, `off` when
/// empty.
fn listed(items: Option<Vec<String>>) -> Option<String> {
    items.map(|items| {
        if items.is_empty() {
            "off".to_owned()
        } else {
            items.join(",")
        }
    })
}

/// Reads the TOML text of the file `source`. Numbers are range-checked later,
/// against the key they were written under.
pub(crate) fn read(source: &str, text: &str) -> Result<Raw, ConfigError> {
    let file: TomlFile = toml::from_str(text).map_err(|e| {
        let field = e.span().map_or_else(
            || "file".to_owned(),
            |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}")
            },
        );
        ConfigError::new(
            source,
            field,
            without_quoted(e.message().trim()),
            "fix the TOML (see deploy/sms-dispatch.example.toml for every key)",
        )
    })?;
    let text = |n: Option<i64>| n.map(|n| n.to_string());
    let unsigned = |n: Option<u64>| n.map(|n| n.to_string());
    let t = file.twilio;
    Ok(Raw {
        account_sid: sourced("twilio.account_sid", t.account_sid),
        auth_token: sourced("twilio.auth_token", t.auth_token),
        api_key: sourced("twilio.api_key", t.api_key),
        api_secret: sourced("twilio.api_secret", t.api_secret),
        messaging_service_sid: sourced("twilio.messaging_service_sid", t.messaging_service_sid),
        from: sourced("twilio.from", t.from),
        twilio_base_url: sourced("twilio.base_url", t.base_url),
        connect_timeout_ms: sourced("twilio.connect_timeout_ms", unsigned(t.connect_timeout_ms)),
        request_timeout_ms: sourced("twilio.request_timeout_ms", unsigned(t.request_timeout_ms)),
        risk_check: t.risk_check,
        amqp_url: sourced("amqp.url", file.amqp.url),
        prefetch: sourced("amqp.prefetch", text(file.amqp.prefetch)),
        queue_type: sourced("amqp.queue_type", file.amqp.queue_type),
        reconnect_deadline_secs: sourced(
            "amqp.reconnect_deadline_secs",
            text(file.amqp.reconnect_deadline_secs),
        ),
        http_addr: sourced("http.addr", file.http.addr),
        ingest_token: sourced("http.ingest_token", file.http.ingest_token),
        log_format: None,
        default_ttl_secs: sourced("jobs.default_ttl_secs", text(file.jobs.default_ttl_secs)),
        max_attempts: sourced("retry.max_attempts", text(file.retry.max_attempts)),
        base_delay_ms: sourced("retry.base_delay_ms", text(file.retry.base_delay_ms)),
        max_delay_ms: sourced("retry.max_delay_ms", text(file.retry.max_delay_ms)),
        in_process_wait_ms: sourced(
            "retry.in_process_wait_ms",
            text(file.retry.in_process_wait_ms),
        ),
        shutdown_grace_secs: sourced("shutdown.grace_secs", text(file.shutdown.grace_secs)),
        redis_url: sourced("redis.url", file.redis.url),
        public_url: sourced("http.public_url", file.http.public_url),
        events: sourced(
            "amqp.events",
            file.amqp
                .events
                .map(|on| if on { "on" } else { "off" }.to_owned()),
        ),
        auth_token_previous: sourced("twilio.auth_token_previous", t.auth_token_previous),
        redis_prefix: sourced("redis.prefix", file.redis.prefix),
        limit_per_number: sourced("limits.per_number", listed(file.limits.per_number)),
        limit_per_ip: sourced("limits.per_ip", listed(file.limits.per_ip)),
        countries_allow: sourced(
            "limits.countries_allow",
            listed(file.limits.countries_allow),
        ),
        countries_deny: sourced("limits.countries_deny", listed(file.limits.countries_deny)),
        country_budget_per_hour: sourced(
            "limits.country_budget_per_hour",
            text(file.limits.country_budget_per_hour),
        ),
        templates: RawTemplate::numbered(
            file.templates
                .into_iter()
                .map(|t| (t.kind, t.locale, t.content)),
        ),
    })
}

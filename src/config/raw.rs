//! The values read from the file and the environment, each with the key it
//! came from, before they are checked and assembled into settings.

use secrecy::SecretString;

/// A value and the key it came from (`amqp.prefetch`,
/// `SMS_DISPATCH_PREFETCH`, `accountSID`), so an error names what the
/// operator actually wrote.
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) key: &'static str,
}

/// Wraps `value` with its `key`.
pub(crate) fn sourced<T>(key: &'static str, value: Option<T>) -> Option<Sourced<T>> {
    value.map(|value| Sourced { value, key })
}

/// One template entry as written.
#[derive(Debug)]
pub(crate) struct RawTemplate {
    /// Where it stands, for errors: `templates[2]`.
    pub(crate) field: String,
    pub(crate) kind: String,
    pub(crate) locale: Option<String>,
    pub(crate) content: String,
}

impl RawTemplate {
    /// The entries of a file's template list, named by their place in it.
    pub(crate) fn numbered(
        entries: impl Iterator<Item = (String, Option<String>, String)>,
    ) -> Vec<RawTemplate> {
        entries
            .enumerate()
            .map(|(i, (kind, locale, content))| RawTemplate {
                field: format!("templates[{i}]"),
                kind,
                locale,
                content,
            })
            .collect()
    }
}

/// Everything read, unchecked. Numbers are kept as text until they are
/// checked, so that a file and the environment are checked alike.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) account_sid: Option<Sourced<String>>,
    pub(crate) auth_token: Option<Sourced<SecretString>>,
    pub(crate) api_key: Option<Sourced<String>>,
    pub(crate) api_secret: Option<Sourced<SecretString>>,
    pub(crate) messaging_service_sid: Option<Sourced<String>>,
    pub(crate) from: Option<Sourced<String>>,
    pub(crate) twilio_base_url: Option<Sourced<String>>,
    pub(crate) connect_timeout_ms: Option<Sourced<String>>,
    pub(crate) request_timeout_ms: Option<Sourced<String>>,
    pub(crate) risk_check: Option<bool>,
    pub(crate) amqp_url: Option<Sourced<String>>,
    pub(crate) prefetch: Option<Sourced<String>>,
    pub(crate) queue_type: Option<Sourced<String>>,
    pub(crate) reconnect_deadline_secs: Option<Sourced<String>>,
    pub(crate) http_addr: Option<Sourced<String>>,
    pub(crate) ingest_token: Option<Sourced<SecretString>>,
    pub(crate) log_format: Option<Sourced<String>>,
    pub(crate) default_ttl_secs: Option<Sourced<String>>,
    pub(crate) max_attempts: Option<Sourced<String>>,
    pub(crate) base_delay_ms: Option<Sourced<String>>,
    pub(crate) max_delay_ms: Option<Sourced<String>>,
    pub(crate) in_process_wait_ms: Option<Sourced<String>>,
    pub(crate) shutdown_grace_secs: Option<Sourced<String>>,
    pub(crate) redis_url: Option<Sourced<SecretString>>,
    pub(crate) public_url: Option<Sourced<String>>,
    pub(crate) events: Option<Sourced<String>>,
    pub(crate) auth_token_previous: Option<Sourced<SecretString>>,
    pub(crate) limit_per_number: Option<Sourced<String>>,
    pub(crate) limit_per_ip: Option<Sourced<String>>,
    pub(crate) countries_allow: Option<Sourced<String>>,
    pub(crate) countries_deny: Option<Sourced<String>>,
    pub(crate) country_budget_per_hour: Option<Sourced<String>>,
    pub(crate) redis_prefix: Option<Sourced<String>>,
    pub(crate) templates: Vec<RawTemplate>,
}

/// Makes a parser's message one line, and removes the quoted fragments of
/// a message about a value (`invalid type: integer `12345`, …`): the value
/// may be a secret. Messages about keys (`unknown field `prefech`, expected
/// one of …`) keep their names, which are the point.
pub(crate) fn without_quoted(message: &str) -> String {
    let about_a_value = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ]
    .iter()
    .any(|m| message.contains(m));
    if !about_a_value {
        return message.replace('\n', " ");
    }
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                quote = Some(c);
            }
            None if c == '\n' => out.push(' '),
            None => out.push(c),
        }
    }
    out
}

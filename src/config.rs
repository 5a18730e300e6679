//! Configuration: the project's TOML file or Logto's Twilio connector JSON,
//! then the environment on top.
//!
//! Everything is checked here, once, at start-up: a [`Config`] that exists is
//! usable. A problem is a [`ConfigError`], printed as one line that names the
//! source, the field and the fix, after which the binary exits with code 2.
//! Secrets (auth token, API secret, ingest token, the broker password) are
//! `secrecy` secrets and never printed, not even in an error.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::job::TemplateType;
use crate::phone::PhoneNumber;
use crate::retry::RetryPolicy;
use crate::templates::{TemplateEntry, TemplateError, Templates};

/// The broker used when nothing else is configured.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The HTTP listener's address when nothing else is configured.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9464";
/// The longest life a job may be given (a day): a code older than that is
/// useless.
pub const MAX_TTL_SECS: u64 = 86_400;
/// Twilio's API when nothing else is configured.
pub const DEFAULT_TWILIO_BASE_URL: &str = "https://api.twilio.com";

/// A configuration problem, shown as one line:
/// `{source}: {field}: {problem}; {fix}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}; {fix}")]
pub struct ConfigError {
    /// The file, or `environment`.
    pub file: String,
    /// The field or environment variable at fault.
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    fn new(
        source: impl Into<String>,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: source.into(),
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// How the worker authenticates to Twilio.
#[derive(Clone)]
pub enum TwilioAuth {
    /// The account's auth token (Logto's connector uses this).
    AuthToken(SecretString),
    /// An API key (`SK…`) and its secret: Twilio's advice for production, and
    /// preferred when both are configured.
    ApiKey { sid: String, secret: SecretString },
}

impl fmt::Debug for TwilioAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TwilioAuth::AuthToken(_) => f.write_str("AuthToken(***)"),
            TwilioAuth::ApiKey { sid, .. } => write!(f, "ApiKey({sid}, ***)"),
        }
    }
}

/// Who the message comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A Messaging Service (`MG…`): Twilio picks the number.
    MessagingService(String),
    /// One phone number or alphanumeric sender ID.
    From(String),
}

/// Everything needed to call Twilio.
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth: TwilioAuth,
    pub sender: Sender,
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// `Some(false)` sends `RiskCheck=disable` (Logto's `disableRiskCheck`).
    pub risk_check: Option<bool>,
}

/// Where the work queue lives and how it is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated and, on one node, the faster consumer: the default.
    Quorum,
    /// For brokers without quorum queues.
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// The broker connection.
#[derive(Clone)]
pub struct BrokerSettings {
    pub url: SecretString,
    /// The most jobs one worker holds in flight.
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// How long the worker waits for lapin to reconnect before it exits with
    /// code 1 so that the orchestrator restarts it.
    pub reconnect_deadline: Duration,
}

impl BrokerSettings {
    /// The URL with any password replaced by `***`, for logs.
    pub fn url_for_logs(&self) -> String {
        redact_url_password(self.url.expose_secret())
    }
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &self.url_for_logs())
            .field("prefetch", &self.prefetch)
            .field("queue_type", &self.queue_type)
            .field("reconnect_deadline", &self.reconnect_deadline)
            .finish()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file part came from (a path, or `environment`).
    pub source: String,
    pub broker: BrokerSettings,
    pub http_addr: SocketAddr,
    /// The life of a job without `expires_at`, from its publish time.
    pub default_ttl: Duration,
    pub retry: RetryPolicy,
    /// How long in-flight jobs may take to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// Enables `POST /v1/send` when set.
    pub ingest_token: Option<SecretString>,
    /// `None`: JSON when stdout is not a terminal, pretty otherwise.
    pub log_format: Option<LogFormat>,
    /// `None` when no Twilio credentials are configured at all.
    pub twilio: Option<TwilioSettings>,
    pub templates: Templates,
}

/// The project's own file format (TOML). Unknown keys are errors, so a typo
/// cannot silently leave a default in place.
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
    templates: Vec<TomlTemplate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTwilio {
    account_sid: Option<String>,
    auth_token: Option<SecretString>,
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
    prefetch: Option<u16>,
    queue_type: Option<String>,
    reconnect_deadline_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlHttp {
    addr: Option<String>,
    ingest_token: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlJobs {
    default_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRetry {
    max_attempts: Option<u32>,
    base_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    in_process_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlShutdown {
    grace_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTemplate {
    #[serde(rename = "type", alias = "usageType", alias = "usage_type")]
    kind: String,
    locale: Option<String>,
    content: String,
}

/// Logto's Twilio connector config (`@logto/connector-twilio-sms`), verbatim.
/// Unknown keys are ignored: Logto may add some.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogtoConnector {
    #[serde(rename = "accountSID")]
    account_sid: Option<String>,
    auth_token: Option<SecretString>,
    #[serde(rename = "fromMessagingServiceSID")]
    from_messaging_service_sid: Option<String>,
    disable_risk_check: Option<bool>,
    #[serde(default)]
    templates: Vec<LogtoTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogtoTemplate {
    usage_type: String,
    content: String,
    locale: Option<String>,
}

/// The values read from the file, before the environment and validation.
#[derive(Default)]
struct Raw {
    /// The Twilio part has the same keys in both formats.
    twilio: TomlTwilio,
    amqp_url: Option<String>,
    prefetch: Option<String>,
    queue_type: Option<String>,
    reconnect_deadline_secs: Option<String>,
    http_addr: Option<String>,
    ingest_token: Option<SecretString>,
    log_format: Option<String>,
    default_ttl_secs: Option<String>,
    max_attempts: Option<String>,
    base_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    in_process_wait_ms: Option<u64>,
    shutdown_grace_secs: Option<String>,
    /// (field name for errors, entry)
    templates: Vec<(String, String, Option<String>, String)>,
}

impl Config {
    /// Reads the file (if any), applies the environment (`env` looks a
    /// variable up; pass `|k| std::env::var(k).ok()`), and validates.
    /// Twilio settings and templates are optional here; the commands that
    /// need them ask with [`Config::twilio_required`] and
    /// [`Config::templates_required`].
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (source, mut raw) = match path {
            Some(path) => (path.display().to_string(), read_file(path)?),
            None => ("environment".to_owned(), Raw::default()),
        };
        apply_env(&mut raw, &env);
        build(&source, raw)
    }

    /// The Twilio settings, or the error that says how to provide them.
    pub fn twilio_required(&self) -> Result<&TwilioSettings, ConfigError> {
        self.twilio.as_ref().ok_or_else(|| {
            ConfigError::new(
                &self.source,
                "accountSID",
                "no Twilio credentials are configured",
                "set accountSID/authToken in the file or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET); `run --dry-run` needs none",
            )
        })
    }

    /// The templates, or the error that says how to provide them.
    pub fn templates_required(&self) -> Result<&Templates, ConfigError> {
        if self.templates.is_empty() {
            return Err(ConfigError::new(
                &self.source,
                "templates",
                "no templates are configured",
                "pass --config with a Logto connector JSON or a TOML file that lists templates (see deploy/)",
            ));
        }
        Ok(&self.templates)
    }
}

fn read_file(path: &Path) -> Result<Raw, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            &source,
            "file",
            format!("cannot be read ({})", e.kind()),
            "check the path given to --config or SMS_DISPATCH_CONFIG",
        )
    })?;
    let is_json = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    if is_json {
        read_logto_json(&source, &text)
    } else {
        read_toml(&source, &text)
    }
}

fn read_logto_json(source: &str, text: &str) -> Result<Raw, ConfigError> {
    let file: LogtoConnector = serde_json::from_str(text).map_err(|e| {
        ConfigError::new(
            source,
            format!("line {}, column {}", e.line(), e.column()),
            format!("is not a valid Logto connector config ({})", without_quoted(&e.to_string())),
            "fix the JSON; the shape is {accountSID, authToken, fromMessagingServiceSID, templates: [{usageType, content}]}",
        )
    })?;
    let mut raw = Raw {
        twilio: TomlTwilio {
            account_sid: file.account_sid,
            auth_token: file.auth_token,
            risk_check: file.disable_risk_check.map(|d| !d),
            ..TomlTwilio::default()
        },
        ..Raw::default()
    };
    // Logto's field is named for a Messaging Service but people put a phone
    // number there too: take either, by its shape.
    if let Some(sender) = file.from_messaging_service_sid {
        if sender.starts_with("MG") {
            raw.twilio.messaging_service_sid = Some(sender);
        } else {
            raw.twilio.from = Some(sender);
        }
    }
    raw.templates = file
        .templates
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("templates[{i}]"), t.usage_type, t.locale, t.content))
        .collect();
    Ok(raw)
}

fn read_toml(source: &str, text: &str) -> Result<Raw, ConfigError> {
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
    Ok(Raw {
        twilio: file.twilio,
        amqp_url: file.amqp.url,
        prefetch: file.amqp.prefetch.map(|p| p.to_string()),
        queue_type: file.amqp.queue_type,
        reconnect_deadline_secs: file.amqp.reconnect_deadline_secs.map(|s| s.to_string()),
        http_addr: file.http.addr,
        ingest_token: file.http.ingest_token,
        log_format: None,
        default_ttl_secs: file.jobs.default_ttl_secs.map(|s| s.to_string()),
        max_attempts: file.retry.max_attempts.map(|s| s.to_string()),
        base_delay_ms: file.retry.base_delay_ms,
        max_delay_ms: file.retry.max_delay_ms,
        in_process_wait_ms: file.retry.in_process_wait_ms,
        shutdown_grace_secs: file.shutdown.grace_secs.map(|s| s.to_string()),
        templates: file
            .templates
            .into_iter()
            .enumerate()
            .map(|(i, t)| (format!("templates[{i}]"), t.kind, t.locale, t.content))
            .collect(),
    })
}

/// Makes a parser's message one line, and removes the quoted fragments of
/// a message about a value (`invalid type: integer `12345`, …`): the value
/// may be a secret. Messages about keys (`unknown field `prefech`, expected
/// one of …`) keep their names, which are the point.
fn without_quoted(message: &str) -> String {
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

/// Applies the environment variables that override the file (contract
/// section 2, plus a few of our own, listed in the README).
fn apply_env(raw: &mut Raw, env: &impl Fn(&str) -> Option<String>) {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    fn set<T>(slot: &mut Option<T>, value: Option<T>) {
        if value.is_some() {
            *slot = value;
        }
    }
    let secret = |name: &str| var(name).map(SecretString::from);
    let t = &mut raw.twilio;
    set(&mut t.account_sid, var("TWILIO_ACCOUNT_SID"));
    set(&mut t.auth_token, secret("TWILIO_AUTH_TOKEN"));
    set(&mut t.api_key, var("TWILIO_API_KEY"));
    set(&mut t.api_secret, secret("TWILIO_API_SECRET"));
    set(&mut t.base_url, var("SMS_DISPATCH_TWILIO_BASE_URL"));
    // One sender; with both set, the contract prefers the Messaging Service.
    if let Some(mg) = var("TWILIO_MESSAGING_SERVICE_SID") {
        t.messaging_service_sid = Some(mg);
        t.from = None;
    } else if let Some(from) = var("TWILIO_FROM") {
        t.from = Some(from);
        t.messaging_service_sid = None;
    }
    set(&mut raw.amqp_url, var("SMS_DISPATCH_AMQP_URL"));
    set(&mut raw.prefetch, var("SMS_DISPATCH_PREFETCH"));
    set(&mut raw.queue_type, var("SMS_DISPATCH_QUEUE_TYPE"));
    set(
        &mut raw.reconnect_deadline_secs,
        var("SMS_DISPATCH_RECONNECT_DEADLINE_SECS"),
    );
    set(&mut raw.http_addr, var("SMS_DISPATCH_HTTP_ADDR"));
    set(&mut raw.ingest_token, secret("SMS_DISPATCH_INGEST_TOKEN"));
    set(&mut raw.log_format, var("SMS_DISPATCH_LOG_FORMAT"));
    set(
        &mut raw.default_ttl_secs,
        var("SMS_DISPATCH_DEFAULT_TTL_SECS"),
    );
    set(&mut raw.max_attempts, var("SMS_DISPATCH_MAX_ATTEMPTS"));
    set(
        &mut raw.shutdown_grace_secs,
        var("SMS_DISPATCH_SHUTDOWN_GRACE_SECS"),
    );
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn build(source: &str, raw: Raw) -> Result<Config, ConfigError> {
    let err = |field: &str, problem: &str, fix: &str| ConfigError::new(source, field, problem, fix);

    let twilio = build_twilio(source, &raw)?;

    let url = raw.amqp_url.unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    if url.parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(err(
            "SMS_DISPATCH_AMQP_URL",
            "is not an AMQP URL",
            "use the form amqp://user:password@host:5672/vhost (vhost `/` is %2f)",
        ));
    }
    let prefetch = match raw.prefetch {
        None => 64,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(err(
                    "SMS_DISPATCH_PREFETCH",
                    "must be a whole number from 1 to 65535",
                    "set the most jobs one worker may hold in flight, e.g. 64",
                ));
            }
        },
    };
    let queue_type = match raw.queue_type.as_deref() {
        None | Some("quorum") => QueueType::Quorum,
        Some("classic") => QueueType::Classic,
        Some(_) => {
            return Err(err(
                "queue_type",
                "must be `quorum` or `classic`",
                "use quorum unless the broker lacks quorum queues",
            ));
        }
    };
    let http_addr = raw
        .http_addr
        .as_deref()
        .unwrap_or(DEFAULT_HTTP_ADDR)
        .parse::<SocketAddr>()
        .map_err(|_| {
            err(
                "SMS_DISPATCH_HTTP_ADDR",
                "is not an address with a port",
                "use the form 0.0.0.0:9464",
            )
        })?;
    let log_format = match raw.log_format.as_deref() {
        None => None,
        Some("json") => Some(LogFormat::Json),
        Some("pretty") => Some(LogFormat::Pretty),
        Some(_) => {
            return Err(err(
                "SMS_DISPATCH_LOG_FORMAT",
                "must be `json` or `pretty`",
                "leave it unset to get JSON when stdout is not a terminal",
            ));
        }
    };
    let number = |value: Option<String>, field: &str, default: u64, range: RangeInclusive<u64>| {
        match value {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(err(
                    field,
                    &format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                    &format!("the default is {default}"),
                )),
            },
        }
    };
    let default_ttl = Duration::from_secs(number(
        raw.default_ttl_secs,
        "default_ttl_secs",
        600,
        1..=MAX_TTL_SECS,
    )?);
    let shutdown_grace = Duration::from_secs(number(
        raw.shutdown_grace_secs,
        "shutdown grace_secs",
        20,
        0..=3600,
    )?);
    let reconnect_deadline = Duration::from_secs(number(
        raw.reconnect_deadline_secs,
        "SMS_DISPATCH_RECONNECT_DEADLINE_SECS",
        300,
        5..=3600,
    )?);
    let defaults = RetryPolicy::default();
    let max_attempts = number(raw.max_attempts, "retry max_attempts", 8, 1..=100)?;
    let millis = |value: Option<u64>, field: &str, default: Duration| match value {
        None => Ok(default),
        Some(ms) if (1..=3_600_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(err(
            field,
            "must be from 1 to 3600000 milliseconds",
            &format!("the default is {}", default.as_millis()),
        )),
    };
    let retry = RetryPolicy {
        max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        base_delay: millis(
            raw.base_delay_ms,
            "retry base_delay_ms",
            defaults.base_delay,
        )?,
        max_delay: millis(raw.max_delay_ms, "retry max_delay_ms", defaults.max_delay)?,
        in_process_wait: millis(
            raw.in_process_wait_ms,
            "retry in_process_wait_ms",
            defaults.in_process_wait,
        )?,
    };
    if retry.max_delay < retry.base_delay {
        return Err(err(
            "retry",
            "max_delay_ms must be at least base_delay_ms",
            "the defaults are 1000 and 300000",
        ));
    }

    let mut entries = Vec::with_capacity(raw.templates.len());
    for (field, kind, locale, content) in raw.templates {
        let Some(kind) = TemplateType::parse(&kind) else {
            return Err(ConfigError::new(
                source,
                format!("{field}.usageType"),
                "is not a Logto template type",
                "use one of SignIn, Register, ForgotPassword, Generic, OrganizationInvitation, UserPermissionValidation, BindNewIdentifier, MfaVerification, BindMfa",
            ));
        };
        entries.push(TemplateEntry {
            kind,
            locale: locale.filter(|l| !l.trim().is_empty()),
            content,
        });
    }
    let templates = Templates::new(entries).map_err(|e| {
        let fix = match e {
            TemplateError::MissingCode { .. } => "add {{code}} where the verification code goes",
            TemplateError::Duplicate { .. } => "keep one template per type and locale",
            TemplateError::Empty { .. } => "write the message text in `content`",
            TemplateError::BadLocale { .. } => "use a BCP 47 tag or leave it out",
        };
        ConfigError::new(source, "templates", e.to_string(), fix)
    })?;

    Ok(Config {
        source: source.to_owned(),
        broker: BrokerSettings {
            url: SecretString::from(url),
            prefetch,
            queue_type,
            reconnect_deadline,
        },
        http_addr,
        default_ttl,
        retry,
        shutdown_grace,
        ingest_token: raw.ingest_token.filter(|t| !t.expose_secret().is_empty()),
        log_format,
        twilio,
        templates,
    })
}

fn build_twilio(source: &str, raw: &Raw) -> Result<Option<TwilioSettings>, ConfigError> {
    let err = |field: &str, problem: &str, fix: &str| ConfigError::new(source, field, problem, fix);
    let nothing = raw.twilio.account_sid.is_none()
        && raw.twilio.auth_token.is_none()
        && raw.twilio.api_key.is_none()
        && raw.twilio.api_secret.is_none();
    if nothing {
        return Ok(None);
    }
    let account_sid = raw.twilio.account_sid.clone().ok_or_else(|| {
        err(
            "accountSID",
            "is missing",
            "set it (or TWILIO_ACCOUNT_SID) to the Account SID from the Twilio console, AC followed by 32 hex digits",
        )
    })?;
    if !is_sid(&account_sid, "AC") {
        return Err(err(
            "accountSID",
            "must be AC followed by 32 hex digits",
            "copy the Account SID from the Twilio console (not an API key SK… or a service MG…)",
        ));
    }
    let auth = match (
        &raw.twilio.api_key,
        &raw.twilio.api_secret,
        &raw.twilio.auth_token,
    ) {
        (Some(key), Some(secret), _) => {
            if !is_sid(key, "SK") {
                return Err(err(
                    "TWILIO_API_KEY",
                    "must be SK followed by 32 hex digits",
                    "create an API key in the Twilio console and use its SID",
                ));
            }
            TwilioAuth::ApiKey {
                sid: key.clone(),
                secret: secret.clone(),
            }
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(err(
                "TWILIO_API_KEY",
                "an API key needs both its SID and its secret",
                "set both TWILIO_API_KEY and TWILIO_API_SECRET, or neither",
            ));
        }
        (None, None, Some(token)) => TwilioAuth::AuthToken(token.clone()),
        (None, None, None) => {
            return Err(err(
                "authToken",
                "is missing",
                "set it (or TWILIO_AUTH_TOKEN) to the account's auth token, or set TWILIO_API_KEY and TWILIO_API_SECRET",
            ));
        }
    };
    let sender = match (&raw.twilio.messaging_service_sid, &raw.twilio.from) {
        (Some(mg), _) => {
            if !is_sid(mg, "MG") {
                return Err(err(
                    "fromMessagingServiceSID",
                    "must be MG followed by 32 hex digits",
                    "copy the Messaging Service SID from the Twilio console, or give a sender number as TWILIO_FROM",
                ));
            }
            Sender::MessagingService(mg.clone())
        }
        (None, Some(from)) => {
            let alphanumeric_id = (1..=11).contains(&from.len())
                && from.bytes().any(|b| b.is_ascii_alphabetic())
                && from.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ');
            if alphanumeric_id {
                Sender::From(from.clone())
            } else {
                let number = PhoneNumber::parse(from).map_err(|_| {
                    err(
                        "fromMessagingServiceSID",
                        "is neither a Messaging Service SID (MG…) nor an E.164 number",
                        "use the MG… SID of a Messaging Service, or a sender number such as +15005550006",
                    )
                })?;
                Sender::From(number.as_e164().to_owned())
            }
        }
        (None, None) => {
            return Err(err(
                "fromMessagingServiceSID",
                "is missing",
                "set it (or TWILIO_MESSAGING_SERVICE_SID, or TWILIO_FROM for a single number)",
            ));
        }
    };
    let timeout = |value: Option<u64>, field: &str, default: u64| match value {
        None => Ok(Duration::from_millis(default)),
        Some(ms) if (100..=120_000).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(err(
            field,
            "must be from 100 to 120000 milliseconds",
            &format!("the default is {default}"),
        )),
    };
    let base_url = raw
        .twilio
        .base_url
        .clone()
        .unwrap_or_else(|| DEFAULT_TWILIO_BASE_URL.to_owned())
        .trim_end_matches('/')
        .to_owned();
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(err(
            "SMS_DISPATCH_TWILIO_BASE_URL",
            "must start with https:// or http://",
            "leave it unset to use https://api.twilio.com",
        ));
    }
    Ok(Some(TwilioSettings {
        account_sid,
        auth,
        sender,
        base_url,
        connect_timeout: timeout(raw.twilio.connect_timeout_ms, "connect_timeout_ms", 3_000)?,
        request_timeout: timeout(raw.twilio.request_timeout_ms, "request_timeout_ms", 10_000)?,
        risk_check: raw.twilio.risk_check,
    }))
}

/// `amqp://user:secret@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const MG: &str = "MGbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const SK: &str = "SKcccccccccccccccccccccccccccccccc";
    const TOKEN: &str = "tok-0123456789abcdef0123456789abcd";

    fn file(ext: &str, text: &str) -> tempfile_like::TempFile {
        tempfile_like::TempFile::new(ext, text)
    }

    /// A file in the system temp dir that is removed on drop (no extra crate).
    mod tempfile_like {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(ext: &str, text: &str) -> TempFile {
                let path = std::env::temp_dir().join(format!(
                    "sms-dispatch-config-test-{}.{ext}",
                    uuid::Uuid::new_v4()
                ));
                let mut f = std::fs::File::create(&path).unwrap();
                super::Write::write_all(&mut f, text.as_bytes()).unwrap();
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn load(path: Option<&Path>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(path, |k| env.get(k).cloned())
    }

    fn logto_json() -> String {
        format!(
            r#"{{"accountSID":"{SID}","authToken":"{TOKEN}","fromMessagingServiceSID":"{MG}",
               "templates":[{{"usageType":"SignIn","content":"Your code is {{{{code}}}}"}},
                            {{"usageType":"Generic","content":"コード {{{{ code }}}}","locale":"ja"}}]}}"#
        )
    }

    #[test]
    fn reads_logto_connector_json_verbatim() {
        let f = file("json", &logto_json());
        let config = load(Some(&f.0), &[]).unwrap();
        let twilio = config.twilio_required().unwrap();
        assert_eq!(twilio.account_sid, SID);
        assert_eq!(twilio.sender, Sender::MessagingService(MG.to_owned()));
        assert!(matches!(&twilio.auth, TwilioAuth::AuthToken(t) if t.expose_secret() == TOKEN));
        assert_eq!(twilio.base_url, DEFAULT_TWILIO_BASE_URL);
        assert_eq!(config.templates.all().len(), 2);
        assert_eq!(config.broker.prefetch, 64);
        assert_eq!(config.broker.queue_type, QueueType::Quorum);
        assert_eq!(config.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(config.default_ttl, Duration::from_secs(600));
    }

    #[test]
    fn a_phone_number_in_logtos_sender_field_becomes_from() {
        let json = logto_json().replace(MG, "15005550006");
        let f = file("json", &json);
        let config = load(Some(&f.0), &[]).unwrap();
        assert_eq!(
            config.twilio.unwrap().sender,
            Sender::From("+15005550006".to_owned())
        );
    }

    #[test]
    fn reads_the_toml_format() {
        let toml = format!(
            r#"
[twilio]
account_sid = "{SID}"
api_key = "{SK}"
api_secret = "s3cret"
from = "+15005550006"
request_timeout_ms = 5000

[amqp]
prefetch = 100
queue_type = "classic"

[retry]
max_attempts = 3

[[templates]]
type = "Register"
locale = "en-US"
content = "Welcome! {{{{code}}}}"
"#
        );
        let f = file("toml", &toml);
        let config = load(Some(&f.0), &[]).unwrap();
        let twilio = config.twilio.as_ref().unwrap();
        assert!(matches!(&twilio.auth, TwilioAuth::ApiKey { sid, .. } if sid == SK));
        assert_eq!(twilio.sender, Sender::From("+15005550006".to_owned()));
        assert_eq!(twilio.request_timeout, Duration::from_secs(5));
        assert_eq!(config.broker.prefetch, 100);
        assert_eq!(config.broker.queue_type, QueueType::Classic);
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.templates.all()[0].locale(), Some("en-US"));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let f = file("json", &logto_json());
        let config = load(
            Some(&f.0),
            &[
                ("TWILIO_API_KEY", SK),
                ("TWILIO_API_SECRET", "other"),
                ("TWILIO_FROM", "+15005550006"),
                ("SMS_DISPATCH_PREFETCH", "7"),
                ("SMS_DISPATCH_AMQP_URL", "amqp://u:p@example:5672/v"),
                ("SMS_DISPATCH_HTTP_ADDR", "127.0.0.1:0"),
                ("SMS_DISPATCH_TWILIO_BASE_URL", "http://127.0.0.1:1234/"),
                ("SMS_DISPATCH_LOG_FORMAT", "json"),
                ("SMS_DISPATCH_INGEST_TOKEN", "ingest"),
            ],
        )
        .unwrap();
        let twilio = config.twilio.as_ref().unwrap();
        assert!(
            matches!(&twilio.auth, TwilioAuth::ApiKey { .. }),
            "API key wins"
        );
        assert_eq!(twilio.sender, Sender::From("+15005550006".to_owned()));
        assert_eq!(twilio.base_url, "http://127.0.0.1:1234");
        assert_eq!(config.broker.prefetch, 7);
        assert_eq!(config.broker.url_for_logs(), "amqp://u:***@example:5672/v");
        assert_eq!(config.http_addr.port(), 0);
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert!(config.ingest_token.is_some());
    }

    #[test]
    fn environment_alone_is_enough_for_send_and_dlq() {
        let config = load(None, &[]).unwrap();
        assert!(config.twilio.is_none());
        assert!(config.templates_required().is_err());
        assert!(config.twilio_required().is_err());
        assert_eq!(
            config.broker.url_for_logs(),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn every_error_is_one_line_naming_file_field_and_fix() {
        let bad_sid = logto_json().replace(SID, "AC123");
        let no_code = logto_json().replace("Your code is {{code}}", "Hello");
        let bad_type = logto_json().replace("\"SignIn\"", "\"Login\"");
        type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (bad_sid, "json", vec![], "accountSID"),
            (no_code, "json", vec![], "templates"),
            (bad_type, "json", vec![], "templates[0].usageType"),
            ("{ not json".to_owned(), "json", vec![], "line 1"),
            ("[amqp]\nprefech = 3\n".to_owned(), "toml", vec![], "line 2"),
            (
                logto_json(),
                "json",
                vec![("SMS_DISPATCH_PREFETCH", "0")],
                "SMS_DISPATCH_PREFETCH",
            ),
            (
                logto_json(),
                "json",
                vec![("SMS_DISPATCH_AMQP_URL", "nope")],
                "SMS_DISPATCH_AMQP_URL",
            ),
            (
                logto_json(),
                "json",
                vec![("TWILIO_API_KEY", SK)],
                "TWILIO_API_KEY",
            ),
            (
                logto_json().replace(MG, "MG1"),
                "json",
                vec![],
                "fromMessagingServiceSID",
            ),
        ];
        for (text, ext, env, field) in cases {
            let f = file(ext, &text);
            let e = load(Some(&f.0), &env).unwrap_err();
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with(&f.0.display().to_string()), "{line}");
            assert!(e.field.starts_with(field), "{field} expected in {line}");
            assert!(!e.fix.is_empty());
        }
        let missing = load(Some(Path::new("/nonexistent/connector.json")), &[]).unwrap_err();
        assert_eq!(missing.field, "file");
    }

    #[test]
    fn errors_never_print_secrets() {
        let toml = "[twilio]\nauth_token = 12345678901234\n";
        let f = file("toml", toml);
        let line = load(Some(&f.0), &[]).unwrap_err().to_string();
        assert!(!line.contains("12345678901234"), "{line}");
        let json = format!(r#"{{"accountSID":"{SID}","authToken":98765432109876}}"#);
        let f = file("json", &json);
        let line = load(Some(&f.0), &[]).unwrap_err().to_string();
        assert!(!line.contains("98765432109876"), "{line}");
        let f = file("json", &logto_json());
        let config = load(Some(&f.0), &[]).unwrap();
        assert!(!format!("{config:?}").contains(TOKEN));
    }
}

//! Configuration: the project's TOML file or Logto's Twilio connector JSON,
//! then the environment on top, assembled into the settings each part of the
//! worker takes.
//!
//! Everything is checked here, once, at start-up: a [`Config`] that exists is
//! usable. A problem is a [`ConfigError`], printed as one line that names the
//! source, the key the value came from and the fix, after which the binary
//! exits with code 2. Secrets (auth token, API secret, ingest token, the
//! broker password) are `secrecy` secrets and never printed, not even in an
//! error. The settings types live beside the code that uses them
//! ([`crate::twilio::TwilioSettings`], [`crate::amqp::BrokerSettings`],
//! [`crate::retry::RetryPolicy`]); this module only fills them in.

mod env;
mod error;
mod logto;
mod raw;
mod toml;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub(crate) use error::ConfigError;
use raw::{Raw, Sourced};

use crate::amqp::{BrokerSettings, DEFAULT_AMQP_URL, QueueType};
use crate::fleet::RedisSettings;
use crate::job::TemplateType;
use crate::limits::{CountryRule, LimitRules, Window};
use crate::observe::telemetry::LogFormat;
use crate::phone::PhoneNumber;
use crate::retry::RetryPolicy;
use crate::templates::{TemplateEntry, TemplateError, Templates};
use crate::twilio::{DEFAULT_TWILIO_BASE_URL, Sender, TwilioAuth, TwilioSettings};
use crate::worker::WorkerSettings;

/// The Redis key prefix when nothing else is configured.
pub(crate) const DEFAULT_REDIS_PREFIX: &str = "sms-dispatch:";

/// The HTTP listener's address when nothing else is configured.
pub(crate) const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9464";
/// The longest life a job may be given (a day): a code older than that is
/// useless.
pub(crate) const MAX_TTL_SECS: u64 = 86_400;

/// The whole configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Where the file part came from (a path, or `environment`).
    pub(crate) source: String,
    pub(crate) broker: BrokerSettings,
    pub(crate) http_addr: SocketAddr,
    /// The life of a job without `expires_at`, from its publish time.
    pub(crate) default_ttl: Duration,
    pub(crate) retry: RetryPolicy,
    /// How long in-flight jobs may take to finish on SIGTERM.
    pub(crate) shutdown_grace: Duration,
    /// Whether outcome events are published (`SMS_DISPATCH_EVENTS`).
    pub(crate) events: bool,
    /// Enables `POST /v1/send` when set.
    pub(crate) ingest_token: Option<SecretString>,
    /// `None`: decided by whether the log stream is a terminal.
    pub(crate) log_format: Option<LogFormat>,
    /// The fleet's shared state, when `SMS_DISPATCH_REDIS_URL` is set.
    pub(crate) redis: Option<RedisSettings>,
    /// The abuse limits.
    pub(crate) limits: LimitRules,
    /// `None` when no Twilio credentials are configured at all.
    pub(crate) twilio: Option<TwilioSettings>,
    pub(crate) templates: Templates,
}

impl Config {
    /// Reads the file (if any), applies the environment (`env` looks a
    /// variable up; pass `|k| std::env::var(k).ok()`), and validates.
    /// Twilio settings and templates are optional here; the commands that
    /// need them ask with [`Config::twilio_required`] and
    /// [`Config::templates_required`].
    pub(crate) fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (source, mut raw) = match path {
            Some(path) => (path.display().to_string(), read_file(path)?),
            None => ("environment".to_owned(), Raw::default()),
        };
        env::apply(&mut raw, &env);
        build(&source, raw)
    }

    /// The Twilio settings, or the error that says how to provide them.
    pub(crate) fn twilio_required(&self) -> Result<&TwilioSettings, ConfigError> {
        self.twilio.as_ref().ok_or_else(|| {
            ConfigError::new(
                &self.source,
                "accountSID",
                "no Twilio credentials are configured",
                "set accountSID/authToken in the file or TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET); `run --dry-run` needs none",
            )
        })
    }

    /// Whether Twilio's status callbacks are served: a public URL and the
    /// credentials whose auth token signs them.
    pub(crate) fn callbacks_on(&self) -> bool {
        self.twilio
            .as_ref()
            .is_some_and(|twilio| twilio.status_callback.is_some())
    }

    /// The templates, or the error that says how to provide them.
    pub(crate) fn templates_required(&self) -> Result<&Templates, ConfigError> {
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

    /// What the worker takes: the broker, the templates, the retry policy
    /// and the clocks. Fails when no template is configured.
    pub(crate) fn worker_settings(&self) -> Result<WorkerSettings, ConfigError> {
        Ok(WorkerSettings {
            broker: self.broker.clone(),
            templates: self.templates_required()?.clone(),
            retry: self.retry.clone(),
            default_ttl: self.default_ttl,
            shutdown_grace: self.shutdown_grace,
            events: self.events,
        })
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
        logto::read(&source, &text)
    } else {
        toml::read(&source, &text)
    }
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a whole number against its range; the error names its key.
fn number(
    source: &str,
    value: Option<Sourced<String>>,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(Sourced { value, key }) = value else {
        return Ok(default);
    };
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            source,
            key,
            format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
            format!("the default is {default}"),
        )),
    }
}

/// A value's key, or `fallback` when the value was not given (the error is
/// then about a missing or default value).
fn key_of<T>(value: &Option<Sourced<T>>, fallback: &'static str) -> &'static str {
    value.as_ref().map_or(fallback, |v| v.key)
}

fn build(source: &str, raw: Raw) -> Result<Config, ConfigError> {
    let err = |field: &str, problem: &str, fix: &str| ConfigError::new(source, field, problem, fix);

    let twilio = build_twilio(source, &raw)?;
    let limits = build_limits(source, &raw)?;

    let url_key = key_of(&raw.amqp_url, "SMS_DISPATCH_AMQP_URL");
    let urls_text = raw
        .amqp_url
        .map_or_else(|| DEFAULT_AMQP_URL.to_owned(), |u| u.value);
    // One URL, or one per cluster node, comma-separated.
    let urls: Vec<String> = urls_text
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty()
        || urls
            .iter()
            .any(|u| u.parse::<lapin::uri::AMQPUri>().is_err())
    {
        return Err(err(
            url_key,
            "is not an AMQP URL (or a comma-separated list of them, one per cluster node)",
            "use the form amqp://user:password@host:5672/vhost (vhost `/` is %2f)",
        ));
    }
    let prefetch_key = key_of(&raw.prefetch, "SMS_DISPATCH_PREFETCH");
    let prefetch =
        number(source, raw.prefetch, 64, 1..=u64::from(u16::MAX)).map_err(|e| ConfigError {
            fix: "set the most jobs one worker may hold in flight, e.g. 64".to_owned(),
            ..e
        })?;
    let prefetch = u16::try_from(prefetch).map_err(|_| {
        err(
            prefetch_key,
            "must be a whole number from 1 to 65535",
            "e.g. 64",
        )
    })?;
    let queue_type = match raw.queue_type.as_ref().map(|q| q.value.as_str()) {
        None | Some("quorum") => QueueType::Quorum,
        Some("classic") => QueueType::Classic,
        Some(_) => {
            return Err(err(
                key_of(&raw.queue_type, "SMS_DISPATCH_QUEUE_TYPE"),
                "must be `quorum` or `classic`",
                "use quorum unless the broker lacks quorum queues",
            ));
        }
    };
    let http_addr = raw
        .http_addr
        .as_ref()
        .map_or(DEFAULT_HTTP_ADDR, |a| a.value.as_str())
        .parse::<SocketAddr>()
        .map_err(|_| {
            err(
                key_of(&raw.http_addr, "SMS_DISPATCH_HTTP_ADDR"),
                "is not an address with a port",
                "use the form 0.0.0.0:9464",
            )
        })?;
    let log_format = match raw.log_format.as_ref().map(|f| f.value.as_str()) {
        None => None,
        Some("json") => Some(LogFormat::Json),
        Some("pretty") => Some(LogFormat::Pretty),
        Some(_) => {
            return Err(err(
                key_of(&raw.log_format, "SMS_DISPATCH_LOG_FORMAT"),
                "must be `json` or `pretty`",
                "leave it unset to get JSON when the log stream is not a terminal",
            ));
        }
    };
    let events = match raw.events.as_ref().map(|e| e.value.as_str()) {
        None | Some("on") => true,
        Some("off") => false,
        Some(_) => {
            return Err(err(
                key_of(&raw.events, "SMS_DISPATCH_EVENTS"),
                "must be `on` or `off`",
                "outcome events (exchange sms.events) are on unless set to `off`",
            ));
        }
    };
    let default_ttl =
        Duration::from_secs(number(source, raw.default_ttl_secs, 600, 1..=MAX_TTL_SECS)?);
    let shutdown_grace =
        Duration::from_secs(number(source, raw.shutdown_grace_secs, 20, 0..=3600)?);
    let reconnect_deadline =
        Duration::from_secs(number(source, raw.reconnect_deadline_secs, 300, 5..=3600)?);
    let defaults = RetryPolicy::default();
    let max_attempts = number(source, raw.max_attempts, 8, 1..=100)?;
    let millis = |value: Option<Sourced<String>>, default: Duration| {
        number(
            source,
            value,
            u64::try_from(default.as_millis()).unwrap_or(u64::MAX),
            1..=3_600_000,
        )
        .map(Duration::from_millis)
    };
    let retry = RetryPolicy {
        max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        base_delay: millis(raw.base_delay_ms, defaults.base_delay)?,
        max_delay: millis(raw.max_delay_ms, defaults.max_delay)?,
        in_process_wait: millis(raw.in_process_wait_ms, defaults.in_process_wait)?,
    };
    if retry.max_delay < retry.base_delay {
        return Err(err(
            "retry",
            "max_delay_ms must be at least base_delay_ms",
            "the defaults are 1000 and 300000",
        ));
    }

    let redis = match raw.redis_url {
        None => None,
        Some(url) => {
            let text = url.value.expose_secret();
            if !(text.starts_with("redis://")
                || text.starts_with("rediss://")
                || text.starts_with("redis+unix://"))
                || redis::Client::open(text).is_err()
            {
                return Err(err(
                    url.key,
                    "is not a Redis URL",
                    "use the form redis://[:password@]host:6379/0, or leave it unset to protect against duplicates per worker only",
                ));
            }
            let prefix = raw
                .redis_prefix
                .map_or_else(|| DEFAULT_REDIS_PREFIX.to_owned(), |p| p.value);
            Some(RedisSettings {
                url: url.value,
                prefix,
            })
        }
    };

    let mut entries = Vec::with_capacity(raw.templates.len());
    for t in raw.templates {
        let Some(kind) = TemplateType::parse(&t.kind) else {
            return Err(ConfigError::new(
                source,
                format!("{}.usageType", t.field),
                "is not a Logto template type",
                "use one of SignIn, Register, ForgotPassword, Generic, OrganizationInvitation, UserPermissionValidation, BindNewIdentifier, MfaVerification, BindMfa",
            ));
        };
        entries.push(TemplateEntry {
            kind,
            locale: t.locale.filter(|l| !l.trim().is_empty()),
            content: t.content,
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
        broker: BrokerSettings::new(
            urls.into_iter().map(SecretString::from).collect(),
            prefetch,
            queue_type,
            reconnect_deadline,
        ),
        http_addr,
        default_ttl,
        retry,
        shutdown_grace,
        events,
        ingest_token: raw
            .ingest_token
            .map(|t| t.value)
            .filter(|t| !t.expose_secret().is_empty()),
        log_format,
        redis,
        limits,
        twilio,
        templates,
    })
}

/// The abuse limits: the defaults, with what the file and the environment
/// change. `off` turns a list of windows (or the budget) off.
fn build_limits(source: &str, raw: &Raw) -> Result<LimitRules, ConfigError> {
    let mut rules = LimitRules::default();
    let windows = |value: &Option<Sourced<String>>| -> Result<Option<Vec<Window>>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        if value.value.trim() == "off" {
            return Ok(Some(Vec::new()));
        }
        value
            .value
            .split(',')
            .map(|w| {
                Window::parse(w).ok_or_else(|| {
                    ConfigError::new(
                        source,
                        value.key,
                        format!("`{}` is not a limit", w.trim()),
                        "write each limit as COUNT/PERIOD (5/10m, 10/1d, 100/1h), comma-separated, or `off`",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    if let Some(w) = windows(&raw.limit_per_number)? {
        rules.per_number = w;
    }
    if let Some(w) = windows(&raw.limit_per_ip)? {
        rules.per_ip = w;
    }
    let regions =
        |value: &Sourced<String>| -> Result<std::collections::BTreeSet<String>, ConfigError> {
            value
                .value
                .split(',')
                .map(|r| r.trim().to_ascii_uppercase())
                .filter(|r| !r.is_empty() && r != "OFF")
                .map(|r| {
                    if r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()) {
                        Ok(r)
                    } else {
                        Err(ConfigError::new(
                            source,
                            value.key,
                            format!("`{r}` is not an ISO 3166 region code"),
                            "use two-letter codes such as JP, US, GB, comma-separated",
                        ))
                    }
                })
                .collect()
        };
    rules.countries = match (&raw.countries_allow, &raw.countries_deny) {
        (Some(_), Some(deny)) => {
            return Err(ConfigError::new(
                source,
                deny.key,
                "an allow list and a deny list cannot both be set",
                "keep one: the allow list (only these countries) or the deny list (all but these)",
            ));
        }
        (Some(allow), None) => {
            let set = regions(allow)?;
            if set.is_empty() {
                CountryRule::Any
            } else {
                CountryRule::Allow(set)
            }
        }
        (None, Some(deny)) => {
            let set = regions(deny)?;
            if set.is_empty() {
                CountryRule::Any
            } else {
                CountryRule::Deny(set)
            }
        }
        (None, None) => CountryRule::Any,
    };
    if let Some(budget) = &raw.country_budget_per_hour {
        rules.country_budget_per_hour = if budget.value.trim() == "off" {
            None
        } else {
            Some(number(
                source,
                Some(budget.clone()),
                0,
                1..=u64::from(u32::MAX),
            )?)
        };
    }
    Ok(rules)
}

fn build_twilio(source: &str, raw: &Raw) -> Result<Option<TwilioSettings>, ConfigError> {
    let err = |field: &str, problem: &str, fix: &str| ConfigError::new(source, field, problem, fix);
    let nothing = raw.account_sid.is_none()
        && raw.auth_token.is_none()
        && raw.api_key.is_none()
        && raw.api_secret.is_none();
    if nothing {
        return Ok(None);
    }
    let Some(account_sid) = &raw.account_sid else {
        return Err(err(
            "accountSID",
            "is missing",
            "set it (or TWILIO_ACCOUNT_SID) to the Account SID from the Twilio console, AC followed by 32 hex digits",
        ));
    };
    if !is_sid(&account_sid.value, "AC") {
        return Err(err(
            account_sid.key,
            "must be AC followed by 32 hex digits",
            "copy the Account SID from the Twilio console (not an API key SK… or a service MG…)",
        ));
    }
    let auth = match (&raw.api_key, &raw.api_secret, &raw.auth_token) {
        (Some(key), Some(secret), _) => {
            if !is_sid(&key.value, "SK") {
                return Err(err(
                    key.key,
                    "must be SK followed by 32 hex digits",
                    "create an API key in the Twilio console and use its SID",
                ));
            }
            TwilioAuth::ApiKey {
                sid: key.value.clone(),
                secret: secret.value.clone(),
            }
        }
        (Some(one), None, _) => {
            return Err(err(
                one.key,
                "an API key needs both its SID and its secret",
                "set both TWILIO_API_KEY and TWILIO_API_SECRET, or neither",
            ));
        }
        (None, Some(one), _) => {
            return Err(err(
                one.key,
                "an API key needs both its SID and its secret",
                "set both TWILIO_API_KEY and TWILIO_API_SECRET, or neither",
            ));
        }
        (None, None, Some(token)) => TwilioAuth::AuthToken(token.value.clone()),
        (None, None, None) => {
            return Err(err(
                "authToken",
                "is missing",
                "set it (or TWILIO_AUTH_TOKEN) to the account's auth token, or set TWILIO_API_KEY and TWILIO_API_SECRET",
            ));
        }
    };
    let sender = match (&raw.messaging_service_sid, &raw.from) {
        (Some(mg), _) => {
            if !is_sid(&mg.value, "MG") {
                return Err(err(
                    mg.key,
                    "must be MG followed by 32 hex digits",
                    "copy the Messaging Service SID from the Twilio console, or give a sender number as TWILIO_FROM",
                ));
            }
            Sender::MessagingService(mg.value.clone())
        }
        (None, Some(from)) => {
            let value = &from.value;
            let alphanumeric_id = (1..=11).contains(&value.len())
                && value.bytes().any(|b| b.is_ascii_alphabetic())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b' ');
            if alphanumeric_id {
                Sender::From(value.clone())
            } else {
                let number = PhoneNumber::parse(value).map_err(|_| {
                    err(
                        from.key,
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
    let timeout = |value: &Option<Sourced<String>>, default: u64| {
        number(source, value.clone(), default, 100..=120_000).map(Duration::from_millis)
    };
    let base_url = raw
        .twilio_base_url
        .as_ref()
        .map_or(DEFAULT_TWILIO_BASE_URL, |u| u.value.as_str())
        .trim_end_matches('/')
        .to_owned();
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(err(
            key_of(&raw.twilio_base_url, "SMS_DISPATCH_TWILIO_BASE_URL"),
            "must start with https:// or http://",
            "leave it unset to use https://api.twilio.com",
        ));
    }
    // Status callbacks: Twilio signs them with the auth token, whatever the
    // worker sends with, so a public URL needs it.
    let status_callback = match &raw.public_url {
        None => None,
        Some(public) => {
            let base = public.value.trim_end_matches('/');
            if !(base.starts_with("https://") || base.starts_with("http://")) || base.contains('?')
            {
                return Err(err(
                    public.key,
                    "is not an http(s) URL without a query",
                    "give the base URL at which Twilio reaches this worker's HTTP listener, e.g. https://sms.example.com",
                ));
            }
            if raw.auth_token.is_none() {
                return Err(err(
                    "TWILIO_AUTH_TOKEN",
                    "is needed for status callbacks",
                    "Twilio signs callbacks with the account's auth token even when sending with an API key: set it too",
                ));
            }
            Some(format!("{base}/v1/twilio/status"))
        }
    };
    let callback_tokens = [&raw.auth_token, &raw.auth_token_previous]
        .into_iter()
        .flatten()
        .map(|t| t.value.clone())
        .collect();
    Ok(Some(TwilioSettings {
        status_callback,
        callback_tokens,
        account_sid: account_sid.value.clone(),
        auth,
        sender,
        base_url,
        connect_timeout: timeout(&raw.connect_timeout_ms, 3_000)?,
        request_timeout: timeout(&raw.request_timeout_ms, 10_000)?,
        risk_check: raw.risk_check,
    }))
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
        pub(super) struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub(super) fn new(ext: &str, text: &str) -> TempFile {
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
events = false
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
        assert!(!config.events, "amqp.events = false");
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
        assert!(config.events, "outcome events are on unless turned off");
        let off = load(Some(&f.0), &[("SMS_DISPATCH_EVENTS", "off")]).unwrap();
        assert!(!off.events);
    }

    #[test]
    fn the_amqp_url_may_list_every_cluster_node() {
        let config = load(
            None,
            &[(
                "SMS_DISPATCH_AMQP_URL",
                "amqp://u:p@node1:5672/v, amqp://u:p@node2:5672/v,amqp://u:p@node3:5672/v",
            )],
        )
        .unwrap();
        assert_eq!(
            config.broker.url_for_logs(),
            "amqp://u:***@node1:5672/v,amqp://u:***@node2:5672/v,amqp://u:***@node3:5672/v"
        );
        let bad = load(
            None,
            &[("SMS_DISPATCH_AMQP_URL", "amqp://node1:5672/v,nope")],
        )
        .unwrap_err();
        assert_eq!(bad.field, "SMS_DISPATCH_AMQP_URL");
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
            // A value from the file is named by its TOML key, not by the
            // environment variable that could also have set it.
            (
                "[amqp]\nprefetch = 0\n".to_owned(),
                "toml",
                vec![],
                "amqp.prefetch",
            ),
            (
                "[amqp]\nprefetch = 70000\n".to_owned(),
                "toml",
                vec![],
                "amqp.prefetch",
            ),
            (
                "[retry]\nmax_attempts = 0\n".to_owned(),
                "toml",
                vec![],
                "retry.max_attempts",
            ),
            (
                "[shutdown]\ngrace_secs = -1\n".to_owned(),
                "toml",
                vec![],
                "shutdown.grace_secs",
            ),
            (
                "[amqp]\nurl = \"nope\"\n".to_owned(),
                "toml",
                vec![],
                "amqp.url",
            ),
            (
                logto_json(),
                "json",
                vec![("SMS_DISPATCH_EVENTS", "no")],
                "SMS_DISPATCH_EVENTS",
            ),
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
            assert!(line.contains(&format!(": {}: ", e.field)), "{line}");
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

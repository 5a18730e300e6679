//! The job: one "send this code to this phone" request, decoded once.
//!
//! [`Job::decode`] is the only way to build a [`Job`]; it enforces every rule
//! of the contract's message shape (section 1), so the rest of the worker never
//! re-checks a field. The same decoder serves AMQP deliveries and the HTTP
//! ingest route. Decoding errors say which field broke which rule but never
//! repeat the value: their text becomes the dead letter's `x-sms-error`, which
//! operators read and which must carry no personal data.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::phone::{PhoneError, PhoneNumber};

/// The largest body accepted, in bytes (contract section 1).
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024;

/// Logto's template types (`TemplateType`); a job names one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TemplateType {
    SignIn,
    Register,
    ForgotPassword,
    Generic,
    OrganizationInvitation,
    UserPermissionValidation,
    BindNewIdentifier,
    MfaVerification,
    BindMfa,
}

impl TemplateType {
    /// Every type, in Logto's order.
    pub(crate) const ALL: [TemplateType; 9] = [
        TemplateType::SignIn,
        TemplateType::Register,
        TemplateType::ForgotPassword,
        TemplateType::Generic,
        TemplateType::OrganizationInvitation,
        TemplateType::UserPermissionValidation,
        TemplateType::BindNewIdentifier,
        TemplateType::MfaVerification,
        TemplateType::BindMfa,
    ];

    /// The types a complete Logto sign-in experience sends; `check-config`
    /// warns when one has no template.
    pub(crate) const FULL_FLOW: [TemplateType; 4] = [
        TemplateType::Register,
        TemplateType::SignIn,
        TemplateType::ForgotPassword,
        TemplateType::Generic,
    ];

    /// Logto's spelling, used in jobs, configs, logs and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TemplateType::SignIn => "SignIn",
            TemplateType::Register => "Register",
            TemplateType::ForgotPassword => "ForgotPassword",
            TemplateType::Generic => "Generic",
            TemplateType::OrganizationInvitation => "OrganizationInvitation",
            TemplateType::UserPermissionValidation => "UserPermissionValidation",
            TemplateType::BindNewIdentifier => "BindNewIdentifier",
            TemplateType::MfaVerification => "MfaVerification",
            TemplateType::BindMfa => "BindMfa",
        }
    }

    /// Parses Logto's spelling exactly (case matters, as in Logto).
    pub(crate) fn parse(s: &str) -> Option<TemplateType> {
        TemplateType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether messages of this type carry a verification code: their
    /// templates must contain `{{code}}` and their jobs a `payload.code`.
    /// Only an organization invitation carries a link instead.
    pub(crate) fn carries_code(self) -> bool {
        self != TemplateType::OrganizationInvitation
    }
}

impl fmt::Display for TemplateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's idempotency key: 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct JobId(String);

impl JobId {
    /// Parses an id given by a producer.
    pub(crate) fn parse(raw: &str) -> Option<JobId> {
        let ok = (1..=128).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        ok.then(|| JobId(raw.to_owned()))
    }

    /// A fresh random id, for producers (`send`, the HTTP ingest) that were
    /// given none.
    pub(crate) fn generate() -> JobId {
        JobId(uuid::Uuid::new_v4().to_string())
    }

    /// The id a worker assigns to a job that came with neither `id` nor an
    /// AMQP `message_id`: derived from the body and the publish time, so a
    /// redelivery of the same message gets the same id and is recognised as
    /// already sent.
    pub(crate) fn derived(body: &[u8], timestamp: Option<u64>) -> JobId {
        // FNV-1a, 64 bits, twice with different offsets: stable across Rust
        // versions and processes, unlike std's hasher.
        fn fnv(offset: u64, parts: &[&[u8]]) -> u64 {
            let mut hash = offset;
            for part in parts {
                for &b in *part {
                    hash ^= u64::from(b);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            hash
        }
        let ts = timestamp.unwrap_or(0).to_be_bytes();
        let parts: [&[u8]; 2] = [body, &ts];
        JobId(format!(
            "h-{:016x}{:016x}",
            fnv(0xcbf2_9ce4_8422_2325, &parts),
            fnv(0x6c62_272e_07bb_0142, &parts)
        ))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The template variables. `Debug` shows only the keys: values include the
/// verification code.
#[derive(Clone, PartialEq)]
pub(crate) struct Payload(Map<String, Value>);

impl Payload {
    /// Builds a payload from a JSON object (the HTTP ingest and `send` use this).
    pub(crate) fn new(map: Map<String, Value>) -> Payload {
        Payload(map)
    }

    /// The variables, for rendering.
    pub(crate) fn vars(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The locale to choose a template by: `locale`, else the first tag of
    /// `uiLocales` (Logto's raw, space-separated preference list).
    pub(crate) fn locale(&self) -> Option<&str> {
        let text = |key: &str| self.0.get(key).and_then(Value::as_str);
        text("locale")
            .or_else(|| text("uiLocales").and_then(|l| l.split_whitespace().next()))
            .filter(|l| !l.is_empty())
    }

    /// The verification code's text, when there is one.
    pub(crate) fn code(&self) -> Option<String> {
        match self.0.get("code")? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A decoded job. Fields are public to read; the only constructor is
/// [`Job::decode`].
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: JobId,
    pub to: PhoneNumber,
    pub kind: TemplateType,
    pub payload: Payload,
    /// When the code goes stale: after this instant it is never sent.
    pub expires_at: SystemTime,
    /// Whether `expires_at` came from the job itself (rather than from the
    /// default TTL).
    pub expiry_stated: bool,
    /// Whether the id tells this message apart, so that a redelivery can be
    /// recognised as one. Not so for an id derived from a body without a
    /// publish time: two deliberate sends of the same code would share it.
    pub id_is_distinct: bool,
    /// The end user's IP (kept for abuse limits; never logged, never a label).
    ip: Option<String>,
}

/// What the transport knows about a job besides its body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Envelope<'a> {
    /// AMQP `message_id`, the default job id.
    pub message_id: Option<&'a str>,
    /// AMQP `timestamp` (seconds since the epoch): the publish time.
    pub published_at: Option<SystemTime>,
    /// When a worker first received this job (travels in a header across
    /// retries); the publish time when the producer set none.
    pub first_seen: Option<SystemTime>,
}

/// Why a body is not a valid job. The text names the field and the rule,
/// never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidJob {
    #[error("body is {0} bytes; the limit is 8192")]
    TooLarge(usize),
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body must be a JSON object")]
    NotObject,
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`to` {0}")]
    BadNumber(PhoneError),
    #[error(
        "`type` is not a Logto template type (SignIn, Register, ForgotPassword, Generic, OrganizationInvitation, UserPermissionValidation, BindNewIdentifier, MfaVerification, BindMfa)"
    )]
    UnknownType,
    #[error("`id` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")]
    BadId,
    #[error("`expires_at` must be an RFC 3339 time such as 2026-11-23T15:10:00Z")]
    BadExpiry,
    #[error("`payload.code` is required for type {0}")]
    MissingCode(TemplateType),
}

/// The body's shape before validation; `Value` keeps wrong types reportable.
#[derive(Deserialize)]
struct RawJob {
    to: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    payload: Option<Value>,
    ip: Option<Value>,
    id: Option<Value>,
    expires_at: Option<Value>,
}

impl Job {
    /// Decodes and validates a job body (contract section 1). `default_ttl`
    /// sets the expiry of a job without `expires_at`, counted from its publish
    /// time (else its first receipt, else now).
    pub(crate) fn decode(
        body: &[u8],
        envelope: &Envelope<'_>,
        default_ttl: Duration,
        now: SystemTime,
    ) -> Result<Job, InvalidJob> {
        if body.len() > MAX_BODY_BYTES {
            return Err(InvalidJob::TooLarge(body.len()));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names a line and column, never the input.
            InvalidJob::NotJson(e.to_string())
        })?;
        if !value.is_object() {
            return Err(InvalidJob::NotObject);
        }
        let raw: RawJob = serde_json::from_value(value).map_err(|_| InvalidJob::NotObject)?;

        let to = match raw.to {
            Some(Value::String(s)) => PhoneNumber::parse(&s).map_err(InvalidJob::BadNumber)?,
            Some(Value::Null) | None => return Err(InvalidJob::Missing("to")),
            Some(_) => {
                return Err(InvalidJob::WrongType {
                    field: "to",
                    expected: "a string",
                });
            }
        };
        let kind = match raw.kind {
            Some(Value::String(s)) => TemplateType::parse(&s).ok_or(InvalidJob::UnknownType)?,
            Some(Value::Null) | None => return Err(InvalidJob::Missing("type")),
            Some(_) => return Err(InvalidJob::UnknownType),
        };
        let payload = match raw.payload {
            Some(Value::Object(map)) => Payload(map),
            Some(Value::Null) | None => return Err(InvalidJob::Missing("payload")),
            Some(_) => {
                return Err(InvalidJob::WrongType {
                    field: "payload",
                    expected: "an object",
                });
            }
        };
        if kind.carries_code() && payload.code().is_none() {
            return Err(InvalidJob::MissingCode(kind));
        }
        let ip = match raw.ip {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(_) => {
                return Err(InvalidJob::WrongType {
                    field: "ip",
                    expected: "a string",
                });
            }
        };
        let (id, id_is_distinct) = match raw.id {
            Some(Value::String(s)) => (JobId::parse(&s).ok_or(InvalidJob::BadId)?, true),
            Some(Value::Null) | None => match envelope.message_id.and_then(JobId::parse) {
                Some(id) => (id, true),
                None => (
                    JobId::derived(body, envelope.published_at.map(unix_seconds)),
                    envelope.published_at.is_some(),
                ),
            },
            Some(_) => return Err(InvalidJob::BadId),
        };
        let (expires_at, expiry_stated) = match raw.expires_at {
            Some(Value::String(s)) => (parse_rfc3339(&s).ok_or(InvalidJob::BadExpiry)?, true),
            Some(Value::Null) | None => {
                let from = envelope.published_at.or(envelope.first_seen).unwrap_or(now);
                (from.checked_add(default_ttl).unwrap_or(from), false)
            }
            Some(_) => return Err(InvalidJob::BadExpiry),
        };
        Ok(Job {
            id,
            to,
            kind,
            payload,
            expires_at,
            expiry_stated,
            id_is_distinct,
            ip,
        })
    }

    /// The end user's IP, for abuse limits.
    pub(crate) fn ip(&self) -> Option<&str> {
        self.ip.as_deref()
    }

    /// Time left before the code goes stale; zero once it has.
    pub(crate) fn time_left(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the code is stale at `now` and must not be sent.
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        self.time_left(now).is_zero()
    }
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Formats a time as RFC 3339 UTC (seconds precision).
pub fn format_rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::from(t));
    t.format(&Rfc3339).unwrap_or_else(|_| String::from("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn decode(body: &str) -> Result<Job, InvalidJob> {
        Job::decode(body.as_bytes(), &Envelope::default(), TTL, now())
    }

    #[test]
    fn decodes_the_contract_example() {
        let job = decode(
            r#"{"to":"+819012345678","type":"SignIn","payload":{"code":"123456","locale":"ja-JP"},
                "ip":"203.0.113.7","id":"c0a8012e-7f00-4a1b-9d2e-5d1c3b4a5f60",
                "expires_at":"2026-11-23T15:10:00Z","unknown":true}"#,
        )
        .unwrap();
        assert_eq!(job.to.as_e164(), "+819012345678");
        assert_eq!(job.kind, TemplateType::SignIn);
        assert_eq!(job.id.as_str(), "c0a8012e-7f00-4a1b-9d2e-5d1c3b4a5f60");
        assert_eq!(job.payload.locale(), Some("ja-JP"));
        assert_eq!(job.payload.code().as_deref(), Some("123456"));
        assert_eq!(job.ip(), Some("203.0.113.7"));
        assert_eq!(format_rfc3339(job.expires_at), "2026-11-23T15:10:00Z");
    }

    #[test]
    fn adds_the_missing_plus_like_logto() {
        let job =
            decode(r#"{"to":"15005550006","type":"Register","payload":{"code":"1"}}"#).unwrap();
        assert_eq!(job.to.as_e164(), "+15005550006");
    }

    #[test]
    fn defaults_id_and_expiry_from_the_envelope() {
        let published = now() - Duration::from_secs(30);
        let envelope = Envelope {
            message_id: Some("msg-1"),
            published_at: Some(published),
            first_seen: None,
        };
        let body = br#"{"to":"+15005550006","type":"SignIn","payload":{"code":"1"}}"#;
        let job = Job::decode(body, &envelope, TTL, now()).unwrap();
        assert_eq!(job.id.as_str(), "msg-1");
        assert_eq!(job.expires_at, published + TTL);

        let bare = Job::decode(body, &Envelope::default(), TTL, now()).unwrap();
        assert_eq!(bare.expires_at, now() + TTL);
        assert!(bare.id.as_str().starts_with("h-"));
        let again = Job::decode(body, &Envelope::default(), TTL, now()).unwrap();
        assert_eq!(bare.id, again.id, "a redelivery gets the same derived id");
        assert!(
            !bare.id_is_distinct,
            "but without a publish time it tells nothing apart"
        );
        assert!(job.id_is_distinct);
    }

    #[test]
    fn every_rule_has_its_own_reason() {
        let cases: &[(&str, InvalidJob)] = &[
            ("not json", InvalidJob::NotJson(String::new())),
            ("[1,2]", InvalidJob::NotObject),
            (
                r#"{"type":"SignIn","payload":{}}"#,
                InvalidJob::Missing("to"),
            ),
            (
                r#"{"to":12345678,"type":"SignIn","payload":{}}"#,
                InvalidJob::WrongType {
                    field: "to",
                    expected: "a string",
                },
            ),
            (
                r#"{"to":"+1 500","type":"SignIn","payload":{"code":"1"}}"#,
                InvalidJob::BadNumber(PhoneError::NotE164),
            ),
            (
                r#"{"to":"+15005550006","payload":{"code":"1"}}"#,
                InvalidJob::Missing("type"),
            ),
            (
                r#"{"to":"+15005550006","type":"signin","payload":{"code":"1"}}"#,
                InvalidJob::UnknownType,
            ),
            (
                r#"{"to":"+15005550006","type":"SignIn"}"#,
                InvalidJob::Missing("payload"),
            ),
            (
                r#"{"to":"+15005550006","type":"SignIn","payload":"x"}"#,
                InvalidJob::WrongType {
                    field: "payload",
                    expected: "an object",
                },
            ),
            (
                r#"{"to":"+15005550006","type":"SignIn","payload":{"locale":"en"}}"#,
                InvalidJob::MissingCode(TemplateType::SignIn),
            ),
            (
                r#"{"to":"+15005550006","type":"SignIn","payload":{"code":"1"},"id":"a b"}"#,
                InvalidJob::BadId,
            ),
            (
                r#"{"to":"+15005550006","type":"SignIn","payload":{"code":"1"},"expires_at":"tomorrow"}"#,
                InvalidJob::BadExpiry,
            ),
        ];
        for (body, expected) in cases {
            let err = decode(body).unwrap_err();
            match (expected, &err) {
                (InvalidJob::NotJson(_), InvalidJob::NotJson(_)) => {}
                _ => assert_eq!(&err, expected, "{body}"),
            }
        }
    }

    #[test]
    fn reasons_never_repeat_the_value() {
        let body = r#"{"to":"+1 819 0123 4567","type":"SignIn","payload":{"code":"987654"}}"#;
        let text = decode(body).unwrap_err().to_string();
        assert!(!text.contains("819"), "{text}");
        let body = "{\"to\": \"+15005550006\", \"payload\": {\"code\": \"987654\"";
        let text = decode(body).unwrap_err().to_string();
        assert!(!text.contains("987654"), "{text}");
    }

    #[test]
    fn an_invitation_needs_no_code() {
        let job = decode(
            r#"{"to":"+15005550006","type":"OrganizationInvitation","payload":{"link":"https://x"}}"#,
        )
        .unwrap();
        assert_eq!(job.kind, TemplateType::OrganizationInvitation);
    }

    #[test]
    fn rejects_bodies_over_8_kib() {
        let big = format!(
            r#"{{"to":"+15005550006","type":"SignIn","payload":{{"code":"1","pad":"{}"}}}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        assert!(matches!(decode(&big), Err(InvalidJob::TooLarge(_))));
    }

    #[test]
    fn debug_never_shows_payload_values() {
        let job =
            decode(r#"{"to":"+15005550006","type":"SignIn","payload":{"code":"987654"}}"#).unwrap();
        let shown = format!("{job:?}");
        assert!(!shown.contains("987654"), "{shown}");
        assert!(!shown.contains("5005550006"), "{shown}");
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let job = decode(
            r#"{"to":"+15005550006","type":"SignIn","payload":{"code":"1"},"expires_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let before = parse_rfc3339("2025-12-31T23:59:00Z").unwrap();
        let after = parse_rfc3339("2026-01-01T00:00:01Z").unwrap();
        assert_eq!(job.time_left(before), Duration::from_secs(60));
        assert!(!job.is_expired(before));
        assert!(job.is_expired(after));
    }
}

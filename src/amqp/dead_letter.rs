//! Dead letters: why a job was given up on, written into its headers.
//!
//! A dead letter is the original message, body and properties unchanged, plus
//! the contract's `x-sms-*` headers (section 4), published to `sms.dlx` and
//! confirmed before the original is acked. The same headers are read back by
//! the `dlq` commands.

use std::fmt;
use std::time::SystemTime;

use lapin::BasicProperties;

use super::headers::{
    self, HEADER_ATTEMPTS, HEADER_DELIVERY_COUNT, HEADER_ERROR, HEADER_FIRST_SEEN, HEADER_REASON,
    HEADER_TWILIO_CODE, unix_millis, without,
};
use super::received::Received;

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The body broke a rule of the message shape.
    InvalidJob,
    /// No template for the job's type, and no Generic template.
    NoTemplate,
    /// The code went stale before it could be sent.
    Expired,
    /// Twilio refused it for good (this recipient or this content).
    Rejected,
    /// Every attempt failed with a transient error.
    RetriesExhausted,
    /// Refused by abuse limits.
    Blocked,
}

impl Reason {
    /// Every reason, in the contract's order.
    pub const ALL: [Reason; 6] = [
        Reason::InvalidJob,
        Reason::NoTemplate,
        Reason::Expired,
        Reason::Rejected,
        Reason::RetriesExhausted,
        Reason::Blocked,
    ];

    /// The contract's spelling, used in headers, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJob => "invalid_job",
            Reason::NoTemplate => "no_template",
            Reason::Expired => "expired",
            Reason::Rejected => "rejected",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::Blocked => "blocked",
        }
    }

    /// The reason spelled `s`, if it is one.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts written into a dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Why the job was given up on.
    pub reason: Reason,
    /// What went wrong, without personal data.
    pub error: &'a str,
    /// Twilio calls made for the job.
    pub attempts: u32,
    /// Twilio's error code, when it gave one.
    pub twilio_code: Option<u32>,
    /// When the job was first received. Written to `x-sms-first-seen` when
    /// the message carries no publish time and no such header, so that a
    /// replay days later still knows how old the code is.
    pub first_seen: SystemTime,
}

impl<'a> DeadLetter<'a> {
    /// A dead letter for `reason` with the attempts and first receipt the
    /// delivery carried, and no Twilio code.
    pub(crate) fn new(reason: Reason, error: &'a str, received: &Received) -> DeadLetter<'a> {
        DeadLetter {
            reason,
            error,
            attempts: received.attempts,
            twilio_code: None,
            first_seen: received.first_seen,
        }
    }

    /// The original properties with the dead-letter headers added (and the
    /// broker's redelivery counter removed).
    pub fn properties(&self, original: &BasicProperties) -> BasicProperties {
        let mut headers = without(
            original.headers().as_ref(),
            &[HEADER_DELIVERY_COUNT, HEADER_TWILIO_CODE],
        );
        headers::set_str(&mut headers, HEADER_REASON, self.reason.as_str());
        headers::set_str(&mut headers, HEADER_ERROR, self.error);
        headers::set_i64(&mut headers, HEADER_ATTEMPTS, i64::from(self.attempts));
        if let Some(code) = self.twilio_code {
            headers::set_i64(&mut headers, HEADER_TWILIO_CODE, i64::from(code));
        }
        let anchored = original.timestamp().is_some() || headers.contains_key(HEADER_FIRST_SEEN);
        if !anchored {
            headers::set_i64(
                &mut headers,
                HEADER_FIRST_SEEN,
                unix_millis(self.first_seen),
            );
        }
        without_expiration(original).with_headers(headers)
    }
}

/// `original` without its per-message `expiration`, as RabbitMQ's own
/// dead-lettering does: a dead letter must stay until an operator acts, not
/// expire out of `sms.dead` because the producer gave the job a TTL.
fn without_expiration(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*v);
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.user_id() {
        copy = copy.with_user_id(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::{header_i64, header_str};
    use lapin::types::FieldTable;

    #[test]
    fn adds_the_contract_headers_and_keeps_the_rest() {
        let mut headers = FieldTable::default();
        headers::set_str(&mut headers, "traceparent", "00-abc-def-01");
        headers::set_i64(&mut headers, "x-delivery-count", 3);
        let original = BasicProperties::default()
            .with_expiration("60000".into())
            .with_app_id("billing".into())
            .with_message_id("job-1".into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        let props = DeadLetter {
            reason: Reason::Rejected,
            error: "Twilio 21211 (HTTP 400): invalid To",
            attempts: 1,
            twilio_code: Some(21211),
            first_seen: SystemTime::UNIX_EPOCH,
        }
        .properties(&original);
        let h = props.headers().as_ref();
        assert_eq!(header_str(h, "x-sms-reason"), Some("rejected"));
        assert_eq!(header_i64(h, "x-sms-attempts"), Some(1));
        assert_eq!(header_i64(h, "x-sms-twilio-code"), Some(21211));
        assert_eq!(header_str(h, "traceparent"), Some("00-abc-def-01"));
        assert_eq!(header_i64(h, "x-delivery-count"), None);
        assert_eq!(props.expiration(), &None, "a dead letter never expires");
        assert_eq!(props.app_id().as_ref().map(|s| s.as_str()), Some("billing"));
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str()),
            Some("job-1")
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }
}

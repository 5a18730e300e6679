//! What a delivery carries besides its body: the attempt count, the publish
//! time, the first receipt and the trace context, read once from the AMQP
//! properties. The job decoder's [`Envelope`] is built from it.

use std::time::SystemTime;

use lapin::BasicProperties;

use super::headers::{
    self, HEADER_ADMITTED, HEADER_AMBIGUOUS_SINCE, HEADER_ATTEMPTS, HEADER_TRACEPARENT,
};
use crate::job::Envelope;
use crate::trace_context::TraceParent;

/// The first word of an outcome event's routing key: the job's `app_id`
/// (`default` without one), made safe for topic routing (dots and spaces
/// would split it or break a binding pattern).
pub(crate) fn source_word(app_id: Option<&str>) -> String {
    let app = app_id
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    app.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// What the broker and earlier workers say about a delivery.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Twilio calls made for the job so far (`x-sms-attempts`).
    pub(crate) attempts: u32,
    /// AMQP `message_id`, the default job id.
    pub(crate) message_id: Option<String>,
    /// The AMQP `timestamp`.
    pub(crate) published_at: Option<SystemTime>,
    /// The first receipt: carried in `x-sms-first-seen`, else the publish
    /// time, else now.
    pub(crate) first_seen: SystemTime,
    /// Whether the first-receipt time came with the message (publish time or
    /// our header) rather than from this delivery.
    pub(crate) first_seen_carried: bool,
    /// The producer's W3C trace context, from the `traceparent` header.
    pub(crate) trace: Option<TraceParent>,
    /// When an earlier call that may have created the message was made.
    pub(crate) ambiguous_since: Option<SystemTime>,
    /// The ingest admitted it under the abuse limits already.
    pub(crate) admitted: bool,
    /// The AMQP `app_id`: the service that published the job.
    pub(crate) app_id: Option<String>,
}

impl Received {
    /// Reads `properties` as of `now`.
    pub(crate) fn read(properties: &BasicProperties, now: SystemTime) -> Received {
        let table = properties.headers().as_ref();
        let attempts = headers::header_i64(table, HEADER_ATTEMPTS)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0);
        let published_at = headers::published_at(properties);
        let carried = headers::first_seen(table).or(published_at);
        Received {
            attempts,
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            published_at,
            first_seen: carried.unwrap_or(now),
            first_seen_carried: carried.is_some(),
            trace: headers::header_str(table, HEADER_TRACEPARENT).and_then(TraceParent::parse),
            ambiguous_since: headers::millis_header(table, HEADER_AMBIGUOUS_SINCE),
            admitted: headers::header_i64(table, HEADER_ADMITTED) == Some(1),
            app_id: properties.app_id().as_ref().map(|a| a.to_string()),
        }
    }

    /// What the job decoder needs of it.
    pub(crate) fn envelope(&self) -> Envelope<'_> {
        Envelope {
            message_id: self.message_id.as_deref(),
            published_at: self.published_at,
            first_seen: Some(self.first_seen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_one_routing_key_word() {
        assert_eq!(source_word(None), "default");
        assert_eq!(source_word(Some(" ")), "default");
        assert_eq!(source_word(Some("ingest")), "ingest");
        assert_eq!(source_word(Some("billing.eu west")), "billing_eu_west");
    }
}

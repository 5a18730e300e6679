//! The job's AMQP headers and properties: the contract's `x-sms-*` names and
//! the few readers and writers every publisher and reader of jobs shares.

use std::time::{Duration, SystemTime};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Why a job was dead-lettered (contract section 4).
pub(crate) const HEADER_REASON: &str = "x-sms-reason";
/// What went wrong, as text without personal data.
pub(crate) const HEADER_ERROR: &str = "x-sms-error";
/// Twilio calls made for the job (long).
pub(crate) const HEADER_ATTEMPTS: &str = "x-sms-attempts";
/// Twilio's error code, when it gave one (long).
pub(crate) const HEADER_TWILIO_CODE: &str = "x-sms-twilio-code";
/// When a worker first received the job, in milliseconds since the epoch
/// (long): the expiry of a job without `expires_at` or AMQP timestamp is
/// counted from it, across retries.
pub(crate) const HEADER_FIRST_SEEN: &str = "x-sms-first-seen";
/// When a call that may have created the job's message (a timeout, a 5xx)
/// was made, in milliseconds since the epoch (long): the next attempt asks
/// Twilio's message list before it calls again.
pub(crate) const HEADER_AMBIGUOUS_SINCE: &str = "x-sms-ambiguous-since";
/// Set (to 1) by the ingest on a job an abuse limit already admitted, so
/// that the worker does not count it a second time.
pub(crate) const HEADER_ADMITTED: &str = "x-sms-admitted";
/// W3C trace context of the request that asked for the code.
pub(crate) const HEADER_TRACEPARENT: &str = "traceparent";
/// Set by quorum queues on redelivery; dropped when we republish.
pub(crate) const HEADER_DELIVERY_COUNT: &str = "x-delivery-count";

pub(crate) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Milliseconds since the Unix epoch, as the `x-sms-first-seen` header holds them.
pub(crate) fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The publish time from the AMQP `timestamp`. Producers disagree on its
/// unit: seconds per the spec, milliseconds from some clients; anything past
/// the year 5138 in seconds is taken as milliseconds.
pub(crate) fn published_at(properties: &lapin::BasicProperties) -> Option<SystemTime> {
    properties.timestamp().map(|t| {
        if t > 100_000_000_000 {
            SystemTime::UNIX_EPOCH + Duration::from_millis(t)
        } else {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t)
        }
    })
}

/// A time header in milliseconds since the epoch, if present.
pub(crate) fn millis_header(headers: Option<&FieldTable>, name: &str) -> Option<SystemTime> {
    header_i64(headers, name)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The first receipt recorded in [`HEADER_FIRST_SEEN`], if any.
pub(crate) fn first_seen(headers: Option<&FieldTable>) -> Option<SystemTime> {
    header_i64(headers, HEADER_FIRST_SEEN)
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Reads a header as an integer, whatever integer type the publisher used.
pub fn header_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// Reads a header as text.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a str> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Sets a header to a long integer.
pub(crate) fn set_i64(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}

/// Sets a header to text.
pub fn set_str(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(ShortString::from(name), long_string(value));
}

/// A copy of `headers` without the named keys.
pub(crate) fn without(headers: Option<&FieldTable>, names: &[&str]) -> FieldTable {
    let map: std::collections::BTreeMap<_, _> = headers
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !names.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    FieldTable::from(map)
}

//! Dead-letter tools: `dlq list`, `dlq replay` and `dlq purge` on `sms.dead`.
//!
//! Every command reads the queue the same way: it takes each message without
//! acking it (so no other consumer sees it and nothing is lost if the command
//! dies: the broker returns unacked messages when the connection closes),
//! decides, and at the end hands back everything it did not move or delete
//! with one `nack(multiple, requeue)`, which keeps the queue's order. A replay
//! publishes a copy to `sms`/`send`, waits for the broker's confirm, and only
//! then acks the dead letter: a message is never in neither queue, and since
//! a dead letter is held by one command at a time, never moved twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use futures_lite::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::{Value, json};

use super::error::CliError;
use super::output::emit;
use super::values::ReasonArg;
use crate::amqp::headers::{
    self, HEADER_ATTEMPTS, HEADER_DELIVERY_COUNT, HEADER_ERROR, HEADER_REASON, HEADER_TWILIO_CODE,
};
use crate::amqp::{Publisher, Received, connect_for_command, topology};
use crate::config::Config;
use crate::job::Job;
use crate::phone::{PhoneNumber, mask_numbers_in};
use crate::twilio::classify;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// List dead letters without removing them.
    List(ListArgs),
    /// Move dead letters back to sms/send (confirmed before removal); expired ones are refused.
    Replay(ReplayArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

/// Filters shared by every command.
#[derive(Debug, Clone, Default, Args)]
pub(super) struct Filter {
    /// Only dead letters with this reason.
    #[arg(long)]
    pub reason: Option<ReasonArg>,
    /// Only dead letters with this Twilio error code.
    #[arg(long, value_name = "CODE")]
    pub twilio_code: Option<u32>,
    /// Only dead letters for this phone number (shown masked all the same).
    #[arg(long, value_name = "NUMBER")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// Show at most N dead letters (the summary still counts them all).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// One JSON object per line, with the original body (code redacted).
    #[arg(long)]
    pub json: bool,
    /// List the jobs abuse limits refused (queue sms.blocked) instead.
    #[arg(long)]
    pub blocked: bool,
}

/// Which dead letters a replay or purge acts on.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(super) struct Selection {
    /// These job ids (several after one flag, repeated, or comma-separated).
    #[arg(
        long = "id",
        value_name = "ID",
        num_args = 1..,
        value_delimiter = ',',
        group = "which"
    )]
    pub ids: Vec<String>,
    /// Every dead letter (narrowed by --reason and --twilio-code).
    #[arg(long, group = "which")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filter: Filter,
    /// Show what would move, move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub(super) struct PurgeArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filter: Filter,
    /// Confirm the deletion.
    #[arg(long)]
    pub yes: bool,
}

/// What a dead letter says about itself, masked for display.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The job id (from the body, else the AMQP message id).
    pub id: Option<String>,
    pub kind: Option<String>,
    /// The recipient, masked.
    pub to: Option<String>,
    /// Our reason, or `broker:<reason>` for a message the broker itself
    /// dead-lettered (from `x-death`).
    pub reason: String,
    pub twilio_code: Option<u32>,
    pub attempts: u32,
    /// Since the job was published (or first received).
    pub age: Option<Duration>,
    pub error: String,
    /// The job could be decoded (a replay of an invalid body is refused).
    pub valid: bool,
    pub expired: bool,
    /// The body with the code and the number masked.
    pub body: Value,
    /// The full number, for `--to`; never shown.
    e164: Option<String>,
}

impl Entry {
    /// Reads a dead letter.
    pub(super) fn read(
        body: &[u8],
        properties: &BasicProperties,
        now: SystemTime,
        default_ttl: Duration,
    ) -> Entry {
        let table = properties.headers().as_ref();
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| json.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str);
        let received = Received::read(properties, now);
        let job = Job::decode(body, &received.envelope(), default_ttl, now).ok();
        let reason = headers::header_str(table, HEADER_REASON)
            .map(str::to_owned)
            .or_else(|| death_reason(table).map(|r| format!("broker:{r}")))
            .unwrap_or_else(|| "unknown".to_owned());
        let born = received
            .published_at
            .or(received.first_seen_carried.then_some(received.first_seen));
        Entry {
            id: job
                .as_ref()
                .map(|j| j.id.to_string())
                .or_else(|| field("id").map(str::to_owned))
                .or(received.message_id),
            kind: field("type").map(str::to_owned),
            to: json.as_ref().and_then(|v| v.get("to")).map(masked_number),
            reason,
            twilio_code: headers::header_i64(table, HEADER_TWILIO_CODE)
                .and_then(|c| u32::try_from(c).ok()),
            attempts: received.attempts,
            age: born.and_then(|b| now.duration_since(b).ok()),
            error: headers::header_str(table, HEADER_ERROR)
                .map(mask_numbers_in)
                .unwrap_or_default(),
            valid: job.is_some(),
            expired: job.as_ref().is_some_and(|j| j.is_expired(now)),
            e164: json.as_ref().and_then(|v| v.get("to")).and_then(|to| {
                let text = match to {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                PhoneNumber::parse(&text)
                    .ok()
                    .map(|p| p.as_e164().to_owned())
            }),
            body: redacted(json, body),
        }
    }

    fn matches(&self, filter: &Filter) -> bool {
        filter.reason.is_none_or(|r| r.as_str() == self.reason)
            && filter
                .twilio_code
                .is_none_or(|c| Some(c) == self.twilio_code)
            && filter.to.as_ref().is_none_or(|to| {
                PhoneNumber::parse(to).is_ok_and(|p| Some(p.as_e164()) == self.e164.as_deref())
            })
    }

    /// The JSON line of `dlq list --json`.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.kind,
            "to": self.to,
            "reason": self.reason,
            "twilio_code": self.twilio_code,
            "twilio_meaning": self.twilio_code.and_then(classify::meaning),
            "attempts": self.attempts,
            "age_secs": self.age.map(|a| a.as_secs()),
            "error": self.error,
            "expired": self.expired,
            "body": self.body,
        })
    }
}

/// The reason the broker gave in `x-death` (`rejected`, `expired`,
/// `maxlen`, `delivery_limit`).
fn death_reason(headers: Option<&FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    headers::header_str(Some(first), "reason").map(str::to_owned)
}

/// The body for display: every payload value hidden but the locale, the
/// number masked, the IP hidden, and phone-number-like digits masked in any
/// other field; a note for a body that is not JSON.
fn redacted(json: Option<Value>, body: &[u8]) -> Value {
    let Some(mut value) = json else {
        return json!(format!("<{} bytes, not JSON>", body.len()));
    };
    if let Some(Value::Object(payload)) = value.get_mut("payload") {
        for (key, v) in payload.iter_mut() {
            if key != "locale" && key != "uiLocales" {
                *v = json!("***");
            }
        }
    }
    if let Some(ip) = value.get_mut("ip") {
        *ip = json!("***");
    }
    if let Some(to) = value.get_mut("to") {
        *to = json!(masked_number(to));
    }
    // Any other field (a producer's own) may quote a number; the job's id,
    // type and expiry are ours to show as they are.
    if let Value::Object(map) = &mut value {
        for (key, v) in map.iter_mut() {
            if !["id", "type", "expires_at", "to", "payload", "ip"].contains(&key.as_str()) {
                mask_everywhere(v);
            }
        }
    }
    value
}

/// A job's `to`, masked, whatever its JSON type.
fn masked_number(to: &Value) -> String {
    let text = match to {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match PhoneNumber::parse(&text) {
        Ok(p) => p.masked(),
        Err(_) => mask_numbers_in(&text),
    }
}

/// Masks phone-number-like digit runs in every string and number.
fn mask_everywhere(value: &mut Value) {
    match value {
        Value::String(s) => *s = mask_numbers_in(s),
        Value::Number(n) => {
            let masked = mask_numbers_in(&n.to_string());
            if masked != n.to_string() {
                *value = json!(masked);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_everywhere),
        Value::Object(map) => map.values_mut().for_each(mask_everywhere),
        Value::Bool(_) | Value::Null => {}
    }
}

/// One message held (unacked) by this command.
struct Held {
    delivery: Delivery,
    entry: Entry,
}

/// How long the dead-letter consumer may go quiet before the command stops
/// waiting for the rest of the count it was told (a message another client
/// removed meanwhile never arrives).
const QUIET: Duration = Duration::from_secs(2);

/// Why the dead letters could not be taken.
#[derive(Debug, thiserror::Error)]
enum TakeError {
    /// Another command holds them (unacked): this one would see none.
    #[error(
        "another dlq command is working on {queue} (it holds its messages until it ends); try again when it has finished"
    )]
    Busy { queue: &'static str },
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Takes every message that is in `queue` now, unacked, through one
/// exclusive consumer (the broker streams them: no round trip per message),
/// so that two commands never split the queue between them and each report
/// half of it.
async fn take_all(
    channel: &Channel,
    queue_name: &'static str,
    now: SystemTime,
    default_ttl: Duration,
) -> Result<(Vec<Held>, Option<Consumer>), TakeError> {
    let busy = TakeError::Busy { queue: queue_name };
    let queue = channel
        .queue_declare(
            queue_name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if queue.consumer_count() > 0 {
        return Err(busy);
    }
    let count = queue.message_count() as usize;
    let mut held = Vec::with_capacity(count);
    if count == 0 {
        return Ok((held, None));
    }
    let options = BasicConsumeOptions {
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = match channel
        .basic_consume(queue_name.into(), "".into(), options, FieldTable::default())
        .await
    {
        Ok(consumer) => consumer,
        // ACCESS_REFUSED: another exclusive consumer got there first.
        Err(e) if e.to_string().contains("ACCESS_REFUSED") => return Err(busy),
        Err(e) => return Err(e.into()),
    };
    while held.len() < count {
        let delivery = match tokio::time::timeout(QUIET, consumer.next()).await {
            Ok(Some(delivery)) => delivery?,
            Ok(None) | Err(_) => break,
        };
        let entry = Entry::read(&delivery.data, &delivery.properties, now, default_ttl);
        held.push(Held { delivery, entry });
    }
    // The consumer stays until the command ends: cancelling it now would
    // let a second command see no consumer (and, the messages being held,
    // no messages) and report an empty queue. What arrives meanwhile (new
    // dead letters) stays unacked and goes back when the channel closes.
    Ok((held, Some(consumer)))
}

/// Hands back, in order, every held message not acked: one multiple nack up
/// to the highest delivery tag still held (nacking an acked tag would close
/// the channel).
async fn give_back(channel: &Channel, held: &[Held]) -> Result<(), lapin::Error> {
    let still_held = held
        .iter()
        .filter(|h| h.delivery.acker.usable())
        .map(|h| h.delivery.delivery_tag)
        .max();
    if let Some(last) = still_held {
        channel
            .basic_nack(
                last,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(())
}

/// Runs a `dlq` command.
pub(super) async fn execute(config: &Config, command: DlqCommand) -> Result<(), CliError> {
    let filter = match &command {
        DlqCommand::List(a) => &a.filter,
        DlqCommand::Replay(a) => &a.filter,
        DlqCommand::Purge(a) => &a.filter,
    };
    if let Some(to) = &filter.to
        && PhoneNumber::parse(to).is_err()
    {
        return Err(CliError::Usage(
            "--to: not a phone number; give it in E.164, e.g. +819012345678".to_owned(),
        ));
    }
    if let DlqCommand::Purge(args) = &command
        && !args.yes
    {
        return Err(CliError::Usage(
            "dlq purge deletes dead letters for good: add --yes (try `dlq list` first)".to_owned(),
        ));
    }

    let runtime = |e: lapin::Error| CliError::runtime(format_args!("broker: {e}"));
    let (connection, publisher) = connect_for_command(&config.broker, "sms-dispatch dlq").await?;
    let channel = connection.create_channel().await.map_err(runtime)?;
    let now = SystemTime::now();
    let queue = match &command {
        DlqCommand::List(args) if args.blocked => topology::BLOCKED_QUEUE,
        _ => topology::DEAD_LETTER_QUEUE,
    };
    // `_consumer` lives (holding the queue) until the command ends.
    let (held, _consumer) = take_all(&channel, queue, now, config.default_ttl)
        .await
        .map_err(CliError::runtime)?;

    let result = match &command {
        DlqCommand::List(args) => list(&held, args),
        DlqCommand::Replay(args) => replay(&publisher, &held, args).await,
        DlqCommand::Purge(args) => purge(&held, args).await,
    };
    // Whatever happened above, what was not moved goes back, in order.
    give_back(&channel, &held).await.map_err(runtime)?;
    let _ = connection.close(200, "done".into()).await;
    result
}

fn selected<'a>(held: &'a [Held], selection: &Selection, filter: &Filter) -> Vec<&'a Held> {
    held.iter()
        .filter(|h| h.entry.matches(filter))
        .filter(|h| {
            selection.all
                || h.entry
                    .id
                    .as_ref()
                    .is_some_and(|id| selection.ids.iter().any(|s| s == id))
        })
        .collect()
}

fn list(held: &[Held], args: &ListArgs) -> Result<(), CliError> {
    let matching: Vec<&Held> = held
        .iter()
        .filter(|h| h.entry.matches(&args.filter))
        .collect();
    let shown = &matching[..args.limit.unwrap_or(usize::MAX).min(matching.len())];
    let mut out = String::new();
    if args.json {
        for h in shown {
            let _ = writeln!(out, "{}", h.entry.to_json());
        }
    } else {
        out.push_str(&table(shown.iter().map(|h| &h.entry)));
        let _ = writeln!(out, "{}", summary(held, &matching, shown.len()));
    }
    emit(&out)
}

/// The summary: how many, how many match, and counts by reason, wrapped to
/// 80 columns.
fn summary(held: &[Held], matching: &[&Held], shown: usize) -> String {
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for h in held {
        *by_reason.entry(h.entry.reason.as_str()).or_default() += 1;
    }
    let mut out = format!(
        "{} dead letters; {} match, {} shown\n",
        held.len(),
        matching.len(),
        shown
    );
    let mut line = String::from("by reason:");
    for (i, (reason, n)) in by_reason.iter().enumerate() {
        let item = format!(" {reason} {n}");
        if line.len() + item.len() + 1 > 80 {
            let _ = writeln!(out, "{line},");
            line = String::from("          ");
        } else if i > 0 {
            line.push(',');
        }
        line.push_str(&item);
    }
    out.push_str(&line);
    out
}

/// The table for an 80-column terminal: the job id (whole, for `replay
/// --id`, up to a UUID's 36 characters), the masked number, the reason and the
/// Twilio code; then an indented line with the type, attempts, age, the
/// code's meaning and the error.
pub(super) fn table<'a>(entries: impl Iterator<Item = &'a Entry>) -> String {
    let mut out = format!("{:<36} {:<14} {:<17} {:>5}\n", "ID", "TO", "REASON", "CODE");
    for e in entries {
        let _ = writeln!(
            out,
            "{:<36} {:<14} {:<17} {:>5}",
            clip(e.id.as_deref().unwrap_or("-"), 36),
            clip(e.to.as_deref().unwrap_or("-"), 14),
            clip(&e.reason, 17),
            e.twilio_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        );
        let meaning = e
            .twilio_code
            .and_then(classify::meaning)
            .map(|m| format!("{m}: "))
            .unwrap_or_default();
        let detail = format!(
            "{}, {} {}, {} old{}: {meaning}{}",
            e.kind.as_deref().unwrap_or("-"),
            e.attempts,
            if e.attempts == 1 { "try" } else { "tries" },
            e.age.map_or_else(|| "?".to_owned(), human),
            if e.expired { ", expired" } else { "" },
            without_code_prefix(&e.error)
        );
        let _ = writeln!(out, "  {}", clip(&detail, 78));
    }
    out
}

/// The error text without its `Twilio 21408 (HTTP 400): ` prefix, which the
/// CODE column already shows (the JSON output keeps it).
fn without_code_prefix(error: &str) -> &str {
    match error.strip_prefix("Twilio ") {
        Some(rest) => rest.split_once("): ").map_or(error, |(_, message)| message),
        None => error,
    }
}

/// Cuts text to `width` characters, marking the cut with `…`.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// `42s`, `13m`, `5h`, `3d`.
fn human(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

async fn replay(publisher: &Publisher, held: &[Held], args: &ReplayArgs) -> Result<(), CliError> {
    let chosen = selected(held, &args.selection, &args.filter);
    let (movable, refused): (Vec<&Held>, Vec<&Held>) = chosen
        .iter()
        .partition(|h| h.entry.valid && !h.entry.expired);
    // Two dead letters of one job (a dead letter published again after an
    // unconfirmed first try) are replayed once: replaying both would send
    // the code twice. The copies are removed once the first is back.
    let mut seen = std::collections::HashSet::new();
    let (movable, copies): (Vec<&Held>, Vec<&Held>) = movable
        .into_iter()
        .partition(|h| h.entry.id.as_ref().is_none_or(|id| seen.insert(id.clone())));
    let mut out = table(movable.iter().map(|h| &h.entry));
    if args.dry_run {
        let copies = if copies.is_empty() {
            String::new()
        } else {
            format!(" (and remove {} copies)", copies.len())
        };
        let _ = writeln!(
            out,
            "dry run: would replay {}{copies}; {}",
            movable.len(),
            refusals(&refused)
        );
        return emit(&out);
    }
    let mut moved = 0;
    let mut failure = None;
    let mut replayed_ids = std::collections::HashSet::new();
    for h in &movable {
        let properties = h.delivery.properties.clone().with_headers(headers::without(
            h.delivery.properties.headers().as_ref(),
            REPLAY_DROPS,
        ));
        // Confirmed first, then removed from the dead-letter queue.
        match publisher
            .publish(
                topology::EXCHANGE,
                topology::ROUTING_KEY,
                &h.delivery.data,
                properties,
            )
            .await
        {
            Ok(()) => {
                match h.delivery.acker.ack(Default::default()).await {
                    Ok(true) => {
                        moved += 1;
                        replayed_ids.extend(h.entry.id.clone());
                    }
                    // The republish is confirmed but the dead letter stays: a
                    // duplicate, never a loss.
                    _ => {
                        failure = Some("lost the connection after a republish; that job may now be in both queues".to_owned());
                        break;
                    }
                }
            }
            Err(e) => {
                failure = Some(format!(
                    "republishing failed ({e}); the rest stay dead-lettered"
                ));
                break;
            }
        }
    }
    let mut removed = 0;
    for copy in &copies {
        let of_replayed = copy
            .entry
            .id
            .as_ref()
            .is_some_and(|id| replayed_ids.contains(id));
        if of_replayed && let Ok(true) = copy.delivery.acker.ack(Default::default()).await {
            removed += 1;
        }
    }
    let duplicates = if removed > 0 {
        format!(" (and removed {removed} duplicate dead letters)")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "replayed {moved} to sms/send{duplicates}; {}",
        refusals(&refused)
    );
    emit(&out)?;
    match failure {
        Some(f) => Err(CliError::runtime(f)),
        None => Ok(()),
    }
}

/// The headers a replay drops: the attempt count starts again from zero.
const REPLAY_DROPS: &[&str] = &[
    HEADER_REASON,
    HEADER_ERROR,
    HEADER_ATTEMPTS,
    HEADER_TWILIO_CODE,
    HEADER_DELIVERY_COUNT,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
];

fn refusals(refused: &[&Held]) -> String {
    let expired = refused.iter().filter(|h| h.entry.expired).count();
    let invalid = refused.iter().filter(|h| !h.entry.valid).count();
    format!("refused: {expired} expired, {invalid} invalid (kept in sms.dead)")
}

async fn purge(held: &[Held], args: &PurgeArgs) -> Result<(), CliError> {
    let chosen = selected(held, &args.selection, &args.filter);
    let mut deleted = Vec::with_capacity(chosen.len());
    for h in &chosen {
        if let Ok(true) = h.delivery.acker.ack(Default::default()).await {
            deleted.push(&h.entry);
        }
    }
    let mut out = table(deleted.iter().copied());
    let _ = writeln!(out, "deleted {} dead letters", deleted.len());
    emit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn dead(body: &str, reason: &str, code: Option<i64>) -> Entry {
        let mut headers = FieldTable::default();
        headers::set_str(&mut headers, HEADER_REASON, reason);
        headers::set_str(
            &mut headers,
            HEADER_ERROR,
            "Twilio 21211 (HTTP 400): The 'To' number +819012345678 is not valid",
        );
        headers::set_i64(&mut headers, HEADER_ATTEMPTS, 1);
        if let Some(c) = code {
            headers::set_i64(&mut headers, HEADER_TWILIO_CODE, c);
        }
        let props = BasicProperties::default()
            .with_timestamp(1_000)
            .with_message_id(ShortString::from("mid"))
            .with_headers(headers);
        Entry::read(
            body.as_bytes(),
            &props,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_090),
            Duration::from_secs(600),
        )
    }

    #[test]
    fn reads_and_masks_a_dead_letter() {
        let e = dead(
            r#"{"to":"+819012345678","type":"SignIn","payload":{"code":"987654"},"id":"job-1"}"#,
            "rejected",
            Some(21211),
        );
        assert_eq!(e.id.as_deref(), Some("job-1"));
        assert_eq!(e.to.as_deref(), Some("+81********78"));
        assert_eq!(e.reason, "rejected");
        assert_eq!(e.twilio_code, Some(21211));
        assert_eq!(e.age, Some(Duration::from_secs(90)));
        assert!(!e.expired && e.valid);
        let json = e.to_json().to_string();
        assert!(
            !json.contains("987654") && !json.contains("9012345678"),
            "{json}"
        );
        assert!(
            json.contains("\"twilio_meaning\":\"Invalid 'To' phone number\""),
            "{json}"
        );
    }

    #[test]
    fn the_table_fits_80_columns() {
        let e = dead(
            r#"{"to":"+819012345678","type":"UserPermissionValidation","payload":{"code":"1"},"id":"c0a8012e-7f00-4a1b-9d2e-5d1c3b4a5f60"}"#,
            "retries_exhausted",
            Some(21211),
        );
        let text = table([e].iter());
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(!text.contains("9012345678"));
    }

    #[test]
    fn the_json_body_hides_personal_data() {
        let e = dead(
            r#"{"to":819012345678,"type":"OrganizationInvitation","ip":"203.0.113.7",
                "payload":{"link":"https://x/invite/SECRET","locale":"ja","code":"987654","n":{"phone":"+819012345678"}},
                "extra":"call 819012345678"}"#,
            "invalid_job",
            None,
        );
        assert_eq!(e.to.as_deref(), Some("+81********78"));
        let json = e.to_json().to_string();
        for secret in ["SECRET", "987654", "203.0.113.7", "9012345678"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        assert!(json.contains("\"locale\":\"ja\""), "{json}");
        let id = dead(
            r#"{"to":"+819012345678","type":"SignIn","payload":{"code":"1"},"id":"71427a85-4d73-4a10-9ee6-428479556a2f"}"#,
            "rejected",
            None,
        );
        assert_eq!(
            id.to_json()["body"]["id"],
            "71427a85-4d73-4a10-9ee6-428479556a2f"
        );
    }

    #[test]
    fn an_invalid_body_is_shown_and_not_replayable() {
        let e = dead("not json", "invalid_job", None);
        assert!(!e.valid);
        assert_eq!(e.id.as_deref(), Some("mid"));
        assert_eq!(e.body, json!("<8 bytes, not JSON>"));
    }

    #[test]
    fn ages_read_like_a_human_would_say_them() {
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(800)), "13m");
        assert_eq!(human(Duration::from_secs(18_000)), "5h");
        assert_eq!(human(Duration::from_secs(300_000)), "3d");
    }
}

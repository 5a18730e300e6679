//! Outcome events for the services that publish jobs (contract section 9):
//! one event per outcome on the topic exchange `sms.events`, routed by the
//! job's source (its AMQP `app_id`; `ingest` for `POST /v1/send`, else
//! `default`), so a service binds to its own (`billing.#`).
//!
//! An event is published after the outcome is safe (the ack, or the dead
//! letter's confirm), off the job's path, with a confirm: it never delays
//! or repeats a send. One that cannot be published is logged and counted
//! (`sms_events_published_total{outcome="failed"}`), never retried; events
//! may repeat (a redelivery) or, rarely, be lost: consumers deduplicate by
//! (`id`, `outcome`).
//!
//! Jobs queue their events; one task gathers them into batches, waiting at
//! most [`LINGER`] after a batch's first event for others to join it, and
//! publishes each batch with every publish polled together, so their frames
//! reach lapin's I/O thread together and share its wake-ups (every frame
//! handed to that thread alone costs a wake-up of it; docs/benchmark.md).
//! Each event is still published and confirmed on its own (a failure, even
//! a panic, is that event's alone). A graceful stop waits for every queued
//! event's confirm before it closes the connection
//! ([`Worker::events_published`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use lapin::message::Delivery;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use super::Worker;
use crate::amqp::SharedPublisher;
use crate::amqp::dead_letter::Reason;
use crate::amqp::source_word;
use crate::job::{Job, format_rfc3339};
use crate::observe::metrics::Metrics;

/// The most events one batch publishes (each wake-up polls every publish
/// of the batch still pending, so a batch stays small).
const MAX_BATCH: usize = 64;

/// How long a batch waits for more events after its first: a few
/// milliseconds on an outcome that is already safe, for fewer wake-ups of
/// lapin's I/O thread. Alternating rounds, instant Twilio: 46.5 and 47.5
/// µs/job at 5 ms, against 54.0 and 55.0 with no wait; 2 ms was between
/// them, 10 ms no better than 5 (docs/benchmark.md).
const LINGER: Duration = Duration::from_millis(5);

/// One event on its way: routing key, body, and its outcome's metric label.
struct Pending {
    key: String,
    bytes: Vec<u8>,
    label: &'static str,
}

/// The queue jobs put their events in; its task starts with the first event.
#[derive(Default)]
pub(super) struct EventQueue {
    sender: OnceLock<mpsc::UnboundedSender<Pending>>,
    outstanding: Arc<Outstanding>,
}

impl EventQueue {
    fn push(&self, event: Pending, publisher: &SharedPublisher, metrics: &Metrics) {
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(publish_batches(
                receiver,
                publisher.clone(),
                metrics.clone(),
                self.outstanding.clone(),
            ));
            sender
        });
        self.outstanding.count.fetch_add(1, Ordering::AcqRel);
        // The task ends only with the runtime: a send cannot fail before.
        let _ = sender.send(event);
    }
}

/// Events queued and not yet confirmed (or failed), and a wake-up when the
/// last of them is done: what a graceful stop waits for.
#[derive(Default)]
struct Outstanding {
    count: AtomicUsize,
    none_left: Notify,
}

impl Outstanding {
    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_left.notify_waiters();
        }
    }

    async fn none_left(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks one event done when dropped, however its publish ended.
struct DoneOnDrop<'a>(&'a Outstanding);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Gathers batches (up to [`MAX_BATCH`] events, or what came within
/// [`LINGER`] of the first) and publishes each in a task of its own, so the
/// next batch need not wait for this one's confirms.
async fn publish_batches(
    mut receiver: mpsc::UnboundedReceiver<Pending>,
    publisher: SharedPublisher,
    metrics: Metrics,
    outstanding: Arc<Outstanding>,
) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            tokio::select! {
                () = &mut linger => break,
                n = receiver.recv_many(&mut batch, room) => if n == 0 { break },
            }
        }
        let events = std::mem::take(&mut batch);
        tokio::spawn(publish_batch(
            events,
            publisher.clone(),
            metrics.clone(),
            outstanding.clone(),
        ));
    }
}

/// Publishes every event of `events` at once and waits for all confirms.
async fn publish_batch(
    events: Vec<Pending>,
    publisher: SharedPublisher,
    metrics: Metrics,
    outstanding: Arc<Outstanding>,
) {
    let mut publishes: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = events
        .into_iter()
        .map(|event| {
            let done = DoneOnDrop(&outstanding);
            Box::pin(async {
                let _done = done;
                publish_one(event, &publisher, &metrics).await;
            }) as Pin<Box<dyn Future<Output = ()> + Send + '_>>
        })
        .collect();
    // Poll every publish on each wake-up: they go out together and their
    // confirms (often one `multiple` confirm) finish them together.
    std::future::poll_fn(|cx| {
        publishes.retain_mut(|publish| publish.as_mut().poll(cx).is_pending());
        if publishes.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Publishes one event and counts (or logs) how it went.
async fn publish_one(event: Pending, publisher: &SharedPublisher, metrics: &Metrics) {
    use futures_lite::FutureExt as _;
    let publish = async {
        match publisher.get() {
            Some(p) if publisher.blocked().is_none() => p
                .publish_event(&event.key, &event.bytes)
                .await
                .map_err(|e| e.to_string()),
            Some(_) => Err("the broker blocks publishing".to_owned()),
            None => Err("not connected to the broker".to_owned()),
        }
    };
    // A panic loses this event only, not the rest of its batch.
    let result = std::panic::AssertUnwindSafe(publish)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err("publishing panicked".to_owned()));
    match result {
        Ok(()) => metrics.event_published(event.label),
        Err(error) => {
            metrics.event_published("failed");
            warn!(
                routing_key = event.key.as_str(),
                error = error.as_str(),
                "an outcome event could not be published; it is lost (the job's outcome stands)"
            );
        }
    }
}

/// What became of a job, as an event says it.
pub(super) enum Outcome<'a> {
    /// Twilio accepted it (or had, as reconciliation found). A redelivery
    /// of a job sent already is told again (its first event may have been
    /// lost with the ack), with the SID when the fleet's record has it.
    Sent { message_sid: Option<&'a str> },
    /// Given up on, with the reason and Twilio's code when it gave one.
    DeadLettered {
        reason: Reason,
        twilio_code: Option<u32>,
    },
}

/// An event's body (contract section 9), serialised straight to bytes.
#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    to: String,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    twilio_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_sid: Option<&'a str>,
    attempts: u32,
    at: String,
}

/// The routing key and the body of the event for `outcome`.
fn event(
    delivery: &Delivery,
    job: &Job,
    attempts: u32,
    outcome: &Outcome<'_>,
) -> (String, Vec<u8>) {
    let source = source_word(delivery.properties.app_id().as_ref().map(|a| a.as_str()));
    let mut body = Body {
        id: job.id.as_str(),
        kind: job.kind.as_str(),
        to: job.to.masked().to_string(),
        outcome: "sent",
        reason: None,
        twilio_code: None,
        message_sid: None,
        attempts,
        at: format_rfc3339(SystemTime::now()),
    };
    let key = match outcome {
        Outcome::Sent { message_sid } => {
            body.message_sid = *message_sid;
            format!("{source}.sent")
        }
        Outcome::DeadLettered {
            reason,
            twilio_code,
        } => {
            body.outcome = "dead_lettered";
            body.reason = Some(reason.as_str());
            body.twilio_code = *twilio_code;
            format!("{source}.dead_lettered.{}", reason.as_str())
        }
    };
    let bytes = serde_json::to_vec(&body).expect("an event body always serialises");
    (key, bytes)
}

impl Worker {
    /// Waits until every event queued so far is confirmed, or failed: a
    /// graceful stop calls it after the last job, before it closes the
    /// connection the events go out on.
    pub(crate) async fn events_published(&self) {
        self.events.outstanding.none_left().await;
    }

    /// Queues the event for `outcome`; it is published in the background.
    pub(super) fn emit(&self, delivery: &Delivery, job: &Job, attempts: u32, outcome: Outcome<'_>) {
        if !self.settings.events {
            return;
        }
        let (key, bytes) = event(delivery, job, attempts, &outcome);
        let label = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::DeadLettered { .. } => "dead_lettered",
        };
        let event = Pending { key, bytes, label };
        self.events.push(event, &self.publisher, &self.metrics);
    }
}

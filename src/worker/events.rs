//! Outcome events for the services that publish jobs (contract section 9):
//! one event per outcome on the topic exchange `sms.events`, routed by the
//! job's source (its AMQP `app_id`; `ingest` for `POST /v1/send`, else
//! `default`), so a service binds to its own (`billing.#`).
//!
//! An event is published after the outcome is safe (the ack, or the dead
//! letter's confirm), in a task of its own, with a confirm: it never delays
//! or repeats a send. One that cannot be published is logged and counted
//! (`sms_events_published_total{outcome="failed"}`), never retried; events
//! may repeat (a redelivery) or, rarely, be lost: consumers deduplicate by
//! (`id`, `outcome`).

use std::time::SystemTime;

use lapin::message::Delivery;
use serde::Serialize;
use tracing::warn;

use super::Worker;
use crate::amqp::dead_letter::Reason;
use crate::amqp::source_word;
use crate::job::{Job, format_rfc3339};

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
    /// Publishes the event for `outcome` in the background.
    pub(super) fn emit(&self, delivery: &Delivery, job: &Job, attempts: u32, outcome: Outcome<'_>) {
        if !self.settings.events {
            return;
        }
        let (key, bytes) = event(delivery, job, attempts, &outcome);
        let label = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::DeadLettered { .. } => "dead_lettered",
        };
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let result = match publisher.get() {
                Some(p) if publisher.blocked().is_none() => p
                    .publish_event(&key, &bytes)
                    .await
                    .map_err(|e| e.to_string()),
                Some(_) => Err("the broker blocks publishing".to_owned()),
                None => Err("not connected to the broker".to_owned()),
            };
            match result {
                Ok(()) => metrics.event_published(label),
                Err(error) => {
                    metrics.event_published("failed");
                    warn!(
                        routing_key = key.as_str(),
                        error = error.as_str(),
                        "an outcome event could not be published; it is lost (the job's outcome stands)"
                    );
                }
            }
        });
    }
}

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
use serde_json::{Value, json};
use tracing::warn;

use super::Worker;
use crate::amqp::dead_letter::Reason;
use crate::amqp::source_word;
use crate::job::{Job, format_rfc3339};

/// What became of a job, as an event says it.
pub(super) enum Outcome<'a> {
    /// Twilio accepted it (or had, as reconciliation found).
    Sent { message_sid: &'a str },
    /// Given up on, with the reason and Twilio's code when it gave one.
    DeadLettered {
        reason: Reason,
        twilio_code: Option<u32>,
    },
}

/// The routing key and the body of the event for `outcome`.
fn event(delivery: &Delivery, job: &Job, attempts: u32, outcome: &Outcome<'_>) -> (String, Value) {
    let source = source_word(delivery.properties.app_id().as_ref().map(|a| a.as_str()));
    let mut body = json!({
        "id": job.id.as_str(),
        "type": job.kind.as_str(),
        "to": job.to.masked(),
        "attempts": attempts,
        "at": format_rfc3339(SystemTime::now()),
    });
    let key = match outcome {
        Outcome::Sent { message_sid } => {
            body["outcome"] = json!("sent");
            body["message_sid"] = json!(message_sid);
            format!("{source}.sent")
        }
        Outcome::DeadLettered {
            reason,
            twilio_code,
        } => {
            body["outcome"] = json!("dead_lettered");
            body["reason"] = json!(reason.as_str());
            if let Some(code) = twilio_code {
                body["twilio_code"] = json!(code);
            }
            format!("{source}.dead_lettered.{}", reason.as_str())
        }
    };
    (key, body)
}

impl Worker {
    /// Publishes the event for `outcome` in the background.
    pub(super) fn emit(&self, delivery: &Delivery, job: &Job, attempts: u32, outcome: Outcome<'_>) {
        let (key, body) = event(delivery, job, attempts, &outcome);
        let label = match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::DeadLettered { .. } => "dead_lettered",
        };
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let bytes = body.to_string().into_bytes();
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

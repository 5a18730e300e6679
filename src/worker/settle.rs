//! Settlement: how a job leaves the worker's hands. Ack after Twilio's 201;
//! dead-letter or park (publish, wait for the confirm, then ack); put back
//! while paused. A delivery whose channel is gone is left to the broker,
//! which delivers it again.

use std::time::{Duration, SystemTime};

use lapin::Acker;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicNackOptions, BasicRejectOptions};
use tracing::{error, info, warn};

use super::acks::Acks;
use super::events::Outcome;
use super::send::RetryIn;
use super::{Finished, Worker};
use crate::amqp::dead_letter::{DeadLetter, Reason};
use crate::amqp::headers::{
    self, HEADER_AMBIGUOUS_SINCE, HEADER_ATTEMPTS, HEADER_DELIVERY_COUNT, HEADER_FIRST_SEEN,
};
use crate::amqp::{CONFIRM_TIMEOUT, PublishError, Received, topology};
use crate::job::Job;
use crate::limits::Refusal;
use crate::retry::DELAY_TIERS;
use crate::twilio::SendError;

/// How long an ack, nack or reject may take. They are queued frames and
/// settle at once on a live connection; on one lapin could not recover they
/// may never settle, and the job must not hold its slot for ever (the broker
/// delivers it again anyway).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a dead letter, retry or put-back is published before the
/// job goes back to the queue (about 6 s of backoff in all).
const PUBLISH_TRIES: u32 = 5;

/// An ack, nack or reject, bounded by [`SETTLE_TIMEOUT`]: `Ok(true)` when it
/// went out.
async fn settle(
    op: impl std::future::Future<Output = Result<bool, lapin::Error>>,
) -> Result<bool, lapin::Error> {
    tokio::time::timeout(SETTLE_TIMEOUT, op)
        .await
        .unwrap_or(Ok(false))
}

/// Puts the delivery back in the queue unchanged (nack, requeue).
async fn requeue(acks: &Acks, acker: &Acker) -> Finished {
    let options = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    match settle(acker.nack(options)).await {
        Ok(true) => {
            acks.forget();
            Finished::Requeued
        }
        Ok(false) | Err(_) => Finished::Abandoned,
    }
}

/// Rejects the delivery without requeueing: the broker dead-letters it to
/// `sms.dead` with `x-death` reason `rejected`. For a handler that panicked.
pub(super) async fn reject(acks: &Acks, acker: &Acker) -> Finished {
    match settle(acker.reject(BasicRejectOptions { requeue: false })).await {
        Ok(true) => {
            acks.forget();
            Finished::Panicked
        }
        Ok(false) | Err(_) => Finished::Abandoned,
    }
}

/// Acks a job whose handler panicked after Twilio accepted it: the job was
/// sent, and a dead letter would invite a replay that sends it again.
pub(super) async fn ack_after_panic(acks: &Acks, acker: &Acker) -> Finished {
    if acks.ack(acker).await {
        Finished::Panicked
    } else {
        Finished::Abandoned
    }
}

/// A retry to park: when and where it comes back, and what it carries.
pub(super) struct Retry {
    /// Twilio calls made so far.
    pub(super) attempts: u32,
    /// How long until it comes back.
    pub(super) delay: Duration,
    /// The delay queue's tier (at least `delay`).
    pub(super) tier: Duration,
    /// When a call that may have created the message was made.
    pub(super) ambiguous_since: Option<SystemTime>,
}

impl Worker {
    /// Acks the delivery (in the next batch, [`Acks`]); `finished` is what
    /// it is reported as.
    pub(super) async fn ack(&self, delivery: &Delivery, finished: Finished) -> Finished {
        if self.acks.ack(&delivery.acker).await {
            finished
        } else {
            warn!("ack lost with the broker connection; the broker will deliver the job again");
            Finished::Abandoned
        }
    }

    /// Puts a job back in the queue for later (the worker is paused). A job
    /// whose expiry is anchored in the message goes back unchanged (nack,
    /// requeue). One without (no `expires_at`, no AMQP timestamp) is
    /// republished with its first-receipt time in `x-sms-first-seen`
    /// (confirmed, then acked), so waiting out a pause cannot restart its
    /// clock.
    pub(super) async fn put_back(
        &self,
        delivery: &Delivery,
        job: &Job,
        received: &Received,
    ) -> Finished {
        if job.expiry_stated || received.first_seen_carried {
            return requeue(&self.acks, &delivery.acker).await;
        }
        let mut table = headers::without(
            delivery.properties.headers().as_ref(),
            &[HEADER_DELIVERY_COUNT],
        );
        headers::set_i64(
            &mut table,
            HEADER_FIRST_SEEN,
            headers::unix_millis(received.first_seen),
        );
        let properties = delivery.properties.clone().with_headers(table);
        if let Err(left) = self
            .publish_until_safe(
                delivery,
                topology::EXCHANGE,
                topology::ROUTING_KEY,
                properties,
            )
            .await
        {
            return left;
        }
        self.ack(delivery, Finished::Requeued).await
    }

    /// Moves a job an abuse limit refused to `sms.blocked` (reason
    /// `blocked`, `x-sms-error` naming the rule, never the number or IP),
    /// waits for the confirm, then acks.
    pub(super) async fn block(
        &self,
        delivery: &Delivery,
        refusal: Refusal,
        received: &Received,
        job: &Job,
    ) -> Finished {
        let letter = DeadLetter::new(Reason::Blocked, refusal.rule, received);
        let attempts = letter.attempts;
        let properties = letter.properties(&delivery.properties);
        if let Err(left) = self
            .publish_until_safe(delivery, "", topology::BLOCKED_QUEUE, properties)
            .await
        {
            return left;
        }
        warn!(
            outcome = "blocked",
            rule = refusal.rule,
            "refused by an abuse limit; moved to sms.blocked, not sent"
        );
        let finished = self
            .ack(delivery, Finished::DeadLettered(Reason::Blocked))
            .await;
        if matches!(finished, Finished::DeadLettered(_)) {
            let outcome = Outcome::DeadLettered {
                reason: Reason::Blocked,
                twilio_code: None,
            };
            self.emit(delivery, job, attempts, outcome);
        }
        finished
    }

    /// Publishes the dead letter, waits for the confirm, then acks, and
    /// tells the job's source (when the job could be decoded).
    pub(super) async fn dead_letter(
        &self,
        delivery: &Delivery,
        letter: DeadLetter<'_>,
        job: Option<&Job>,
    ) -> Finished {
        let properties = letter.properties(&delivery.properties);
        if let Err(left) = self
            .publish_until_safe(
                delivery,
                topology::DEAD_LETTER_EXCHANGE,
                topology::ROUTING_KEY,
                properties,
            )
            .await
        {
            return left;
        }
        self.metrics.dead_lettered(letter.reason.as_str());
        warn!(
            outcome = "dead_lettered",
            reason = letter.reason.as_str(),
            error = letter.error,
            attempts = letter.attempts,
            twilio_code = letter.twilio_code,
            "dead-lettered"
        );
        let finished = self
            .ack(delivery, Finished::DeadLettered(letter.reason))
            .await;
        if let Some(job) = job
            && matches!(finished, Finished::DeadLettered(_))
        {
            let outcome = Outcome::DeadLettered {
                reason: letter.reason,
                twilio_code: letter.twilio_code,
            };
            self.emit(delivery, job, letter.attempts, outcome);
        }
        finished
    }

    /// Publishes the job to its delay queue with the attempt count, waits for
    /// the confirm, then acks.
    pub(super) async fn park(
        &self,
        delivery: &Delivery,
        received: &Received,
        error: &SendError,
        retry: Retry,
    ) -> Finished {
        match self
            .publish_to_delay_queue(delivery, received, &retry)
            .await
        {
            Ok(queue) => {
                self.count_retry(error, retry.attempts, retry.delay, RetryIn::Queue(&queue));
                self.ack(delivery, Finished::Parked).await
            }
            Err(left) => left,
        }
    }

    /// Parks a job another worker is sending right now (its Redis lease is
    /// live, as right after that worker's `kill -9`) in the shortest delay
    /// queue, with its attempt count unchanged: never acked unsent, never
    /// requeued in a loop. When it comes back, the fleet's record says
    /// whether the other worker's call went through.
    pub(super) async fn park_while_leased(
        &self,
        delivery: &Delivery,
        received: &Received,
    ) -> Finished {
        let retry = Retry {
            attempts: received.attempts,
            delay: DELAY_TIERS[0],
            tier: DELAY_TIERS[0],
            ambiguous_since: received.ambiguous_since,
        };
        match self
            .publish_to_delay_queue(delivery, received, &retry)
            .await
        {
            Ok(queue) => {
                info!(
                    outcome = "parked",
                    queue = queue.as_str(),
                    "another worker is sending this job right now; looking again later"
                );
                self.ack(delivery, Finished::Parked).await
            }
            Err(left) => left,
        }
    }

    /// Publishes a copy of the job to the delay queue of `retry.tier`, to
    /// come back after `retry.delay`, with the attempt count, its first
    /// receipt and any ambiguous call in its headers. Returns the queue's
    /// name once the broker confirmed it.
    async fn publish_to_delay_queue(
        &self,
        delivery: &Delivery,
        received: &Received,
        retry: &Retry,
    ) -> Result<String, Finished> {
        let mut table = headers::without(
            delivery.properties.headers().as_ref(),
            &[HEADER_DELIVERY_COUNT, HEADER_AMBIGUOUS_SINCE],
        );
        headers::set_i64(&mut table, HEADER_ATTEMPTS, i64::from(retry.attempts));
        if let Some(since) = retry.ambiguous_since {
            headers::set_i64(
                &mut table,
                HEADER_AMBIGUOUS_SINCE,
                headers::unix_millis(since),
            );
        }
        headers::set_i64(
            &mut table,
            HEADER_FIRST_SEEN,
            headers::unix_millis(received.first_seen),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(table)
            .with_expiration(retry.delay.as_millis().to_string().into());
        let queue = topology::delay_queue(retry.tier);
        self.publish_until_safe(delivery, "", &queue, properties)
            .await
            .map(|()| queue)
    }

    /// Publishes a copy of the delivery's body and waits for the confirm,
    /// trying [`PUBLISH_TRIES`] times with backoff while the delivery can
    /// still be settled. A channel the broker closed is reopened first; while
    /// the broker blocks publishing (an alarm), nothing is written, so no
    /// unconfirmed copy can land later. `Err` says how the delivery was left
    /// instead: abandoned to the broker (its channel is gone, so it comes
    /// back), or put back (after an unconfirmed publish, an alarm that did not
    /// clear, or every try failing; the worker then reports not ready until a
    /// publish succeeds).
    async fn publish_until_safe(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
    ) -> Result<(), Finished> {
        let mut wait = Duration::from_millis(200);
        let mut last_error = String::new();
        for _ in 0..PUBLISH_TRIES {
            if !delivery.acker.usable() {
                warn!("the delivery's channel is gone; the broker will deliver the job again");
                return Err(Finished::Abandoned);
            }
            if let Some(reason) = self.publisher.blocked()
                && !self.publisher.wait_unblocked(CONFIRM_TIMEOUT).await
            {
                warn!(
                    reason = reason.as_str(),
                    exchange, "the broker still blocks publishing; putting the job back"
                );
                return Err(requeue(&self.acks, &delivery.acker).await);
            }
            let publisher = match self.publisher.get() {
                Some(p) if self.publisher.repair().await => self.publisher.get().unwrap_or(p),
                _ => {
                    last_error = "no usable publishing channel".to_owned();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            match publisher
                .publish(exchange, routing_key, &delivery.data, properties.clone())
                .await
            {
                Ok(()) => {
                    self.health.set_publish_failing(None);
                    return Ok(());
                }
                Err(e @ PublishError::Timeout(_)) => {
                    warn!(error = %e, exchange, routing_key, "unconfirmed publish; putting the job back (it may now be queued twice)");
                    return Err(requeue(&self.acks, &delivery.acker).await);
                }
                Err(e) => {
                    error!(error = %e, exchange, routing_key, retry_in_ms = wait.as_millis() as u64, "publish failed; holding the job and trying again");
                    last_error = e.to_string();
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    if matches!(e, PublishError::Nacked) {
                        // A channel the broker keeps refusing: a new one.
                        self.publisher.renew_channel().await;
                    }
                    if matches!(e, PublishError::Unroutable { .. }) {
                        // Someone deleted a queue or binding: put it back.
                        if let Err(e) =
                            topology::declare(publisher.channel(), self.settings.broker.queue_type)
                                .await
                        {
                            warn!(error = %e, "re-declaring the topology failed");
                        }
                    }
                }
            }
        }
        error!(
            error = last_error.as_str(),
            exchange,
            tries = PUBLISH_TRIES,
            "publishing keeps failing; putting the job back and reporting not ready"
        );
        self.health.set_publish_failing(Some(format!(
            "publishing to {exchange} failed {PUBLISH_TRIES} times: {last_error}"
        )));
        Err(requeue(&self.acks, &delivery.acker).await)
    }
}

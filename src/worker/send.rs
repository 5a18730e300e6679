//! Sending: calls Twilio until it accepts, refuses for good, or a retry must
//! wait longer than the in-process budget; then says what to do next.

use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use lapin::Acker;

use super::reconcile::Reconciled;
use super::{Handling, Worker};
use crate::amqp::Received;
use crate::amqp::dead_letter::Reason;
use crate::amqp::headers::unix_millis;
use crate::amqp::source_word;
use crate::fleet::LeaseCheck;
use crate::job::Job;
use crate::retry::RetryDecision;
use crate::twilio::{Accepted, Class, Outgoing, SendError, TwilioClient};

/// The outcome of the send step.
pub(super) enum SendResult {
    /// Twilio accepted it, after this many attempts in all.
    Sent(Accepted, u32),
    /// Twilio refused or failed; `next` says what becomes of the job.
    Failed {
        error: SendError,
        attempts: u32,
        next: Next,
        /// When a call that may have created the message was made: a parked
        /// retry carries it, so that it reconciles before calling again.
        ambiguous_since: Option<SystemTime>,
    },
    /// An earlier call had created the message after all (Twilio lists it
    /// under this SID): ack without sending.
    Reconciled(String, u32),
    /// The code went stale before an attempt.
    Expired(u32),
    /// The worker is paused; the job goes back untouched.
    Paused,
    /// Sent already: by another task of this process (the broker delivered
    /// it again after a reconnect), or by the fleet (Redis has its SID).
    /// Ack without sending.
    Duplicate(Store),
    /// Another worker's call for it is in flight (its Redis lease is live,
    /// as right after a `kill -9`): park it briefly, without an attempt.
    SentElsewhere,
    /// The delivery's channel is gone (a reconnect): the broker delivers the
    /// job again, and the new delivery is the one to send.
    Abandoned,
}

/// Where a duplicate was recognised.
pub(super) enum Store {
    /// This process's memory.
    Memory,
    /// The fleet's Redis, which knows the message SID.
    Redis { sid: String },
}

impl Store {
    /// The `store` label of `sms_duplicates_suppressed_total`.
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis { .. } => "redis",
        }
    }
}

/// How long a Redis lease outlives the call's own timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// What to do with a failed job.
pub(super) enum Next {
    DeadLetter(Reason),
    Park { delay: Duration, tier: Duration },
    Requeue,
}

/// Where a retry waits, for its log line.
#[derive(Clone, Copy)]
pub(super) enum RetryIn<'a> {
    /// Sleeping in this process.
    Process,
    /// Parked in this delay queue.
    Queue(&'a str),
}

impl Worker {
    /// Calls Twilio until it accepts, refuses for good, or a retry must wait
    /// longer than the in-process budget.
    pub(super) async fn send(
        &self,
        client: &TwilioClient,
        acker: &Acker,
        job: &Job,
        body: &str,
        received: &Received,
        handling: Handling,
    ) -> SendResult {
        let mut attempts = received.attempts;
        let mut ambiguous_since = received.ambiguous_since;
        // What the status callback needs to know of the job, in its URL.
        let published = received.published_at.unwrap_or(received.first_seen);
        let callback_query = form_urlencoded::Serializer::new(String::new())
            .append_pair("id", job.id.as_str())
            .append_pair("type", job.kind.as_str())
            .append_pair("published", &unix_millis(published).to_string())
            .append_pair("source", &source_word(received.app_id.as_deref()))
            .finish();
        loop {
            if let Some(stop) = self.before_attempt(acker, job, attempts, handling) {
                return stop;
            }
            // One task at a time calls Twilio for an id; a second copy of
            // the job (redelivered after a reconnect) waits, then finds it
            // sent.
            let claim = if job.id_is_distinct {
                loop {
                    if self.recent.contains(&job.id) {
                        return SendResult::Duplicate(Store::Memory);
                    }
                    if let Some(claim) = self.in_flight.claim(&job.id).await {
                        break Some(claim);
                    }
                }
            } else {
                None
            };
            let permit = self.throttle.acquire().await;
            // The wait may have been long (a rate limit's hold): look again,
            // right before the call.
            if let Some(stop) = self.before_attempt(acker, job, attempts, handling) {
                return stop;
            }
            // Across the fleet: sent already, or being sent by another
            // worker? Else a lease for this call, taken right before it and
            // living as long as the call may (plus a margin).
            let lease = match &self.fleet {
                Some(fleet) if job.id_is_distinct => {
                    let lease_for = client.request_timeout() + LEASE_MARGIN;
                    match fleet.check_and_lease(&job.id, lease_for).await {
                        LeaseCheck::Sent { sid } => {
                            self.recent.insert(&job.id);
                            return SendResult::Duplicate(Store::Redis { sid });
                        }
                        LeaseCheck::Busy => return SendResult::SentElsewhere,
                        LeaseCheck::Leased { lease, earlier } => {
                            // An attempt left its marker and no record (its
                            // worker died mid-call): it may have sent.
                            if let Some(earlier) = earlier {
                                ambiguous_since =
                                    Some(ambiguous_since.map_or(earlier, |a| a.min(earlier)));
                            }
                            Some(lease)
                        }
                        // Redis is down: this process's memory decides.
                        LeaseCheck::Unavailable => None,
                    }
                }
                _ => None,
            };
            // An earlier call may have created the message: ask Twilio before
            // calling again.
            if let Some(since) = ambiguous_since.take() {
                match self.reconcile(client, job, body, since).await {
                    Reconciled::Found(sid) => {
                        self.recent.insert(&job.id);
                        if let Some(fleet) = &self.fleet {
                            fleet
                                .record_sent(&job.id, &sid, job.expires_at, lease.as_ref())
                                .await;
                        }
                        return SendResult::Reconciled(sid, attempts);
                    }
                    Reconciled::NotFound | Reconciled::Failed => {
                        if let (Some(fleet), Some(lease)) = (&self.fleet, &lease) {
                            let lease_for = client.request_timeout() + LEASE_MARGIN;
                            fleet.renew(&job.id, lease, lease_for).await;
                        }
                    }
                }
                // The wait and the list took time.
                if let Some(stop) = self.before_attempt(acker, job, attempts, handling) {
                    return stop;
                }
            }
            attempts += 1;
            let started = Instant::now();
            let called_at = SystemTime::now();
            let result = client
                .send(Outgoing {
                    to: &job.to,
                    body,
                    validity: job.time_left(SystemTime::now()),
                    callback_query: &callback_query,
                })
                .await;
            drop(permit);
            self.metrics
                .twilio_request_duration
                .observe(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(accepted) => {
                    self.throttle.accepted();
                    if job.id_is_distinct {
                        // Recorded before the claim ends, so a waiting copy
                        // finds it.
                        self.recent.insert(&job.id);
                        if let Some(fleet) = &self.fleet {
                            fleet
                                .record_sent(&job.id, &accepted.sid, job.expires_at, lease.as_ref())
                                .await;
                        }
                    }
                    drop(claim);
                    return SendResult::Sent(accepted, attempts);
                }
                Err(error) => error,
            };
            if let (Some(fleet), Some(lease)) = (&self.fleet, &lease) {
                fleet.release(&job.id, lease, !error.may_have_sent()).await;
            }
            drop(claim);
            // A timeout or a 5xx may have created the message: whoever tries
            // next reconciles first.
            if error.may_have_sent() {
                ambiguous_since.get_or_insert(called_at);
            }
            let class = error.class();
            let class_label = if error.is_network() {
                "network"
            } else {
                class.as_str()
            };
            self.metrics.send_failed(class_label, error.twilio_code());
            let next = match class {
                Class::Permanent => Next::DeadLetter(Reason::Rejected),
                Class::Config => {
                    if self.pause.trip(&error.to_string()) {
                        warn!(
                            outcome = "paused",
                            twilio_code = error.twilio_code(),
                            error = %error,
                            "paused: Twilio reports an account or configuration fault that every job would hit; jobs stay queued until a probe send succeeds"
                        );
                    }
                    Next::Requeue
                }
                Class::Transient => {
                    if error.is_rate_limit()
                        && let Some(cut) = self.throttle.rate_limited(error.retry_after())
                    {
                        warn!(
                            limit = cut.limit,
                            hold_ms = cut.hold.map(|h| h.as_millis() as u64),
                            "rate limited by Twilio: fewer concurrent calls until it recovers"
                        );
                    }
                    let time_left = job.time_left(SystemTime::now());
                    match self
                        .settings
                        .retry
                        .decide(attempts, error.retry_after(), time_left)
                    {
                        RetryDecision::Wait(delay) => {
                            self.count_retry(&error, attempts, delay, RetryIn::Process);
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        RetryDecision::Park { delay, tier } => Next::Park { delay, tier },
                        RetryDecision::Exhausted => Next::DeadLetter(Reason::RetriesExhausted),
                        RetryDecision::WouldExpire { .. } => Next::DeadLetter(Reason::Expired),
                    }
                }
            };
            return SendResult::Failed {
                error,
                attempts,
                next,
                ambiguous_since,
            };
        }
    }

    /// What stops an attempt before it is made: the delivery can no longer
    /// be settled (its channel was lost: the broker hands the job out again,
    /// and sending this copy would send it twice), the code went stale, or
    /// the worker is paused (a probe goes ahead regardless).
    fn before_attempt(
        &self,
        acker: &Acker,
        job: &Job,
        attempts: u32,
        handling: Handling,
    ) -> Option<SendResult> {
        if !acker.usable() {
            return Some(SendResult::Abandoned);
        }
        if job.is_expired(SystemTime::now()) {
            return Some(SendResult::Expired(attempts));
        }
        if self.pause.is_paused() && handling == Handling::Normal {
            return Some(SendResult::Paused);
        }
        None
    }

    /// Counts and logs one retry, wherever it waits.
    pub(super) fn count_retry(
        &self,
        error: &SendError,
        attempts: u32,
        delay: Duration,
        place: RetryIn<'_>,
    ) {
        self.metrics.retries.inc();
        let (queue, message) = match place {
            RetryIn::Process => (None, "retrying in the process"),
            RetryIn::Queue(queue) => (Some(queue), "retry scheduled in a delay queue"),
        };
        info!(
            outcome = "retry",
            delay_ms = delay.as_millis() as u64,
            queue,
            twilio_code = error.twilio_code(),
            may_have_sent = error.may_have_sent(),
            error = %error,
            attempts,
            "{message}"
        );
    }
}

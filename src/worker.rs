//! The worker: the life of one job.
//!
//! [`Worker::handle`] is the life of one job, in order: decode → choose the
//! template → send (retrying transient failures) → ack, park for a later retry,
//! dead-letter, or put back. Every ack follows a safe outcome: Twilio's 201, or
//! the broker's confirm of the dead letter or the parked retry. The loop that
//! feeds it deliveries is [`crate::consumer`].

use std::time::{Duration, Instant, SystemTime};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::{Instrument, error, info, info_span, warn};

use crate::broker::{PublishError, SharedPublisher};
use crate::classify::Class;
use crate::config::{Config, ConfigError, QueueType};
use crate::dead_letter::{self, DeadLetter, Reason};
use crate::encoding;
use crate::job::{Envelope, Job};
use crate::metrics::Metrics;
use crate::pause::Pause;
use crate::recent::RecentlySent;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::templates::Templates;
use crate::throttle::Throttle;
use crate::topology::{self, HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_TRACEPARENT};
use crate::trace_context::TraceParent;
use crate::twilio::{Accepted, Outgoing, SendError, TwilioClient};

/// How a job leaves the worker's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Twilio accepted it; acked.
    Sent,
    /// Acked without sending: this process sent it already.
    Duplicate,
    /// Dead-lettered (confirmed), then acked.
    DeadLettered(Reason),
    /// Parked in a delay queue (confirmed), then acked.
    Parked,
    /// Put back in the queue unchanged: the worker is paused.
    Requeued,
    /// Left unacked: the broker connection was lost, so the broker will
    /// deliver it again.
    Abandoned,
    /// The handler panicked (a bug); the job was rejected to `sms.dead`.
    Panicked,
}

/// Where messages go: Twilio, or (with `--dry-run`) the log.
pub enum Transport {
    Twilio(TwilioClient),
    /// Renders and logs, masked, instead of calling Twilio.
    DryRun,
}

/// What one job needs, shared by every job of a worker.
pub struct Worker {
    templates: Templates,
    queue_type: QueueType,
    transport: Transport,
    /// The current connection's publisher.
    publisher: SharedPublisher,
    retry: RetryPolicy,
    default_ttl: Duration,
    metrics: Metrics,
    pause: Pause,
    throttle: Throttle,
    recent: RecentlySent,
}

/// The outcome of the send step.
enum SendResult {
    Sent(Accepted, u32),
    Failed {
        error: SendError,
        attempts: u32,
        next: Next,
    },
    /// The code went stale before an attempt.
    Expired(u32),
    /// The worker is paused; the job goes back untouched.
    Paused,
}

/// What to do with a failed job.
enum Next {
    DeadLetter(Reason),
    Park { delay: Duration, tier: Duration },
    Requeue,
}

/// What the transport says about a delivery, besides its body.
struct Received {
    attempts: u32,
    published_at: Option<SystemTime>,
    first_seen: SystemTime,
    /// Whether the first-receipt time came with the message (publish time or
    /// our header) rather than from this delivery.
    first_seen_carried: bool,
    trace: Option<TraceParent>,
}

impl Received {
    fn read(properties: &BasicProperties, now: SystemTime) -> Received {
        let headers = properties.headers().as_ref();
        let attempts = topology::header_i64(headers, HEADER_ATTEMPTS)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(0);
        let published_at = topology::published_at(properties);
        let carried = topology::first_seen(headers).or(published_at);
        let first_seen = carried.unwrap_or(now);
        let trace = topology::header_str(headers, HEADER_TRACEPARENT).and_then(TraceParent::parse);
        Received {
            attempts,
            published_at,
            first_seen,
            first_seen_carried: carried.is_some(),
            trace,
        }
    }
}

impl Worker {
    /// A worker for `config`, publishing with `publisher`.
    pub fn new(
        config: &Config,
        transport: Transport,
        publisher: SharedPublisher,
        metrics: Metrics,
        pause: Pause,
    ) -> Result<Worker, ConfigError> {
        let prefetch = usize::from(config.broker.prefetch);
        Ok(Worker {
            templates: config.templates_required()?.clone(),
            queue_type: config.broker.queue_type,
            transport,
            publisher,
            retry: config.retry.clone(),
            default_ttl: config.default_ttl,
            metrics,
            pause,
            throttle: Throttle::new(prefetch),
            // Redeliveries after a lost connection are the jobs that were in
            // flight: a few prefetches' worth of ids covers them with room.
            recent: RecentlySent::new(10_000.max(prefetch * 64), Duration::from_secs(3600)),
        })
    }

    /// The pause switch.
    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    /// [`Worker::handle`], counted in `sms_in_flight`, with a guard: a bug
    /// that panics must not leave the delivery unacked for ever. The broker
    /// dead-letters a rejected job to `sms.dead` (`x-death` reason
    /// `rejected`), so it is neither lost nor retried in a loop.
    pub async fn handle_guarded(&self, delivery: Delivery, probe: bool) -> Finished {
        use futures_lite::FutureExt as _;
        let acker = delivery.acker.clone();
        self.metrics.in_flight.inc();
        let outcome = std::panic::AssertUnwindSafe(self.handle(delivery, probe))
            .catch_unwind()
            .await;
        self.metrics.in_flight.dec();
        match outcome {
            Ok(finished) => finished,
            Err(_) => {
                error!("the job handler panicked; rejecting the job to the dead-letter queue");
                let reject = lapin::options::BasicRejectOptions { requeue: false };
                match settle(acker.reject(reject)).await {
                    Ok(true) => Finished::Panicked,
                    Ok(false) | Err(_) => Finished::Abandoned,
                }
            }
        }
    }

    /// The life of one job. Returns how it left the worker.
    pub async fn handle(&self, delivery: Delivery, probe: bool) -> Finished {
        let now = SystemTime::now();
        let received = Received::read(&delivery.properties, now);
        let envelope = Envelope {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            published_at: received.published_at,
            first_seen: Some(received.first_seen),
        };

        // 1. Decode.
        let job = match Job::decode(&delivery.data, &envelope, self.default_ttl, now) {
            Ok(job) => job,
            Err(invalid) => {
                self.metrics.received(None);
                let span = info_span!("job", attempt = received.attempts + 1);
                return self
                    .dead_letter(
                        &delivery,
                        DeadLetter {
                            reason: Reason::InvalidJob,
                            error: &invalid.to_string(),
                            attempts: received.attempts,
                            twilio_code: None,
                            first_seen: received.first_seen,
                        },
                    )
                    .instrument(span)
                    .await;
            }
        };
        let trace = received.trace.clone().or_else(|| {
            job.payload
                .vars()
                .get("traceparent")
                .and_then(|v| v.as_str())
                .and_then(TraceParent::parse)
        });
        let span = info_span!(
            "job",
            job_id = %job.id,
            r#type = job.kind.as_str(),
            to = %job.to.masked(),
            attempt = received.attempts + 1,
            redelivered = delivery.redelivered,
            trace_id = trace.as_ref().map(|t| t.trace_id.as_str()),
            message_sid = tracing::field::Empty,
        );
        if let Some(parent) = &trace {
            crate::telemetry::set_remote_parent(&span, parent);
        }
        self.life_of(delivery, job, received, probe)
            .instrument(span)
            .await
    }

    async fn life_of(
        &self,
        delivery: Delivery,
        job: Job,
        received: Received,
        probe: bool,
    ) -> Finished {
        self.metrics.received(Some(job.kind));
        if job.id_is_distinct && self.recent.contains(&job.id) {
            info!(
                outcome = "duplicate",
                "already sent by this worker; acking the redelivery without sending"
            );
            return self.ack(&delivery, Finished::Duplicate).await;
        }

        // 2. Never a stale code.
        if job.is_expired(SystemTime::now()) {
            return self
                .dead_letter(
                    &delivery,
                    DeadLetter {
                        reason: Reason::Expired,
                        error: "expired before it could be sent",
                        attempts: received.attempts,
                        twilio_code: None,
                        first_seen: received.first_seen,
                    },
                )
                .await;
        }

        // 3. Choose the template.
        let Some(template) = self.templates.select(job.kind, job.payload.locale()) else {
            let error = format!(
                "no template for type {} (locale {}) and no Generic template",
                job.kind,
                job.payload.locale().map_or("none", |l| if is_tag(l) {
                    l
                } else {
                    "not a language tag"
                })
            );
            return self
                .dead_letter(
                    &delivery,
                    DeadLetter {
                        reason: Reason::NoTemplate,
                        error: &error,
                        attempts: received.attempts,
                        twilio_code: None,
                        first_seen: received.first_seen,
                    },
                )
                .await;
        };
        let body = template.render(&job.payload);

        // 4. Send, retrying transient failures for as long as the budget and
        //    the code's life allow.
        let result = match &self.transport {
            Transport::DryRun => {
                info!(body = %template.render_masked(&job.payload), "dry run: not calling Twilio");
                SendResult::Sent(
                    Accepted {
                        sid: "dry-run".to_owned(),
                        status: "dry-run".to_owned(),
                        segments: None,
                    },
                    received.attempts,
                )
            }
            Transport::Twilio(client) => {
                self.send(client, &job, &body, received.attempts, probe)
                    .await
            }
        };

        // 5. Ack, park, dead-letter or put back.
        match result {
            SendResult::Sent(accepted, attempts) => {
                if job.id_is_distinct {
                    self.recent.insert(&job.id);
                }
                tracing::Span::current().record("message_sid", accepted.sid.as_str());
                let counted = encoding::segments(&body);
                let segments = accepted.segments.map_or(counted.count as u64, u64::from);
                let age = SystemTime::now()
                    .duration_since(received.published_at.unwrap_or(received.first_seen))
                    .ok();
                self.metrics.sent(job.kind, counted.encoding, segments, age);
                info!(
                    outcome = "sent",
                    attempts,
                    segments,
                    encoding = counted.encoding.as_str(),
                    age_ms = age.map(|a| a.as_millis() as u64),
                    "sent"
                );
                self.ack(&delivery, Finished::Sent).await
            }
            SendResult::Expired(attempts) => {
                self.dead_letter(
                    &delivery,
                    DeadLetter {
                        reason: Reason::Expired,
                        error: "expired before the next attempt",
                        attempts,
                        twilio_code: None,
                        first_seen: received.first_seen,
                    },
                )
                .await
            }
            SendResult::Paused => self.put_back(&delivery, &job, &received).await,
            SendResult::Failed {
                error,
                attempts,
                next,
            } => match next {
                Next::DeadLetter(reason) => {
                    self.dead_letter(
                        &delivery,
                        DeadLetter {
                            reason,
                            error: &error.to_string(),
                            attempts,
                            twilio_code: error.twilio_code(),
                            first_seen: received.first_seen,
                        },
                    )
                    .await
                }
                Next::Park { delay, tier } => {
                    self.park(&delivery, &received, &error, attempts, delay, tier)
                        .await
                }
                Next::Requeue => self.put_back(&delivery, &job, &received).await,
            },
        }
    }

    /// Calls Twilio until it accepts, refuses for good, or a retry must wait
    /// longer than the in-process budget.
    async fn send(
        &self,
        client: &TwilioClient,
        job: &Job,
        body: &str,
        mut attempts: u32,
        probe: bool,
    ) -> SendResult {
        loop {
            let now = SystemTime::now();
            if job.is_expired(now) {
                return SendResult::Expired(attempts);
            }
            if self.pause.is_paused() && !probe {
                return SendResult::Paused;
            }
            let permit = self.throttle.acquire().await;
            // The wait may have been long: look again.
            let now = SystemTime::now();
            if job.is_expired(now) {
                return SendResult::Expired(attempts);
            }
            if self.pause.is_paused() && !probe {
                return SendResult::Paused;
            }
            attempts += 1;
            let started = Instant::now();
            let result = client
                .send(Outgoing {
                    to: &job.to,
                    body,
                    validity: job.time_left(now),
                })
                .await;
            drop(permit);
            self.metrics
                .twilio_request_duration
                .observe(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(accepted) => {
                    self.throttle.accepted();
                    return SendResult::Sent(accepted, attempts);
                }
                Err(error) => error,
            };
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
                    match self.retry.decide(attempts, error.retry_after(), time_left) {
                        RetryDecision::Wait(delay) => {
                            self.metrics.retries.inc();
                            info!(
                                outcome = "retry",
                                delay_ms = delay.as_millis() as u64,
                                twilio_code = error.twilio_code(),
                                may_have_sent = error.may_have_sent(),
                                error = %error,
                                attempts,
                                "retrying in the process"
                            );
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
            };
        }
    }

    async fn ack(&self, delivery: &Delivery, finished: Finished) -> Finished {
        match settle(delivery.acker.ack(BasicAckOptions::default())).await {
            Ok(true) => finished,
            Ok(false) | Err(_) => {
                warn!("ack lost with the broker connection; the broker will deliver the job again");
                Finished::Abandoned
            }
        }
    }

    /// Puts a job back in the queue for later (the worker is paused). A job
    /// whose expiry is anchored in the message goes back unchanged (nack,
    /// requeue). One without (no `expires_at`, no AMQP timestamp) is
    /// republished with its first-receipt time in `x-sms-first-seen`
    /// (confirmed, then acked), so waiting out a pause cannot restart its
    /// clock.
    async fn put_back(&self, delivery: &Delivery, job: &Job, received: &Received) -> Finished {
        if job.expiry_stated || received.first_seen_carried {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            return match settle(delivery.acker.nack(requeue)).await {
                Ok(true) => Finished::Requeued,
                Ok(false) | Err(_) => Finished::Abandoned,
            };
        }
        let mut headers = dead_letter::without(
            delivery.properties.headers().as_ref(),
            &[topology::HEADER_DELIVERY_COUNT],
        );
        topology::set_i64(
            &mut headers,
            HEADER_FIRST_SEEN,
            unix_millis(received.first_seen),
        );
        let properties = delivery.properties.clone().with_headers(headers);
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

    /// Publishes the dead letter, waits for the confirm, then acks.
    async fn dead_letter(&self, delivery: &Delivery, letter: DeadLetter<'_>) -> Finished {
        let properties = letter.properties(&delivery.properties);
        let DeadLetter {
            reason,
            error,
            attempts,
            twilio_code,
            ..
        } = letter;
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
        self.metrics.dead_lettered(reason.as_str());
        warn!(
            outcome = "dead_lettered",
            reason = reason.as_str(),
            error,
            attempts,
            twilio_code,
            "dead-lettered"
        );
        self.ack(delivery, Finished::DeadLettered(reason)).await
    }

    /// Publishes the job to its delay queue with the attempt count, waits for
    /// the confirm, then acks.
    async fn park(
        &self,
        delivery: &Delivery,
        received: &Received,
        error: &SendError,
        attempts: u32,
        delay: Duration,
        tier: Duration,
    ) -> Finished {
        let mut headers = dead_letter::without(
            delivery.properties.headers().as_ref(),
            &[topology::HEADER_DELIVERY_COUNT],
        );
        topology::set_i64(&mut headers, HEADER_ATTEMPTS, i64::from(attempts));
        topology::set_i64(
            &mut headers,
            HEADER_FIRST_SEEN,
            unix_millis(received.first_seen),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_expiration(delay.as_millis().to_string().into());
        let queue = topology::delay_queue(tier);
        if let Err(left) = self
            .publish_until_safe(delivery, "", &queue, properties)
            .await
        {
            return left;
        }
        self.metrics.retries.inc();
        info!(
            outcome = "retry",
            delay_ms = delay.as_millis() as u64,
            queue = queue.as_str(),
            twilio_code = error.twilio_code(),
            may_have_sent = error.may_have_sent(),
            error = %error,
            attempts,
            "retry scheduled in a delay queue"
        );
        self.ack(delivery, Finished::Parked).await
    }

    /// Publishes a copy of the delivery's body and waits for the confirm,
    /// retrying with backoff while the delivery can still be settled. `Err`
    /// says how the delivery was left instead: abandoned to the broker (its
    /// channel is gone, so it comes back), or put back after an unconfirmed
    /// publish (the broker may hold that copy: publishing again could make a
    /// third, so the original goes back and at most one extra copy exists).
    async fn publish_until_safe(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
    ) -> Result<(), Finished> {
        let mut wait = Duration::from_millis(200);
        loop {
            let publisher = match self.publisher.get() {
                Some(p) if delivery.acker.usable() => p,
                _ => {
                    warn!("the delivery's channel is gone; the broker will deliver the job again");
                    return Err(Finished::Abandoned);
                }
            };
            match publisher
                .publish(exchange, routing_key, &delivery.data, properties.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e @ PublishError::Timeout(_)) => {
                    warn!(error = %e, exchange, routing_key, "unconfirmed publish; putting the job back (it may now be queued twice)");
                    let requeue = BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    };
                    return Err(match settle(delivery.acker.nack(requeue)).await {
                        Ok(true) => Finished::Requeued,
                        _ => Finished::Abandoned,
                    });
                }
                Err(e) => {
                    error!(error = %e, exchange, routing_key, retry_in_ms = wait.as_millis() as u64, "publish failed; holding the job and trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                    if matches!(e, PublishError::Unroutable { .. }) {
                        // Someone deleted a queue or binding: put it back.
                        if let Err(e) =
                            topology::declare(publisher.channel(), self.queue_type).await
                        {
                            warn!(error = %e, "re-declaring the topology failed");
                        }
                    }
                }
            }
        }
    }
}

/// How long an ack, nack or reject may take. They are queued frames and
/// settle at once on a live connection; on one lapin could not recover they
/// may never settle, and the job must not hold its slot for ever (the broker
/// delivers it again anyway).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// An ack, nack or reject, bounded by [`SETTLE_TIMEOUT`]: `Ok(true)` when it
/// went out.
async fn settle(
    op: impl std::future::Future<Output = Result<bool, lapin::Error>>,
) -> Result<bool, lapin::Error> {
    tokio::time::timeout(SETTLE_TIMEOUT, op)
        .await
        .unwrap_or(Ok(false))
}

/// Whether an end user's locale looks like a language tag (it is repeated in
/// a dead letter's error text only then).
fn is_tag(locale: &str) -> bool {
    locale.len() <= 35
        && locale
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

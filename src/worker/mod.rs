//! The worker: the life of one job, and the loop that feeds it.
//!
//! [`Worker::handle`] is the life of one job, in order: decode → choose the
//! template → send (retrying transient failures, [`send`]) → ack, park for a
//! later retry, dead-letter, or put back ([`settle`]). Every ack follows a
//! safe outcome: Twilio's 201, or the broker's confirm of the dead letter or
//! the parked retry. The loop that feeds it deliveries, pauses and rides out
//! broker outages is [`consumer`]; [`throttle`] slows every call after a rate
//! limit, [`pause`] stops consuming on an account fault, and [`recent`]
//! remembers what this process sent.

mod acks;
pub(crate) mod consumer;
mod events;
mod in_flight;
pub(crate) mod pause;
mod recent;
mod reconcile;
mod send;
mod settle;
mod throttle;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use lapin::message::Delivery;
use tracing::{Instrument, error, info, info_span, warn};

use crate::amqp::dead_letter::{DeadLetter, Reason};
use crate::amqp::{BrokerSettings, Received, SharedPublisher};
use crate::encoding;
use crate::fleet::RedisStore;
use crate::job::Job;
use crate::limits::{Limiter, region_of};
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::retry::RetryPolicy;
use crate::templates::Templates;
use crate::trace_context::TraceParent;
use crate::twilio::{Accepted, TwilioClient};
use acks::Acks;
pub(crate) use acks::with_ticket;
use in_flight::InFlight;
use pause::Pause;
use recent::RecentlySent;
use send::{Next, SendResult, Store};
use std::sync::Arc;
use throttle::Throttle;

/// What the worker needs besides its connections; assembled by
/// [`crate::config`].
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    /// The broker, the prefetch and the queue type.
    pub(crate) broker: BrokerSettings,
    /// The message texts.
    pub(crate) templates: Templates,
    /// When and how often a transient failure is tried again.
    pub(crate) retry: RetryPolicy,
    /// The life of a job without `expires_at`, from its publish time.
    pub(crate) default_ttl: Duration,
    /// How long jobs in flight may take to finish on SIGTERM.
    pub(crate) shutdown_grace: Duration,
    /// Whether outcome events are published on `sms.events`.
    pub(crate) events: bool,
}

/// How a job leaves the worker's hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished {
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
    /// The handler panicked (a bug); the job was rejected to `sms.dead`, or
    /// acked when Twilio had already accepted it.
    Panicked,
}

/// Where messages go: Twilio, or (with `--dry-run`) the log.
pub(crate) enum Gateway {
    /// The Messages API (boxed: the client is a few hundred bytes).
    Twilio(Box<TwilioClient>),
    /// Renders and logs, masked, instead of calling Twilio.
    DryRun,
}

/// Why a job is being handled: as one of the stream, or as the probe that
/// tests whether the fault behind a pause is gone (a probe is sent even
/// though the worker is paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// A job from the consumer: put back while the worker is paused.
    Normal,
    /// The one job taken with `basic.get` while paused.
    Probe,
}

/// Set once Twilio has accepted the job, so that a panic after that point
/// acks the job instead of dead-lettering it (a replay would send it again).
#[derive(Debug, Default)]
struct SentMark(AtomicBool);

impl SentMark {
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What one job needs, shared by every job of a worker.
pub(crate) struct Worker {
    settings: WorkerSettings,
    gateway: Gateway,
    /// The current connection's publisher.
    publisher: SharedPublisher,
    metrics: Metrics,
    health: Health,
    pause: Pause,
    throttle: Throttle,
    recent: RecentlySent,
    in_flight: InFlight,
    /// The fleet's record of sends and leases, when Redis is configured.
    fleet: Option<RedisStore>,
    /// Twilio list calls (reconciliation) this worker may make at once.
    list_calls: tokio::sync::Semaphore,
    /// The abuse limits (shared with the ingest).
    limiter: Arc<Limiter>,
    /// Acks, batched.
    acks: Acks,
    /// Outcome events, published in batches.
    events: events::EventQueue,
}

impl Worker {
    /// A worker sending through `gateway` and publishing with `publisher`.
    pub(crate) fn new(
        settings: WorkerSettings,
        gateway: Gateway,
        publisher: SharedPublisher,
        metrics: Metrics,
        health: Health,
        fleet: Option<RedisStore>,
        limiter: Arc<Limiter>,
    ) -> Worker {
        let prefetch = usize::from(settings.broker.prefetch);
        Worker {
            settings,
            gateway,
            publisher,
            metrics,
            pause: Pause::new(health.clone()),
            health,
            throttle: Throttle::new(prefetch),
            // Redeliveries after a lost connection are the jobs that were in
            // flight: a few prefetches' worth of ids covers them with room.
            recent: RecentlySent::new(10_000.max(prefetch * 64), Duration::from_secs(3600)),
            in_flight: InFlight::default(),
            fleet,
            list_calls: tokio::sync::Semaphore::new(reconcile::LIST_CALLS),
            limiter,
            acks: Acks::start(prefetch / 4),
            events: events::EventQueue::default(),
        }
    }

    /// The batched acks (the consumer tracks each delivery in them).
    pub(crate) fn acks(&self) -> &Acks {
        &self.acks
    }

    /// The pause switch.
    pub(crate) fn pause(&self) -> &Pause {
        &self.pause
    }

    /// The life of one job ([`Worker::handle`]), counted in `sms_in_flight`,
    /// with a guard: a bug that panics must not leave the delivery unacked
    /// for ever. A job Twilio had already accepted is acked (dead-lettering
    /// it would invite a replay that sends it twice); any other is rejected,
    /// and the broker dead-letters it to `sms.dead` (`x-death` reason
    /// `rejected`), so it is neither lost nor retried in a loop.
    pub(crate) async fn handle_guarded(&self, delivery: Delivery, handling: Handling) -> Finished {
        use futures_lite::FutureExt as _;
        let sent = SentMark::default();
        self.metrics.in_flight.inc();
        let outcome = std::panic::AssertUnwindSafe(self.handle(&delivery, handling, &sent))
            .catch_unwind()
            .await;
        self.metrics.in_flight.dec();
        match outcome {
            Ok(finished) => finished,
            Err(_) if self.acks.settled() => {
                // Acked (maybe by a multiple ack), nacked or rejected before
                // the panic: a second frame would close the channel.
                error!("the job handler panicked after its delivery was settled");
                Finished::Panicked
            }
            Err(_) if sent.is_marked() => {
                error!("the job handler panicked after Twilio accepted the job; acking it");
                settle::ack_after_panic(&self.acks, &delivery.acker).await
            }
            Err(_) => {
                error!("the job handler panicked; rejecting the job to the dead-letter queue");
                settle::reject(&self.acks, &delivery.acker).await
            }
        }
    }

    /// The life of one job. Returns how it left the worker.
    async fn handle(&self, delivery: &Delivery, handling: Handling, sent: &SentMark) -> Finished {
        let now = SystemTime::now();
        let received = Received::read(&delivery.properties, now);

        // 1. Decode.
        let job = match Job::decode(
            &delivery.data,
            &received.envelope(),
            self.settings.default_ttl,
            now,
        ) {
            Ok(job) => job,
            Err(invalid) => {
                self.metrics.received(None);
                let span = info_span!("job", attempt = received.attempts + 1);
                let error = invalid.to_string();
                let letter = DeadLetter::new(Reason::InvalidJob, &error, &received);
                return Box::pin(self.dead_letter(delivery, letter, None).instrument(span)).await;
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
            telemetry::set_remote_parent(&span, parent);
        }
        Box::pin(self.life_of(delivery, job, received, handling, sent))
            .instrument(span)
            .await
    }

    /// Decode is done; the rest of the job's life. Every branch that leaves
    /// the happy path (dead letter, park, put back, block, duplicate) and
    /// every call with a large future is boxed: a future is as large as its
    /// largest await point, and each of the prefetch's in-flight jobs holds
    /// one, so an inline dead-letter path cost every job several KiB it
    /// almost never uses (docs/benchmark.md, peak RSS).
    async fn life_of(
        &self,
        delivery: &Delivery,
        job: Job,
        received: Received,
        handling: Handling,
        sent: &SentMark,
    ) -> Finished {
        self.metrics.received(Some(job.kind));
        if job.id_is_distinct && self.recent.contains(&job.id) {
            self.metrics.duplicate("memory");
            info!(
                outcome = "duplicate",
                store = "memory",
                "already sent by this worker; acking the redelivery without sending"
            );
            return Box::pin(self.ack_duplicate(delivery, &job, received.attempts, None)).await;
        }

        // 2. Never a stale code.
        if job.is_expired(SystemTime::now()) {
            let letter = DeadLetter::new(
                Reason::Expired,
                "expired before it could be sent",
                &received,
            );
            return Box::pin(self.dead_letter(delivery, letter, Some(&job))).await;
        }

        // 3. Choose the template.
        let Some(template) = self
            .settings
            .templates
            .select(job.kind, job.payload.locale())
        else {
            let error = no_template_error(&job);
            let letter = DeadLetter::new(Reason::NoTemplate, &error, &received);
            return Box::pin(self.dead_letter(delivery, letter, Some(&job))).await;
        };
        let body = template.render(&job.payload);
        // Counted once: the limits charge it, the metrics and the log report it.
        let counted = encoding::segments(&body);

        // 4. Abuse limits, before the first attempt only: a retry was
        //    admitted already, and so was a job the ingest checked.
        if received.attempts == 0 && !received.admitted {
            let segments = counted.count as u64;
            if let Err(refusal) = Box::pin(self.limiter.admit(&job.to, job.ip(), segments)).await {
                return Box::pin(self.block(delivery, refusal, &received, &job)).await;
            }
        }

        // 5. Send, retrying transient failures for as long as the budget and
        //    the code's life allow.
        let result = match &self.gateway {
            Gateway::DryRun => {
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
            Gateway::Twilio(client) => {
                Box::pin(self.send(client, &delivery.acker, &job, &body, &received, handling)).await
            }
        };

        // 6. Ack, park, dead-letter or put back.
        match result {
            SendResult::Sent(accepted, attempts) => {
                if job.id_is_distinct {
                    self.recent.insert(&job.id);
                }
                sent.mark();
                tracing::Span::current().record("message_sid", accepted.sid.as_str());
                // Twilio answers `num_segments: "0"` at creation for
                // Messaging Service sends (the count comes later): the
                // local count stands in for it.
                let segments = accepted
                    .segments
                    .filter(|&n| n > 0)
                    .map_or(counted.count as u64, u64::from);
                let age = SystemTime::now()
                    .duration_since(received.published_at.unwrap_or(received.first_seen))
                    .ok();
                let country = region_of(&job.to);
                self.metrics.sent(
                    job.kind,
                    counted.encoding,
                    segments,
                    age,
                    country.as_deref(),
                );
                info!(
                    outcome = "sent",
                    attempts,
                    segments,
                    encoding = counted.encoding.as_str(),
                    age_ms = age.map(|a| a.as_millis() as u64),
                    "sent"
                );
                let finished = self.ack(delivery, Finished::Sent).await;
                if finished == Finished::Sent {
                    let outcome = events::Outcome::Sent {
                        message_sid: Some(&accepted.sid),
                    };
                    self.emit(delivery, &job, attempts, outcome);
                }
                finished
            }
            SendResult::Expired(attempts) => {
                let letter = DeadLetter {
                    attempts,
                    ..DeadLetter::new(
                        Reason::Expired,
                        "expired before the next attempt",
                        &received,
                    )
                };
                Box::pin(self.dead_letter(delivery, letter, Some(&job))).await
            }
            SendResult::Paused => Box::pin(self.put_back(delivery, &job, &received)).await,
            SendResult::Duplicate(store) => {
                self.metrics.duplicate(store.as_str());
                let sid = match &store {
                    Store::Memory => {
                        info!(
                            outcome = "duplicate",
                            store = "memory",
                            "sent by another delivery of the same job in this worker; acking without sending"
                        );
                        None
                    }
                    Store::Redis { sid } => {
                        tracing::Span::current().record("message_sid", sid.as_str());
                        info!(
                            outcome = "duplicate",
                            store = "redis",
                            "sent already by the fleet; acking without sending"
                        );
                        Some(sid.as_str())
                    }
                };
                Box::pin(self.ack_duplicate(delivery, &job, received.attempts, sid)).await
            }
            SendResult::SentElsewhere => {
                Box::pin(self.park_while_leased(delivery, &received)).await
            }
            SendResult::Reconciled(sid, attempts) => {
                if job.id_is_distinct {
                    self.recent.insert(&job.id);
                }
                sent.mark();
                tracing::Span::current().record("message_sid", sid.as_str());
                info!(
                    outcome = "reconciled",
                    attempts, "an earlier attempt had created the message; acking without sending"
                );
                let finished = self.ack(delivery, Finished::Sent).await;
                if finished == Finished::Sent {
                    let outcome = events::Outcome::Sent {
                        message_sid: Some(&sid),
                    };
                    self.emit(delivery, &job, attempts, outcome);
                }
                finished
            }
            SendResult::Abandoned => {
                warn!(
                    "the delivery's channel was lost before the call; not sending (the broker delivers the job again)"
                );
                Finished::Abandoned
            }
            SendResult::Failed {
                error,
                attempts,
                next,
                ambiguous_since,
            } => match next {
                Next::DeadLetter(reason) => {
                    let text = error.to_string();
                    let letter = DeadLetter {
                        attempts,
                        twilio_code: error.twilio_code(),
                        ..DeadLetter::new(reason, &text, &received)
                    };
                    Box::pin(self.dead_letter(delivery, letter, Some(&job))).await
                }
                Next::Park { delay, tier } => {
                    let retry = settle::Retry {
                        attempts,
                        delay,
                        tier,
                        ambiguous_since,
                    };
                    Box::pin(self.park(delivery, &received, &error, retry)).await
                }
                Next::Requeue => Box::pin(self.put_back(delivery, &job, &received)).await,
            },
        }
    }
}

impl Worker {
    /// Acks a redelivery of a job sent already, without sending, and tells
    /// its source `sent` again: the first event may have been lost with the
    /// first ack (consumers deduplicate by id and outcome).
    async fn ack_duplicate(
        &self,
        delivery: &Delivery,
        job: &Job,
        attempts: u32,
        message_sid: Option<&str>,
    ) -> Finished {
        let finished = self.ack(delivery, Finished::Duplicate).await;
        if finished == Finished::Duplicate {
            self.emit(
                delivery,
                job,
                attempts,
                events::Outcome::Sent { message_sid },
            );
        }
        finished
    }
}

/// The dead letter's text for a job no template fits. The end user's locale
/// is repeated only when it looks like a language tag.
fn no_template_error(job: &Job) -> String {
    let locale = job.payload.locale().map_or("none", |l| {
        let is_tag = l.len() <= 35
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if is_tag { l } else { "not a language tag" }
    });
    format!(
        "no template for type {} (locale {locale}) and no Generic template",
        job.kind
    )
}

//! The consumer loop: feeds the worker deliveries from `sms.send`, pauses and
//! probes on account faults, rides out broker outages, and stops gracefully.
//!
//! Each delivery is handled in its own task, up to the prefetch, so one slow
//! Twilio call never stalls the others. A broker outage is first left to
//! lapin's automatic recovery (reconnect, re-declare, re-consume). lapin 4's
//! recovery can stall after a broker restart (amqp-rs/lapin#450, seen here
//! too), so a session whose connection has not come back within
//! [`RECOVERY_GRACE`] is abandoned and a new connection opened; if none is up
//! within the configured reconnect deadline the worker exits with code 1 for
//! the orchestrator to restart it. Jobs in flight on an abandoned connection
//! cannot be acked any more; the broker delivers them again, and the worker
//! recognises the ones it already sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::{Finished, Gateway, Handling, Worker, WorkerSettings, with_ticket};
use crate::amqp::{self, CONFIRM_TIMEOUT, Publisher, SharedPublisher, topology};
use crate::fleet::RedisStore;
use crate::limits::Limiter;
use crate::observe::health::Health;
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long lapin gets to recover a lost connection before the worker opens
/// a new one itself.
pub(crate) const RECOVERY_GRACE: Duration = Duration::from_secs(15);

/// Errors that stop the worker (exit code 1).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    /// The broker refused or dropped something the worker cannot do without.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The consumer ended and could not be started again.
    #[error("the consumer of {queue} ended and could not be restarted: {detail}")]
    ConsumerLost { queue: &'static str, detail: String },
    /// The topology could not be declared (the text says what to do).
    #[error("declaring the topology: {0}")]
    Topology(String),
    /// No connection could be opened within the reconnect deadline.
    #[error("could not connect to the broker within {} s", .0.as_secs())]
    ConnectDeadline(Duration),
    /// A stop was asked for before the first connection was up.
    #[error("stopped before the broker connection was up")]
    StoppedBeforeConnected,
}

/// Everything `run` needs besides the settings.
pub(crate) struct RunOptions {
    /// Twilio, or the log with `--dry-run`.
    pub(crate) gateway: Gateway,
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
    pub(crate) shutdown: Shutdown,
    /// Set to each new connection's publisher (the HTTP ingest shares it).
    pub(crate) publisher: SharedPublisher,
    /// The fleet's record of sends, when Redis is configured.
    pub(crate) fleet: Option<RedisStore>,
    /// The abuse limits (shared with the ingest).
    pub(crate) limiter: Arc<Limiter>,
    /// Whether to consume `sms.send` (`run --role http` only keeps the
    /// connections up for the ingest and the callbacks' events).
    pub(crate) consume: bool,
}

/// The worker's connections to the broker and what hangs off them: one that
/// consumes (and acks), one that publishes. A broker alarm blocks only
/// connections that publish, so acks keep flowing while it lasts.
struct Session {
    connection: Connection,
    publishing: Arc<Connection>,
    channel: Channel,
    /// Cancelled by the connection watcher when lapin has not recovered the
    /// connection in time.
    stuck: CancellationToken,
}

/// Why a connection could not be opened.
enum OpenError {
    Broker(lapin::Error),
    Topology(String),
}

impl From<lapin::Error> for OpenError {
    fn from(e: lapin::Error) -> Self {
        OpenError::Broker(e)
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    /// The connection did not recover: open a new one.
    Stuck,
}

/// Runs the worker until shutdown. Returns an error for an incident the
/// orchestrator should see (exit code 1, then a restart).
pub(crate) async fn run(settings: WorkerSettings, options: RunOptions) -> Result<(), WorkerError> {
    let RunOptions {
        gateway,
        metrics,
        health,
        shutdown,
        publisher: shared,
        fleet,
        limiter,
        consume,
    } = options;
    let broker = settings.broker.clone();
    let grace = settings.shutdown_grace;
    let dry_run = matches!(gateway, Gateway::DryRun);

    info!(broker = %broker.url_for_logs(), "connecting to the broker");
    let mut session = open_session(&broker, &health, &shared, &shutdown).await?;
    let worker = Arc::new(Worker::new(
        settings,
        gateway,
        shared.clone(),
        metrics,
        health.clone(),
        fleet,
        limiter,
    ));
    if consume {
        info!(
            queue = topology::QUEUE,
            prefetch = broker.prefetch,
            queue_type = broker.queue_type.as_str(),
            dry_run,
            "consuming"
        );
    } else {
        info!("serving the HTTP side only (--role http): not consuming");
    }
    let tracker = TaskTracker::new();
    let result = loop {
        let ended = if consume {
            consume_jobs(&broker, &worker, &session, &tracker, &health, &shutdown).await
        } else {
            hold(&session, &shutdown).await
        };
        match ended {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Err(e) => break Err(e),
            Ok(SessionEnd::Stuck) => {
                warn!(
                    grace_secs = RECOVERY_GRACE.as_secs(),
                    "lapin did not recover the broker connection in time; opening a new one"
                );
                abandon(session);
                broker.move_on();
                match open_session(&broker, &health, &shared, &shutdown).await {
                    Ok(next) => {
                        session = next;
                        worker.acks().restart();
                        info!("consuming on a new broker connection");
                    }
                    // A stop asked for during an outage is a stop, not a
                    // failure; the jobs held on the abandoned connection go
                    // back to the queue with it.
                    Err(WorkerError::StoppedBeforeConnected) => {
                        info!("stopped during a broker outage");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };

    // Shutdown: stop taking jobs, let those in flight finish, close.
    health.set_consuming(false);
    tracker.close();
    info!(
        in_flight = tracker.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: waiting for jobs in flight"
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            unfinished = tracker.len(),
            "grace period over; unfinished jobs go back to the queue untouched"
        );
    }
    // The finished jobs' outcome events, before their connection closes
    // (each publish is bounded by its confirm timeout; this, by the same).
    if tokio::time::timeout(CONFIRM_TIMEOUT, worker.events_published())
        .await
        .is_err()
    {
        warn!("outcome events still unconfirmed at exit; they may be lost");
    }
    // A dead connection must not hold the exit up.
    let close = async {
        let _ = session.channel.close(200, "shutdown".into()).await;
        let _ = session.connection.close(200, "shutdown".into()).await;
        let _ = session.publishing.close(200, "shutdown".into()).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    session.stuck.cancel();
    result?;
    info!("stopped");
    Ok(())
}

/// Connects twice (lapin's automatic recovery on), declares the topology,
/// opens the publishing and consuming channels, and hands the publisher to
/// `shared`. Gives up after the reconnect deadline.
async fn open_session(
    broker: &amqp::BrokerSettings,
    health: &Health,
    shared: &SharedPublisher,
    shutdown: &Shutdown,
) -> Result<Session, WorkerError> {
    let deadline = broker.reconnect_deadline;
    let open_once = || async {
        let connection =
            amqp::connect(broker, "sms-dispatch worker", amqp::Recovery::Automatic).await?;
        let publishing = Arc::new(
            amqp::connect(
                broker,
                "sms-dispatch worker (publishing)",
                amqp::Recovery::Automatic,
            )
            .await?,
        );
        let mut publisher = Publisher::open(&publishing).await?;
        match topology::declare(publisher.channel(), broker.queue_type).await {
            Ok(()) => {}
            // A classic queue (sms.dead, sms.blocked) lives on one node; when
            // that node is down the queue cannot be declared, but the jobs can
            // still be sent: carry on (dead letters wait until it is back)
            // on a fresh channel, the broker having closed this one.
            Err(e) if topology::home_node_down(&e) => {
                warn!(error = %e, "a queue's home node is down; consuming anyway, dead letters wait until it is back");
                publisher = Publisher::open(&publishing).await?;
            }
            Err(e) => return Err(OpenError::Topology(topology::explain(&e))),
        }
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(broker.prefetch, BasicQosOptions::default())
            .await?;
        Ok::<_, OpenError>((connection, publishing, publisher, channel))
    };
    // A broker that does not answer yet is tried again, with backoff, until
    // the reconnect deadline: not given up on at the first refusal.
    let open = async {
        let mut wait = Duration::from_millis(500);
        loop {
            match open_once().await {
                Err(OpenError::Broker(e)) => {
                    warn!(
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "the broker did not answer; trying again until the reconnect deadline"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    };
    let (connection, publishing, publisher, channel) = tokio::select! {
        opened = tokio::time::timeout(deadline, open) => match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(OpenError::Broker(e))) => return Err(WorkerError::Broker(e)),
            Ok(Err(OpenError::Topology(text))) => return Err(WorkerError::Topology(text)),
            Err(_) => return Err(WorkerError::ConnectDeadline(deadline)),
        },
        () = shutdown.requested() => return Err(WorkerError::StoppedBeforeConnected),
    };
    shared.set(Arc::clone(&publishing), publisher, broker.queue_type);
    health.set_connected(true);
    let stuck = CancellationToken::new();
    watch_connections(
        &connection,
        &publishing,
        health.clone(),
        shared.clone(),
        stuck.clone(),
    );
    Ok(Session {
        connection,
        publishing,
        channel,
        stuck,
    })
}

/// Lets go of a connection lapin could not recover in time. lapin may still
/// recover it later, and would then consume `sms.send` again on a
/// connection nothing reads: a watcher closes it as soon as it is up (its
/// unacked deliveries then go back to the queue), for as long as lapin may
/// keep trying.
fn abandon(session: Session) {
    session.stuck.cancel();
    close_when_back(session.connection);
    if let Ok(publishing) = Arc::try_unwrap(session.publishing) {
        close_when_back(publishing);
    }
}

/// Watches an abandoned connection and closes it once lapin brings it back.
fn close_when_back(connection: Connection) {
    let status = connection.status().clone();
    tokio::spawn(async move {
        let give_up = Instant::now() + ABANDONED_WATCH;
        while Instant::now() < give_up && !status.closed() && !status.errored() {
            if status.connected() {
                info!("an abandoned broker connection came back; closing it");
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    connection.close(200, "abandoned".into()),
                )
                .await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// How long a `basic.cancel` may wait for the broker's answer.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an abandoned connection is watched: longer than lapin's own
/// reconnect attempts (120, at most 5 s apart).
const ABANDONED_WATCH: Duration = Duration::from_secs(15 * 60);

/// Keeps `session` open without consuming (`--role http`) until shutdown,
/// or until its connection is stuck.
async fn hold(session: &Session, shutdown: &Shutdown) -> Result<SessionEnd, WorkerError> {
    tokio::select! {
        () = shutdown.requested() => Ok(SessionEnd::Shutdown),
        () = session.stuck.cancelled() => Ok(SessionEnd::Stuck),
    }
}

/// Consumes on `session` until shutdown, or until its connection is stuck.
async fn consume_jobs(
    broker: &amqp::BrokerSettings,
    worker: &Arc<Worker>,
    session: &Session,
    tracker: &TaskTracker,
    health: &Health,
    shutdown: &Shutdown,
) -> Result<SessionEnd, WorkerError> {
    let channel = &session.channel;
    let lost = |e: lapin::Error| WorkerError::ConsumerLost {
        queue: topology::QUEUE,
        detail: e.to_string(),
    };
    // Waits for lapin's recovery; `Some` ends the session instead: it was
    // declared stuck, or a stop was asked for (which must not wait for the
    // broker to come back).
    let recovered = |e: lapin::Error| async move {
        tokio::select! {
            // A recovered channel numbers its deliveries from 1 again. (lapin
            // recovers a connection without failing the consumer's stream;
            // then `Acks::track` sees the tags start again. This covers a
            // consume, cancel or get call that failed and waited here.)
            r = channel.wait_for_recovery(e) => r.map(|()| { worker.acks().restart(); None }).map_err(lost),
            () = session.stuck.cancelled() => Ok(Some(SessionEnd::Stuck)),
            () = shutdown.requested() => Ok(Some(SessionEnd::Shutdown)),
        }
    };
    let mut consumer: Option<Consumer> = None;
    let mut cancelling = false;
    loop {
        if shutdown.is_requested() {
            break;
        }
        let Some(active) = consumer.as_mut() else {
            if worker.pause().is_paused() {
                // The consumer is cancelled; probe until a send succeeds.
                match probe_until_resumed(worker, session, tracker, shutdown).await {
                    Probe::Resumed => info!(
                        outcome = "resumed",
                        "resumed: a probe send succeeded; consuming again"
                    ),
                    Probe::Shutdown => break,
                    Probe::Stuck => return Ok(SessionEnd::Stuck),
                }
            }
            match start_consuming(channel).await {
                Ok(c) => {
                    consumer = Some(c);
                    cancelling = false;
                    health.set_consuming(true);
                }
                Err(e) => {
                    if let Some(end) = recovered(e).await? {
                        return Ok(end);
                    }
                }
            }
            continue;
        };
        tokio::select! {
            biased;
            () = shutdown.requested() => break,
            () = session.stuck.cancelled() => {
                health.set_consuming(false);
                return Ok(SessionEnd::Stuck);
            }
            () = worker.pause().tripped(), if !cancelling => {
                health.set_consuming(false);
                // The deliveries already on their way still arrive; their
                // tasks see the pause and put them back. The stream ends
                // once the broker has confirmed the cancel.
                let cancel = channel.basic_cancel(active.tag(), BasicCancelOptions::default());
                // An unanswered cancel must not hold the loop: the stream
                // ends when the broker answers, or with the connection.
                match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await.unwrap_or(Ok(())) {
                    Ok(()) => cancelling = true,
                    Err(e) => {
                        // Most likely the connection is down: once it is
                        // back (and the consumer re-created), this arm fires
                        // again and cancels it.
                        warn!(error = %e, "cancelling the consumer failed; retrying after recovery");
                        if let Some(end) = recovered(e).await? {
                            return Ok(end);
                        }
                    }
                }
            }
            next = active.next() => match next {
                Some(Ok(delivery)) => spawn_job(worker, tracker, delivery),
                Some(Err(e)) => {
                    health.set_consuming(false);
                    warn!(error = %e, "consumer interrupted; waiting for the connection to recover");
                    if let Some(end) = recovered(e).await? {
                        return Ok(end);
                    }
                    health.set_consuming(!cancelling);
                    info!("connection recovered; consuming again");
                }
                None if cancelling => consumer = None,
                None => {
                    // The broker cancelled us (queue deleted, leader moved):
                    // an incident. Declare again and consume again.
                    health.set_consuming(false);
                    error!(queue = topology::QUEUE, "the broker ended the consumer; consuming again");
                    topology::declare(channel, broker.queue_type).await.map_err(lost)?;
                    consumer = None;
                }
            },
        }
    }
    // Stop taking jobs; the caller waits for those in flight.
    if let Some(active) = consumer.as_ref()
        && !cancelling
    {
        let cancel = channel.basic_cancel(active.tag(), BasicCancelOptions::default());
        let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel).await;
    }
    Ok(SessionEnd::Shutdown)
}

/// Tracks the delivery in the batched acks (in the order the broker sent
/// it) and handles it in a task of its own.
fn spawn_job(worker: &Arc<Worker>, tracker: &TaskTracker, delivery: Delivery) {
    let worker = Arc::clone(worker);
    let ticket = worker.acks().track(&delivery);
    // Boxed: a job's future is several KiB, and each layer that wraps it
    // (the tracker, the task) would otherwise copy it.
    tracker.spawn(Box::pin(async move {
        with_ticket(ticket, worker.handle_guarded(delivery, Handling::Normal)).await;
    }));
}

async fn start_consuming(channel: &Channel) -> Result<Consumer, lapin::Error> {
    channel
        .basic_consume(
            topology::QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

enum Probe {
    Resumed,
    Shutdown,
    Stuck,
}

/// While paused: take one job at a time with `basic.get` and send it as a
/// probe, waiting 1 s, then twice as long after each probe that hits the
/// fault again, up to 60 s.
async fn probe_until_resumed(
    worker: &Arc<Worker>,
    session: &Session,
    tracker: &TaskTracker,
    shutdown: &Shutdown,
) -> Probe {
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = shutdown.requested() => return Probe::Shutdown,
            () = session.stuck.cancelled() => return Probe::Stuck,
            () = tokio::time::sleep(wait) => {}
        }
        let got = session
            .channel
            .basic_get(topology::QUEUE.into(), BasicGetOptions { no_ack: false })
            .await;
        let message = match got {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "probe: basic.get failed; waiting for the connection");
                tokio::select! {
                    r = session.channel.wait_for_recovery(e) => match r {
                        Ok(()) => worker.acks().restart(),
                        Err(_) => return Probe::Stuck,
                    },
                    () = session.stuck.cancelled() => return Probe::Stuck,
                    () = shutdown.requested() => return Probe::Shutdown,
                }
                continue;
            }
        };
        let prober = Arc::clone(worker);
        let ticket = worker.acks().track(&message.delivery);
        let probe = tracker.spawn(async move {
            with_ticket(
                ticket,
                prober.handle_guarded(message.delivery, Handling::Probe),
            )
            .await
        });
        match probe.await {
            Ok(Finished::Sent) => {
                worker.pause().resume();
                return Probe::Resumed;
            }
            Ok(Finished::Requeued) => {
                wait = (wait * 2).min(Duration::from_secs(60));
                info!(
                    next_probe_ms = wait.as_millis() as u64,
                    reason = worker.pause().reason().as_deref().unwrap_or(""),
                    "probe hit the fault again; still paused"
                );
            }
            // The probe job ended some other way (dead-lettered, parked, a
            // duplicate): it proved nothing; try the next one soon.
            Ok(_) | Err(_) => wait = Duration::from_millis(100),
        }
    }
}

/// Keeps `health` in step with both connections, and `shared` with the
/// broker's blocking of the publishing one (a memory or disk alarm), and
/// declares the session stuck when lapin has not recovered a connection
/// within [`RECOVERY_GRACE`]. lapin reports no event when it starts
/// recovering (only `Connected` once it is back), so the state is read every
/// 200 ms as well; a change is logged once.
fn watch_connections(
    consuming: &Connection,
    publishing: &Connection,
    health: Health,
    shared: SharedPublisher,
    stuck: CancellationToken,
) {
    let statuses = [consuming.status().clone(), publishing.status().clone()];
    let mut consuming_events = consuming.events_listener();
    let mut publishing_events = publishing.events_listener();
    tokio::spawn(async move {
        let mut lost_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                () = stuck.cancelled() => break,
                event = consuming_events.next() => {
                    if event.is_none() {
                        break;
                    }
                }
                event = publishing_events.next() => match event {
                    None => break,
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        warn!(reason = reason.as_str(), "the broker blocks publishing (memory or disk alarm): dead letters, retries and the ingest wait");
                        health.set_blocked(Some(reason.clone()));
                        shared.set_blocked(Some(reason));
                    }
                    Some(lapin::Event::ConnectionUnblocked | lapin::Event::Connected) => {
                        if shared.blocked().is_some() {
                            info!("the broker unblocked publishing");
                        }
                        health.set_blocked(None);
                        shared.set_blocked(None);
                    }
                    Some(_) => {}
                },
                _ = tick.tick() => {}
            }
            let connected = statuses.iter().all(|s| s.connected());
            match (connected, lost_since) {
                (true, Some(_)) => {
                    lost_since = None;
                    health.set_connected(true);
                    info!("broker connection re-established");
                }
                (false, None) => {
                    lost_since = Some(Instant::now());
                    health.set_connected(false);
                    warn!("broker connection lost; lapin is reconnecting");
                }
                (false, Some(since)) if since.elapsed() > RECOVERY_GRACE => {
                    stuck.cancel();
                    break;
                }
                _ => {}
            }
        }
    });
}

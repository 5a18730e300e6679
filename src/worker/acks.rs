//! Batched acks: finished deliveries are acked together, a few at a time,
//! without weakening any guarantee.
//!
//! A job's ack is asked for only once its outcome is safe (Twilio's 201, or
//! the broker's confirm of its dead letter or parked retry), as before; what
//! changes is that the acks of jobs finishing close together go out as one
//! frame. Each flush, within [`FLUSH_AFTER`] of the first ack it holds or as
//! soon as [`Acks::batch`] are waiting:
//!
//! - acks the contiguous prefix of finished tags, those below the lowest tag
//!   still in the worker's hands, with one `basic.ack multiple=true` on the
//!   highest of them (its own acker: if that delivery's channel was closed
//!   since, the acker is poisoned and nothing goes out);
//! - acks each finished tag above the first gap on its own, so one job
//!   waiting out a `Retry-After` never holds the others' acks or their
//!   prefetch slots.
//!
//! A tag is never covered by a multiple ack unless its own outcome is safe:
//! every delivery is [`Acks::track`]ed by the consumer loop in the order the
//! broker sent it, before its task starts, so any tag below a finished one is
//! known and, until settled, stops the prefix. Nacks and rejects stay per
//! message ([`Acks::forget`] after they went out). Deliveries of an earlier
//! channel (the consumer's connection was replaced, or lapin recovered it and
//! the broker numbers from 1 again) are never mixed in: [`Acks::restart`]
//! begins a new generation, whose tickets alone are batched; the old
//! generation's finished tags are acked one by one on their own ackers (a
//! poisoned one sends nothing) and its pending tags are dropped.
//!
//! The ticket of the delivery a task is handling travels with the task (a
//! task-local set by the consumer), so the settlement code keeps taking a
//! plain delivery; a delivery without a ticket is acked on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, oneshot};

/// How long a finished delivery may wait for others to share its ack.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// How long an ack may take before the job counts as abandoned (the broker
/// delivers it again).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A delivery's place in the batches: the consumer's generation (one per
/// channel incarnation) and the delivery tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    generation: u64,
    tag: u64,
}

tokio::task_local! {
    /// The ticket of the delivery the current task handles.
    static TICKET: Ticket;
}

/// Runs `handling` (the life of one delivery) with its ticket.
pub(crate) async fn with_ticket<F: Future>(ticket: Ticket, handling: F) -> F::Output {
    TICKET.scope(ticket, handling).await
}

/// A finished delivery waiting for its ack to go out.
struct Done {
    acker: Acker,
    reply: oneshot::Sender<bool>,
}

#[derive(Default)]
struct State {
    generation: u64,
    /// The highest tag tracked in this generation.
    last_tag: u64,
    /// Tracked, not yet finished or settled otherwise.
    pending: BTreeSet<u64>,
    /// Finished, waiting for the flush.
    done: BTreeMap<u64, Done>,
}

/// The worker's batched acks. Clones share them.
#[derive(Clone)]
pub(crate) struct Acks {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// Flush at once when this many are waiting.
    batch: usize,
}

impl Acks {
    /// Batches of up to `batch` acks (a quarter of the prefetch suits: the
    /// slots they free are refilled while the rest still work), flushed by a
    /// task of their own.
    pub(crate) fn start(batch: usize) -> Acks {
        let acks = Acks {
            state: Arc::default(),
            wake: Arc::new(Notify::new()),
            batch: batch.max(1),
        };
        let flusher = acks.clone();
        tokio::spawn(async move { flusher.flush_forever().await });
        acks
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// Begins a new generation (a new channel, or the same one recovered):
    /// earlier tickets are no longer batched.
    pub(crate) fn restart(&self) {
        let old = self.with(|s| {
            s.generation += 1;
            s.last_tag = 0;
            s.pending.clear();
            std::mem::take(&mut s.done)
        });
        ack_old(old);
    }

    /// Registers a delivery as in the worker's hands. Called by the consumer
    /// loop in the order the broker delivered, before the delivery's task
    /// starts.
    pub(crate) fn track(&self, delivery: &Delivery) -> Ticket {
        let tag = delivery.delivery_tag;
        let (ticket, old) = self.with(|s| {
            // Tags only grow on one channel: a smaller one means the broker
            // numbers a new channel (lapin recovered it).
            let old = if tag <= s.last_tag {
                s.generation += 1;
                s.pending.clear();
                std::mem::take(&mut s.done)
            } else {
                BTreeMap::new()
            };
            s.last_tag = tag;
            s.pending.insert(tag);
            (
                Ticket {
                    generation: s.generation,
                    tag,
                },
                old,
            )
        });
        ack_old(old);
        ticket
    }

    /// Acks the delivery the current task handles, once its outcome is safe:
    /// in the next batch when it has a ticket of this generation, else at
    /// once on its own. `true` when the ack went out.
    pub(crate) async fn ack(&self, acker: &Acker) -> bool {
        let ticket = TICKET.try_with(|t| *t).ok();
        let waiting = ticket.and_then(|ticket| {
            self.with(|s| {
                if ticket.generation != s.generation || !s.pending.remove(&ticket.tag) {
                    return None;
                }
                let (reply, answer) = oneshot::channel();
                s.done.insert(
                    ticket.tag,
                    Done {
                        acker: acker.clone(),
                        reply,
                    },
                );
                Some((answer, s.done.len()))
            })
        });
        match waiting {
            Some((answer, waiting)) => {
                if waiting == 1 || waiting >= self.batch {
                    self.wake.notify_one();
                }
                answer.await.unwrap_or(false)
            }
            None => ack_one(acker).await,
        }
    }

    /// Notes that the current task's delivery was settled another way (a
    /// nack or reject that went out): it no longer stops the prefix.
    pub(crate) fn forget(&self) {
        if let Ok(ticket) = TICKET.try_with(|t| *t) {
            self.with(|s| {
                if ticket.generation == s.generation {
                    s.pending.remove(&ticket.tag);
                }
            });
        }
    }

    /// Flushes whenever acks wait: [`FLUSH_AFTER`] after the first, or at
    /// once when a batch is full.
    async fn flush_forever(self) {
        loop {
            self.wake.notified().await;
            let deadline = tokio::time::sleep(FLUSH_AFTER);
            tokio::pin!(deadline);
            while self.with(|s| s.done.len() < self.batch) {
                tokio::select! {
                    () = &mut deadline => break,
                    () = self.wake.notified() => {}
                }
            }
            self.flush().await;
        }
    }

    /// Sends what is finished: the contiguous prefix with one multiple ack,
    /// the rest one by one.
    async fn flush(&self) {
        let (prefix, above) = self.with(|s| {
            let first_gap = s.pending.first().copied().unwrap_or(u64::MAX);
            let above = s.done.split_off(&first_gap);
            (std::mem::take(&mut s.done), above)
        });
        // One by one, in order, each sent before any later flush's multiple
        // ack (which would cover a tag still waiting for its own frame, and
        // the broker closes the channel on an ack of an unknown tag).
        ack_each(above).await;
        if let Some((_, last)) = prefix.iter().next_back() {
            let sent = tokio::time::timeout(
                ACK_TIMEOUT,
                last.acker.ack(BasicAckOptions { multiple: true }),
            )
            .await;
            let sent = matches!(sent, Ok(Ok(true)));
            for (_, done) in prefix {
                let _ = done.reply.send(sent);
            }
        }
    }
}

/// Acks each on its own, in tag order.
async fn ack_each(done: BTreeMap<u64, Done>) {
    for (_, done) in done {
        let sent = ack_one(&done.acker).await;
        let _ = done.reply.send(sent);
    }
}

/// Acks an earlier generation's finished deliveries one by one, in a task of
/// their own (their channel is gone, or is not the one batched now).
fn ack_old(done: BTreeMap<u64, Done>) {
    if !done.is_empty() {
        tokio::spawn(ack_each(done));
    }
}

/// One ack, bounded by [`ACK_TIMEOUT`]: `true` when it went out.
async fn ack_one(acker: &Acker) -> bool {
    matches!(
        tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default())).await,
        Ok(Ok(true))
    )
}

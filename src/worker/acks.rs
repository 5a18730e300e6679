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
use tracing::error;

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

/// Where an ack goes.
enum Place {
    /// In the next batch; the answer says whether it went out.
    Batched(oneshot::Receiver<bool>, usize),
    /// On its own, now: no ticket, or one of an earlier generation.
    Alone,
    /// Nowhere: the delivery was settled already.
    Settled,
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
        let place = match ticket {
            None => Place::Alone,
            Some(ticket) => self.with(|s| {
                if ticket.generation != s.generation {
                    return Place::Alone;
                }
                if !s.pending.remove(&ticket.tag) {
                    // Settled already: a multiple ack may have covered it,
                    // and a second frame for it would close the channel.
                    return Place::Settled;
                }
                let (reply, answer) = oneshot::channel();
                s.done.insert(
                    ticket.tag,
                    Done {
                        acker: acker.clone(),
                        reply,
                    },
                );
                Place::Batched(answer, s.done.len())
            }),
        };
        match place {
            Place::Batched(answer, waiting) => {
                if waiting == 1 || waiting >= self.batch {
                    self.wake.notify_one();
                }
                // Bounded: a flusher that is gone must not hold the job for
                // ever (it is then left to the broker).
                tokio::time::timeout(2 * ACK_TIMEOUT, answer)
                    .await
                    .is_ok_and(|answer| answer.unwrap_or(false))
            }
            Place::Alone => ack_one(acker).await,
            Place::Settled => {
                error!("a delivery was settled twice (a bug); not sending a second frame");
                false
            }
        }
    }

    /// Whether the current task's delivery was acked, nacked or rejected
    /// already (in this generation): after a panic, the guard must not
    /// settle it again.
    pub(crate) fn settled(&self) -> bool {
        TICKET.try_with(|t| *t).is_ok_and(|ticket| {
            self.with(|s| {
                ticket.generation == s.generation
                    && ticket.tag <= s.last_tag
                    && !s.pending.contains(&ticket.tag)
            })
        })
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
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        ack_each(above, deadline).await;
        if let Some((_, last)) = prefix.iter().next_back() {
            let sent = tokio::time::timeout_at(
                deadline,
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

/// Acks each on its own, in tag order, all by `deadline` (a stalled socket
/// must not hold a flush for a timeout per ack).
async fn ack_each(done: BTreeMap<u64, Done>, deadline: tokio::time::Instant) {
    for (_, done) in done {
        let sent = matches!(
            tokio::time::timeout_at(deadline, done.acker.ack(BasicAckOptions::default())).await,
            Ok(Ok(true))
        );
        let _ = done.reply.send(sent);
    }
}

/// Acks an earlier generation's finished deliveries one by one, in a task of
/// their own (their channel is gone, or is not the one batched now).
fn ack_old(done: BTreeMap<u64, Done>) {
    if !done.is_empty() {
        tokio::spawn(ack_each(done, tokio::time::Instant::now() + ACK_TIMEOUT));
    }
}

/// One ack, bounded by [`ACK_TIMEOUT`]: `true` when it went out.
async fn ack_one(acker: &Acker) -> bool {
    matches!(
        tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default())).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(tag: u64) -> Delivery {
        Delivery::mock(tag, "sms".into(), "send".into(), false, Vec::new())
    }

    #[tokio::test]
    async fn a_delivery_is_acked_once_and_never_settled_again() {
        let acks = Acks::start(16);
        let (one, two) = (delivery(1), delivery(2));
        let (t1, t2) = (acks.track(&one), acks.track(&two));
        // Delivery 1 still in hand: 2 is above the gap and goes on its own.
        assert!(with_ticket(t2, acks.ack(&two.acker)).await);
        assert!(with_ticket(t2, async { acks.settled() }).await);
        assert!(!with_ticket(t1, async { acks.settled() }).await);
        // A second settlement of 2 (a panic after its ack) sends nothing.
        assert!(!with_ticket(t2, acks.ack(&two.acker)).await);
        assert!(with_ticket(t1, acks.ack(&one.acker)).await);
    }

    #[tokio::test]
    async fn a_new_channel_starts_a_new_generation() {
        let acks = Acks::start(16);
        let old = delivery(7);
        let old_ticket = acks.track(&old);
        // The broker numbers a recovered channel from 1 again.
        let new = delivery(1);
        let new_ticket = acks.track(&new);
        assert_ne!(old_ticket.generation, new_ticket.generation);
        // The old delivery is no longer batched: it is acked on its own
        // acker (a real one, poisoned with its channel, would send nothing).
        assert!(!with_ticket(old_ticket, async { acks.settled() }).await);
        assert!(with_ticket(old_ticket, acks.ack(&old.acker)).await);
        assert!(with_ticket(new_ticket, acks.ack(&new.acker)).await);
        assert!(with_ticket(new_ticket, async { acks.settled() }).await);
    }

    #[tokio::test]
    async fn a_forgotten_delivery_no_longer_stops_the_prefix() {
        let acks = Acks::start(16);
        let (one, two) = (delivery(1), delivery(2));
        let (t1, t2) = (acks.track(&one), acks.track(&two));
        with_ticket(t1, async { acks.forget() }).await;
        assert!(with_ticket(t1, async { acks.settled() }).await);
        assert!(with_ticket(t2, acks.ack(&two.acker)).await);
        assert!(acks.with(|s| s.pending.is_empty() && s.done.is_empty()));
    }
}

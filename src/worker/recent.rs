//! Recently sent job ids: the worker's memory against sending a code twice.
//!
//! A delivery whose ack was lost (the connection dropped between Twilio's 201
//! and the ack) comes back; if its id is here, the worker acks it without
//! calling Twilio again. The memory is bounded in size and age and lives only
//! in this process: docs/guarantees.md says which duplicates it cannot prevent. Ids
//! are kept as 128-bit keyed hashes (16 bytes instead of the id itself); two
//! different ids share one with a probability of about 2⁻¹²⁸.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::JobId;

/// A bounded, time-limited set of job ids.
#[derive(Debug)]
pub(super) struct RecentlySent {
    inner: Mutex<Inner>,
    capacity: usize,
    max_age: Duration,
    keys: (RandomState, RandomState),
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<u128>,
    order: VecDeque<(Instant, u128)>,
}

impl RecentlySent {
    /// Remembers up to `capacity` ids for up to `max_age` each.
    pub(super) fn new(capacity: usize, max_age: Duration) -> RecentlySent {
        RecentlySent {
            inner: Mutex::new(Inner::default()),
            capacity,
            max_age,
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    fn key(&self, id: &JobId) -> u128 {
        let high = self.keys.0.hash_one(id.as_str());
        let low = self.keys.1.hash_one(id.as_str());
        (u128::from(high) << 64) | u128::from(low)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` was sent recently.
    pub(super) fn contains(&self, id: &JobId) -> bool {
        let key = self.key(id);
        self.lock().ids.contains(&key)
    }

    /// Records that `id` was sent.
    pub(super) fn insert(&self, id: &JobId) {
        let key = self.key(id);
        let now = Instant::now();
        let mut inner = self.lock();
        while let Some((at, _)) = inner.order.front() {
            let old = now.duration_since(*at) >= self.max_age || inner.order.len() >= self.capacity;
            if !old {
                break;
            }
            if let Some((_, gone)) = inner.order.pop_front() {
                inner.ids.remove(&gone);
            }
        }
        if inner.ids.insert(key) {
            inner.order.push_back((now, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn remembers_what_was_sent() {
        let r = RecentlySent::new(10, Duration::from_secs(60));
        assert!(!r.contains(&id("a")));
        r.insert(&id("a"));
        assert!(r.contains(&id("a")));
        assert!(!r.contains(&id("b")));
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let r = RecentlySent::new(3, Duration::from_secs(60));
        for s in ["a", "b", "c", "d"] {
            r.insert(&id(s));
        }
        assert!(!r.contains(&id("a")));
        assert!(r.contains(&id("b")) && r.contains(&id("d")));
    }

    #[test]
    fn forgets_what_is_too_old() {
        let r = RecentlySent::new(10, Duration::ZERO);
        r.insert(&id("a"));
        r.insert(&id("b"));
        assert!(!r.contains(&id("a")));
    }
}

//! Time-driven work of the vhost: message TTL (`expiration`, `x-message-ttl`) and unused
//! queue expiry (`x-expires`), without any client activity.
//!
//! Times are milliseconds since the vhost's [`Clock`] epoch, so a queued message carries a
//! plain `u64` deadline ([`NEVER`] when it has none) and a queue without TTLs pays one
//! comparison per message. As in RabbitMQ, messages expire only at the head of a queue:
//! the vhost checks the head before each delivery and `basic.get`, and keeps one
//! [`Timers`] heap of `(deadline, queue)` entries, at most one pending entry per queue
//! and kind (a queue records what it has scheduled). The [`run`] task sleeps until the
//! earliest entry, or until [`Timers::schedule`] announces an earlier one through a
//! [`Notify`], then lets the vhost handle everything due under one lock.

use crate::broker::Broker;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The deadline of a message that never expires.
pub const NEVER: u64 = u64::MAX;

/// Milliseconds since the vhost started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    /// The instant of a deadline in milliseconds.
    pub fn instant(&self, deadline_ms: u64) -> Instant {
        self.epoch + Duration::from_millis(deadline_ms)
    }
}

/// The deadline of a message queued at `now` with queue TTL `queue_ttl` and per-message
/// `expiration` (the smaller one wins), or [`NEVER`].
pub fn message_deadline(now: u64, queue_ttl: Option<u64>, expiration: Option<u64>) -> u64 {
    match (queue_ttl, expiration) {
        (None, None) => NEVER,
        (a, b) => now.saturating_add(a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX))),
    }
}

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The message at the head of the queue expires.
    Head,
    /// The queue expires if it is still unused (`x-expires`).
    Queue,
}

/// A due timer: which queue (name and id, since a name can be reused) and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due {
    pub deadline: u64,
    pub queue_id: u64,
    pub kind: TimerKind,
    pub queue: Arc<str>,
}

/// The vhost's timer heap, earliest deadline first.
#[derive(Debug, Default)]
pub struct Timers {
    clock: Clock,
    /// "Now" for the current operation: one operation sees one time, so a message
    /// published with TTL 0 is not already in the past when it is dispatched.
    now: Option<u64>,
    heap: BinaryHeap<Reverse<Due>>,
    wake: Arc<Notify>,
}

impl Timers {
    /// The time of the current operation, read once.
    pub fn now(&mut self) -> u64 {
        *self.now.get_or_insert_with(|| self.clock.now_ms())
    }

    /// Ends the current operation: the next [`Timers::now`] reads the clock again.
    pub fn forget_now(&mut self) {
        self.now = None;
    }

    /// Adds an entry, waking the timer task if it is now the earliest.
    pub fn schedule(&mut self, due: Due) {
        let earliest = self.heap.peek().is_none_or(|e| due.deadline < e.0.deadline);
        self.heap.push(Reverse(due));
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Removes and returns the next entry due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Due> {
        if self.heap.peek()?.0.deadline > now {
            return None;
        }
        self.heap.pop().map(|e| e.0)
    }

    /// Entries in the heap, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Due) -> bool) {
        self.heap.retain(|entry| keep(&entry.0));
    }

    /// When the earliest entry is due.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|e| self.clock.instant(e.0.deadline))
    }

    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

/// The timer task: runs until `stop` is cancelled. Cancel-safe (state is only touched
/// under the vhost lock, never across an await).
pub async fn run(broker: Arc<Broker>, stop: CancellationToken) {
    let wake = broker.vhost.lock().timers().waker();
    loop {
        let next = broker.vhost.lock().timers().next();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => continue,
            () = sleep => {}
        }
        broker.vhost.lock().run_timers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_ttl_wins_and_no_ttl_never_expires() {
        assert_eq!(message_deadline(10, None, None), NEVER);
        assert_eq!(message_deadline(10, Some(5), None), 15);
        assert_eq!(message_deadline(10, Some(5), Some(2)), 12);
        assert_eq!(message_deadline(10, Some(0), Some(2)), 10);
        assert_eq!(message_deadline(10, None, Some(u64::MAX)), NEVER);
    }

    #[test]
    fn entries_come_out_earliest_first_and_only_when_due() {
        let mut t = Timers::default();
        let due = |deadline, id| Due {
            deadline,
            queue_id: id,
            kind: TimerKind::Head,
            queue: "q".into(),
        };
        t.schedule(due(30, 1));
        t.schedule(due(10, 2));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(30).map(|d| d.queue_id), Some(2));
        assert_eq!(t.pop_due(30).map(|d| d.queue_id), Some(1));
        assert_eq!(t.pop_due(100), None);
    }
}

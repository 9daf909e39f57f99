//! How operations reach the log thread without waking it for each one.
//!
//! Connections push operations under the vhost lock. An *enqueue* (a publisher waits
//! for its confirm) wakes the log thread if it sleeps; *deliver* and *remove* records do
//! not: they ride along with the next enqueue, or are written at most
//! [`MARKER_FLUSH_DELAY`] after the first of them arrived. A crash inside that window
//! can only bring back a message as redelivered (at least once), never lose one.

use super::Op;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest time a deliver or remove record waits for company before it is written.
pub const MARKER_FLUSH_DELAY: Duration = Duration::from_millis(10);
/// Under load, how long an enqueue waits for others to share its fsync (group commit).
pub const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(1);

/// Operations queued above which the log thread is woken whatever they are, so the
/// queue stays short.
const WAKE_AT: usize = 4096;

#[derive(Default)]
struct Queued {
    ops: Vec<Op>,
    /// An operation that someone waits for is queued, since then.
    urgent: Option<Instant>,
    /// When the oldest queued operation arrived.
    since: Option<Instant>,
    /// The log thread is (or is about to be) waiting on the condvar.
    sleeping: bool,
}

/// The operations waiting for the log thread.
#[derive(Default)]
pub struct Inbox {
    queued: Mutex<Queued>,
    wake: Condvar,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op`; wakes the log thread when it must act now.
    pub fn push(&self, op: Op) {
        let urgent = !matches!(op, Op::Marker { .. });
        let mut queued = self.lock();
        let first = queued.ops.is_empty();
        queued.ops.push(op);
        queued.since.get_or_insert_with(Instant::now);
        let newly_urgent = (urgent || queued.ops.len() == WAKE_AT) && queued.urgent.is_none();
        if newly_urgent {
            queued.urgent = Some(Instant::now());
        }
        // Wake the thread only when its deadline changes: the first operation starts
        // the marker delay, an urgent one the commit window, a long queue ends it.
        if queued.sleeping && (first || newly_urgent || queued.ops.len() == WAKE_AT) {
            queued.sleeping = false;
            self.wake.notify_one();
        }
    }

    /// Waits until there is work to do now, then takes all of it into `batch`. With
    /// `busy` (the last commit was shared by several publishes), an enqueue waits up to
    /// [`GROUP_COMMIT_WINDOW`] for company; an idle broker commits at once.
    pub fn take(&self, batch: &mut Vec<Op>, busy: bool) {
        let mut queued = self.lock();
        loop {
            let window = if busy {
                GROUP_COMMIT_WINDOW
            } else {
                Duration::ZERO
            };
            let due = match queued.urgent {
                Some(urgent) if queued.ops.len() < WAKE_AT => Some(urgent + window),
                Some(_) => Some(Instant::now()),
                None => queued
                    .since
                    .map(|since| since + MARKER_FLUSH_DELAY)
                    .filter(|_| !queued.ops.is_empty()),
            };
            if due.is_some_and(|due| due <= Instant::now()) {
                std::mem::swap(&mut queued.ops, batch);
                queued.urgent = None;
                queued.since = None;
                return;
            }
            queued.sleeping = true;
            queued = match due {
                Some(due) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    self.wake
                        .wait_timeout(queued, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.wake.wait(queued).unwrap_or_else(|e| e.into_inner()),
            };
            queued.sleeping = false;
        }
    }
}

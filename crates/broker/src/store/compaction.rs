//! Compaction of the message log: copying the few live messages of a sparse old segment
//! forward, so the segment (and every drained one behind it) can be deleted.
//!
//! Segments are deleted oldest first (a later segment holds the remove records an older
//! one needs), so one long-lived message — a command waiting for a minion that is away
//! for a week — would otherwise pin its segment and every segment after it. When the
//! oldest segment holds at most a [`SPARSE_SHARE`] of the references ever written to it,
//! the log thread asks for it to be emptied ([`Compaction::want`]). The vhost, at the end
//! of its next operation (an idle broker is woken for it), lists every message whose record is in that segment with the
//! durable queues that still hold it (waiting or delivered and unacknowledged), and hands
//! them to the log thread as *relocate* operations followed by one *relocated* marker. The
//! log thread reads each record and appends a copy with the same message id to the
//! current segment, listing only those queues, followed by deliver records for the
//! queues that had delivered it; it syncs before the old segment may be deleted.
//!
//! Recovery treats an enqueue record whose id it has already seen as such a copy: it
//! replaces what the earlier record said (the copy lists the queues that still held the
//! message when it was made; later remove records apply to it as usual).
//!
//! A relocated message's old location may still be in a queue's paged-out entry; the
//! store resolves it through [`Compaction::locate`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The oldest segment is compacted once its live references are at most this share of
/// the references written to it: copying a quarter frees the whole segment.
pub const SPARSE_SHARE: u64 = 4;

/// What the log thread and the vhost share about compaction.
#[derive(Debug, Default)]
pub struct Compaction {
    /// The segment the log thread wants emptied; 0 for none.
    wanted: AtomicU64,
    /// Where each relocated message's record is now, by message id.
    moved: Mutex<HashMap<u64, u64>>,
    /// Wakes the task that runs the vhost's side on an idle broker.
    requested: tokio::sync::Notify,
}

impl Compaction {
    /// Asks the vhost to relocate the live messages of `segment`.
    pub fn want(&self, segment: u64) {
        self.wanted.store(segment, Ordering::Release);
        self.requested.notify_one();
    }

    /// Resolves once a segment is wanted (or was since the last call).
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    /// The segment to empty, if one is wanted (taken: asked once).
    pub fn take_wanted(&self) -> Option<u64> {
        if self.wanted.load(Ordering::Acquire) == 0 {
            return None;
        }
        match self.wanted.swap(0, Ordering::AcqRel) {
            0 => None,
            segment => Some(segment),
        }
    }

    fn moved(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.moved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the record of message `id`, once written at `location`, is now.
    pub fn locate(&self, id: u64, location: u64) -> u64 {
        self.moved().get(&id).copied().unwrap_or(location)
    }

    /// Runs `f` with a locator like [`Compaction::locate`] that reads a copy of the
    /// moves, so the log thread is not held up while `f` runs.
    pub fn with_locator<R>(&self, f: impl FnOnce(&dyn Fn(u64, u64) -> u64) -> R) -> R {
        let moved = self.moved().clone();
        f(&|id, location| moved.get(&id).copied().unwrap_or(location))
    }

    /// The copies of `moves` (id, new location) are on disk.
    pub fn moved_to(&self, moves: impl IntoIterator<Item = (u64, u64)>) {
        self.moved().extend(moves);
    }

    /// Message `id` left its last queue: its location is of no more use.
    pub fn forget(&self, id: u64) {
        self.moved().remove(&id);
    }
}

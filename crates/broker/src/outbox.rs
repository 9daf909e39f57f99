//! A connection's outgoing bytes.
//!
//! Everything sent to a client — replies from its own connection task and deliveries
//! routed by other connections — is encoded straight into its outbox; the connection's
//! writer task takes the whole buffer and writes it with one syscall, so frames batch
//! naturally under load. The outbox is bounded: above [`OUTBOX_HIGH_WATER`] deliveries to
//! the connection pause (the outbox remembers it was *starved*) and the connection stops
//! reading its own socket, until the writer has drained it.
//!
//! [`OUTBOX_HIGH_WATER`]: crate::config::OUTBOX_HIGH_WATER

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Pending output of one connection.
#[derive(Debug)]
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    len: AtomicUsize,
    high_water: usize,
    /// Wakes the writer when bytes arrive in an empty outbox, or on close.
    wake: Notify,
    /// Wakes the reader (and anyone waiting for room) after a write.
    drained: Notify,
    /// A delivery was held back because the outbox was full.
    starved: AtomicBool,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(high_water: usize) -> Self {
        Self {
            buf: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            high_water,
            wake: Notify::new(),
            drained: Notify::new(),
            starved: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Appends frames produced by `encode`.
    pub fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = buf.is_empty();
        encode(&mut buf);
        self.len.store(buf.len(), Ordering::Release);
        drop(buf);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Whether the outbox holds more than its high-water mark.
    pub fn is_full(&self) -> bool {
        self.len.load(Ordering::Acquire) > self.high_water
    }

    /// Asks the writer to resume deliveries once it has written what is queued: called by
    /// a delivery that found the outbox full, or to order deliveries after a reply.
    pub fn mark_starved(&self) {
        self.starved.store(true, Ordering::Release);
    }

    /// Whether deliveries were held back since the last call.
    pub fn take_starved(&self) -> bool {
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Swaps the pending bytes into `spare` (which must be empty) for writing.
    pub fn take_into(&self, spare: &mut Vec<u8>) {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *buf, spare);
        self.len.store(0, Ordering::Release);
    }

    /// Waits until there is something to write or the outbox is closed. Cancel-safe.
    pub async fn wait_for_output(&self) {
        self.wake.notified().await;
    }

    /// Tells waiters that the writer made room.
    pub fn notify_drained(&self) {
        self.drained.notify_waiters();
    }

    /// Waits until the outbox is at or below its high-water mark. Cancel-safe.
    pub async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if !self.is_full() || self.is_closed() {
                return;
            }
            drained.await;
        }
    }

    /// No more output will be added; the writer flushes what is left and stops.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.drained.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

//! A published message as the broker keeps it: the content header and body exactly as
//! they arrived, shared by every queue the message was routed to (one publish to N
//! queues stores the body once).

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The `location` of a message the store failed to write.
const WRITE_FAILED: u64 = u64::MAX;

/// Bytes held by messages in memory, process-wide: what the memory alarm watches.
static IN_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Bytes of message headers and bodies currently held in memory.
pub fn bytes_in_memory() -> usize {
    IN_MEMORY.load(Ordering::Relaxed)
}

/// Bytes counted in [`bytes_in_memory`] for as long as the charge lives: memory that is
/// not (yet) a [`Message`], such as a body still arriving.
#[derive(Debug)]
pub struct MemoryCharge(usize);

impl MemoryCharge {
    pub fn new(bytes: usize) -> Self {
        IN_MEMORY.fetch_add(bytes, Ordering::Relaxed);
        Self(bytes)
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        IN_MEMORY.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// One published message. Queues hold `Arc<Message>`; nothing is copied per queue.
#[derive(Debug)]
pub struct Message {
    pub exchange: Arc<str>,
    pub routing_key: Arc<str>,
    /// The content header payload (class, weight, body size, properties), as received
    /// unless the broker had to remove `BCC`.
    pub header: Bytes,
    pub body: Bytes,
    /// Published with `delivery-mode` 2.
    pub persistent: bool,
    /// Its id in the message log once stored; 0 for messages kept in memory only.
    pub store_id: AtomicU64,
    /// Where its record is once written: segment number in the high 32 bits, offset
    /// in the low 32; 0 until then.
    pub location: AtomicU64,
}

impl Message {
    /// A message as published, not (yet) in the store.
    pub fn new(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        header: Bytes,
        body: Bytes,
        persistent: bool,
    ) -> Self {
        IN_MEMORY.fetch_add(
            header.len() + body.len() + routing_key.len(),
            Ordering::Relaxed,
        );
        Self {
            exchange,
            routing_key,
            header,
            body,
            persistent,
            store_id: AtomicU64::new(0),
            location: AtomicU64::new(0),
        }
    }

    /// The message's id in the store, if it was written there.
    pub fn stored(&self) -> Option<u64> {
        match self.store_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    pub fn store_id(&self) -> u64 {
        self.store_id.load(Ordering::Relaxed)
    }

    pub fn set_store_id(&self, id: u64) {
        self.store_id.store(id, Ordering::Relaxed);
    }

    /// Where the store wrote the message, once it has.
    pub fn location(&self) -> Option<u64> {
        match self.location.load(Ordering::Acquire) {
            0 | WRITE_FAILED => None,
            at => Some(at),
        }
    }

    /// The store could not write the message: it can only live in memory.
    pub fn write_failed(&self) -> bool {
        self.location.load(Ordering::Acquire) == WRITE_FAILED
    }

    pub fn set_write_failed(&self) {
        self.location.store(WRITE_FAILED, Ordering::Release);
    }

    pub fn set_location(&self, location: u64) {
        self.location.store(location, Ordering::Release);
    }

    /// Bytes this message occupies, for limits and accounting.
    pub fn size(&self) -> usize {
        self.header.len() + self.body.len() + self.routing_key.len()
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        IN_MEMORY.fetch_sub(self.size(), Ordering::Relaxed);
    }
}

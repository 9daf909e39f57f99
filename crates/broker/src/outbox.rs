//! A connection's outgoing bytes, and the socket they go to.
//!
//! Everything sent to a client — replies from its own connection task and deliveries
//! routed by other connections — is encoded straight into its outbox. Writing is done
//! where it is cheapest:
//!
//! - Inside a [`batch`] (a connection task handling the frames of one read), outboxes
//!   that receive bytes are remembered; when the batch ends each is flushed with one
//!   non-blocking `write` from the task that filled it. No other task wakes up, and
//!   every frame produced by one read goes out in one syscall per peer.
//! - Whatever the socket does not take at once stays queued, and the connection's
//!   writer task (`connection::writer`) finishes it when the socket is writable. Bytes
//!   pushed outside a batch also wake the writer.
//!
//! All writes happen under the outbox lock, so frames never interleave. Bytes still
//! queued may be rewritten by a later push ([`Outbox::push_tracked`]): publisher
//! confirms widen the `basic.ack` they left at the end into one ack of many tags.
//!
//! The outbox is bounded: above [`OUTBOX_HIGH_WATER`] deliveries to the connection pause
//! (the outbox remembers it was *starved*) and the connection stops reading its own
//! socket, until the writer has drained it.
//!
//! [`OUTBOX_HIGH_WATER`]: crate::config::OUTBOX_HIGH_WATER

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// Capacity kept by an idle outbox; larger buffers are released once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// Outboxes that received bytes during the current batch on this thread.
    static PENDING: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
    static BATCH_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `work` (synchronous: no `.await` inside) as one batch: outboxes it fills are
/// flushed once, when it returns.
pub fn batch<R>(work: impl FnOnce() -> R) -> R {
    BATCH_DEPTH.with(|d| d.set(d.get() + 1));
    // Ends the batch even if `work` panics, so this thread's later batches still flush.
    let _end = BatchEnd;
    work()
}

/// Closes a [`batch`]: the outermost one flushes what it collected.
struct BatchEnd;

impl Drop for BatchEnd {
    fn drop(&mut self) {
        let depth = BATCH_DEPTH.with(|d| {
            d.set(d.get() - 1);
            d.get()
        });
        if depth > 0 {
            return;
        }
        let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        for outbox in &pending {
            outbox.flush();
        }
        // Give the (now empty) list's allocation back for the next batch.
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            if p.is_empty() {
                *p = pending;
                p.clear();
            }
        });
    }
}

/// Bytes not yet written: `data[start..]`, which begins at byte `offset` of the
/// connection's output stream.
#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    start: usize,
    offset: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` bytes as written.
    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
            if self.data.capacity() > KEEP_CAPACITY {
                self.data = Vec::new();
            }
        } else if self.start > self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
        }
    }
}

/// The queued output as [`Outbox::push_tracked`] shows it: the buffer to append to, and
/// positions in the connection's output stream (bytes since it opened).
#[derive(Debug)]
pub struct Tail<'a> {
    pending: &'a mut Pending,
}

impl Tail<'_> {
    /// The buffer; frames are appended at its end.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.pending.data
    }

    /// The stream position where the next appended byte goes.
    pub fn end(&self) -> u64 {
        self.pending.offset + self.pending.len() as u64
    }

    /// The bytes from stream position `at` to the end, if none of them has been
    /// written yet (not even partly); they may be rewritten in place.
    pub fn unwritten_from(&mut self, at: u64) -> Option<&mut [u8]> {
        let skip = usize::try_from(at.checked_sub(self.pending.offset)?).ok()?;
        let from = self.pending.start.checked_add(skip)?;
        self.pending.data.get_mut(from..)
    }
}

/// Pending output of one connection, and its socket.
#[derive(Debug)]
pub struct Outbox {
    buf: Mutex<Pending>,
    socket: OwnedWriteHalf,
    len: AtomicUsize,
    high_water: usize,
    /// Bytes written so far: the writer sends a heartbeat when it has not moved.
    written: AtomicU64,
    /// Wakes the writer: bytes the socket did not take, or a close.
    wake: Notify,
    /// Wakes the reader (and anyone waiting for room) after a write.
    drained: Notify,
    /// A delivery was held back because the outbox was full.
    starved: AtomicBool,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(socket: OwnedWriteHalf, high_water: usize) -> Self {
        Self {
            buf: Mutex::new(Pending::default()),
            socket,
            len: AtomicUsize::new(0),
            high_water,
            written: AtomicU64::new(0),
            wake: Notify::new(),
            drained: Notify::new(),
            starved: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends frames produced by `encode`; they are written when the current batch
    /// ends, or by the writer task when there is no batch.
    pub fn push(self: &Arc<Self>, encode: impl FnOnce(&mut Vec<u8>)) {
        self.push_tracked(|tail| encode(tail.buf()));
    }

    /// Like [`Outbox::push`], for frames that a later push may rewrite while they are
    /// still queued: `encode` sees the stream positions of what is queued ([`Tail`]).
    pub fn push_tracked(self: &Arc<Self>, encode: impl FnOnce(&mut Tail<'_>)) {
        let mut buf = self.lock();
        let was_empty = buf.is_empty();
        encode(&mut Tail { pending: &mut buf });
        self.len.store(buf.len(), Ordering::Release);
        drop(buf);
        if was_empty {
            if BATCH_DEPTH.with(Cell::get) > 0 {
                PENDING.with(|p| p.borrow_mut().push(self.clone()));
            } else {
                self.wake.notify_one();
            }
        }
    }

    /// Writes as much as the socket takes now; the writer task is woken for the rest.
    pub fn flush(&self) {
        let mut buf = self.lock();
        match self.write_some(&mut buf) {
            Ok(()) if buf.is_empty() => {}
            Ok(()) => self.wake.notify_one(),
            Err(_) => self.close(),
        }
    }

    /// One non-blocking write attempt from the front of `buf` (under the lock).
    fn write_some(&self, buf: &mut Pending) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match self.socket.try_write(&buf.data[buf.start..]) {
            Ok(n) => {
                buf.consume(n);
                self.written.fetch_add(n as u64, Ordering::Relaxed);
                self.len.store(buf.len(), Ordering::Release);
                if n > 0 {
                    self.drained.notify_waiters();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes everything queued, waiting for the socket as needed (the writer task).
    /// Cancel-safe: unwritten bytes stay queued.
    pub async fn drain(&self) -> io::Result<()> {
        loop {
            {
                let mut buf = self.lock();
                self.write_some(&mut buf)?;
                if buf.is_empty() {
                    return Ok(());
                }
            }
            self.socket.writable().await?;
        }
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Whether the outbox holds more than its high-water mark.
    pub fn is_full(&self) -> bool {
        self.len.load(Ordering::Acquire) > self.high_water
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Asks the writer to resume deliveries once it has written what is queued: called by
    /// a delivery that found the outbox full, or to order deliveries after a reply.
    pub fn mark_starved(&self) {
        self.starved.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether deliveries were held back since the last call.
    pub fn take_starved(&self) -> bool {
        self.starved.swap(false, Ordering::AcqRel)
    }

    /// Waits until the writer has something to do. Cancel-safe.
    pub async fn wait_for_work(&self) {
        self.wake.notified().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_not_yet_written_can_be_rewritten() {
        let mut pending = Pending::default();
        pending.data.extend_from_slice(b"abcdef");
        let mut tail = Tail {
            pending: &mut pending,
        };
        assert_eq!(tail.end(), 6);
        assert_eq!(tail.unwritten_from(4).map(|b| &*b), Some(&b"ef"[..]));
        pending.consume(2);
        let mut tail = Tail {
            pending: &mut pending,
        };
        assert_eq!(tail.end(), 6, "writing does not move the end");
        assert!(tail.unwritten_from(1).is_none(), "byte 1 is on the wire");
        assert_eq!(tail.unwritten_from(2).map(|b| &*b), Some(&b"cdef"[..]));
        // Written past the middle: the buffer is compacted, positions stay the same.
        pending.consume(3);
        pending.data.extend_from_slice(b"gh");
        let mut tail = Tail {
            pending: &mut pending,
        };
        assert_eq!(tail.end(), 8);
        assert!(tail.unwritten_from(4).is_none());
        assert_eq!(tail.unwritten_from(5).map(|b| &*b), Some(&b"fgh"[..]));
        assert_eq!(tail.unwritten_from(8).map(|b| &*b), Some(&b""[..]));
        assert!(tail.unwritten_from(9).is_none(), "past the end");
    }
}

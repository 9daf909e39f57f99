//! Publisher confirms that complete after the publish was handled: a persistent message
//! on a durable queue is confirmed by the store once it is on disk.
//!
//! A confirm must never reach a channel that has been closed (its number may already
//! belong to a new channel), so each open channel in confirm mode has a [`ConfirmSink`]
//! whose `open` flag is cleared before the channel's `close`/`close-ok` is written; the
//! flag is read under the outbox lock when the confirm is written.

use crate::codec::delivery::{put_ack, put_nack};
use crate::outbox::Outbox;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where the confirms of one channel go.
#[derive(Debug)]
pub struct ConfirmSink {
    outbox: Arc<Outbox>,
    channel: u16,
    open: AtomicBool,
}

impl ConfirmSink {
    pub fn new(outbox: Arc<Outbox>, channel: u16) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            channel,
            open: AtomicBool::new(true),
        })
    }

    /// The channel is closing: confirms still pending are dropped.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Sends `basic.ack` (or `basic.nack` when `ok` is false) for `tag`.
    pub fn complete(&self, tag: u64, ok: bool) {
        self.outbox.push(|buf| {
            if self.open.load(Ordering::Acquire) {
                if ok {
                    put_ack(buf, self.channel, tag, false);
                } else {
                    put_nack(buf, self.channel, tag, false);
                }
            }
        });
    }
}

/// A confirm owed for one publish.
#[derive(Debug)]
pub struct Confirm {
    pub sink: Arc<ConfirmSink>,
    pub tag: u64,
}

impl Confirm {
    pub fn complete(self, ok: bool) {
        self.sink.complete(self.tag, ok);
    }
}

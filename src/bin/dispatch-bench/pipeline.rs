//! Keeps several lapin writes in flight from one task.
//!
//! lapin resolves a `basic_publish` or `basic_ack` future once its io thread has written
//! the frames to the socket. A loop that awaits each one in turn therefore hands the io
//! thread one message at a time, and every message costs a thread wake-up and a `write`
//! on the client and a `read` on the broker. A [`Pipeline`] instead keeps up to
//! [`DEPTH`] of these futures pending, so the io thread finds several messages queued
//! whenever it wakes and writes them together, as any client that streams messages would.
//! Both brokers of a comparison are measured with the same pipeline.

use std::future::Future;

use anyhow::{Context, Result};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

/// Writes handed to lapin and not yet on the socket, at most.
pub const DEPTH: usize = 256;

/// Pending writes of one task; see the module doc.
pub struct Pipeline<F> {
    pending: FuturesUnordered<F>,
}

impl<F, T> Pipeline<F>
where
    F: Future<Output = lapin::Result<T>>,
{
    pub fn new() -> Self {
        Pipeline {
            pending: FuturesUnordered::new(),
        }
    }

    /// Hands `write` to lapin; waits only while [`DEPTH`] writes are pending already.
    /// Returns the outputs of the writes that completed meanwhile, in completion order.
    pub async fn push(&mut self, write: F, what: &str) -> Result<Vec<T>> {
        self.pending.push(write);
        let mut done = Vec::new();
        // Polling hands the new write to lapin (it queues the frames when first polled)
        // and collects whatever finished.
        while let Some(Some(finished)) = self.pending.next().now_or_never() {
            done.push(finished.with_context(|| what.to_owned())?);
        }
        while self.pending.len() >= DEPTH {
            if let Some(finished) = self.pending.next().await {
                done.push(finished.with_context(|| what.to_owned())?);
            }
        }
        Ok(done)
    }

    /// Waits for the next pending write to finish; `None` if none is pending.
    pub async fn next(&mut self, what: &str) -> Result<Option<T>> {
        self.pending
            .next()
            .await
            .transpose()
            .with_context(|| what.to_owned())
    }

    /// Waits for every pending write.
    pub async fn finish(&mut self, what: &str) -> Result<Vec<T>> {
        let mut done = Vec::new();
        while let Some(finished) = self.pending.next().await {
            done.push(finished.with_context(|| what.to_owned())?);
        }
        Ok(done)
    }
}

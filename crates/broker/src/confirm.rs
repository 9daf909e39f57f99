//! Publisher confirms that complete after the publish was handled: a persistent message
//! on a durable queue is confirmed by the store once it is on disk.
//!
//! A confirm must never reach a channel that has been closed (its number may already
//! belong to a new channel), so each open channel in confirm mode has a [`ConfirmSink`]
//! whose `open` flag is cleared before the channel's `close`/`close-ok` is written; the
//! flag is read under the outbox lock when the confirm is written.
//!
//! **Coalescing.** Confirms complete in bursts (every publish of one read, every message
//! of one fsync). When the ack of tag `n` finds the `basic.ack` its sink wrote last still
//! at the end of the outbox, unwritten, for tag `n - 1`, and every tag below `n` was
//! already confirmed, it widens that frame to `n` with `multiple = true` instead of
//! adding a frame. Only such an in-order run is merged, so a multiple ack never covers a
//! tag that was confirmed on its own (a nack above all: clients would take it for an ack)
//! and never one that has not completed; the client sees one frame where it would have
//! seen several. A nack, or any other frame queued in between, ends the run (so a
//! `basic.return` still precedes the ack of its message).

use crate::codec::delivery::{ACK_FRAME_LEN, extend_ack, put_ack, put_nack};
use crate::config::CONFIRM_REORDER_LIMIT;
use crate::outbox::Outbox;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Where the confirms of one channel go.
#[derive(Debug)]
pub struct ConfirmSink {
    outbox: Arc<Outbox>,
    channel: u16,
    open: AtomicBool,
    /// Locked inside the outbox lock only.
    completed: Mutex<Completed>,
}

/// Which tags of a channel have completed, and the last ack frame written.
#[derive(Debug, Default)]
struct Completed {
    /// Every tag up to this one has completed.
    through: u64,
    /// Completed tags above `through + 1` (confirms completing out of order, e.g. a
    /// transient message's while an earlier persistent one waits for the disk).
    ahead: BTreeSet<u64>,
    /// The last `basic.ack` frame this sink wrote: its stream position and tag.
    last_ack: Option<(u64, u64)>,
}

impl Completed {
    fn record(&mut self, tag: u64) {
        if tag == self.through + 1 {
            self.through = tag;
            while self.ahead.remove(&(self.through + 1)) {
                self.through += 1;
            }
        } else if tag > self.through {
            if self.ahead.len() == CONFIRM_REORDER_LIMIT {
                // Too many out of order to track: forget them. `through` then stays
                // below them for good, so acks on this channel are no longer merged,
                // which is safe, and the memory is given back.
                self.ahead.clear();
            } else {
                self.ahead.insert(tag);
            }
        }
    }
}

impl ConfirmSink {
    pub fn new(outbox: Arc<Outbox>, channel: u16) -> Arc<Self> {
        Arc::new(Self {
            outbox,
            channel,
            open: AtomicBool::new(true),
            completed: Mutex::new(Completed::default()),
        })
    }

    /// The channel is closing: confirms still pending are dropped.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Sends `basic.ack` (or `basic.nack` when `ok` is false) for `tag`, merged into the
    /// ack this sink queued last when that is safe (see the module doc).
    pub fn complete(&self, tag: u64, ok: bool) {
        self.outbox.push_tracked(|tail| {
            if !self.open.load(Ordering::Acquire) {
                return;
            }
            let mut completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
            let in_order = completed.through + 1 == tag;
            completed.record(tag);
            if !ok {
                completed.last_ack = None;
                put_nack(tail.buf(), self.channel, tag, false);
                return;
            }
            if let Some((at, last)) = completed.last_ack
                && in_order
                && last + 1 == tag
                && at + ACK_FRAME_LEN as u64 == tail.end()
                && let Some(frame) = tail.unwritten_from(at)
            {
                extend_ack(frame, tag);
                completed.last_ack = Some((at, tag));
                return;
            }
            completed.last_ack = Some((tail.end(), tag));
            put_ack(tail.buf(), self.channel, tag, false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, basic};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn within<F: std::future::Future>(fut: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(5), fut)
            .await
            .expect("a local socket answers within 5 s")
    }

    /// An outbox on a real socket, and the peer that reads it.
    async fn outbox() -> (Arc<Outbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = within(TcpStream::connect(listener.local_addr().unwrap()))
            .await
            .unwrap();
        let (server, _) = within(listener.accept()).await.unwrap();
        let (_, writer) = server.into_split();
        (Arc::new(Outbox::new(writer, 1 << 20)), client)
    }

    /// Writes what is queued and reads it back as (ack?, tag, multiple) per frame.
    async fn sent(outbox: &Outbox, peer: &mut TcpStream) -> Vec<(bool, u64, bool)> {
        let before = outbox.written();
        within(outbox.drain()).await.unwrap();
        let mut bytes = vec![0; (outbox.written() - before) as usize];
        within(peer.read_exact(&mut bytes)).await.unwrap();
        let mut rest = &bytes[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let (more, frame) = parse_frame(rest).unwrap();
            rest = more;
            frames.push(match frame {
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                    (true, a.delivery_tag, a.multiple)
                }
                AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
                    (false, n.delivery_tag, n.multiple)
                }
                other => panic!("not a confirm: {other:?}"),
            });
        }
        frames
    }

    #[tokio::test]
    async fn acks_merge_only_over_completed_tags_and_only_while_unwritten() {
        let (outbox, mut peer) = outbox().await;
        let sink = ConfirmSink::new(outbox.clone(), 1);
        sink.complete(2, true); // 1 still waits (for the disk): a single ack
        sink.complete(3, true); // 1 still waits: 3 may not cover it
        sink.complete(1, true); // out of order: 2 and 3 were confirmed on their own
        sink.complete(4, false); // a nack is its own frame
        sink.complete(5, true); // after a nack: a new ack
        sink.complete(6, true); // in order, merged into it
        assert_eq!(
            sent(&outbox, &mut peer).await,
            [
                (true, 2, false),
                (true, 3, false),
                (true, 1, false),
                (false, 4, false),
                (true, 6, true)
            ]
        );
        // The ack of 6 is on the wire: 7 gets a frame of its own.
        sink.complete(7, true);
        assert_eq!(sent(&outbox, &mut peer).await, [(true, 7, false)]);
        // Another frame behind the last ack: no merge across it.
        sink.complete(8, true);
        outbox.push(|buf| put_nack(buf, 1, 99, false));
        sink.complete(9, true);
        assert_eq!(
            sent(&outbox, &mut peer).await,
            [(true, 8, false), (false, 99, false), (true, 9, false)]
        );
    }

    /// A nacked tag is never covered by a later multiple ack: clients that walk the
    /// outstanding tags of a multiple ack would report it acked.
    #[tokio::test]
    async fn a_multiple_ack_never_covers_a_nacked_tag() {
        let (outbox, mut peer) = outbox().await;
        let sink = ConfirmSink::new(outbox.clone(), 1);
        sink.complete(2, false); // refused at once while 1 waits for the disk
        sink.complete(3, true);
        sink.complete(1, true);
        sink.complete(4, true); // 1..=3 confirmed: 4 starts an in-order run
        sink.complete(5, true);
        assert_eq!(
            sent(&outbox, &mut peer).await,
            [
                (false, 2, false),
                (true, 3, false),
                (true, 1, false),
                (true, 5, true)
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_sink_sends_nothing() {
        let (outbox, mut peer) = outbox().await;
        let sink = ConfirmSink::new(outbox.clone(), 1);
        sink.complete(1, true);
        sink.close();
        sink.complete(2, true);
        outbox.push(|buf| put_ack(buf, 1, 42, false));
        assert_eq!(
            sent(&outbox, &mut peer).await,
            [(true, 1, false), (true, 42, false)]
        );
    }
}

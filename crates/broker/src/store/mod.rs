//! The broker's disk store: durable topology and persistent messages.
//!
//! # Layout
//!
//! ```text
//! DATA_DIR/metadata                         durable exchanges, queues, bindings
//! DATA_DIR/messages/00000000000000000001.seg  the message log, one segment file after another
//! ```
//!
//! **Metadata** is a log of changes to the durable topology ([`metadata`]): each durable
//! declare, delete, bind or unbind appends one record, written and `fdatasync`ed by the
//! log thread below, which compacts the file into a snapshot when it has doubled. The
//! client's `declare-ok` (`bind-ok`, …) waits for that sync: the connection holds the reply
//! and reads nothing more until [`Store::topology_synced`] says so, so a durable queue the
//! client has heard of survives a `kill -9`, and declares from many clients share a sync.
//!
//! **Messages** go to one shared, append-only log ([`record`] gives the format): an
//! *enqueue* record holds a persistent message once (content header and body as they
//! arrived) with every durable queue it was routed to, so a publish to N queues is
//! written once; *deliver* and *remove* records mark a message handed to a consumer, and
//! acknowledged (or dropped, purged, expired) on one queue. Message ids increase in log
//! order, so each segment holds a contiguous range of them.
//!
//! # Where fsync happens: group commit
//!
//! One thread (`log.rs`) owns the message log and the metadata log. Connections hand it operations through its
//! inbox (`inbox.rs`) while holding the vhost lock, so operations arrive in the order they took
//! effect. The thread takes everything queued, writes it with one `write`, and — if any
//! operation waits for a publisher confirm — calls `fdatasync` once before sending those
//! confirms. Metadata records of the batch are synced first, so a confirmed message never
//! names a queue that a crash could forget. While it syncs, more operations queue up and form the next batch; under
//! load an enqueue also waits up to a millisecond for others to share its flush, so many
//! publishers share each `fdatasync`. Deliver and remove records wake nobody: they go out
//! with the next batch, at most 10 ms later. A `kill -9` inside that window can bring an
//! acknowledged message back once, marked redelivered (at least once); it never loses a
//! confirmed one.
//!
//! # Reclaiming space
//!
//! Each segment counts its live references: (message, durable queue) pairs not yet
//! removed. Segments are deleted oldest first once they have no live references, which
//! keeps every remove record needed for recovery. A long-lived message in an old segment
//! would hold back every later segment: once the oldest segment is sparse, its live
//! messages are copied forward ([`compaction`]) and it goes.
//!
//! # Recovery ([`recovery`])
//!
//! On start the metadata is read, then every segment in order. A record that is cut
//! short (a torn write) or fails its CRC ends that segment: the rest of the segment is
//! dropped and truncated away, a warning says how many bytes of which file were dropped,
//! and recovery goes on with the next segment. The broker never refuses to start over a
//! damaged store and never delivers a record whose CRC does not match. An enqueue record
//! whose id was seen before is a compaction copy and replaces it. Messages whose
//! queues are gone are dropped. Survivors are requeued in their original order, with
//! `redelivered` set if a deliver record says a consumer had them, and with what is left of
//! their TTL (enqueue records carry the time they were written). Writing then starts in
//! a fresh segment.
//!
//! # Errors
//!
//! A failed write or sync (disk full, I/O error) is logged, the confirms waiting on it
//! become `basic.nack`s, and the log moves on to a fresh segment; the broker keeps
//! running.

pub mod compaction;
mod inbox;
mod log;
pub mod metadata;
pub mod record;
pub mod recovery;
pub mod topology;

use crate::confirm::Confirm;
use crate::message::Message;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::watch;
use topology::Change;

pub use log::wall_clock_ms;
pub use recovery::Recovered;

/// A segment is closed and a new one started once it reaches this size.
pub const SEGMENT_SIZE: u64 = 32 * 1024 * 1024;
/// Name of the metadata file.
pub const METADATA_FILE: &str = "metadata";
/// Directory of the message log.
pub const MESSAGES_DIR: &str = "messages";
/// Extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// Packs a record's place: segment number (high 32 bits) and byte offset (low 32).
pub fn pack_location(segment: u64, offset: u64) -> u64 {
    (segment << 32) | (offset & 0xffff_ffff)
}

/// The segment number and offset of a packed location.
pub fn unpack_location(location: u64) -> (u64, u64) {
    (location >> 32, location & 0xffff_ffff)
}

/// The path of segment `number` in `dir`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.{SEGMENT_EXT}"))
}

/// The segment file paged-out messages were last read from, kept open for the next read;
/// the log thread closes it when it deletes the segment, so the space is freed.
#[derive(Debug, Default)]
pub(crate) struct OpenSegment(Mutex<Option<(u64, Arc<std::fs::File>)>>);

impl OpenSegment {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<std::fs::File>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Segment `number` was deleted.
    pub(crate) fn deleted(&self, number: u64) {
        let mut open = self.lock();
        if open.as_ref().is_some_and(|(n, _)| *n == number) {
            *open = None;
        }
    }
}

/// Reads the record at `offset` of a segment file; `None` if it is not intact.
pub(crate) fn read_record_at(
    file: &std::fs::File,
    offset: u64,
) -> std::io::Result<Option<record::Record>> {
    use std::os::unix::fs::FileExt;
    let mut head = [0; record::RECORD_HEADER];
    file.read_exact_at(&mut head, offset)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > record::MAX_RECORD {
        return Ok(None);
    }
    let mut bytes = vec![0; record::RECORD_HEADER + len];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(record::read_record(&bytes).ok().map(|(record, _)| record))
}

/// What the log thread is asked to do.
#[derive(Debug)]
pub(crate) enum Op {
    Enqueue {
        msg: Arc<Message>,
        queues: Vec<u64>,
        confirm: Option<Confirm>,
    },
    Marker {
        removed: bool,
        queue: u64,
        msg: u64,
    },
    /// Copy message `id` (its record at `location`) into the current segment, on the
    /// durable queues that still hold it, each with whether it was delivered.
    Relocate {
        id: u64,
        location: u64,
        queues: Vec<(u64, bool)>,
    },
    /// Every live message of `segment` was handed over with [`Op::Relocate`].
    Relocated {
        segment: u64,
    },
    /// Change number `seq` to the durable topology.
    Topology {
        change: Change,
        seq: u64,
    },
    Stop,
}

/// Handle to the disk store, shared by everything in the broker.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    ops: Arc<inbox::Inbox>,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_msg: AtomicU64,
    /// The segment paged-out messages were last read from.
    reader: Arc<OpenSegment>,
    /// Topology changes handed to the log thread, counted.
    topology_queued: AtomicU64,
    /// How many of them are on disk, as the log thread counts (its end closes it).
    topology_synced: watch::Receiver<u64>,
    compaction: Arc<compaction::Compaction>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers what it holds.
    pub fn open(dir: &Path) -> std::io::Result<(Store, Recovered)> {
        std::fs::create_dir_all(dir.join(MESSAGES_DIR))?;
        let recovered = recovery::recover(dir)?;
        let ops = Arc::new(inbox::Inbox::default());
        let receiver = ops.clone();
        let metadata = metadata::MetadataLog::open(dir, recovered.topology.clone())?;
        let compaction = Arc::new(compaction::Compaction::default());
        let reader = Arc::new(OpenSegment::default());
        let writer = log::Log::start(
            dir.join(MESSAGES_DIR),
            &recovered,
            metadata,
            compaction.clone(),
            reader.clone(),
        )?;
        let (synced, topology_synced) = watch::channel(0);
        let thread = std::thread::Builder::new()
            .name("dispatch-store".into())
            .spawn(move || writer.run(receiver, synced))?;
        let store = Store {
            dir: dir.to_owned(),
            ops,
            thread: Mutex::new(Some(thread)),
            next_msg: AtomicU64::new(recovered.next_msg),
            reader,
            topology_queued: AtomicU64::new(0),
            topology_synced,
            compaction,
        };
        Ok((store, recovered))
    }

    /// Reads message `id` back from its record (for queues whose backlog is paged out).
    pub fn read(&self, id: u64, location: u64) -> std::io::Result<Arc<Message>> {
        let location = self.compaction.locate(id, location);
        let (segment, offset) = unpack_location(location);
        let read = self
            .segment_reader(segment)
            .and_then(|file| read_record_at(&file, offset));
        // Compaction may have moved the record and deleted its segment meanwhile.
        let read = match read {
            Err(_) if self.compaction.locate(id, location) != location => {
                return self.read(id, location);
            }
            read => read?,
        };
        match read {
            Some(record::Record::Enqueue {
                msg,
                exchange,
                routing_key,
                header,
                body,
                ..
            }) if msg == id => {
                let message = Message::new(exchange.into(), routing_key.into(), header, body, true);
                message.set_store_id(id);
                message.set_location(location);
                Ok(Arc::new(message))
            }
            _ => Err(std::io::Error::other(format!(
                "no intact record of message {id} at {location:#x}"
            ))),
        }
    }

    /// Runs `f` with a function telling where message `id`, written at `location`, is
    /// now (compaction moves records).
    pub fn with_locator<R>(&self, f: impl FnOnce(&dyn Fn(u64, u64) -> u64) -> R) -> R {
        self.compaction.with_locator(f)
    }

    /// The segment whose live messages should be relocated, if the log thread asks.
    pub fn compaction_wanted(&self) -> Option<u64> {
        self.compaction.take_wanted()
    }

    /// Resolves once the log thread asks for a segment to be compacted.
    pub async fn compaction_requested(&self) {
        self.compaction.requested().await;
    }

    /// Hands message `id` (record at `location`) over for copying forward, with the
    /// durable queues that hold it and whether each delivered it. Under the vhost lock.
    pub fn relocate(&self, id: u64, location: u64, queues: Vec<(u64, bool)>) {
        self.send(Op::Relocate {
            id,
            location,
            queues,
        });
    }

    /// Every live message of `segment` was handed over with [`Store::relocate`].
    pub fn relocated(&self, segment: u64) {
        self.send(Op::Relocated { segment });
    }

    /// An open handle on segment `number`; the last one is kept, since a draining
    /// backlog reads one segment after another.
    fn segment_reader(&self, number: u64) -> std::io::Result<Arc<std::fs::File>> {
        let mut last = self.reader.lock();
        if let Some((_, file)) = last.as_ref().filter(|(open, _)| *open == number) {
            return Ok(file.clone());
        }
        let file = Arc::new(std::fs::File::open(segment_path(
            &self.dir.join(MESSAGES_DIR),
            number,
        ))?);
        *last = Some((number, file.clone()));
        Ok(file)
    }

    /// Writes a persistent message routed to `queues` (durable queue ids); `confirm` is
    /// completed once it is on disk. Call under the vhost lock, so ids follow log order.
    pub fn enqueue(&self, msg: &Arc<Message>, queues: Vec<u64>, confirm: Option<Confirm>) {
        let id = self.next_msg.fetch_add(1, Ordering::Relaxed);
        msg.set_store_id(id);
        self.send(Op::Enqueue {
            msg: msg.clone(),
            queues,
            confirm,
        });
    }

    /// Records that stored message `msg` was handed to a consumer of `queue`.
    pub fn delivered(&self, queue: u64, msg: u64) {
        self.send(Op::Marker {
            removed: false,
            queue,
            msg,
        });
    }

    /// Records that stored message `msg` left `queue` for good.
    pub fn removed(&self, queue: u64, msg: u64) {
        self.send(Op::Marker {
            removed: true,
            queue,
            msg,
        });
    }

    /// Records a change to the durable topology. Call under the vhost lock, so changes
    /// are written in the order they took effect.
    pub fn change_topology(&self, change: Change) {
        let seq = self.topology_queued.fetch_add(1, Ordering::Relaxed) + 1;
        self.send(Op::Topology { change, seq });
    }

    /// The number of the last topology change if it is not yet on disk: a reply that
    /// reports it must wait for [`Store::topology_synced`].
    pub fn topology_unsynced(&self) -> Option<u64> {
        let queued = self.topology_queued.load(Ordering::Relaxed);
        (*self.topology_synced.borrow() < queued).then_some(queued)
    }

    /// Resolves once topology change `seq` (and every one before it) is on disk, or
    /// its write failed (logged; the change stands in memory).
    pub async fn topology_synced(&self, seq: u64) {
        // An error means the log thread is gone: nothing more will be written.
        let mut synced = self.topology_synced.clone();
        let _ = synced.wait_for(|done| *done >= seq).await;
    }

    fn send(&self, op: Op) {
        self.ops.push(op);
    }

    /// Writes what is queued and stops the log thread (also done on drop).
    pub fn close(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            self.ops.push(Op::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

//! The log thread: group commit, segment rotation, reclamation and the copying side of
//! compaction (see [`super`] and [`super::compaction`]).

use super::compaction::{Compaction, SPARSE_SHARE};
use super::inbox::Inbox;
use super::metadata::MetadataLog;
use super::record::{Record, put_enqueue, put_marker};
use super::recovery::Recovered;
use super::{
    Op, OpenSegment, SEGMENT_SIZE, pack_location, read_record_at, segment_path, unpack_location,
};
use crate::confirm::Confirm;
use crate::message::Message;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// One segment file and its live references.
#[derive(Debug, Clone)]
pub struct Segment {
    pub number: u64,
    /// The first message id written to it, if any.
    pub first_msg: Option<u64>,
    /// (message, queue) references not yet removed.
    pub live: u64,
    /// (message, queue) references ever written to it.
    pub refs: u64,
}

impl Segment {
    pub(crate) fn new(number: u64) -> Segment {
        Segment {
            number,
            first_msg: None,
            live: 0,
            refs: 0,
        }
    }
}

/// A copy written in the current batch, undone if the batch fails.
struct Relocation {
    id: u64,
    /// Where the message's references were counted before.
    from: u64,
    /// Its new location.
    to: u64,
}

/// The state of the log, owned by its thread.
pub struct Log {
    dir: PathBuf,
    file: File,
    written: u64,
    /// Oldest first; the last is the one being written.
    segments: VecDeque<Segment>,
    buf: Vec<u8>,
    waiting: Vec<Confirm>,
    /// The last fsync carried confirms of several publishes: the broker is busy.
    last_commit_shared: bool,
    /// Messages in `buf` and where their records go; told once written.
    placed: Vec<(Arc<Message>, u64)>,
    metadata: MetadataLog,
    /// The last topology change appended to `metadata`.
    topology_seq: u64,
    compaction: Arc<Compaction>,
    /// Messages whose record was copied forward: the segment now holding it and the
    /// references left. Others are held by the segment their id falls in.
    relocated: HashMap<u64, (u64, u64)>,
    /// Copies in `buf`.
    relocations: Vec<Relocation>,
    /// The segment last asked to be compacted and its live references then: it is asked
    /// again only once they changed (or the copies failed), not after every commit.
    asked: Option<(u64, u64)>,
    /// A request the vhost has not answered yet (its [`Op::Relocated`] is to come): no
    /// other is made meanwhile, so no message is listed twice.
    outstanding: bool,
    /// The segment whose relocation ended in this batch, to check once committed.
    emptied: Option<u64>,
    /// The open segment relocations read from.
    reading: Option<(u64, File)>,
    /// The segment the store's readers hold open, closed when it is deleted.
    reader: Arc<OpenSegment>,
}

impl Log {
    /// Opens a fresh segment after the recovered ones.
    pub fn start(
        dir: PathBuf,
        recovered: &Recovered,
        metadata: MetadataLog,
        compaction: Arc<Compaction>,
        reader: Arc<OpenSegment>,
    ) -> std::io::Result<Log> {
        let segments: VecDeque<Segment> = recovered.segments.iter().cloned().collect();
        let number = segments.back().map_or(1, |s| s.number + 1);
        let file = create_segment(&dir, number)?;
        let mut log = Log {
            dir,
            file,
            written: 0,
            segments,
            buf: Vec::new(),
            waiting: Vec::new(),
            placed: Vec::new(),
            last_commit_shared: false,
            metadata,
            topology_seq: 0,
            compaction,
            relocated: recovered.relocated.clone(),
            relocations: Vec::new(),
            asked: None,
            outstanding: false,
            emptied: None,
            reading: None,
            reader,
        };
        log.segments.push_back(Segment::new(number));
        log.reclaim();
        Ok(log)
    }

    /// Runs until [`Op::Stop`]; tells `topology_synced` how many topology changes are on
    /// disk.
    pub fn run(mut self, inbox: Arc<Inbox>, topology_synced: watch::Sender<u64>) {
        let mut stop = false;
        let mut batch = Vec::new();
        while !stop {
            inbox.take(&mut batch, self.last_commit_shared);
            for op in batch.drain(..) {
                match op {
                    Op::Enqueue {
                        msg,
                        queues,
                        confirm,
                    } => {
                        let id = msg.store_id();
                        let current = self.segments.back_mut().expect("a current segment");
                        let offset = self.written + self.buf.len() as u64;
                        self.placed
                            .push((msg.clone(), pack_location(current.number, offset)));
                        current.first_msg.get_or_insert(id);
                        current.live += queues.len() as u64;
                        current.refs += queues.len() as u64;
                        put_enqueue(&mut self.buf, id, wall_clock_ms(), &queues, &msg);
                        self.waiting.extend(confirm);
                    }
                    Op::Marker {
                        removed,
                        queue,
                        msg,
                    } => {
                        put_marker(&mut self.buf, removed, queue, msg);
                        if removed {
                            self.release(msg);
                        }
                    }
                    Op::Relocate {
                        id,
                        location,
                        queues,
                    } => self.relocate(id, location, &queues),
                    Op::Relocated { segment } => {
                        self.outstanding = false;
                        self.emptied = Some(segment);
                    }
                    Op::Topology { change, seq } => {
                        self.metadata.append(change);
                        self.topology_seq = seq;
                    }
                    Op::Stop => stop = true,
                }
                // Bound the batch in bytes too: offsets stay small and memory bounded.
                if self.buf.len() as u64 >= SEGMENT_SIZE {
                    self.commit(&topology_synced);
                }
            }
            self.commit(&topology_synced);
        }
        self.commit(&topology_synced);
        let _ = self.file.sync_data();
    }

    /// Writes and syncs the topology changes of the batch, before any message that may
    /// name their queues is confirmed.
    /// A failure is logged and returned: the batch's confirms become nacks, since their
    /// messages may name a queue a crash would forget.
    fn commit_metadata(&mut self, topology_synced: &watch::Sender<u64>) -> bool {
        let result = self.metadata.commit();
        if let Err(e) = &result {
            tracing::error!(
                dir = %self.dir.display(),
                "writing the durable topology failed: {e}; the changes stand in memory, the next batch rewrites the file whole, and publishes waiting on this one are nacked"
            );
        }
        if *topology_synced.borrow() < self.topology_seq {
            topology_synced.send_replace(self.topology_seq);
        }
        result.is_ok()
    }

    /// Writes the batch, syncs if a confirm waits on it, completes the confirms.
    fn commit(&mut self, topology_synced: &watch::Sender<u64>) {
        if self.topology_seq > *topology_synced.borrow() || !self.buf.is_empty() {
            // Before any I/O: the runtime this commit will wake must not spin meanwhile.
            crate::spin::store_worked();
        }
        let metadata_ok = self.commit_metadata(topology_synced);
        if self.buf.is_empty() && self.waiting.is_empty() {
            return;
        }
        // Copies must be on disk before their old segment may go.
        let sync = !self.waiting.is_empty() || !self.relocations.is_empty();
        let result = match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.written += self.buf.len() as u64;
                if sync { self.file.sync_data() } else { Ok(()) }
            }
            Err(e) => {
                // Cut off whatever part of the batch reached the file: no torn record
                // may sit before records written later.
                let _ = self.file.set_len(self.written);
                Err(e)
            }
        };
        self.buf.clear();
        let ok = result.is_ok();
        for (msg, location) in self.placed.drain(..) {
            if ok {
                msg.set_location(location);
            } else {
                msg.set_write_failed();
            }
        }
        if let Err(e) = &result {
            tracing::error!(dir = %self.dir.display(), "writing the message log failed: {e}; publishes waiting on it are nacked");
        }
        self.settle_relocations(ok);
        self.last_commit_shared = self.waiting.len() > 1;
        if !self.waiting.is_empty() {
            crate::coalesce::confirms_completed();
        }
        crate::outbox::batch(|| {
            for confirm in self.waiting.drain(..) {
                confirm.complete(ok && metadata_ok);
            }
        });
        if !ok || self.written >= SEGMENT_SIZE {
            self.rotate();
        }
        self.reclaim();
        self.check_emptied();
        self.want_compaction();
    }

    /// A (message, queue) reference is gone: the segment holding the message loses one.
    fn release(&mut self, msg: u64) {
        let number = match self.relocated.get_mut(&msg) {
            Some((number, refs)) => {
                let number = *number;
                *refs = refs.saturating_sub(1);
                if *refs == 0 {
                    self.relocated.remove(&msg);
                    self.compaction.forget(msg);
                }
                Some(number)
            }
            None => self.holder(msg),
        };
        if let Some(segment) = number.and_then(|n| self.segment_mut(n)) {
            segment.live = segment.live.saturating_sub(1);
        }
    }

    /// The segment message `msg` was first written to.
    fn holder(&self, msg: u64) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find(|s| s.first_msg.is_some_and(|first| first <= msg))
            .map(|s| s.number)
    }

    fn segment_mut(&mut self, number: u64) -> Option<&mut Segment> {
        self.segments.iter_mut().find(|s| s.number == number)
    }

    /// Appends a copy of message `id` (record at `location`) on `queues`, and moves its
    /// references to the current segment.
    fn relocate(&mut self, id: u64, location: u64, queues: &[(u64, bool)]) {
        let (number, offset) = unpack_location(location);
        if !self.segments.iter().any(|s| s.number == number) {
            return; // a listing made before the segment was emptied some other way
        }
        let (published_ms, message) = match self.read_at(number, offset) {
            Ok(Some(Record::Enqueue {
                msg,
                published_ms,
                exchange,
                routing_key,
                header,
                body,
                ..
            })) if msg == id => (
                published_ms,
                Message::new(exchange.into(), routing_key.into(), header, body, true),
            ),
            Ok(_) => {
                tracing::warn!(
                    "compaction: no intact record of message {id} at {location:#x}; it stays where it is"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "compaction: reading message {id} at {location:#x} failed: {e}; it stays where it is"
                );
                return;
            }
        };
        let ids: Vec<u64> = queues.iter().map(|(queue, _)| *queue).collect();
        let refs = ids.len() as u64;
        let current = self.segments.back_mut().expect("a current segment");
        let to = pack_location(current.number, self.written + self.buf.len() as u64);
        let current_number = current.number;
        current.live += refs;
        current.refs += refs;
        put_enqueue(&mut self.buf, id, published_ms, &ids, &message);
        for (queue, _) in queues.iter().filter(|(_, delivered)| *delivered) {
            put_marker(&mut self.buf, false, *queue, id);
        }
        let from = match self.relocated.insert(id, (current_number, refs)) {
            Some((earlier, _)) => Some(earlier),
            None => self.holder(id),
        };
        if let Some(from) = from.and_then(|n| self.segment_mut(n)) {
            from.live = from.live.saturating_sub(refs);
        }
        self.relocations.push(Relocation {
            id,
            from: from.unwrap_or(number),
            to,
        });
    }

    /// Reads the record at `offset` of segment `number`, keeping the file open for the
    /// next one.
    fn read_at(&mut self, number: u64, offset: u64) -> std::io::Result<Option<Record>> {
        if self
            .reading
            .as_ref()
            .is_none_or(|(open, _)| *open != number)
        {
            self.reading = Some((number, File::open(segment_path(&self.dir, number))?));
        }
        let (_, file) = self.reading.as_ref().expect("opened above");
        read_record_at(file, offset)
    }

    /// The copies of the batch are on disk (`ok`): readers find them from now on. If the
    /// write failed, their references go back where they were.
    fn settle_relocations(&mut self, ok: bool) {
        let relocations = std::mem::take(&mut self.relocations);
        if !relocations.is_empty() && !ok {
            self.asked = None; // try again
        }
        if ok {
            let moves = relocations
                .iter()
                .filter(|r| self.relocated.contains_key(&r.id))
                .map(|r| (r.id, r.to));
            self.compaction.moved_to(moves);
            return;
        }
        for r in relocations.into_iter().rev() {
            let Some((number, refs)) = self.relocated.remove(&r.id) else {
                continue;
            };
            if let Some(copy) = self.segment_mut(number) {
                copy.live = copy.live.saturating_sub(refs);
            }
            if let Some(back) = self.segment_mut(r.from) {
                back.live += refs;
            }
            if self.holder(r.id) != Some(r.from) {
                self.relocated.insert(r.id, (r.from, refs));
            }
        }
    }

    /// Says so if a relocated segment still has live references after its copies were
    /// written (the vhost and the log disagree; the segment stays, nothing is lost).
    fn check_emptied(&mut self) {
        let Some(number) = self.emptied.take() else {
            return;
        };
        self.reading = None;
        if let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.number == number && s.live > 0)
        {
            tracing::warn!(
                segment = number,
                live = segment.live,
                "compaction left references in a message log segment; it is kept"
            );
        }
    }

    /// Asks for the oldest segment to be compacted once it is sparse.
    fn want_compaction(&mut self) {
        let Some(oldest) = self.segments.front().filter(|_| self.segments.len() > 1) else {
            return;
        };
        let ask = Some((oldest.number, oldest.live));
        if !self.outstanding
            && oldest.live > 0
            && oldest.live * SPARSE_SHARE <= oldest.refs
            && self.asked != ask
        {
            self.asked = ask;
            self.outstanding = true;
            self.compaction.want(oldest.number);
        }
    }

    /// Closes the current segment and starts the next.
    fn rotate(&mut self) {
        let _ = self.file.sync_data();
        let number = self.segments.back().map_or(1, |s| s.number + 1);
        match create_segment(&self.dir, number) {
            Ok(file) => {
                self.file = file;
                self.written = 0;
                self.segments.push_back(Segment::new(number));
            }
            Err(e) => tracing::error!(
                "cannot start message log segment {number}: {e}; writing on in the current one"
            ),
        }
    }

    /// Deletes the oldest segments while they hold nothing live (never the current one).
    fn reclaim(&mut self) {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.live == 0) {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            let path = segment_path(&self.dir, old.number);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot delete {}: {e}", path.display());
            }
            self.reader.deleted(old.number);
        }
    }
}

fn create_segment(dir: &std::path::Path, number: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, number))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Milliseconds since the Unix epoch, as written in enqueue records.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! The log thread: group commit, segment rotation and reclamation (see [`super`]).

use super::inbox::Inbox;
use super::metadata::MetadataLog;
use super::record::{put_enqueue, put_marker};
use super::recovery::Recovered;
use super::{Op, SEGMENT_SIZE, pack_location, segment_path};
use crate::confirm::Confirm;
use crate::message::Message;
use std::collections::VecDeque;
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
}

impl Log {
    /// Opens a fresh segment after the recovered ones.
    pub fn start(
        dir: PathBuf,
        recovered: &Recovered,
        metadata: MetadataLog,
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
        };
        log.segments.push_back(Segment {
            number,
            first_msg: None,
            live: 0,
        });
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
    fn commit_metadata(&mut self, topology_synced: &watch::Sender<u64>) {
        if let Err(e) = self.metadata.commit() {
            tracing::error!(
                dir = %self.dir.display(),
                "writing the durable topology failed: {e}; the changes stand in memory, and the next change rewrites the file whole"
            );
        }
        if *topology_synced.borrow() < self.topology_seq {
            topology_synced.send_replace(self.topology_seq);
        }
    }

    /// Writes the batch, syncs if a confirm waits on it, completes the confirms.
    fn commit(&mut self, topology_synced: &watch::Sender<u64>) {
        self.commit_metadata(topology_synced);
        if self.buf.is_empty() && self.waiting.is_empty() {
            return;
        }
        let result = match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.written += self.buf.len() as u64;
                if self.waiting.is_empty() {
                    Ok(())
                } else {
                    self.file.sync_data()
                }
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
        if let Err(e) = result {
            tracing::error!(dir = %self.dir.display(), "writing the message log failed: {e}; publishes waiting on it are nacked");
        }
        self.last_commit_shared = self.waiting.len() > 1;
        crate::outbox::batch(|| {
            for confirm in self.waiting.drain(..) {
                confirm.complete(ok);
            }
        });
        if !ok || self.written >= SEGMENT_SIZE {
            self.rotate();
        }
        self.reclaim();
    }

    /// A (message, queue) reference is gone: the segment holding the message loses one.
    fn release(&mut self, msg: u64) {
        let holder = self
            .segments
            .iter_mut()
            .rev()
            .find(|s| s.first_msg.is_some_and(|first| first <= msg));
        if let Some(segment) = holder {
            segment.live = segment.live.saturating_sub(1);
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
                self.segments.push_back(Segment {
                    number,
                    first_msg: None,
                    live: 0,
                });
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

//! Reading the store back at start-up (see [`super`] for the rules).

use super::log::Segment;
use super::metadata;
use super::record::{ReadError, Record, read_record};
use super::topology::Topology;
use super::{MESSAGES_DIR, SEGMENT_EXT};
use crate::codec::content::parse_content_header;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// A stored message that is still in at least one durable queue. Its body stays on
/// disk until a consumer needs it.
#[derive(Debug)]
pub struct RecoveredMessage {
    pub id: u64,
    /// Where its record is ([`super::pack_location`]).
    pub location: u64,
    pub body_len: u32,
    /// When it was written (wall clock, ms since the Unix epoch) and its own
    /// `expiration`, so TTLs run on across the restart.
    pub published_ms: u64,
    pub expiration_ms: Option<u64>,
    /// Durable queue ids it is in, each with whether a consumer had already received it.
    pub queues: Vec<(u64, bool)>,
}

/// What the store held.
#[derive(Debug, Default)]
pub struct Recovered {
    pub topology: Topology,
    /// In publish order.
    pub messages: Vec<RecoveredMessage>,
    pub(crate) segments: Vec<Segment>,
    /// Messages whose live record is a copy made by compaction, outside the segment
    /// their id falls in: that segment and the references left.
    pub(crate) relocated: HashMap<u64, (u64, u64)>,
    pub next_msg: u64,
}

struct Pending {
    location: u64,
    body_len: u32,
    published_ms: u64,
    expiration_ms: Option<u64>,
    queues: Vec<(u64, bool)>,
}

/// Reads the metadata and every segment of the message log in `dir`.
pub fn recover(dir: &Path) -> std::io::Result<Recovered> {
    let had_metadata = dir.join(super::METADATA_FILE).exists();
    let topology = metadata::load(dir);
    let mut enqueued = 0u64;
    let known: HashSet<u64> = topology.queues().map(|q| q.id).collect();
    let messages_dir = dir.join(MESSAGES_DIR);
    let mut numbers: Vec<u64> = std::fs::read_dir(&messages_dir)?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != SEGMENT_EXT {
                return None;
            }
            path.file_stem()?.to_str()?.parse().ok()
        })
        .collect();
    numbers.sort_unstable();

    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut segments = Vec::new();
    let mut next_msg = 1;
    for number in numbers {
        let path = super::segment_path(&messages_dir, number);
        let bytes = std::fs::read(&path)?;
        let mut segment = Segment::new(number);
        let mut at = 0;
        while at < bytes.len() {
            let (record, size) = match read_record(&bytes[at..]) {
                Ok(read) => read,
                Err(kind) => {
                    let what = match kind {
                        ReadError::Truncated => "a torn record",
                        ReadError::Corrupt => "a corrupt record",
                    };
                    tracing::warn!(
                        "message log {}: {what} at byte {at}; dropped the remaining {} bytes of the segment",
                        path.display(),
                        bytes.len() - at
                    );
                    truncate(&path, at as u64);
                    break;
                }
            };
            let location = super::pack_location(number, at as u64);
            at += size;
            match record {
                Record::Enqueue {
                    msg,
                    published_ms,
                    queues,
                    header,
                    body,
                    ..
                } => {
                    // Ids grow in log order; an id seen before is a copy made by
                    // compaction, which replaces what the earlier record said.
                    let copy = msg < next_msg;
                    if !copy {
                        segment.first_msg.get_or_insert(msg);
                        enqueued += 1;
                        next_msg = msg + 1;
                    }
                    segment.refs += queues.len() as u64;
                    let queues: Vec<(u64, bool)> = queues
                        .into_iter()
                        .filter(|q| known.contains(q))
                        .map(|q| (q, false))
                        .collect();
                    if queues.is_empty() {
                        pending.remove(&msg);
                    } else {
                        pending.insert(
                            msg,
                            Pending {
                                location,
                                body_len: body.len() as u32,
                                published_ms,
                                expiration_ms: parse_content_header(&header)
                                    .ok()
                                    .and_then(|h| h.expiration_ms),
                                queues,
                            },
                        );
                    }
                }
                Record::Deliver { queue, msg } => {
                    if let Some(p) = pending.get_mut(&msg) {
                        for entry in p.queues.iter_mut().filter(|(q, _)| *q == queue) {
                            entry.1 = true;
                        }
                    }
                }
                Record::Remove { queue, msg } => {
                    if let Some(p) = pending.get_mut(&msg) {
                        p.queues.retain(|(q, _)| *q != queue);
                        if p.queues.is_empty() {
                            pending.remove(&msg);
                        }
                    }
                }
            }
        }
        segments.push(segment);
    }

    if !had_metadata && enqueued > 0 {
        tracing::warn!(
            "the metadata file is missing from {} but the message log holds {enqueued} messages: their queues are unknown, so they are dropped",
            dir.display()
        );
    }
    let mut messages = Vec::with_capacity(pending.len());
    let mut relocated = HashMap::new();
    for (id, p) in pending {
        let refs = p.queues.len() as u64;
        let (number, _) = super::unpack_location(p.location);
        let holder = segments
            .iter()
            .rev()
            .find(|s| s.first_msg.is_some_and(|first| first <= id))
            .map(|s| s.number);
        if holder != Some(number) {
            relocated.insert(id, (number, refs));
        }
        if let Some(segment) = segments.iter_mut().find(|s| s.number == number) {
            segment.live += refs;
        }
        messages.push(RecoveredMessage {
            id,
            location: p.location,
            body_len: p.body_len,
            published_ms: p.published_ms,
            expiration_ms: p.expiration_ms,
            queues: p.queues,
        });
    }
    if !messages.is_empty() {
        tracing::info!(messages = messages.len(), "recovered persistent messages");
    }
    Ok(Recovered {
        topology,
        messages,
        segments,
        relocated,
        next_msg,
    })
}

fn truncate(path: &Path, len: u64) {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        });
    if let Err(e) = result {
        tracing::warn!("cannot truncate {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::store::metadata::MetadataLog;
    use crate::store::record::{put_enqueue, put_marker};
    use crate::store::topology::Change;
    use crate::store::topology::tests::queue;
    use bytes::Bytes;

    fn enqueue(out: &mut Vec<u8>, id: u64, queues: &[u64]) {
        let message = Message::new(
            "".into(),
            "q".into(),
            Bytes::new(),
            Bytes::from_static(b"body"),
            true,
        );
        put_enqueue(out, id, 0, queues, &message);
    }

    /// A store with queues 1 and 2 and the given segments.
    fn store_with(name: &str, segments: &[(u64, Vec<u8>)]) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dispatch-recovery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(MESSAGES_DIR)).unwrap();
        let mut topology = Topology::default();
        topology.apply(Change::Queue(queue("a", 1)));
        topology.apply(Change::Queue(queue("b", 2)));
        drop(MetadataLog::open(&dir, topology).unwrap());
        for (number, bytes) in segments {
            std::fs::write(
                super::super::segment_path(&dir.join(MESSAGES_DIR), *number),
                bytes,
            )
            .unwrap();
        }
        dir
    }

    /// A recovered message: id, segment of its record, queues (with delivered).
    type Summary = (u64, u64, Vec<(u64, bool)>);

    fn summary(recovered: &Recovered) -> Vec<Summary> {
        recovered
            .messages
            .iter()
            .map(|m| {
                (
                    m.id,
                    super::super::unpack_location(m.location).0,
                    m.queues.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_compaction_copy_replaces_the_original_record() {
        let mut first = Vec::new();
        enqueue(&mut first, 1, &[1, 2]);
        enqueue(&mut first, 2, &[1]);
        let mut second = Vec::new();
        put_marker(&mut second, true, 1, 1); // removed from queue 1
        put_marker(&mut second, false, 2, 1); // delivered on queue 2
        enqueue(&mut second, 1, &[2]); // the copy: only queue 2 holds it
        put_marker(&mut second, false, 2, 1);
        enqueue(&mut second, 3, &[1]);

        // Crash after the copy, before the old segment went: both records are there.
        let dir = store_with("copy", &[(1, first.clone()), (2, second.clone())]);
        let recovered = recover(&dir).unwrap();
        assert_eq!(
            summary(&recovered),
            [
                (1, 2, vec![(2, true)]),
                (2, 1, vec![(1, false)]),
                (3, 2, vec![(1, false)])
            ]
        );
        assert_eq!(recovered.next_msg, 4);
        assert_eq!(recovered.relocated, HashMap::from([(1, (2, 1))]));
        let live: Vec<_> = recovered
            .segments
            .iter()
            .map(|s| (s.number, s.live))
            .collect();
        assert_eq!(live, [(1, 1), (2, 2)]);
        std::fs::remove_dir_all(&dir).unwrap();

        // The old segment is gone: the copy alone tells.
        let dir = store_with("copy-only", &[(2, second)]);
        let recovered = recover(&dir).unwrap();
        assert_eq!(
            summary(&recovered),
            [(1, 2, vec![(2, true)]), (3, 2, vec![(1, false)])]
        );
        assert_eq!(recovered.next_msg, 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

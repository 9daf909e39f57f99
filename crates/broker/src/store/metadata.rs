//! The metadata file, `DATA_DIR/metadata`: a log of changes to the durable topology.
//!
//! ```text
//! metadata = "DSPMETA2" record*
//! record   = len:u32 crc:u32 table        len: bytes of table, crc: CRC-32 of table
//! ```
//! `table` is an AMQP field table (the codec already at hand; it holds queue arguments
//! natively) naming one [`Change`] in `op` with its fields. A durable declare, delete, bind
//! or unbind appends one record, so its cost does not grow with the topology: 10,000
//! minion queues are 10,000 small appends. The store's log thread writes the records and
//! `fdatasync`s them before the client is told (see [`super`]).
//!
//! Once the file has grown past twice its size after the last compaction (plus
//! [`COMPACT_SLACK`]), it is compacted: the current topology is written as a snapshot (one
//! record per exchange, queue and binding, then the next queue id) to `metadata.tmp`,
//! fsynced, renamed over `metadata`, and the directory fsynced. A reader sees the old file
//! or the new one, never a mix; the cost of compaction is paid once per doubling.
//!
//! Loading replays the records in order. A record cut short (a torn write) or failing its
//! CRC ends the log: what follows is dropped with a warning, and the file is compacted at
//! start, so the damage is gone. A file of an unknown format is set aside as
//! `metadata.corrupt` and the broker starts with an empty topology. A file of the earlier
//! whole-snapshot format (`DSPMETA1`) is read and rewritten in this one.

use super::METADATA_FILE;
use super::topology::{BindingDef, Change, ExchangeDef, QueueDef, Topology};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DSPMETA2";
/// The whole-snapshot format of earlier versions, still read.
const LEGACY_MAGIC: &[u8; 8] = b"DSPMETA1";
/// Bytes of `len` and `crc` before each record's table.
const RECORD_HEADER: usize = 8;
/// Growth allowed beyond twice the compacted size before the next compaction.
pub const COMPACT_SLACK: u64 = 1 << 20;

/// The metadata log, as the store's log thread writes it.
#[derive(Debug)]
pub struct MetadataLog {
    dir: PathBuf,
    file: File,
    topology: Topology,
    /// Bytes in the file, and after the last compaction.
    len: u64,
    compacted_len: u64,
    /// Records appended since the last commit.
    buf: Vec<u8>,
    /// Bytes written since opening, compactions included (tests check it stays linear).
    written: u64,
    /// A write failed: the file misses changes, and the next commit rewrites it whole.
    stale: bool,
}

impl MetadataLog {
    /// Starts the log in `dir` from `topology` (what loading gave), compacted.
    pub fn open(dir: &Path, topology: Topology) -> std::io::Result<MetadataLog> {
        let (file, len) = write_snapshot(dir, &topology)?;
        Ok(MetadataLog {
            dir: dir.to_owned(),
            file,
            topology,
            len,
            compacted_len: len,
            buf: Vec::new(),
            written: len,
            stale: false,
        })
    }

    /// Appends `change`; it is written by the next [`MetadataLog::commit`].
    pub fn append(&mut self, change: Change) {
        put_record(&mut self.buf, &change);
        self.topology.apply(change);
    }

    /// Writes and syncs what was appended; compacts when the file has grown enough.
    /// After a failure the file ends at its last complete record, and the next commit
    /// rewrites it whole (the topology in memory has every change).
    pub fn commit(&mut self) -> std::io::Result<()> {
        if self.stale {
            self.buf.clear();
            self.compact()?;
            self.stale = false;
            return Ok(());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        self.written += self.buf.len() as u64;
        match result {
            Ok(()) => self.len += self.buf.len() as u64,
            Err(e) => {
                let _ = self.file.set_len(self.len);
                self.buf.clear();
                self.stale = true;
                return Err(e);
            }
        }
        self.buf.clear();
        if self.len > 2 * self.compacted_len + COMPACT_SLACK {
            self.compact().inspect_err(|_| self.stale = true)?;
        }
        Ok(())
    }

    /// Rewrites the file as a snapshot of the current topology.
    fn compact(&mut self) -> std::io::Result<()> {
        let (file, len) = write_snapshot(&self.dir, &self.topology)?;
        self.file = file;
        self.len = len;
        self.compacted_len = len;
        self.written += len;
        Ok(())
    }

    /// Bytes written since opening.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Replaces the file in `dir` with a snapshot of `topology` (atomically, see the module
/// doc); returns it open for appending, and its length.
fn write_snapshot(dir: &Path, topology: &Topology) -> std::io::Result<(File, u64)> {
    let mut bytes = MAGIC.to_vec();
    for change in topology.snapshot() {
        put_record(&mut bytes, &change);
    }
    let tmp = dir.join(format!("{METADATA_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(METADATA_FILE))?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new()
        .append(true)
        .open(dir.join(METADATA_FILE))?;
    Ok((file, bytes.len() as u64))
}

/// Reads the metadata in `dir`. A missing file is an empty topology; a damaged tail is
/// dropped; an unreadable file is set aside (see the module doc).
pub fn load(dir: &Path) -> Topology {
    let path = dir.join(METADATA_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Topology::default(),
        Err(e) => {
            tracing::warn!(
                "cannot read the metadata file {}: {e}; starting with an empty topology",
                path.display()
            );
            return Topology::default();
        }
    };
    if let Some(records) = bytes.strip_prefix(MAGIC) {
        return replay(records, &path);
    }
    if let Some(topology) = bytes.strip_prefix(LEGACY_MAGIC).and_then(decode_legacy) {
        return topology;
    }
    let aside = dir.join(format!("{METADATA_FILE}.corrupt"));
    let _ = std::fs::rename(&path, &aside);
    tracing::warn!(
        "the metadata file {} is corrupt; it was moved to {} and the broker starts with an empty topology",
        path.display(),
        aside.display()
    );
    Topology::default()
}

/// Applies every intact record; stops at the first damaged one.
fn replay(mut records: &[u8], path: &Path) -> Topology {
    let mut topology = Topology::default();
    let total = records.len();
    while !records.is_empty() {
        match read_record(records) {
            Some((change, used)) => {
                topology.apply(change);
                records = &records[used..];
            }
            None => {
                tracing::warn!(
                    "the metadata file {} has a damaged record at byte {}; the {} bytes from there on are dropped",
                    path.display(),
                    MAGIC.len() + total - records.len(),
                    records.len()
                );
                break;
            }
        }
    }
    topology
}

fn put_record(out: &mut Vec<u8>, change: &Change) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    let table = encode(change);
    let mut body = std::mem::take(out);
    body = cookie_factory::gen_simple(
        amq_protocol::types::generation::gen_field_table(&table),
        body,
    )
    .expect("a field table always encodes into a Vec");
    *out = body;
    let len = (out.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + RECORD_HEADER].copy_from_slice(&crc.to_be_bytes());
}

/// The change at the start of `bytes` and the bytes it took, if it is intact.
fn read_record(bytes: &[u8]) -> Option<(Change, usize)> {
    let (head, rest) = bytes.split_at_checked(RECORD_HEADER)?;
    // The whole file is in memory: a length beyond it is damage, not an allocation.
    let len = u32::from_be_bytes(head[..4].try_into().ok()?) as usize;
    let body = rest.get(..len)?;
    if crc32fast::hash(body).to_be_bytes() != head[4..] {
        return None;
    }
    crate::codec::table::check_table(body).ok()?;
    let (_, table) = amq_protocol::types::parsing::parse_field_table(body).ok()?;
    Some((decode(&table)?, RECORD_HEADER + len))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

fn encode(change: &Change) -> FieldTable {
    let op = |name: &str| ("op", text(name));
    match change {
        Change::Exchange(e) => table(vec![
            op("exchange"),
            ("name", text(&e.name)),
            ("type", text(&e.kind)),
            ("auto_delete", AMQPValue::Boolean(e.auto_delete)),
            ("internal", AMQPValue::Boolean(e.internal)),
            ("arguments", AMQPValue::FieldTable(e.arguments.clone())),
        ]),
        Change::ExchangeDeleted(name) => table(vec![op("exchange-deleted"), ("name", text(name))]),
        Change::Queue(q) => table(vec![
            op("queue"),
            ("name", text(&q.name)),
            ("id", AMQPValue::LongLongInt(q.id as i64)),
            ("auto_delete", AMQPValue::Boolean(q.auto_delete)),
            ("arguments", AMQPValue::FieldTable(q.arguments.clone())),
        ]),
        Change::QueueDeleted(name) => table(vec![op("queue-deleted"), ("name", text(name))]),
        Change::Bound(b) | Change::Unbound(b) => table(vec![
            op(if matches!(change, Change::Bound(_)) {
                "bound"
            } else {
                "unbound"
            }),
            ("exchange", text(&b.exchange)),
            ("queue", text(&b.queue)),
            ("routing_key", text(&b.routing_key)),
            ("arguments", AMQPValue::FieldTable(b.arguments.clone())),
        ]),
        Change::NextQueueId(id) => table(vec![
            op("next-queue-id"),
            ("id", AMQPValue::LongLongInt(*id as i64)),
        ]),
    }
}

fn string(t: &FieldTable, k: &str) -> Option<String> {
    match t.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

fn boolean(t: &FieldTable, k: &str) -> Option<bool> {
    match t.inner().get(k)? {
        AMQPValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

fn number(t: &FieldTable, k: &str) -> Option<u64> {
    match t.inner().get(k)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn arguments(t: &FieldTable) -> Option<FieldTable> {
    match t.inner().get("arguments")? {
        AMQPValue::FieldTable(a) => Some(a.clone()),
        _ => None,
    }
}

fn exchange(t: &FieldTable) -> Option<ExchangeDef> {
    Some(ExchangeDef {
        name: string(t, "name")?,
        kind: string(t, "type")?,
        auto_delete: boolean(t, "auto_delete")?,
        internal: boolean(t, "internal")?,
        arguments: arguments(t)?,
    })
}

fn queue(t: &FieldTable) -> Option<QueueDef> {
    Some(QueueDef {
        name: string(t, "name")?,
        id: number(t, "id")?,
        auto_delete: boolean(t, "auto_delete")?,
        arguments: arguments(t)?,
    })
}

fn binding(t: &FieldTable) -> Option<BindingDef> {
    Some(BindingDef {
        exchange: string(t, "exchange")?,
        queue: string(t, "queue")?,
        routing_key: string(t, "routing_key")?,
        arguments: arguments(t)?,
    })
}

fn decode(t: &FieldTable) -> Option<Change> {
    Some(match string(t, "op")?.as_str() {
        "exchange" => Change::Exchange(exchange(t)?),
        "exchange-deleted" => Change::ExchangeDeleted(string(t, "name")?),
        "queue" => Change::Queue(queue(t)?),
        "queue-deleted" => Change::QueueDeleted(string(t, "name")?),
        "bound" => Change::Bound(binding(t)?),
        "unbound" => Change::Unbound(binding(t)?),
        "next-queue-id" => Change::NextQueueId(number(t, "id")?),
        _ => return None,
    })
}

/// The earlier format: `crc:u32 table`, one table with `exchanges`, `queues` and
/// `bindings` arrays (items as in today's records, without `op`) and `next_queue_id`,
/// which counted the last id given out.
fn decode_legacy(rest: &[u8]) -> Option<Topology> {
    let (crc, body) = rest.split_at_checked(4)?;
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    crate::codec::table::check_table(body).ok()?;
    let (_, t) = amq_protocol::types::parsing::parse_field_table(body).ok()?;
    let items = |key: &str| -> Option<Vec<FieldTable>> {
        let AMQPValue::FieldArray(a) = t.inner().get(key)? else {
            return None;
        };
        a.as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    let mut changes = Vec::new();
    for e in items("exchanges")? {
        changes.push(Change::Exchange(exchange(&e)?));
    }
    for q in items("queues")? {
        changes.push(Change::Queue(queue(&q)?));
    }
    for b in items("bindings")? {
        changes.push(Change::Bound(binding(&b)?));
    }
    changes.push(Change::NextQueueId(number(&t, "next_queue_id")? + 1));
    let mut topology = Topology::default();
    for change in changes {
        topology.apply(change);
    }
    Some(topology)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::topology::tests::{binding, exchange, queue};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dispatch-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Vec<Change> {
        vec![
            Change::Exchange(exchange("cmds")),
            Change::Queue(queue("a", 3)),
            Change::Bound(binding("cmds", "a", "a.*")),
            Change::Queue(queue("b", 4)),
        ]
    }

    fn written(dir: &Path, changes: Vec<Change>) -> MetadataLog {
        let mut log = MetadataLog::open(dir, load(dir)).unwrap();
        for change in changes {
            log.append(change);
        }
        log.commit().unwrap();
        log
    }

    #[test]
    fn changes_read_back_after_a_restart() {
        let dir = temp_dir("replay");
        let log = written(&dir, sample());
        assert_eq!(load(&dir), log.topology);
        assert_eq!(load(&dir).queues().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_dropped_and_what_precedes_it_kept() {
        let dir = temp_dir("torn");
        let mut log = MetadataLog::open(&dir, Topology::default()).unwrap();
        log.append(Change::Queue(queue("kept", 1)));
        log.commit().unwrap();
        log.append(Change::Queue(queue("lost", 2)));
        log.commit().unwrap();
        let path = dir.join(METADATA_FILE);
        let intact = std::fs::read(&path).unwrap();
        let names = |t: Topology| t.queues().map(|q| q.name.clone()).collect::<Vec<_>>();
        let mut torn = intact.clone();
        torn.truncate(intact.len() - 3);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(names(load(&dir)), ["kept"]);
        let mut corrupt = intact.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        std::fs::write(&path, &corrupt).unwrap();
        assert_eq!(names(load(&dir)), ["kept"]);
        // Opening rewrites the file without the damage.
        drop(MetadataLog::open(&dir, load(&dir)).unwrap());
        let rewritten = std::fs::read(&path).unwrap();
        assert!(rewritten.len() < corrupt.len());
        assert_eq!(names(replay(&rewritten[MAGIC.len()..], &path)), ["kept"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_unknown_format_is_set_aside() {
        let dir = temp_dir("unknown");
        std::fs::write(dir.join(METADATA_FILE), b"not a metadata file").unwrap();
        assert_eq!(load(&dir), Topology::default());
        assert!(dir.join("metadata.corrupt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_earlier_snapshot_format_is_read() {
        let dir = temp_dir("legacy");
        let item = |entries: Vec<(&str, AMQPValue)>| AMQPValue::FieldTable(table(entries));
        let array = |items: Vec<AMQPValue>| {
            AMQPValue::FieldArray(amq_protocol::types::FieldArray::from(items))
        };
        let snapshot = table(vec![
            (
                "exchanges",
                array(vec![AMQPValue::FieldTable(encode(&Change::Exchange(
                    exchange("cmds"),
                )))]),
            ),
            (
                "queues",
                array(vec![item(vec![
                    ("name", text("a")),
                    ("id", AMQPValue::LongLongInt(3)),
                    ("auto_delete", AMQPValue::Boolean(false)),
                    ("arguments", AMQPValue::FieldTable(FieldTable::default())),
                ])]),
            ),
            ("bindings", array(vec![])),
            ("next_queue_id", AMQPValue::LongLongInt(5)),
        ]);
        let body = cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(&snapshot),
            Vec::new(),
        )
        .unwrap();
        let mut bytes = LEGACY_MAGIC.to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        bytes.extend_from_slice(&body);
        std::fs::write(dir.join(METADATA_FILE), bytes).unwrap();
        let topology = load(&dir);
        assert_eq!(
            topology.queues().cloned().collect::<Vec<_>>(),
            vec![queue("a", 3)]
        );
        assert_eq!(topology.exchanges().count(), 1);
        assert_eq!(topology.next_queue_id(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 5,000 queues declared a few at a time write O(n) bytes in all, not O(n²) as a
    /// snapshot per commit would (200 commits of up to 5,000 queues each).
    #[test]
    fn declaring_many_queues_one_by_one_costs_linear_bytes() {
        let dir = temp_dir("linear");
        let mut log = MetadataLog::open(&dir, Topology::default()).unwrap();
        const QUEUES: u64 = 5_000;
        for id in 1..=QUEUES {
            log.append(Change::Queue(queue(&format!("minion.web-{id:05}"), id)));
            log.append(Change::Bound(binding(
                "dispatch.commands",
                &format!("minion.web-{id:05}"),
                &format!("minion.web-{id:05}"),
            )));
            if id % 25 == 0 {
                log.commit().unwrap();
            }
        }
        let file = std::fs::metadata(dir.join(METADATA_FILE)).unwrap().len();
        let per_queue = file / QUEUES;
        assert!(
            log.written() < 8 * file,
            "{} bytes written for a {file}-byte file",
            log.written()
        );
        assert!(per_queue < 400, "{per_queue} bytes per queue");
        assert_eq!(load(&dir).queues().count() as u64, QUEUES);
        // Deleting them all shrinks the file back at the next compaction.
        for id in 1..=QUEUES {
            log.append(Change::QueueDeleted(format!("minion.web-{id:05}")));
            if id % 25 == 0 {
                log.commit().unwrap();
            }
        }
        log.compact().unwrap();
        assert!(std::fs::metadata(dir.join(METADATA_FILE)).unwrap().len() < 100);
        assert_eq!(load(&dir).next_queue_id(), QUEUES + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

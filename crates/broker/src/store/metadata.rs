//! The durable topology snapshot: `DATA_DIR/metadata`.
//!
//! ```text
//! metadata = "DSPMETA1"  crc:u32  table
//! ```
//! `table` is an AMQP field table (the codec already at hand, and it holds queue
//! arguments natively) with `exchanges`, `queues` and `bindings` arrays and
//! `next_queue_id`; `crc` is the CRC-32 of `table`. Saving writes `metadata.tmp`, fsyncs
//! it, renames it over `metadata` and fsyncs the directory.

use super::METADATA_FILE;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use std::fs::File;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"DSPMETA1";

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub id: u64,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A binding between a durable exchange and a durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Everything durable but the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
    pub next_queue_id: u64,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: Vec<(&str, AMQPValue)>) -> AMQPValue {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    AMQPValue::FieldTable(t)
}

impl Topology {
    fn to_table(&self) -> FieldTable {
        let exchanges = self.exchanges.iter().map(|e| {
            table(vec![
                ("name", text(&e.name)),
                ("type", text(&e.kind)),
                ("auto_delete", AMQPValue::Boolean(e.auto_delete)),
                ("internal", AMQPValue::Boolean(e.internal)),
                ("arguments", AMQPValue::FieldTable(e.arguments.clone())),
            ])
        });
        let queues = self.queues.iter().map(|q| {
            table(vec![
                ("name", text(&q.name)),
                ("id", AMQPValue::LongLongInt(q.id as i64)),
                ("auto_delete", AMQPValue::Boolean(q.auto_delete)),
                ("arguments", AMQPValue::FieldTable(q.arguments.clone())),
            ])
        });
        let bindings = self.bindings.iter().map(|b| {
            table(vec![
                ("exchange", text(&b.exchange)),
                ("queue", text(&b.queue)),
                ("routing_key", text(&b.routing_key)),
                ("arguments", AMQPValue::FieldTable(b.arguments.clone())),
            ])
        });
        let mut t = FieldTable::default();
        t.insert(
            "exchanges".into(),
            AMQPValue::FieldArray(FieldArray::from(exchanges.collect::<Vec<_>>())),
        );
        t.insert(
            "queues".into(),
            AMQPValue::FieldArray(FieldArray::from(queues.collect::<Vec<_>>())),
        );
        t.insert(
            "bindings".into(),
            AMQPValue::FieldArray(FieldArray::from(bindings.collect::<Vec<_>>())),
        );
        t.insert(
            "next_queue_id".into(),
            AMQPValue::LongLongInt(self.next_queue_id as i64),
        );
        t
    }

    fn from_table(t: &FieldTable) -> Option<Topology> {
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
        let s = |t: &FieldTable, k: &str| match t.inner().get(k)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        };
        let b = |t: &FieldTable, k: &str| match t.inner().get(k)? {
            AMQPValue::Boolean(b) => Some(*b),
            _ => None,
        };
        let n = |t: &FieldTable, k: &str| match t.inner().get(k)? {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        let args = |t: &FieldTable| match t.inner().get("arguments") {
            Some(AMQPValue::FieldTable(a)) => Some(a.clone()),
            _ => None,
        };
        let exchanges = items("exchanges")?
            .iter()
            .map(|e| {
                Some(ExchangeDef {
                    name: s(e, "name")?,
                    kind: s(e, "type")?,
                    auto_delete: b(e, "auto_delete")?,
                    internal: b(e, "internal")?,
                    arguments: args(e)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let queues = items("queues")?
            .iter()
            .map(|q| {
                Some(QueueDef {
                    name: s(q, "name")?,
                    id: n(q, "id")?,
                    auto_delete: b(q, "auto_delete")?,
                    arguments: args(q)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let bindings = items("bindings")?
            .iter()
            .map(|x| {
                Some(BindingDef {
                    exchange: s(x, "exchange")?,
                    queue: s(x, "queue")?,
                    routing_key: s(x, "routing_key")?,
                    arguments: args(x)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Topology {
            exchanges,
            queues,
            bindings,
            next_queue_id: n(t, "next_queue_id")?,
        })
    }
}

/// Writes the snapshot atomically.
pub fn save(dir: &Path, topology: &Topology) -> std::io::Result<()> {
    let mut body = Vec::new();
    body = cookie_factory::gen_simple(
        amq_protocol::types::generation::gen_field_table(&topology.to_table()),
        body,
    )
    .map_err(|e| std::io::Error::other(format!("encoding the metadata: {e:?}")))?;
    let tmp = dir.join(format!("{METADATA_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(MAGIC)?;
    file.write_all(&crc32fast::hash(&body).to_be_bytes())?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(METADATA_FILE))?;
    File::open(dir)?.sync_all()
}

/// Reads the snapshot. A missing file is an empty topology; an unreadable one is set
/// aside as `metadata.corrupt` with a warning, and the broker starts empty.
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
    match decode(&bytes) {
        Some(topology) => topology,
        None => {
            let aside = dir.join(format!("{METADATA_FILE}.corrupt"));
            let _ = std::fs::rename(&path, &aside);
            tracing::warn!(
                "the metadata file {} is corrupt; it was moved to {} and the broker starts with an empty topology",
                path.display(),
                aside.display()
            );
            Topology::default()
        }
    }
}

fn decode(bytes: &[u8]) -> Option<Topology> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (crc, body) = rest.split_at_checked(4)?;
    if crc32fast::hash(body).to_be_bytes() != crc {
        return None;
    }
    crate::codec::table::check_table(body).ok()?;
    let (_, table) = amq_protocol::types::parsing::parse_field_table(body).ok()?;
    Topology::from_table(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_a_damaged_one_is_set_aside() {
        let dir = std::env::temp_dir().join(format!("dispatch-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let topology = Topology {
            exchanges: vec![ExchangeDef {
                name: "cmds".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            }],
            queues: vec![QueueDef {
                name: "q".into(),
                id: 3,
                auto_delete: false,
                arguments: FieldTable::default(),
            }],
            bindings: vec![BindingDef {
                exchange: "cmds".into(),
                queue: "q".into(),
                routing_key: "a.*".into(),
                arguments: FieldTable::default(),
            }],
            next_queue_id: 4,
        };
        save(&dir, &topology).unwrap();
        assert_eq!(load(&dir), topology);
        let path = dir.join(METADATA_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load(&dir), Topology::default());
        assert!(dir.join("metadata.corrupt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Records of the message log, and their framing on disk.
//!
//! ```text
//! record  = len:u32  crc:u32  kind:u8  body[len]
//! crc     = CRC-32 (IEEE) of kind and body
//! enqueue = kind 1: msg:u64 published:u64 nqueues:u16 queue:u64*nqueues
//!                   exchange:str8 routing_key:str8 header:bytes32 body:bytes32
//! deliver = kind 2: queue:u64 msg:u64      (the message was handed to a consumer)
//! remove  = kind 3: queue:u64 msg:u64      (acknowledged, dropped or purged)
//! ```
//! All integers are big-endian; `str8` is a length octet and bytes, `bytes32` a 32-bit
//! length and bytes; `published` is the wall clock in milliseconds since the Unix epoch
//! when the record was written (TTLs run on across restarts from it). A record is only
//! trusted once its CRC matches.

use crate::codec::wire::Reader;
use crate::message::Message;
use bytes::Bytes;

/// Bytes before a record's body: length, CRC and kind.
pub const RECORD_HEADER: usize = 9;
/// Largest record body accepted when reading: a message of the largest configurable
/// size plus its header and names. Anything larger is corruption.
pub const MAX_RECORD: usize = 1 << 30;

const KIND_ENQUEUE: u8 = 1;
const KIND_DELIVER: u8 = 2;
const KIND_REMOVE: u8 = 3;

/// One record of the message log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Enqueue {
        msg: u64,
        published_ms: u64,
        queues: Vec<u64>,
        exchange: String,
        routing_key: String,
        header: Bytes,
        body: Bytes,
    },
    Deliver {
        queue: u64,
        msg: u64,
    },
    Remove {
        queue: u64,
        msg: u64,
    },
}

/// Appends an enqueue record for `message` without building a [`Record`] (the hot path).
pub fn put_enqueue(
    out: &mut Vec<u8>,
    msg: u64,
    published_ms: u64,
    queues: &[u64],
    message: &Message,
) {
    put_framed(out, KIND_ENQUEUE, |o| {
        o.extend_from_slice(&msg.to_be_bytes());
        o.extend_from_slice(&published_ms.to_be_bytes());
        o.extend_from_slice(&(queues.len() as u16).to_be_bytes());
        for q in queues {
            o.extend_from_slice(&q.to_be_bytes());
        }
        put_str8(o, &message.exchange);
        put_str8(o, &message.routing_key);
        o.extend_from_slice(&(message.header.len() as u32).to_be_bytes());
        o.extend_from_slice(&message.header);
        o.extend_from_slice(&(message.body.len() as u32).to_be_bytes());
        o.extend_from_slice(&message.body);
    });
}

/// Appends a deliver or remove record.
pub fn put_marker(out: &mut Vec<u8>, removed: bool, queue: u64, msg: u64) {
    let kind = if removed { KIND_REMOVE } else { KIND_DELIVER };
    put_framed(out, kind, |o| {
        o.extend_from_slice(&queue.to_be_bytes());
        o.extend_from_slice(&msg.to_be_bytes());
    });
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    let n = s.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&s.as_bytes()[..n]);
}

fn put_framed(out: &mut Vec<u8>, kind: u8, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind);
    fill(out);
    let len = (out.len() - at - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The input ends inside the record: a torn write.
    Truncated,
    /// The record is complete but wrong: bad CRC, kind or layout.
    Corrupt,
}

/// Reads the record at the start of `buf`; returns it and its size on disk.
pub fn read_record(buf: &[u8]) -> Result<(Record, usize), ReadError> {
    if buf.len() < RECORD_HEADER {
        return Err(ReadError::Truncated);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_RECORD {
        return Err(ReadError::Corrupt);
    }
    let total = RECORD_HEADER + len;
    if buf.len() < total {
        return Err(ReadError::Truncated);
    }
    let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if crc32fast::hash(&buf[8..total]) != crc {
        return Err(ReadError::Corrupt);
    }
    let record = parse(buf[8], &buf[RECORD_HEADER..total]).ok_or(ReadError::Corrupt)?;
    Ok((record, total))
}

fn parse(kind: u8, body: &[u8]) -> Option<Record> {
    let mut r = Reader::new(body);
    let record = match kind {
        KIND_ENQUEUE => {
            let msg = r.u64().ok()?;
            let published_ms = r.u64().ok()?;
            let n = r.u16().ok()?;
            let queues = (0..n)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let exchange = r.short_str().ok()?.to_owned();
            let routing_key = r.short_str().ok()?.to_owned();
            let header = Bytes::copy_from_slice(r.long_bytes().ok()?);
            let body = Bytes::copy_from_slice(r.long_bytes().ok()?);
            Record::Enqueue {
                msg,
                published_ms,
                queues,
                exchange,
                routing_key,
                header,
                body,
            }
        }
        KIND_DELIVER | KIND_REMOVE => {
            let queue = r.u64().ok()?;
            let msg = r.u64().ok()?;
            if kind == KIND_DELIVER {
                Record::Deliver { queue, msg }
            } else {
                Record::Remove { queue, msg }
            }
        }
        _ => return None,
    };
    r.remaining().is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damage_is_detected() {
        let mut log = Vec::new();
        let message = Message::new(
            "ex".into(),
            "a.b".into(),
            Bytes::from_static(b"hdr"),
            Bytes::from_static(b"body"),
            true,
        );
        put_enqueue(&mut log, 7, 1_700_000_000_000, &[1, 2], &message);
        put_marker(&mut log, false, 1, 7);
        put_marker(&mut log, true, 2, 7);
        let (first, n) = read_record(&log).unwrap();
        assert!(matches!(
            first,
            Record::Enqueue { msg: 7, published_ms: 1_700_000_000_000, ref queues, .. } if queues == &[1, 2]
        ));
        let (second, m) = read_record(&log[n..]).unwrap();
        assert_eq!(second, Record::Deliver { queue: 1, msg: 7 });
        let (third, _) = read_record(&log[n + m..]).unwrap();
        assert_eq!(third, Record::Remove { queue: 2, msg: 7 });

        assert_eq!(
            read_record(&log[..n - 1]).unwrap_err(),
            ReadError::Truncated
        );
        let mut flipped = log.clone();
        flipped[20] ^= 0x40;
        assert_eq!(read_record(&flipped).unwrap_err(), ReadError::Corrupt);
    }
}

//! Content headers: the few properties the broker acts on, read straight from the bytes
//! that arrived, which are stored and forwarded as they are.
//!
//! A content header payload is `class:u16 weight:u16 body_size:u64 flags:u16` followed
//! by the properties present in `flags`, in a fixed order. The broker reads
//! `delivery-mode`, `expiration`, `user-id` and, when present, `headers` (for the
//! headers exchange and the `CC`/`BCC` sender-selected routing keys). Only removing
//! `BCC` makes the broker re-encode a header ([`without_bcc`]).

use super::table::{TableError, check_table};
use super::wire::{Malformed, Reader};
use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::ops::Range;

const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_DELIVERY_MODE: u16 = 1 << 12;
const FLAG_PRIORITY: u16 = 1 << 11;
const FLAG_CORRELATION_ID: u16 = 1 << 10;
const FLAG_REPLY_TO: u16 = 1 << 9;
const FLAG_EXPIRATION: u16 = 1 << 8;
const FLAG_MESSAGE_ID: u16 = 1 << 7;
const FLAG_TIMESTAMP: u16 = 1 << 6;
const FLAG_TYPE: u16 = 1 << 5;
const FLAG_USER_ID: u16 = 1 << 4;
const FLAG_APP_ID: u16 = 1 << 3;
const FLAG_CLUSTER_ID: u16 = 1 << 2;
const FLAG_CONTINUATION: u16 = 1;

/// Offset of the property flags within a content header payload.
const FLAGS_AT: usize = 12;

/// What the broker reads from a content header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// `delivery-mode` 2: the publisher asks for the message to be stored on disk.
    pub persistent: bool,
    /// Per-message TTL in milliseconds (`expiration`), when present and valid.
    pub expiration_ms: Option<u64>,
    /// Where the `headers` table (with its length) sits in the payload.
    pub headers: Option<Range<usize>>,
    /// Where `user-id` sits in the payload.
    pub user_id: Option<Range<usize>>,
}

/// Why a content header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("malformed content header")]
    Malformed,
    #[error("content header: {0}")]
    Table(#[from] TableError),
    #[error("invalid expiration {0:?}: it must be a non-negative integer of milliseconds")]
    BadExpiration(String),
}

impl From<Malformed> for ContentError {
    fn from(_: Malformed) -> Self {
        ContentError::Malformed
    }
}

/// Reads the properties the broker needs from a content header payload.
pub fn parse_content_header(payload: &[u8]) -> Result<ContentHeader, ContentError> {
    let mut r = Reader::new(payload);
    let class_id = r.u16()?;
    r.u16()?; // weight
    let body_size = r.u64()?;
    let flags = r.u16()?;
    if flags & FLAG_CONTINUATION != 0 {
        return Err(ContentError::Malformed);
    }
    let at = |r: &Reader<'_>| payload.len() - r.remaining().len();
    let mut header = ContentHeader {
        class_id,
        body_size,
        ..ContentHeader::default()
    };
    for flag in [FLAG_CONTENT_TYPE, FLAG_CONTENT_ENCODING] {
        if flags & flag != 0 {
            r.short_bytes()?;
        }
    }
    if flags & FLAG_HEADERS != 0 {
        let start = at(&r);
        check_table(r.remaining())?;
        r.long_bytes()?;
        header.headers = Some(start..at(&r));
    }
    if flags & FLAG_DELIVERY_MODE != 0 {
        header.persistent = r.u8()? == 2;
    }
    if flags & FLAG_PRIORITY != 0 {
        r.u8()?;
    }
    for flag in [FLAG_CORRELATION_ID, FLAG_REPLY_TO] {
        if flags & flag != 0 {
            r.short_bytes()?;
        }
    }
    if flags & FLAG_EXPIRATION != 0 {
        let text = r.short_str()?;
        let ms = text
            .parse::<u64>()
            .map_err(|_| ContentError::BadExpiration(text.to_owned()))?;
        header.expiration_ms = Some(ms);
    }
    if flags & FLAG_MESSAGE_ID != 0 {
        r.short_bytes()?;
    }
    if flags & FLAG_TIMESTAMP != 0 {
        r.u64()?;
    }
    if flags & FLAG_TYPE != 0 {
        r.short_bytes()?;
    }
    if flags & FLAG_USER_ID != 0 {
        let start = at(&r) + 1;
        r.short_bytes()?;
        header.user_id = Some(start..at(&r));
    }
    for flag in [FLAG_APP_ID, FLAG_CLUSTER_ID] {
        if flags & flag != 0 {
            r.short_bytes()?;
        }
    }
    if !r.remaining().is_empty() {
        return Err(ContentError::Malformed);
    }
    Ok(header)
}

/// Parses the `headers` table located by [`parse_content_header`] (already checked).
pub fn headers_table(payload: &[u8], range: &Range<usize>) -> Option<FieldTable> {
    amq_protocol::types::parsing::parse_field_table(&payload[range.clone()])
        .ok()
        .map(|(_, table)| table)
}

/// The routing keys named by a `CC` or `BCC` header (an array of strings).
pub fn routing_keys(headers: &FieldTable, name: &str) -> Vec<String> {
    let Some(AMQPValue::FieldArray(array)) = headers.inner().get(name) else {
        return Vec::new();
    };
    array
        .as_slice()
        .iter()
        .filter_map(|value| match value {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

/// The same content header with the `BCC` header removed, re-encoded.
pub fn without_bcc(payload: &[u8]) -> Option<Vec<u8>> {
    rewrite_properties(payload, |props| {
        let mut kept = FieldTable::default();
        for (k, v) in props.headers().clone()?.inner() {
            if k.as_str() != "BCC" {
                kept.insert(k.clone(), v.clone());
            }
        }
        Some(props.with_headers(kept))
    })
}

/// Decodes the properties of a content header payload, lets `change` rewrite them and
/// encodes the result behind the same class, weight and body size. For rare paths
/// (`BCC` removal, dead-lettering): the hot path never re-encodes a header.
pub fn rewrite_properties(
    payload: &[u8],
    change: impl FnOnce(AMQPProperties) -> Option<AMQPProperties>,
) -> Option<Vec<u8>> {
    let (_, props) = parse_properties(payload.get(FLAGS_AT..)?).ok()?;
    let props = change(props)?;
    cookie_factory::gen_simple(gen_properties(&props), payload[..FLAGS_AT].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString};

    fn header(props: &AMQPProperties, body_size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&60u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&body_size.to_be_bytes());
        cookie_factory::gen_simple(gen_properties(props), out).unwrap()
    }

    fn bcc_and_cc() -> FieldTable {
        let mut t = FieldTable::default();
        let keys = |k: &str| {
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                LongString::from(k),
            )]))
        };
        t.insert("BCC".into(), keys("hidden"));
        t.insert("CC".into(), keys("shown"));
        t
    }

    #[test]
    fn reads_the_properties_the_broker_needs() {
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(bcc_and_cc())
            .with_delivery_mode(2)
            .with_expiration("1500".into())
            .with_user_id("web.01".into())
            .with_app_id("x".into());
        let payload = header(&props, 42);
        let h = parse_content_header(&payload).unwrap();
        assert_eq!((h.class_id, h.body_size, h.persistent), (60, 42, true));
        assert_eq!(h.expiration_ms, Some(1500));
        assert_eq!(&payload[h.user_id.clone().unwrap()], b"web.01");
        let table = headers_table(&payload, h.headers.as_ref().unwrap()).unwrap();
        assert_eq!(routing_keys(&table, "BCC"), vec!["hidden"]);
        assert_eq!(routing_keys(&table, "CC"), vec!["shown"]);
    }

    #[test]
    fn bcc_is_removed_and_the_rest_kept() {
        let props = AMQPProperties::default()
            .with_headers(bcc_and_cc())
            .with_priority(3);
        let stripped = without_bcc(&header(&props, 7)).unwrap();
        let h = parse_content_header(&stripped).unwrap();
        assert_eq!(h.body_size, 7);
        let table = headers_table(&stripped, h.headers.as_ref().unwrap()).unwrap();
        assert!(!table.contains_key("BCC"));
        assert_eq!(routing_keys(&table, "CC"), vec!["shown"]);
    }

    #[test]
    fn a_non_numeric_expiration_is_refused() {
        let props = AMQPProperties::default().with_expiration("soon".into());
        assert!(matches!(
            parse_content_header(&header(&props, 0)),
            Err(ContentError::BadExpiration(_))
        ));
    }
}

//! Every method but `basic.publish`, in both directions, through `amq-protocol`.

use super::frame::put_frame;
use super::table::{TableError, check_table, method_table_offset};
use super::{FRAME_METHOD, wire::Reader};
use amq_protocol::protocol::{AMQPClass, gen_class, parse_class};

/// Why a method frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("method {class}.{method}: {source}")]
    Table {
        class: u16,
        method: u16,
        source: TableError,
    },
    #[error("malformed or unknown method {class}.{method}")]
    Malformed { class: u16, method: u16 },
}

/// The class and method ids at the start of a method frame payload.
pub fn method_ids(payload: &[u8]) -> (u16, u16) {
    let mut r = Reader::new(payload);
    (r.u16().unwrap_or(0), r.u16().unwrap_or(0))
}

/// Parses a method frame payload, refusing deeply nested tables before parsing them.
pub fn parse_method(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    let (class, method) = method_ids(payload);
    let args = payload.get(4..).unwrap_or_default();
    if let Some(offset) = method_table_offset(class, method, args).filter(|&at| at < args.len()) {
        check_table(&args[offset..]).map_err(|source| MethodError::Table {
            class,
            method,
            source,
        })?;
    }
    match parse_class(payload) {
        Ok((_, parsed)) => Ok(parsed),
        Err(_) => Err(MethodError::Malformed { class, method }),
    }
}

/// Appends `class` as a method frame on `channel`.
pub fn put_method(out: &mut Vec<u8>, channel: u16, class: &AMQPClass) {
    put_frame(out, FRAME_METHOD, channel, |payload| {
        encode_into(payload, class)
    });
}

/// Encodes a method's payload (ids and arguments) onto `out`.
pub fn encode_into(out: &mut Vec<u8>, class: &AMQPClass) {
    let buf = std::mem::take(out);
    // Generating into a Vec cannot fail: it grows as needed.
    *out = cookie_factory::gen_simple(gen_class(class), buf).unwrap_or_default();
}

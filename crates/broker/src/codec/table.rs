//! Field tables checked before `amq-protocol` parses them.
//!
//! `amq-protocol` parses nested tables and arrays recursively with no depth limit, and
//! `connection.start-ok` reaches it before authentication: a few kilobytes of nested
//! arrays would overflow the stack. [`check_table`] walks a table iteratively-bounded
//! (at most [`MAX_TABLE_DEPTH`] levels) and checks every length against the input, so
//! only well-formed, shallow tables are handed over. [`method_table_offset`] says where
//! the table of each method that carries one starts.

use super::wire::{Malformed, Reader};

/// The deepest nesting of tables and arrays accepted from a peer. RabbitMQ's own
/// `x-death` header nests three levels; clients never need more than a few.
pub const MAX_TABLE_DEPTH: usize = 16;

/// Why a table was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("field table nested deeper than {MAX_TABLE_DEPTH} levels")]
    TooDeep,
    #[error("malformed field table")]
    Malformed,
}

impl From<Malformed> for TableError {
    fn from(_: Malformed) -> Self {
        TableError::Malformed
    }
}

/// Checks the table (32-bit length and entries) at the start of `buf`.
pub fn check_table(buf: &[u8]) -> Result<(), TableError> {
    let mut r = Reader::new(buf);
    let body = r.long_bytes()?;
    check_entries(body, 1)
}

/// Checks the entries of a table body (without its length prefix), as AMQPLAIN sends them.
pub fn check_table_body(body: &[u8]) -> Result<(), TableError> {
    check_entries(body, 1)
}

fn check_entries(body: &[u8], depth: usize) -> Result<(), TableError> {
    if depth > MAX_TABLE_DEPTH {
        return Err(TableError::TooDeep);
    }
    let mut r = Reader::new(body);
    while !r.remaining().is_empty() {
        r.short_bytes()?;
        check_value(&mut r, depth)?;
    }
    Ok(())
}

fn check_array(body: &[u8], depth: usize) -> Result<(), TableError> {
    if depth > MAX_TABLE_DEPTH {
        return Err(TableError::TooDeep);
    }
    let mut r = Reader::new(body);
    while !r.remaining().is_empty() {
        check_value(&mut r, depth)?;
    }
    Ok(())
}

fn check_value(r: &mut Reader<'_>, depth: usize) -> Result<(), TableError> {
    let size = match r.u8()? {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'S' | b'x' => {
            r.long_bytes()?;
            return Ok(());
        }
        b'A' => return check_array(r.long_bytes()?, depth + 1),
        b'F' => return check_entries(r.long_bytes()?, depth + 1),
        _ => return Err(TableError::Malformed),
    };
    r.take(size)?;
    Ok(())
}

/// Fields that precede a method's table, in order.
#[derive(Clone, Copy)]
enum Field {
    Short,
    ShortStr,
    Bits,
}

/// Where the field table of method (`class`, `method`) starts within its arguments, if
/// the method carries one. `args` is the method payload after class and method ids.
pub fn method_table_offset(class: u16, method: u16, args: &[u8]) -> Option<usize> {
    use Field::*;
    let layout: &[Field] = match (class, method) {
        (10, 11) => &[],                                // connection.start-ok
        (40, 10) => &[Short, ShortStr, ShortStr, Bits], // exchange.declare
        (40, 30) | (40, 40) => &[Short, ShortStr, ShortStr, ShortStr, Bits], // exchange.bind/unbind
        (50, 10) => &[Short, ShortStr, Bits],           // queue.declare
        (50, 20) => &[Short, ShortStr, ShortStr, ShortStr, Bits], // queue.bind
        (50, 50) => &[Short, ShortStr, ShortStr, ShortStr], // queue.unbind
        (60, 20) => &[Short, ShortStr, ShortStr, Bits], // basic.consume
        _ => return None,
    };
    let mut r = Reader::new(args);
    for field in layout {
        let skipped = match field {
            Short => r.take(2).map(|_| ()),
            ShortStr => r.short_bytes().map(|_| ()),
            Bits => r.take(1).map(|_| ()),
        };
        // A truncated method is reported by amq-protocol's parser; point past the end.
        if skipped.is_err() {
            return Some(args.len());
        }
    }
    Some(args.len() - r.remaining().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut value = vec![b'V'];
        for _ in 0..levels {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(value.len() as u32).to_be_bytes());
            outer.extend_from_slice(&value);
            value = outer;
        }
        let mut entry = vec![1, b'k'];
        entry.extend_from_slice(&value);
        let mut table = (entry.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entry);
        table
    }

    #[test]
    fn shallow_tables_pass() {
        assert_eq!(check_table(&nested_arrays(3)), Ok(()));
    }

    #[test]
    fn deeply_nested_arrays_are_refused_without_recursing_far() {
        assert_eq!(check_table(&nested_arrays(5000)), Err(TableError::TooDeep));
    }

    #[test]
    fn lengths_beyond_the_input_are_malformed() {
        let mut t = nested_arrays(1);
        t[3] += 10;
        assert_eq!(check_table(&t), Err(TableError::Malformed));
    }
}

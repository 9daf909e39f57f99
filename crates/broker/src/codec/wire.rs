//! A bounds-checked cursor over received bytes, for the hand-written parsers.

/// Reads AMQP primitives from a byte slice; every read checks the remaining length.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

/// The input ended before a field did, or a field is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A short string: one length octet, then that many bytes.
    pub(crate) fn short_bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    pub(crate) fn short_str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.short_bytes()?).map_err(|_| Malformed)
    }

    /// A long string or table body: a 32-bit length, then that many bytes.
    pub(crate) fn long_bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Appends a short string; the caller guarantees at most 255 bytes (names are checked
/// when they enter the broker).
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&s[..n]);
}

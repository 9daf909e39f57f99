//! Cutting frames out of a connection's read buffer.
//!
//! A frame is `type:u8 channel:u16 size:u32 payload[size] 0xCE`. The size comes from the
//! network, so it is compared with the negotiated `frame_max` before a single payload
//! byte is waited for; a partial frame is `Ok(None)` and stays in the buffer, which makes
//! reading cancel-safe (the buffer, not the future, owns the bytes). A complete frame is
//! lent out of the buffer as it is, and the caller advances past it once it is handled:
//! what a message keeps is copied, so nothing is reference-counted per frame.

use super::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD};
use bytes::BytesMut;

/// One frame as received, borrowed from the read buffer.
#[derive(Debug)]
pub struct RawFrame<'a> {
    pub kind: u8,
    pub channel: u16,
    pub payload: &'a [u8],
}

impl RawFrame<'_> {
    /// Bytes the frame takes in the read buffer, to advance past once it is handled.
    pub fn wire_len(&self) -> usize {
        self.payload.len() + FRAME_OVERHEAD
    }
}

/// A frame the broker cannot accept; each is a connection error (501 FRAME_ERROR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the negotiated frame_max of {frame_max} bytes")]
    TooLarge { size: u64, frame_max: u32 },
    #[error("frame does not end with 0xCE (found {0:#04x})")]
    BadEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
}

/// The next complete frame at the start of `buf`; the caller advances `buf` by its
/// [`RawFrame::wire_len`] once it is handled. `Ok(None)`: more bytes are needed (room for
/// them is reserved); the caller reads more and calls again.
pub fn next_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame<'_>>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(FrameError::UnknownType(kind));
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = size + FRAME_OVERHEAD;
    if total > frame_max as usize {
        return Err(FrameError::TooLarge {
            size: total as u64,
            frame_max,
        });
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    Ok(Some(RawFrame {
        kind,
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        payload: &buf[7..7 + size],
    }))
}

/// Whether the next frame in `buf` is a `basic.publish` method (peeked, not consumed).
pub fn starts_with_publish(buf: &[u8]) -> bool {
    buf.len() >= 11 && buf[0] == FRAME_METHOD && buf[7..11] == [0, 60, 0, 40]
}

/// Appends a heartbeat frame.
pub fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a frame of `kind` on `channel` whose payload is produced by `fill`; the size
/// field is patched once the payload is written.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, channel: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn frame(kind: u8, payload: &[u8]) -> BytesMut {
        let mut v = Vec::new();
        put_frame(&mut v, kind, 3, |o| o.extend_from_slice(payload));
        BytesMut::from(&v[..])
    }

    #[test]
    fn a_complete_frame_is_cut_and_the_rest_kept() {
        let mut buf = frame(FRAME_BODY, b"hello");
        buf.extend_from_slice(&[FRAME_BODY, 0]);
        let f = next_frame(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.channel, f.payload, f.wire_len()),
            (FRAME_BODY, 3, &b"hello"[..], 13)
        );
        buf.advance(13);
        assert_eq!(&buf[..], &[FRAME_BODY, 0]);
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes() {
        let mut buf = frame(FRAME_BODY, b"hello");
        buf.truncate(9);
        assert!(next_frame(&mut buf, 4096).unwrap().is_none());
        assert_eq!(buf.len(), 9);
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            next_frame(&mut buf, 131_072),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_bad_end_octet_is_a_frame_error() {
        let mut buf = frame(FRAME_BODY, b"x");
        let last = buf.len() - 1;
        buf[last] = 0;
        assert_eq!(
            next_frame(&mut buf, 4096).unwrap_err(),
            FrameError::BadEnd(0)
        );
    }
}

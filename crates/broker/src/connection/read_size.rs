//! How much room a connection's reader offers the socket in one read.
//!
//! Every read is a syscall, and every batch of frames read is answered by at least one
//! write, so a busy connection should read much at once. An idle one should hold little
//! memory. The room starts at [`READ_SIZE_MIN`], doubles whenever a read fills it (more
//! was waiting), up to [`READ_SIZE_MAX`], and halves when reads use less than a quarter
//! of it. After [`READ_SIZE_QUIET_READS`] such small reads in a row, an empty buffer that
//! grew (with the read size, or for a large frame) is replaced by a small one.

use crate::config::{READ_SIZE_MAX, READ_SIZE_MIN, READ_SIZE_QUIET_READS};
use bytes::BytesMut;

/// The reader's current read size; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadSize {
    size: usize,
    /// Small reads in a row.
    quiet_reads: u32,
}

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize {
            size: READ_SIZE_MIN,
            quiet_reads: 0,
        }
    }
}

impl ReadSize {
    /// Makes sure `buf` has room for a read of the current size; returns the room.
    pub(super) fn make_room(&self, buf: &mut BytesMut) -> usize {
        if self.quiet_reads >= READ_SIZE_QUIET_READS
            && buf.is_empty()
            && buf.capacity() > 2 * READ_SIZE_MIN
        {
            *buf = BytesMut::with_capacity(READ_SIZE_MIN);
        }
        buf.reserve(self.size);
        buf.capacity() - buf.len()
    }

    /// Adapts the size after a read of `read` bytes into `room`.
    pub(super) fn after_read(&mut self, read: usize, room: usize) {
        if read >= room {
            self.size = (self.size * 2).min(READ_SIZE_MAX);
            self.quiet_reads = 0;
        } else if read < self.size / 4 {
            self.size = (self.size / 2).max(READ_SIZE_MIN);
            self.quiet_reads = self.quiet_reads.saturating_add(1);
        } else {
            self.quiet_reads = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_reads_fill_it_and_shrinks_when_traffic_thins() {
        let mut size = ReadSize::default();
        let mut buf = BytesMut::new();
        for _ in 0..10 {
            let room = size.make_room(&mut buf);
            assert!(room >= size.size);
            size.after_read(room, room);
        }
        assert_eq!(
            size.size, READ_SIZE_MAX,
            "full reads grow it to the maximum"
        );
        size.after_read(READ_SIZE_MAX / 2, READ_SIZE_MAX);
        assert_eq!(size.size, READ_SIZE_MAX, "half-full reads keep it");
        for _ in 0..10 {
            size.after_read(100, READ_SIZE_MAX);
        }
        assert_eq!(
            size.size, READ_SIZE_MIN,
            "small reads shrink it to the minimum"
        );
    }

    #[test]
    fn a_quiet_connection_gives_back_a_grown_buffer_and_keeps_buffered_bytes() {
        let mut size = ReadSize::default();
        let mut buf = BytesMut::with_capacity(READ_SIZE_MAX);
        for _ in 0..READ_SIZE_QUIET_READS - 1 {
            size.after_read(8, READ_SIZE_MIN);
        }
        size.make_room(&mut buf);
        assert!(buf.capacity() >= READ_SIZE_MAX, "not quiet long enough yet");
        size.after_read(8, READ_SIZE_MIN);
        size.make_room(&mut buf);
        assert!(buf.capacity() < 2 * READ_SIZE_MIN);

        let mut partial = BytesMut::with_capacity(READ_SIZE_MAX);
        partial.extend_from_slice(b"part of a frame");
        size.make_room(&mut partial);
        assert_eq!(&partial[..], b"part of a frame", "buffered bytes are kept");
    }

    #[test]
    fn alternating_large_and_small_reads_keep_the_buffer() {
        let mut size = ReadSize::default();
        let mut buf = BytesMut::new();
        let mut largest = 0;
        for round in 0..4 * READ_SIZE_QUIET_READS {
            let room = size.make_room(&mut buf);
            size.after_read(if round % 2 == 0 { room } else { 8 }, room);
            largest = largest.max(buf.capacity());
        }
        size.make_room(&mut buf);
        assert_eq!(buf.capacity(), largest, "never given back");
    }
}

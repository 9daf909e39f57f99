//! How much room a connection's reader offers the socket in one read.
//!
//! Every read is a syscall, and every batch of frames read is answered by at least one
//! write, so a busy connection should read much at once. An idle one should hold little
//! memory. The room starts at [`READ_SIZE_MIN`], doubles whenever a read fills it (more
//! was waiting), up to [`READ_SIZE_MAX`], and halves when reads use less than a quarter
//! of it. Back at the minimum, an empty buffer that grew is replaced by a small one.

use crate::config::{READ_SIZE_MAX, READ_SIZE_MIN};
use bytes::BytesMut;

/// The reader's current read size; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> Self {
        ReadSize(READ_SIZE_MIN)
    }
}

impl ReadSize {
    /// Makes sure `buf` has room for a read of the current size; returns the room.
    pub(super) fn make_room(&self, buf: &mut BytesMut) -> usize {
        if self.0 == READ_SIZE_MIN && buf.is_empty() && buf.capacity() > 2 * READ_SIZE_MIN {
            *buf = BytesMut::with_capacity(READ_SIZE_MIN);
        }
        buf.reserve(self.0);
        buf.capacity() - buf.len()
    }

    /// Adapts the size after a read of `read` bytes into `room`.
    pub(super) fn after_read(&mut self, read: usize, room: usize) {
        if read >= room {
            self.0 = (self.0 * 2).min(READ_SIZE_MAX);
        } else if read < self.0 / 4 {
            self.0 = (self.0 / 2).max(READ_SIZE_MIN);
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
            assert!(room >= size.0);
            size.after_read(room, room);
        }
        assert_eq!(size.0, READ_SIZE_MAX, "full reads grow it to the maximum");
        size.after_read(READ_SIZE_MAX / 2, READ_SIZE_MAX);
        assert_eq!(size.0, READ_SIZE_MAX, "half-full reads keep it");
        for _ in 0..10 {
            size.after_read(100, READ_SIZE_MAX);
        }
        assert_eq!(
            size.0, READ_SIZE_MIN,
            "small reads shrink it to the minimum"
        );
    }

    #[test]
    fn an_idle_connection_gives_back_a_grown_buffer() {
        let size = ReadSize::default();
        let mut buf = BytesMut::with_capacity(READ_SIZE_MAX);
        size.make_room(&mut buf);
        assert!(buf.capacity() < 2 * READ_SIZE_MIN);

        let mut partial = BytesMut::with_capacity(READ_SIZE_MAX);
        partial.extend_from_slice(b"part of a frame");
        size.make_room(&mut partial);
        assert_eq!(&partial[..], b"part of a frame", "buffered bytes are kept");
    }
}

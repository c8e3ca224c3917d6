//! The part of a connection's output the socket would not take yet.
//!
//! Owns queued chunks (owned bytes or shared, encode-once frames) and writes
//! them with one vectored write per call. Exists only while the socket is
//! backed up; an idle connection has none.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 64;

#[derive(Debug)]
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
        }
    }
}

/// Pending output, in order.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_offset: usize,
    /// Bytes still to write.
    bytes: usize,
}

impl WriteQueue {
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn push(&mut self, chunk: Chunk) {
        let n = chunk.bytes().len();
        if n > 0 {
            self.bytes += n;
            self.chunks.push_back(chunk);
        }
    }

    /// Queues a shared frame of which the first `offset` bytes were already
    /// written. Only valid on an empty queue (a partial write is always the
    /// oldest unsent data).
    pub fn push_partial(&mut self, frame: Arc<[u8]>, offset: usize) {
        debug_assert!(self.is_empty() && offset < frame.len());
        self.head_offset = offset;
        self.bytes += frame.len() - offset;
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Drops every chunk the socket has not started on, keeping a partly
    /// written front chunk so the peer still sees whole frames. Returns the
    /// bytes dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_offset > 0).min(self.chunks.len());
        let before = self.bytes;
        self.chunks.truncate(keep);
        self.bytes = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.head_offset);
        if keep == 0 {
            self.head_offset = 0;
        }
        before - self.bytes
    }

    /// Writes as much as the socket takes. Returns the bytes written; stops
    /// at `WouldBlock` (not an error) or when empty.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while self.bytes > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let b = c.bytes();
                slices[n] = IoSlice::new(if i == 0 { &b[self.head_offset..] } else { b });
                n += 1;
            }
            match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.consume(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_offset;
            if n >= left {
                n -= left;
                self.chunks.pop_front();
                self.head_offset = 0;
            } else {
                self.head_offset += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = (self.cap - n).min(b.len());
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = WriteQueue::default();
        let shared: Arc<[u8]> = Arc::from(&b"shared-frame"[..]);
        q.push(Chunk::Owned(b"hello ".to_vec()));
        q.push(Chunk::Shared(shared.clone()));
        q.push(Chunk::Owned(Vec::new()));
        q.push(Chunk::Shared(shared));
        assert_eq!(q.len_bytes(), 6 + 12 + 12);
        let mut w = Trickle {
            got: Vec::new(),
            cap: 5,
            calls_left: 3,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 15);
        assert_eq!(q.len_bytes(), 15);
        w.calls_left = 100;
        q.write_to(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.got, b"hello shared-frameshared-frame");
    }

    #[test]
    fn dropping_unstarted_chunks_keeps_the_frame_in_flight() {
        let mut q = WriteQueue::default();
        q.push(Chunk::Owned(b"0123456789".to_vec()));
        q.push(Chunk::Owned(b"abc".to_vec()));
        let mut w = Trickle {
            got: Vec::new(),
            cap: 4,
            calls_left: 1,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.drop_unstarted(), 3);
        assert_eq!(q.len_bytes(), 6);
        w.calls_left = 10;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.got, b"0123456789");
        // Nothing started: everything goes.
        q.push(Chunk::Owned(b"xyz".to_vec()));
        assert_eq!(q.drop_unstarted(), 3);
        assert!(q.is_empty());
    }
}

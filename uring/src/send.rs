//! Bytes handed to the ring for sending: owned until the send's last
//! completion, with an offset so a short send resumes where it stopped.

use std::sync::Arc;

/// Bytes whose ownership moves into the ring for one send.
///
/// `Shared` lets one frame, encoded once, be sent to many sockets: each send
/// holds a clone of the `Arc` (a reference count, not a copy) until its
/// completion. Either way the heap bytes never move or change while the
/// kernel may read them.
#[derive(Clone, Debug)]
pub struct SendData {
    bytes: Bytes,
    /// Start of the unsent part.
    offset: usize,
    /// End of the part to send (exclusive).
    end: usize,
}

#[derive(Clone, Debug)]
enum Bytes {
    Shared(Arc<[u8]>),
    Owned(Box<[u8]>),
}

/// Largest single send: the SQE length field is 32 bits. The constructors
/// keep only the first `MAX_SEND` bytes of anything longer (wsgate's frame
/// limits are far below it).
pub const MAX_SEND: usize = u32::MAX as usize;

impl SendData {
    /// All of a shared frame.
    pub fn shared(frame: Arc<[u8]>) -> SendData {
        let end = frame.len().min(MAX_SEND);
        SendData {
            bytes: Bytes::Shared(frame),
            offset: 0,
            end,
        }
    }

    /// `frame[range]`; the range is clamped to the frame (and to
    /// [`MAX_SEND`] bytes).
    pub fn shared_range(frame: Arc<[u8]>, range: std::ops::Range<usize>) -> SendData {
        let end = range.end.min(frame.len());
        let offset = range.start.min(end);
        let end = end.min(offset.saturating_add(MAX_SEND));
        SendData {
            bytes: Bytes::Shared(frame),
            offset,
            end,
        }
    }

    /// An owned buffer.
    pub fn owned(bytes: Vec<u8>) -> SendData {
        let end = bytes.len().min(MAX_SEND);
        SendData {
            bytes: Bytes::Owned(bytes.into_boxed_slice()),
            offset: 0,
            end,
        }
    }

    /// The bytes still to send.
    pub fn remaining(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Shared(b) => &b[self.offset..self.end],
            Bytes::Owned(b) => &b[self.offset..self.end],
        }
    }

    /// How many bytes are still to send.
    pub fn len(&self) -> usize {
        self.end - self.offset
    }

    /// Nothing left to send.
    pub fn is_empty(&self) -> bool {
        self.offset == self.end
    }

    /// Appends `other` to this owned, not yet started buffer when both are
    /// owned and the result stays within `max` bytes; false (nothing done)
    /// otherwise. Shared frames are never copied here: they stay shared.
    pub(crate) fn try_append(&mut self, other: &SendData, max: usize) -> bool {
        let len = self.len();
        let Bytes::Owned(b) = &mut self.bytes else {
            return false;
        };
        if self.offset != 0
            || self.end != b.len()
            || !matches!(other.bytes, Bytes::Owned(_))
            || len + other.len() > max
        {
            return false;
        }
        let mut v = std::mem::take(b).into_vec();
        v.extend_from_slice(other.remaining());
        *b = v.into_boxed_slice();
        self.end = b.len();
        true
    }

    /// `n` more bytes went out.
    pub(crate) fn advance(&mut self, n: usize) {
        self.offset = (self.offset + n).min(self.end);
    }
}

impl From<Vec<u8>> for SendData {
    fn from(v: Vec<u8>) -> SendData {
        SendData::owned(v)
    }
}

impl From<Arc<[u8]>> for SendData {
    fn from(a: Arc<[u8]>) -> SendData {
        SendData::shared(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_clamp_and_advance_resumes_where_the_kernel_stopped() {
        let frame: Arc<[u8]> = (0u8..100).collect::<Vec<_>>().into();
        let mut d = SendData::shared_range(Arc::clone(&frame), 10..50);
        assert_eq!(d.remaining(), &frame[10..50]);
        d.advance(15);
        assert_eq!(d.remaining(), &frame[25..50]);
        d.advance(1000);
        assert!(d.is_empty());
        // Out-of-range and inverted ranges clamp to the frame, never panic.
        assert_eq!(
            SendData::shared_range(Arc::clone(&frame), 90..200).len(),
            10
        );
        assert!(SendData::shared_range(Arc::clone(&frame), 150..200).is_empty());
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = SendData::shared_range(frame, 60..40);
        assert!(inverted.is_empty());
        let mut o = SendData::from(vec![1, 2, 3]);
        o.advance(2);
        assert_eq!(o.remaining(), &[3]);
    }

    #[test]
    fn owned_buffers_merge_up_to_the_cap_and_shared_frames_never() {
        let mut a = SendData::from(vec![1, 2]);
        assert!(a.try_append(&SendData::from(vec![3]), 4));
        assert_eq!(a.remaining(), &[1, 2, 3]);
        assert!(
            !a.try_append(&SendData::from(vec![4, 5]), 4),
            "over the cap"
        );
        let frame: Arc<[u8]> = vec![9u8; 2].into();
        assert!(!a.try_append(&SendData::shared(Arc::clone(&frame)), 64));
        assert!(!SendData::shared(frame).try_append(&SendData::from(vec![1]), 64));
        // A buffer the kernel started on is left alone.
        a.advance(1);
        assert!(!a.try_append(&SendData::from(vec![4]), 64));
        assert_eq!(a.remaining(), &[2, 3]);
    }
}

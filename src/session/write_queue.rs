//! The part of a connection's output the socket would not take yet.
//!
//! Owns queued chunks (owned bytes or shared, encode-once frames), the
//! boundaries of the units in them (server frames, HTTP responses), and
//! which unit is in flight (partly written). Writes them with one vectored
//! write per call. Exists only while the socket is backed up; an idle
//! connection has none.
//!
//! A unit is always sent whole (RFC 6455 §5.2): every chunk begins and ends
//! on a unit boundary, and [`WriteQueue::drop_unstarted`] keeps the rest of
//! the unit in flight, so whatever is queued after a cut (the close frame)
//! starts on a boundary.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use crate::protocol::frame::{FrameHeader, Role};

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 1024;

/// Queued output: whole units (server frames, or an HTTP response).
#[derive(Debug)]
pub enum Chunk {
    /// One or more units produced for this connection.
    Owned(Vec<u8>),
    /// One encode-once fan-out frame.
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

/// Length of the unit at the start of `bytes`: one server frame, or one HTTP
/// response (head and `Content-Length` body). `None` when `bytes` do not
/// start with a whole readable header, which never happens to output this
/// server produced; callers then treat the rest as one unit.
fn unit_len(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(b"HTTP/") {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(bytes).ok()? else {
            return None;
        };
        let body = match resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            Some(h) => std::str::from_utf8(h.value).ok()?.trim().parse().ok()?,
            None => 0,
        };
        return head.checked_add(body);
    }
    // Server frames are unmasked and final, exactly what a client reads.
    let (h, n) = FrameHeader::decode(bytes, Role::Client, 0).ok()??;
    n.checked_add(usize::try_from(h.payload_len).ok()?)
}

/// The bounds of the unit of `bytes` that contains byte `offset`, or
/// `(offset, offset)` when `offset` falls on a boundary (nothing in flight).
/// Bytes that cannot be read as units count as one unit, so the caller keeps
/// too much rather than cutting one.
fn unit_around(bytes: &[u8], offset: usize) -> (usize, usize) {
    let mut pos = 0;
    while pos < offset {
        let Some(end) = unit_len(&bytes[pos..]).map(|n| pos + n) else {
            return (0, bytes.len());
        };
        if end > bytes.len() {
            return (0, bytes.len());
        }
        if end > offset {
            return (pos, end);
        }
        pos = end;
    }
    (offset, offset)
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

    /// Queues `out` of which the first `written` bytes were already written
    /// (a partial direct write). Only valid on an empty queue. Whole units
    /// before the one in flight are not kept; the one in flight is, from its
    /// start, so the chunk begins on a boundary.
    fn push_started_owned(&mut self, out: &[u8], written: usize) {
        debug_assert!(self.is_empty() && written < out.len());
        let (start, _) = unit_around(out, written);
        self.head_offset = written - start;
        self.bytes += out.len() - written;
        self.chunks.push_back(Chunk::Owned(out[start..].to_vec()));
    }

    /// Drops every unit the socket has not started on, keeping the rest of
    /// a unit in flight so the peer still sees whole frames and whatever is
    /// queued next starts on a boundary. Returns the bytes dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let before = self.bytes;
        let started = self.head_offset > 0;
        self.chunks.truncate(usize::from(started));
        if let Some(Chunk::Owned(v)) = self.chunks.front_mut() {
            // An owned chunk may hold many replies: keep only the one in
            // flight, and free the rest now (this is a slow consumer).
            let (start, end) = unit_around(v, self.head_offset);
            v.truncate(end);
            v.drain(..start);
            v.shrink_to_fit();
            self.head_offset -= start;
            if v.len() == self.head_offset {
                self.chunks.clear();
            }
        }
        if self.chunks.is_empty() {
            self.head_offset = 0;
        }
        self.bytes = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.head_offset);
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

/// Writes `out` (whole units) after anything already queued in `slot`,
/// queueing what `w` refuses; `slot` is `None` whenever nothing is queued.
/// Returns the bytes written.
pub fn write_or_queue<W: Write>(
    slot: &mut Option<Box<WriteQueue>>,
    w: &mut W,
    out: &[u8],
) -> io::Result<usize> {
    if let Some(wq) = slot.as_mut() {
        if !out.is_empty() {
            wq.push(Chunk::Owned(out.to_vec()));
        }
        let n = wq.write_to(w)?;
        if wq.is_empty() {
            *slot = None;
        }
        return Ok(n);
    }
    let mut written = 0;
    while written < out.len() {
        match w.write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if written < out.len() {
        let mut wq = Box::<WriteQueue>::default();
        wq.push_started_owned(out, written);
        *slot = Some(wq);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{write_server_frame, FrameHeader, Role};
    use crate::protocol::OpCode;
    use proptest::prelude::*;

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

    /// A socket stand-in whose peer has room for `room` more bytes: it takes
    /// up to that many (a partial write), then says `WouldBlock`.
    #[derive(Default)]
    struct Peer {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Peer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = self.room.min(b.len());
                self.got.extend_from_slice(&b[..take]);
                self.room -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_server_frame(&mut v, op, payload);
        v
    }

    fn close_frame() -> Vec<u8> {
        let mut p = 1008u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"slow consumer");
        frame(OpCode::Close, &p)
    }

    /// What a client reads from `wire`: whole frames, or why not.
    fn frames(mut wire: &[u8]) -> Result<Vec<(OpCode, Vec<u8>)>, String> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let (h, n) = FrameHeader::decode(wire, Role::Client, 0)
                .map_err(|e| format!("bad header after {} frames: {e}", out.len()))?
                .ok_or_else(|| format!("stream ends inside a header after {out:?}"))?;
            let end = n + h.payload_len as usize;
            if wire.len() < end {
                return Err(format!(
                    "stream ends inside frame {} ({} of {end} bytes)",
                    out.len(),
                    wire.len()
                ));
            }
            out.push((h.opcode, wire[n..end].to_vec()));
            wire = &wire[end..];
        }
        Ok(out)
    }

    /// The slow-consumer cut as the worker does it: drop what was not
    /// started, then queue the close frame behind what is left.
    fn cut(slot: &mut Option<Box<WriteQueue>>, peer: &mut Peer) -> usize {
        let dropped = slot.as_mut().map_or(0, |q| q.drop_unstarted());
        if slot.as_ref().is_some_and(|q| q.is_empty()) {
            *slot = None;
        }
        write_or_queue(slot, peer, &close_frame()).unwrap();
        dropped
    }

    fn drain(slot: &mut Option<Box<WriteQueue>>, peer: &mut Peer) {
        peer.room = usize::MAX;
        if let Some(q) = slot.as_mut() {
            q.write_to(peer).unwrap();
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
    fn a_cut_completes_a_half_written_direct_reply_before_the_close() {
        // A 1000-byte reply and a pong; the socket takes 300 bytes, then a
        // fan-out frame queues behind them and the queue is cut.
        let reply = frame(OpCode::Text, &[b'r'; 1000]);
        let pong = frame(OpCode::Text, b"{\"type\":\"pong\"}");
        let fanout: Arc<[u8]> = frame(OpCode::Text, &[b'f'; 50]).into();
        let mut out = reply.clone();
        out.extend_from_slice(&pong);
        let mut peer = Peer {
            room: 300,
            ..Peer::default()
        };
        let mut slot = None;
        assert_eq!(write_or_queue(&mut slot, &mut peer, &out).unwrap(), 300);
        slot.as_mut().unwrap().push(Chunk::Shared(fanout.clone()));
        let dropped = cut(&mut slot, &mut peer);
        assert_eq!(
            dropped,
            pong.len() + fanout.len(),
            "only unstarted frames go"
        );
        drain(&mut slot, &mut peer);
        let got = frames(&peer.got).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], (OpCode::Text, vec![b'r'; 1000]));
        assert_eq!(got[1].0, OpCode::Close);
    }

    #[test]
    fn a_cut_keeps_only_the_frame_in_flight_of_a_buffer_of_replies() {
        // 50 replies in one output buffer; the socket stops inside the 11th.
        let replies: Vec<Vec<u8>> = (0..50u8).map(|i| frame(OpCode::Text, &[i; 40])).collect();
        let out = replies.concat();
        let mut peer = Peer {
            room: 10 * replies[0].len() + 7,
            ..Peer::default()
        };
        let mut slot = None;
        write_or_queue(&mut slot, &mut peer, &out).unwrap();
        assert_eq!(
            slot.as_ref().unwrap().len_bytes(),
            out.len() - peer.got.len()
        );
        let dropped = cut(&mut slot, &mut peer);
        assert_eq!(dropped, 39 * replies[0].len());
        drain(&mut slot, &mut peer);
        let got = frames(&peer.got).unwrap();
        assert_eq!(got.len(), 12);
        for (i, (op, p)) in got[..11].iter().enumerate() {
            assert_eq!((*op, p.as_slice()), (OpCode::Text, &[i as u8; 40][..]));
        }
        assert_eq!(got[11].0, OpCode::Close);
    }

    #[test]
    fn a_write_that_ends_on_a_frame_boundary_leaves_nothing_in_flight() {
        let a = frame(OpCode::Text, b"first");
        let b = frame(OpCode::Text, b"second");
        let mut peer = Peer {
            room: a.len(),
            ..Peer::default()
        };
        let mut slot = None;
        write_or_queue(&mut slot, &mut peer, &[a.clone(), b.clone()].concat()).unwrap();
        assert_eq!(cut(&mut slot, &mut peer), b.len());
        drain(&mut slot, &mut peer);
        let got = frames(&peer.got).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (OpCode::Text, b"first".to_vec()));
        assert_eq!(got[1].0, OpCode::Close);
    }

    #[test]
    fn a_half_sent_upgrade_response_is_completed_before_the_close() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let reply = frame(OpCode::Text, &[b'x'; 500]);
        let mut peer = Peer {
            room: 20,
            ..Peer::default()
        };
        let mut slot = None;
        write_or_queue(&mut slot, &mut peer, &[&head[..], &reply].concat()).unwrap();
        assert_eq!(cut(&mut slot, &mut peer), reply.len());
        drain(&mut slot, &mut peer);
        assert!(peer.got.starts_with(head), "{:?}", peer.got);
        let got = frames(&peer.got[head.len()..]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, OpCode::Close);
    }

    #[test]
    fn a_cut_completes_a_half_written_fanout_frame() {
        let mut q = WriteQueue::default();
        let a: Arc<[u8]> = frame(OpCode::Text, &[b'a'; 300]).into();
        let b: Arc<[u8]> = frame(OpCode::Text, &[b'b'; 300]).into();
        q.push_partial(a.clone(), 100);
        q.push(Chunk::Shared(b.clone()));
        let mut slot = Some(Box::new(q));
        let mut peer = Peer {
            got: a[..100].to_vec(),
            room: 0,
        };
        assert_eq!(cut(&mut slot, &mut peer), b.len());
        drain(&mut slot, &mut peer);
        let got = frames(&peer.got).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (OpCode::Text, vec![b'a'; 300]));
        assert_eq!(got[1].0, OpCode::Close);
    }

    /// One step of a connection's output: a buffer of direct replies (frame
    /// payload sizes), or one shared fan-out frame.
    #[derive(Debug, Clone)]
    enum Step {
        Replies(Vec<usize>),
        Fanout(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop::collection::vec(0usize..300, 1..6).prop_map(Step::Replies),
            (0usize..70_000).prop_map(Step::Fanout),
        ]
    }

    proptest! {
        /// Whatever the mix of replies and fan-out and wherever the socket
        /// stops, a cut yields whole frames, in order, then the close frame.
        #[test]
        fn a_cut_never_splits_a_frame(
            steps in prop::collection::vec((step(), 0usize..2000), 1..12),
            cut_at in 0usize..12,
        ) {
            let mut peer = Peer::default();
            let mut slot: Option<Box<WriteQueue>> = None;
            let mut sent: Vec<Vec<u8>> = Vec::new();
            let mut n = 0u8;
            let mut payload = |len: usize| {
                n = n.wrapping_add(1);
                vec![n; len]
            };
            for (i, (s, room)) in steps.iter().enumerate() {
                if i == cut_at {
                    break;
                }
                peer.room += room;
                match s {
                    Step::Replies(lens) => {
                        let mut out = Vec::new();
                        for &len in lens {
                            let p = payload(len);
                            write_server_frame(&mut out, OpCode::Text, &p);
                            sent.push(p);
                        }
                        write_or_queue(&mut slot, &mut peer, &out).unwrap();
                    }
                    Step::Fanout(len) => {
                        let p = payload(*len);
                        let f: Arc<[u8]> = frame(OpCode::Text, &p).into();
                        sent.push(p);
                        // As the worker's fan-out: straight to the socket
                        // when nothing is queued, else behind the queue.
                        match slot.as_mut() {
                            Some(q) => {
                                q.push(Chunk::Shared(f));
                                q.write_to(&mut peer).unwrap();
                            }
                            None => {
                                let w = peer.write(&f).unwrap_or(0);
                                if w < f.len() {
                                    let mut q = Box::<WriteQueue>::default();
                                    q.push_partial(f, w);
                                    slot = Some(q);
                                }
                            }
                        }
                    }
                }
                if slot.as_ref().is_some_and(|q| q.is_empty()) {
                    slot = None;
                }
            }
            cut(&mut slot, &mut peer);
            drain(&mut slot, &mut peer);
            let got = frames(&peer.got).map_err(TestCaseError::fail)?;
            let (close, data) = got.split_last().unwrap();
            prop_assert_eq!(close.0, OpCode::Close);
            prop_assert!(data.len() <= sent.len());
            for (g, s) in data.iter().zip(&sent) {
                prop_assert_eq!(&g.1, s);
            }
        }
    }
}

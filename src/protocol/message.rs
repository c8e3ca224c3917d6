//! The receive side of a WebSocket connection: turns raw bytes into messages
//! and control frames (RFC 6455 §5.4, §5.5, §8.1).
//!
//! Owns frame sequencing (continuations, interleaved control frames), payload
//! unmasking, message reassembly, incremental UTF-8 validation of text, size
//! limits, and the validation of close payloads. It streams: bytes are
//! consumed as they arrive, a frame never needs to be held whole, and a
//! message that arrives in one read is handed out without any copy. It must
//! not do IO or decide what to *send*; the event loop reacts to [`Event`]s.
//!
//! With permessage-deflate negotiated (RFC 7692), a data message whose first
//! frame has RSV1 set is reassembled compressed and inflated once complete,
//! through the worker's one [`Inflater`] (kept in the [`PartialPool`]), with
//! the size limit applied to the inflated bytes while inflating.
//!
//! Memory: an idle receiver is a few dozen inline bytes. The reassembly buffer
//! ([`Partial`]) exists only while a message or control frame is incomplete,
//! and comes from and goes back to a [`PartialPool`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::close::{CloseCode, CloseFrame};
use super::deflate::{Agreed, InflateError, Inflater};
use super::frame::{FrameError, FrameHeader, OpCode, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// The two kinds of data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// What the peer said. Borrowed data is valid until the next `feed`.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message; text is valid UTF-8.
    Message(MessageKind, &'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame. The receiver ignores everything after it.
    Close(CloseFrame<'a>),
}

/// An owned copy of an [`Event`], for callers that keep events past the
/// next `feed` (tests, fuzz targets, tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedEvent {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close code (if any) and reason.
    Close(Option<u16>, String),
}

impl Event<'_> {
    pub fn to_owned_event(&self) -> OwnedEvent {
        match *self {
            // The receiver only delivers valid UTF-8 as text.
            Event::Message(MessageKind::Text, d) => {
                OwnedEvent::Text(String::from_utf8_lossy(d).into_owned())
            }
            Event::Message(MessageKind::Binary, d) => OwnedEvent::Binary(d.to_vec()),
            Event::Ping(d) => OwnedEvent::Ping(d.to_vec()),
            Event::Pong(d) => OwnedEvent::Pong(d.to_vec()),
            Event::Close(ref c) => OwnedEvent::Close(c.code.map(|c| c.0), c.reason.to_string()),
        }
    }
}

/// A violation that ends the connection, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("frame exceeds the size limit")]
    FrameTooBig,
    #[error("message exceeds the size limit")]
    MessageTooBig,
    #[error("message has too many fragments")]
    TooManyFragments,
    #[error("invalid close frame (answered with {0})")]
    BadClose(CloseCode),
    #[error("RSV1 (compressed) set on a control frame")]
    CompressedControl,
    #[error("RSV1 (compressed) set on a continuation frame")]
    CompressedContinuation,
    #[error("compressed message is not valid DEFLATE data")]
    BadDeflate,
    /// The process holds as many partly received bytes as it may
    /// (`--max-reassembly-bytes`): this message would pass the budget.
    #[error("server is out of memory for unfinished messages")]
    ReassemblyBudget,
}

impl ProtocolError {
    /// The close code this error is answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::Frame(_)
            | ProtocolError::UnexpectedContinuation
            | ProtocolError::ExpectedContinuation
            | ProtocolError::CompressedControl
            | ProtocolError::CompressedContinuation => CloseCode::PROTOCOL_ERROR,
            ProtocolError::InvalidUtf8 | ProtocolError::BadDeflate => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooBig
            | ProtocolError::MessageTooBig
            | ProtocolError::TooManyFragments
            | ProtocolError::ReassemblyBudget => CloseCode::MESSAGE_TOO_BIG,
            ProtocolError::BadClose(code) => *code,
        }
    }
}

/// Receive limits. Defaults follow the conformance suite's needs (16 MiB).
#[derive(Debug, Clone, Copy)]
pub struct ReceiverLimits {
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    pub max_fragments: u32,
}

impl Default for ReceiverLimits {
    fn default() -> Self {
        ReceiverLimits {
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            max_fragments: u32::MAX,
        }
    }
}

/// Bytes of partly received messages the whole process may hold, shared by
/// every worker's [`PartialPool`]. Without it each connection could park a
/// whole max-size message (kept alive by pings between fragments) and a few
/// dozen connections would take gigabytes.
///
/// A buffered frame reserves its announced length when its header arrives
/// (one atomic operation per buffered frame, none for messages that arrive
/// whole); the reservation is returned when the message completes or the
/// connection goes.
#[derive(Debug)]
pub struct ReassemblyBudget {
    limit: u64,
    held: AtomicU64,
}

impl ReassemblyBudget {
    pub fn new(limit: u64) -> Self {
        ReassemblyBudget {
            limit,
            held: AtomicU64::new(0),
        }
    }

    /// Bytes reserved right now (a gauge).
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn reserve(&self, n: u64) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                h.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Heap state of an incomplete message or control frame.
#[derive(Debug, Default)]
pub struct Partial {
    msg: Vec<u8>,
    utf8: Utf8Validator,
    fragments: u32,
    /// `msg` holds compressed bytes (RSV1 on the first frame).
    compressed: bool,
    control: Vec<u8>,
    /// Bytes of the pool's [`ReassemblyBudget`] this message holds.
    reserved: u64,
}

/// A worker's receive scratch: a small free list of [`Partial`]s, so that
/// connections borrow reassembly buffers only while they need them, and the
/// worker's one [`Inflater`] for compressed messages (made on first use).
#[derive(Debug)]
pub struct PartialPool {
    // Boxed on purpose: a connection holds `Option<Box<Partial>>` (8 bytes
    // when idle), and the same allocation moves between pool and connection.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Partial>>,
    max_pooled: usize,
    /// Buffers that grew past this are shrunk before being pooled, so a
    /// burst of 16 MiB messages does not pin 16 MiB per pooled buffer.
    keep_capacity: usize,
    /// The process-wide cap on partly received bytes (none: unlimited).
    budget: Option<Arc<ReassemblyBudget>>,
    inflater: Option<Box<Inflater>>,
    /// Compressed messages inflated (for metrics).
    inflations: u64,
}

impl PartialPool {
    pub fn new(max_pooled: usize, keep_capacity: usize) -> Self {
        PartialPool {
            free: Vec::new(),
            max_pooled,
            keep_capacity,
            budget: None,
            inflater: None,
            inflations: 0,
        }
    }

    /// A default pool whose buffers count against `budget`.
    pub fn with_budget(budget: Arc<ReassemblyBudget>) -> Self {
        PartialPool {
            budget: Some(budget),
            ..PartialPool::default()
        }
    }

    /// How many compressed messages this pool's inflater has inflated.
    pub fn inflations(&self) -> u64 {
        self.inflations
    }

    /// Inflates one compressed message, capped at `limit` bytes.
    fn inflate(&mut self, payload: &[u8], limit: u64) -> Result<&[u8], ProtocolError> {
        self.inflations += 1;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.inflater
            .get_or_insert_with(Default::default)
            .inflate(payload, limit)
            .map_err(|e| match e {
                InflateError::TooBig => ProtocolError::MessageTooBig,
                InflateError::Corrupt => ProtocolError::BadDeflate,
            })
    }

    fn get(&mut self) -> Box<Partial> {
        self.free.pop().unwrap_or_default()
    }

    /// Reserves `n` more bytes of the budget for message `p`.
    fn reserve(&self, p: &mut Partial, n: u64) -> Result<(), ProtocolError> {
        if let Some(b) = &self.budget {
            if !b.reserve(n) {
                return Err(ProtocolError::ReassemblyBudget);
            }
            p.reserved += n;
        }
        Ok(())
    }

    /// Returns what message `p` reserved.
    fn unreserve(&self, p: &mut Partial) {
        if let Some(b) = &self.budget {
            b.release(std::mem::take(&mut p.reserved));
        }
    }

    fn put(&mut self, mut p: Box<Partial>) {
        self.unreserve(&mut p);
        if self.free.len() >= self.max_pooled {
            return;
        }
        p.msg.clear();
        p.msg.shrink_to(self.keep_capacity);
        p.control.clear();
        p.utf8 = Utf8Validator::new();
        p.fragments = 0;
        p.compressed = false;
        self.free.push(p);
    }

    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

impl Default for PartialPool {
    fn default() -> Self {
        PartialPool::new(64, 64 * 1024)
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Payload {
        opcode: OpCode,
        fin: bool,
        remaining: u64,
        mask: [u8; 4],
        mask_off: u8,
        /// The whole payload is in the current input: hand it out in place.
        direct: bool,
        /// A one-frame message with RSV1: inflate it before handing it out.
        compressed: bool,
    },
    /// A close frame was received or an error occurred: ignore the rest.
    Done,
}

/// Per-connection receive state machine (server role: frames must be masked).
#[derive(Debug)]
pub struct Receiver {
    state: State,
    hdr: [u8; MAX_HEADER_LEN],
    /// Two nibbles in one byte, so that an idle connection stays as small
    /// as it was before permessage-deflate: the low one is how many bytes
    /// of `hdr` are a pending header (0..=14), the high one the negotiated
    /// permessage-deflate window (0 when not negotiated, else 8..=15; then
    /// RSV1 is allowed on the first frame of a data message).
    hdr_len_window: u8,
    /// Kind of the message being reassembled, if one is in progress.
    in_message: Option<MessageKind>,
    partial: Option<Box<Partial>>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver::new()
    }
}

impl Receiver {
    pub fn new() -> Self {
        Receiver {
            state: State::Header,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len_window: 0,
            in_message: None,
            partial: None,
        }
    }

    /// permessage-deflate was negotiated for this connection.
    pub fn enable_deflate(&mut self, agreed: Agreed) {
        let bits = agreed.server_max_window_bits.clamp(8, 15);
        self.hdr_len_window = (self.hdr_len_window & 0x0F) | bits << 4;
    }

    /// The negotiated permessage-deflate parameters, if any
    /// (`window_requested` matters only to the handshake and reads false).
    pub fn deflate(&self) -> Option<Agreed> {
        let bits = self.hdr_len_window >> 4;
        (bits != 0).then_some(Agreed {
            server_max_window_bits: bits,
            window_requested: false,
        })
    }

    fn hdr_len(&self) -> usize {
        (self.hdr_len_window & 0x0F) as usize
    }

    fn set_hdr_len(&mut self, n: usize) {
        debug_assert!(n <= MAX_HEADER_LEN);
        self.hdr_len_window = (self.hdr_len_window & 0xF0) | n as u8;
    }

    /// True while a message is only partly received (the connection holds a
    /// reassembly buffer).
    pub fn holds_buffer(&self) -> bool {
        self.partial.is_some()
    }

    /// True once a close frame was received or an error ended the stream.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Gives any reassembly buffer back to the pool (when the connection closes).
    pub fn release(&mut self, pool: &mut PartialPool) {
        if let Some(p) = self.partial.take() {
            pool.put(p);
        }
    }

    /// Consumes `input` (unmasking it in place) and reports what it contains.
    ///
    /// Every byte is consumed: an incomplete header is kept inline, an
    /// incomplete payload is reassembled in a pooled buffer. After a close
    /// frame or an error, further input is ignored.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &ReceiverLimits,
        pool: &mut PartialPool,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        let result = self.feed_inner(input, limits, pool, on_event);
        if result.is_err() {
            self.state = State::Done;
            // Nothing more is read: the unfinished message (and its share
            // of the reassembly budget) goes now, not when the socket closes.
            self.in_message = None;
        }
        // Idle again: the reassembly buffer goes back to the pool.
        if self.in_message.is_none() && matches!(self.state, State::Header | State::Done) {
            self.release(pool);
        }
        result
    }

    fn feed_inner(
        &mut self,
        input: &mut [u8],
        limits: &ReceiverLimits,
        pool: &mut PartialPool,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok(()),
                State::Header => {
                    if pos == input.len() {
                        return Ok(());
                    }
                    let Some(header) = self.read_header(input, &mut pos)? else {
                        return Ok(());
                    };
                    self.begin_frame(header, input.len() - pos, limits, pool)?;
                }
                State::Payload { .. } => {}
            }
            let State::Payload {
                opcode,
                fin,
                remaining,
                mask,
                mask_off,
                direct,
                compressed,
            } = self.state
            else {
                continue;
            };
            let n = remaining.min((input.len() - pos) as u64) as usize;
            let chunk = &mut input[pos..pos + n];
            let next_off = apply_mask(chunk, mask, mask_off as usize) as u8;
            pos += n;
            let remaining = remaining - n as u64;
            if direct {
                debug_assert_eq!(remaining, 0);
                self.state = State::Header;
                self.complete_direct(opcode, compressed, chunk, limits, pool, on_event)?;
                continue;
            }
            self.append_chunk(opcode, chunk)?;
            if remaining > 0 {
                self.state = State::Payload {
                    opcode,
                    fin,
                    remaining,
                    mask,
                    mask_off: next_off,
                    direct,
                    compressed,
                };
                return Ok(());
            }
            self.state = State::Header;
            self.complete_buffered(opcode, fin, limits, pool, on_event)?;
        }
    }

    /// Decodes the next header, from the inline stash if one is pending.
    fn read_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, ProtocolError> {
        let avail = &input[*pos..];
        // RSV1 means "compressed" once permessage-deflate is negotiated.
        let rsv = if self.deflate().is_some() { 0x4 } else { 0 };
        if self.hdr_len() == 0 {
            return match FrameHeader::decode(avail, Role::Server, rsv)? {
                Some((h, n)) => {
                    *pos += n;
                    Ok(Some(h))
                }
                None => {
                    // Incomplete headers are < 14 bytes: keep them inline.
                    self.hdr[..avail.len()].copy_from_slice(avail);
                    self.set_hdr_len(avail.len());
                    *pos = input.len();
                    Ok(None)
                }
            };
        }
        let old = self.hdr_len();
        let take = (MAX_HEADER_LEN - old).min(avail.len());
        self.hdr[old..old + take].copy_from_slice(&avail[..take]);
        match FrameHeader::decode(&self.hdr[..old + take], Role::Server, rsv)? {
            Some((h, n)) => {
                *pos += n - old;
                self.set_hdr_len(0);
                Ok(Some(h))
            }
            None => {
                self.set_hdr_len(old + take);
                *pos += take;
                Ok(None)
            }
        }
    }

    /// Checks a header against the message sequence and the limits, and sets
    /// up the payload state.
    fn begin_frame(
        &mut self,
        h: FrameHeader,
        available: usize,
        limits: &ReceiverLimits,
        pool: &mut PartialPool,
    ) -> Result<(), ProtocolError> {
        let whole_here = h.payload_len <= available as u64;
        // Only negotiated RSV1 gets past the header decoder (RFC 7692 §6.1:
        // only on the first frame of a data message).
        let compressed = h.rsv & 0x4 != 0;
        let direct = match h.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close if compressed => {
                return Err(ProtocolError::CompressedControl);
            }
            OpCode::Continuation if compressed => {
                return Err(ProtocolError::CompressedContinuation);
            }
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                if !whole_here {
                    let p = self.partial.get_or_insert_with(|| pool.get());
                    p.control.clear();
                }
                whole_here
            }
            OpCode::Text | OpCode::Binary => {
                if self.in_message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if h.payload_len > limits.max_frame_bytes {
                    return Err(ProtocolError::FrameTooBig);
                }
                if h.payload_len > limits.max_message_bytes {
                    return Err(ProtocolError::MessageTooBig);
                }
                let kind = if h.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if h.fin && whole_here {
                    true
                } else {
                    let p = self.partial.get_or_insert_with(|| pool.get());
                    pool.reserve(p, h.payload_len)?;
                    self.in_message = Some(kind);
                    p.msg.clear();
                    p.utf8 = Utf8Validator::new();
                    p.fragments = 1;
                    p.compressed = compressed;
                    false
                }
            }
            OpCode::Continuation => {
                if self.in_message.is_none() {
                    return Err(ProtocolError::UnexpectedContinuation);
                }
                if h.payload_len > limits.max_frame_bytes {
                    return Err(ProtocolError::FrameTooBig);
                }
                let p = self.partial.get_or_insert_with(|| pool.get());
                if p.msg.len() as u64 + h.payload_len > limits.max_message_bytes {
                    return Err(ProtocolError::MessageTooBig);
                }
                p.fragments = p.fragments.saturating_add(1);
                if p.fragments > limits.max_fragments {
                    return Err(ProtocolError::TooManyFragments);
                }
                pool.reserve(p, h.payload_len)?;
                false
            }
        };
        self.state = State::Payload {
            opcode: h.opcode,
            fin: h.fin,
            remaining: h.payload_len,
            mask: h.mask.unwrap_or([0; 4]),
            mask_off: 0,
            direct,
            compressed,
        };
        Ok(())
    }

    /// Appends (unmasked) payload bytes to the reassembly buffer.
    fn append_chunk(&mut self, opcode: OpCode, chunk: &[u8]) -> Result<(), ProtocolError> {
        let Some(p) = self.partial.as_mut() else {
            // begin_frame always sets up a Partial for buffered frames.
            return Err(ProtocolError::UnexpectedContinuation);
        };
        if opcode.is_control() {
            p.control.extend_from_slice(chunk);
        } else {
            // Compressed text is validated once inflated.
            if self.in_message == Some(MessageKind::Text) && !p.compressed {
                p.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            p.msg.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// A frame whose whole payload was in the input: no copy.
    fn complete_direct(
        &mut self,
        opcode: OpCode,
        compressed: bool,
        payload: &[u8],
        limits: &ReceiverLimits,
        pool: &mut PartialPool,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        if compressed {
            let kind = if opcode == OpCode::Text {
                MessageKind::Text
            } else {
                MessageKind::Binary
            };
            return emit_inflated(kind, payload, limits, pool, on_event);
        }
        match opcode {
            OpCode::Text => {
                std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                on_event(Event::Message(MessageKind::Text, payload));
            }
            OpCode::Binary => on_event(Event::Message(MessageKind::Binary, payload)),
            _ => self.control(opcode, payload, on_event)?,
        }
        Ok(())
    }

    /// The last byte of a buffered frame arrived.
    fn complete_buffered(
        &mut self,
        opcode: OpCode,
        fin: bool,
        limits: &ReceiverLimits,
        pool: &mut PartialPool,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        let Some(mut p) = self.partial.take() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let result = if opcode.is_control() {
            let r = self.control(opcode, &p.control, on_event);
            p.control.clear();
            r
        } else if fin && p.compressed {
            let r = match self.in_message.take() {
                Some(kind) => emit_inflated(kind, &p.msg, limits, pool, on_event),
                None => Err(ProtocolError::UnexpectedContinuation),
            }
            .inspect(|_| {
                p.msg.clear();
                p.compressed = false;
            });
            // The compressed bytes no longer count; the inflated message
            // lives in the worker's one inflater, bounded by the size limit.
            pool.unreserve(&mut p);
            r
        } else if fin {
            let kind = self.in_message.take();
            let r = match kind {
                Some(MessageKind::Text) => match p.utf8.finish() {
                    Ok(()) => {
                        on_event(Event::Message(MessageKind::Text, &p.msg));
                        Ok(())
                    }
                    Err(_) => Err(ProtocolError::InvalidUtf8),
                },
                Some(MessageKind::Binary) => {
                    on_event(Event::Message(MessageKind::Binary, &p.msg));
                    Ok(())
                }
                None => Err(ProtocolError::UnexpectedContinuation),
            }
            .inspect(|_| p.msg.clear());
            // The message is complete: its bytes no longer count.
            pool.unreserve(&mut p);
            r
        } else {
            Ok(())
        };
        self.partial = Some(p);
        result
    }

    fn control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        match opcode {
            OpCode::Ping => on_event(Event::Ping(payload)),
            OpCode::Pong => on_event(Event::Pong(payload)),
            OpCode::Close => {
                let frame = CloseFrame::parse(payload).map_err(ProtocolError::BadClose)?;
                self.state = State::Done;
                on_event(Event::Close(frame));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Inflates a complete compressed message (RFC 7692 §7.2.2) within the
/// message size limit, validates text, and hands it out.
fn emit_inflated(
    kind: MessageKind,
    payload: &[u8],
    limits: &ReceiverLimits,
    pool: &mut PartialPool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<(), ProtocolError> {
    let data = pool.inflate(payload, limits.max_message_bytes)?;
    if kind == MessageKind::Text {
        std::str::from_utf8(data).map_err(|_| ProtocolError::InvalidUtf8)?;
    }
    on_event(Event::Message(kind, data));
    Ok(())
}

#[cfg(test)]
mod tests;

//! A simulated network for sessions (after quinn-proto's simulated pair):
//! one [`Session`] driven the way the worker drives it, a pipe to a
//! simulated client with a configurable receive window (partial writes,
//! `WouldBlock`) and a FIN in each direction, and a virtual clock. No
//! sockets, no threads, no sleeps: a test is a sequence of client actions
//! and clock steps, and the client decodes what it got with our own codec.

mod tests;

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use slab::Slab;

use crate::app::pubsub::{LocalBroadcast, PendingResult, PubSubCx, PubSubLimits};
use crate::config::{AppKind, ClientBroadcast};
use crate::protocol::deflate::Deflater;
use crate::protocol::frame::{write_client_frame, FrameHeader, Role};
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::PartialPool;
use crate::protocol::{OpCode, ReceiverLimits};
use crate::pubsub::budget::TopicBudget;
use crate::pubsub::fanout::Delivered;
use crate::pubsub::topics::LocalTopics;
use crate::pubsub::Hub;
use crate::security::{OriginPolicy, Security};
use crate::stats::WorkerStats;

use super::{Admit, AfterWrite, Ctx, Now, Session, SessionConfig, Sink, Timeout};

/// Read size of the simulated worker (the real one reads up to 64 KiB).
const READ_BYTES: usize = 16 * 1024;

/// The server → client direction: what the client's kernel would buffer.
pub struct Pipe {
    /// Bytes written and not yet read by the client.
    buffered: VecDeque<u8>,
    /// How many bytes may be buffered before writes block.
    pub window: usize,
    /// The server sent FIN.
    pub write_shut: bool,
    /// Write calls that took some bytes but not all (partial writes).
    pub partial_writes: usize,
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = self.window.saturating_sub(self.buffered.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut n = 0;
        for b in bufs {
            let take = (room - n).min(b.len());
            self.buffered.extend(&b[..take]);
            n += take;
        }
        if n < total {
            self.partial_writes += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for Pipe {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

/// Admission without limits (the limits themselves are tested over sockets).
struct NoLimits;

impl Admit for NoLimits {
    fn end_handshake(&self, _: std::net::IpAddr) {}
    fn tracks_ips(&self) -> bool {
        false
    }
    fn try_admit(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A frame as the client decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub op: OpCode,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.op == OpCode::Close && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The worker-side state a session borrows (one simulated worker).
struct World {
    out: Vec<u8>,
    pool: PartialPool,
    deflater: Deflater,
    limits: ReceiverLimits,
    handshake: HandshakeConfig,
    stats: WorkerStats,
    hub: Arc<Hub>,
    topics: LocalTopics,
    pending: Slab<PendingResult>,
    broadcasts: Vec<LocalBroadcast>,
    admission: NoLimits,
    security: Security,
    peer_ips: FxHashMap<u32, std::net::IpAddr>,
    config: SessionConfig,
}

/// One session, its pipe, its client and the clock.
pub struct Sim {
    world: World,
    pub session: Session,
    pub pipe: Pipe,
    /// Bytes the client sent that the server has not read (TCP holds them
    /// while the session does not want to read).
    inbound: VecDeque<u8>,
    /// The client sent FIN.
    client_fin: bool,
    /// The server saw the client's FIN.
    eof_seen: bool,
    /// Everything the client read, in order.
    pub received: Vec<u8>,
    /// The server dropped the connection (closed the socket).
    pub closed: bool,
    pub now: Now,
}

/// Timing used by the simulations, in ticks (one tick is 50 ms).
pub fn config() -> SessionConfig {
    SessionConfig {
        tick_ms: 50,
        handshake_ticks: 100,
        ping_ticks: 400,
        answer_ticks: 200,
        close_ticks: 100,
        jwt_grace_secs: 0,
        max_outbound_bytes: 64 * 1024,
        slow_consumer_bytes: 64 * 1024 + 70 * 1024,
        drain_deadline: None,
    }
}

impl Sim {
    /// A connection just accepted, with the client's receive window.
    pub fn accepted(config: SessionConfig, window: usize) -> Sim {
        let now = Now {
            tick: 1,
            unix: 1_700_000_000,
        };
        let world = World {
            out: Vec::new(),
            pool: PartialPool::default(),
            deflater: Deflater::default(),
            limits: ReceiverLimits {
                max_frame_bytes: 16 << 20,
                max_message_bytes: 16 << 20,
                max_fragments: 1024,
            },
            handshake: HandshakeConfig::default(),
            stats: WorkerStats::default(),
            hub: Arc::new(Hub::new(Vec::new(), None, TopicBudget::unlimited())),
            topics: LocalTopics::default(),
            pending: Slab::new(),
            broadcasts: Vec::new(),
            admission: NoLimits,
            security: Security {
                auth: None,
                origins: OriginPolicy::new(&[], true),
                handshake_rate: None,
            },
            peer_ips: FxHashMap::default(),
            config,
        };
        Sim {
            session: Session::new(0, now, &world.config),
            world,
            pipe: Pipe {
                buffered: VecDeque::new(),
                window,
                write_shut: false,
                partial_writes: 0,
            },
            inbound: VecDeque::new(),
            client_fin: false,
            eof_seen: false,
            received: Vec::new(),
            closed: false,
            now,
        }
    }

    /// An upgraded echo connection; the client has read the 101.
    pub fn open(config: SessionConfig, window: usize) -> Sim {
        let mut sim = Sim::accepted(config, window);
        sim.upgrade();
        sim
    }

    /// The client sends its upgrade request and reads the 101.
    pub fn upgrade(&mut self) {
        let sim = self;
        sim.send_raw(
            b"GET /ws HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        );
        sim.read_all();
        assert!(
            sim.received.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&sim.received)
        );
        sim.received.clear();
        assert!(sim.session.is_open());
    }

    pub fn stats(&self) -> &WorkerStats {
        &self.world.stats
    }

    /// The client sends raw bytes; the server reads what it wants to.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        assert!(!self.client_fin, "sending after FIN");
        self.inbound.extend(bytes);
        self.serve_reads();
    }

    /// The client sends one masked frame.
    pub fn send(&mut self, op: OpCode, payload: &[u8]) {
        let mut f = Vec::new();
        write_client_frame(&mut f, true, op, [0x37, 0xfa, 0x21, 0x3d], payload);
        self.send_raw(&f);
    }

    /// The client sends a close frame with `code`.
    pub fn send_close(&mut self, code: u16) {
        self.send(OpCode::Close, &code.to_be_bytes());
    }

    /// The client shuts down its write side (FIN).
    pub fn send_fin(&mut self) {
        self.client_fin = true;
        self.serve_reads();
    }

    /// What the worker does on a readable edge: read while the session
    /// wants to, handing each read to it; then write its replies.
    fn serve_reads(&mut self) {
        if self.closed {
            return;
        }
        while self.session.wants_read() {
            if self.inbound.is_empty() {
                if self.client_fin && !self.eof_seen {
                    self.eof_seen = true;
                    self.session.on_eof(self.now, &self.world.config);
                }
                break;
            }
            let n = self.inbound.len().min(READ_BYTES);
            let mut chunk: Vec<u8> = self.inbound.drain(..n).collect();
            let w = &mut self.world;
            let mut cx = Ctx {
                out: &mut w.out,
                pool: &mut w.pool,
                deflater: &mut w.deflater,
                deflate_min_size: 0,
                limits: &w.limits,
                handshake: &w.handshake,
                stats: &w.stats,
                app: AppKind::Echo,
                pubsub: PubSubCx {
                    worker: 0,
                    hub: &w.hub,
                    topics: &mut w.topics,
                    pending: &mut w.pending,
                    broadcasts: &mut w.broadcasts,
                    limits: PubSubLimits {
                        max_topic_bytes: 256,
                        max_subscriptions: 16,
                        client_broadcast: ClientBroadcast::Off,
                        broadcasts_per_tick: 0.0,
                        broadcast_burst: 0.0,
                        refresh_ticks: 1,
                    },
                    security: &w.security,
                    stats: &w.stats,
                    now_tick: self.now.tick,
                },
                config: &w.config,
                admission: &w.admission,
                peer_ips: &mut w.peer_ips,
                rate: None,
                security: &w.security,
                debug_panic: false,
            };
            self.session.on_bytes(0, &mut chunk, self.now, &mut cx);
            if !self.flush() {
                return;
            }
        }
        self.flush();
    }

    /// Writes what the session produced and queued, and acts on the
    /// outcome as the worker does. False once the connection is dropped.
    fn flush(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let w = &mut self.world;
        match self
            .session
            .write_to(&mut w.out, &mut self.pipe, &w.config, &w.stats)
        {
            Ok(AfterWrite::Keep) => true,
            Ok(AfterWrite::ResumeReading) => {
                self.serve_reads();
                !self.closed
            }
            Ok(AfterWrite::Close) | Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// The client reads up to `max` bytes; the server then gets a writable
    /// edge if it has output queued.
    pub fn read(&mut self, max: usize) -> usize {
        let n = self.pipe.buffered.len().min(max);
        self.received.extend(self.pipe.buffered.drain(..n));
        if n > 0 && !self.closed && self.session.wants_write() {
            self.flush();
        }
        n
    }

    /// The client reads until nothing more arrives.
    pub fn read_all(&mut self) {
        while self.read(usize::MAX) > 0 {}
    }

    /// The client has read everything and the server sent FIN or closed.
    pub fn client_sees_eof(&self) -> bool {
        self.pipe.buffered.is_empty() && (self.pipe.write_shut || self.closed)
    }

    /// A fan-out delivery of `frames` (server frames, shared).
    pub fn deliver(&mut self, frames: &[Arc<[u8]>]) -> Delivered {
        let w = &mut self.world;
        let d = self.session.deliver(
            frames.iter(),
            &mut self.pipe,
            &mut w.out,
            self.now,
            &w.config,
            &w.stats,
        );
        if d == Delivered::Gone {
            self.closed = true;
        }
        d
    }

    /// The server closes on its own (as the drain does): 1001 and a reason.
    pub fn goodbye(&mut self, reason: &str) {
        let w = &mut self.world;
        self.session.start_close(
            crate::protocol::CloseCode::GOING_AWAY,
            reason,
            &mut w.out,
            self.now,
            &w.config,
        );
        self.flush();
    }

    /// The server starts draining: every close must be done within `ticks`.
    pub fn begin_drain(&mut self, ticks: u32) {
        self.world.config.drain_deadline = Some(self.now.tick + ticks);
        self.session.on_drain(self.now, &self.world.config);
    }

    /// Moves the clock `ticks` ahead, one tick at a time, running deadlines
    /// as the worker's wheel would.
    pub fn advance(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.now.tick += 1;
            if self.now.tick % 20 == 0 {
                self.now.unix += 1;
            }
            if self.closed {
                continue;
            }
            if self
                .session
                .poll_timeout()
                .is_some_and(|d| d <= self.now.tick)
            {
                let w = &mut self.world;
                let t = self
                    .session
                    .handle_timeout(self.now, &mut w.out, &w.config, &w.stats);
                match t {
                    Timeout::Close => self.closed = true,
                    Timeout::Keep => {
                        self.flush();
                    }
                }
            }
        }
    }

    /// Every frame the client read, decoded; panics on a torn stream.
    pub fn frames(&self) -> Vec<Frame> {
        decode(&self.received).unwrap_or_else(|e| panic!("client saw a broken stream: {e}"))
    }
}

/// The client's decoder: whole server frames, or why the stream is broken.
pub fn decode(mut wire: &[u8]) -> Result<Vec<Frame>, String> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let (h, n) = FrameHeader::decode(wire, Role::Client, 0)
            .map_err(|e| format!("bad header after {} frames: {e}", out.len()))?
            .ok_or_else(|| format!("stream ends inside a header after {} frames", out.len()))?;
        let end = n + h.payload_len as usize;
        if wire.len() < end {
            return Err(format!(
                "stream ends inside frame {} ({} of {end} bytes)",
                out.len(),
                wire.len()
            ));
        }
        out.push(Frame {
            op: h.opcode,
            payload: wire[n..end].to_vec(),
        });
        wire = &wire[end..];
    }
    Ok(out)
}

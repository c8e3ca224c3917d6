//! One connection's WebSocket state machine, without IO.
//!
//! Owns everything a connection decides: the upgrade, turning frames into
//! app messages, the close handshake, heartbeat / idle / token deadlines,
//! backpressure, its write queue and the slow-consumer cut. It is driven the
//! way rustls' and quinn-proto's connections are:
//!
//! - bytes in: [`Session::on_bytes`], and the end of input [`Session::on_eof`];
//! - time in: [`Session::poll_timeout`] says when to call
//!   [`Session::handle_timeout`];
//! - bytes out: [`Session::write_to`] writes what the session produced
//!   (into the caller's shared output buffer) and what it queued, through
//!   any [`Sink`]; [`Session::deliver`] writes fan-out frames;
//!   [`Session::wants_write`] / [`Session::wants_read`] /
//!   [`Session::reads_done`] / [`Session::is_done`] tell the caller what to
//!   wait for.
//!
//! A session never sees a socket, a poller or a clock: `now` ([`Now`]) is
//! passed in, so the simulated-network tests (`sim`) drive sessions with
//! virtual time over pipes that take partial writes, block and end.
//!
//! Memory: an idle open session is this struct alone. `head` exists only
//! while an upgrade request arrives in pieces, `wq` only while the peer is
//! backed up, and the receiver's reassembly buffer only mid-message.

mod close;
mod frames;
mod handshake;
mod heartbeat;
mod output;
pub mod write_queue;

#[cfg(test)]
mod sim;

use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::app::pubsub::{Allowances, PubSubCx};
use crate::app::topic_ids::TopicIds;
use crate::config::AppKind;
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::PartialPool;
use crate::protocol::{Receiver, ReceiverLimits};
use crate::pubsub::frame::SHARED_WINDOW_BITS;
use crate::security::{Grant, Security};
use crate::stats::WorkerStats;

pub use close::Phase;
pub use handshake::Admit;
pub use heartbeat::Timeout;
pub use output::{AfterWrite, Sink};
use write_queue::WriteQueue;

/// The time, as a session sees it: passed in by the caller, never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The caller's timer tick (see [`SessionConfig::tick_ms`]); every
    /// deadline a session keeps is a tick.
    pub tick: u32,
    /// Unix time in seconds, for token expiry (tokens carry `exp` in it).
    pub unix: u64,
}

/// Inbound message rate limit (token bucket), in tokens per timer tick.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_tick: f32,
    pub burst: f32,
}

/// Per-worker settings every session reads (deadlines in ticks, budgets).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Length of a tick in milliseconds.
    pub tick_ms: u64,
    /// Time to send the upgrade request (`--handshake-timeout`).
    pub handshake_ticks: u32,
    /// Silence before a ping (`--ping-interval`).
    pub ping_ticks: u32,
    /// How long a pinged connection has to send anything (the rest of
    /// `--idle-timeout`).
    pub answer_ticks: u32,
    /// Time for the peer to finish the close handshake (`--close-timeout`).
    pub close_ticks: u32,
    /// `--jwt-expiry-grace`, in seconds.
    pub jwt_grace_secs: u64,
    /// `--max-outbound-bytes`: reading pauses above it (backpressure).
    pub max_outbound_bytes: usize,
    /// Queued bytes past which a subscriber is cut as a slow consumer:
    /// `--max-outbound-bytes` plus the largest frame it may be in the
    /// middle of (with a cap smaller than one message, a reader keeping up
    /// would otherwise be cut for every large message).
    pub slow_consumer_bytes: usize,
    /// While the server drains: the tick every close must be done by.
    pub drain_deadline: Option<u32>,
}

/// Per-worker state a session borrows while it handles input.
pub struct Ctx<'a> {
    /// The worker's shared output buffer: replies go here, and
    /// [`Session::write_to`] writes them straight to the peer.
    pub out: &'a mut Vec<u8>,
    /// Receive scratch (reassembly buffers, the inflater).
    pub pool: &'a mut PartialPool,
    /// The worker's compressor for replies (permessage-deflate).
    pub deflater: &'a mut Deflater,
    /// Replies smaller than this go uncompressed.
    pub deflate_min_size: usize,
    pub limits: &'a ReceiverLimits,
    pub handshake: &'a HandshakeConfig,
    pub stats: &'a WorkerStats,
    pub app: AppKind,
    pub pubsub: PubSubCx<'a>,
    pub config: &'a SessionConfig,
    /// `--max-connections` and the handshake counts (the worker's
    /// [`Admit`] over its admission state).
    pub admission: &'a dyn Admit,
    /// Peer address of admitted connections, kept only for the per-IP limit.
    pub peer_ips: &'a mut FxHashMap<u32, IpAddr>,
    pub rate: Option<RateLimit>,
    pub security: &'a Security,
    /// Debug builds: [`crate::config::DEBUG_PANIC_MESSAGE`] panics (tests).
    pub debug_panic: bool,
}

/// One connection's protocol state.
pub struct Session {
    /// Distinguishes this connection from earlier users of the same slab slot.
    pub serial: u32,
    phase: Phase,
    /// Reading stops while more than the outbound cap is queued (backpressure).
    read_paused: bool,
    rx: Receiver,
    /// The upgrade request so far, when it did not arrive in one read
    /// (boxed: rare, and 8 bytes instead of 24 in every connection).
    #[allow(clippy::box_collection)]
    head: Option<Box<Vec<u8>>>,
    wq: Option<Box<WriteQueue>>,
    /// Local topic ids this connection subscribed to (pub/sub app).
    pub topics: TopicIds,
    /// The one deadline: handshake, heartbeat, idle, token or close by phase.
    deadline: u32,
    /// Tick of the last traffic in either direction (pings excluded).
    last_activity: u32,
    /// Tick a ping went unanswered since, or 0.
    ping_at: u32,
    /// Token bucket of the inbound message rate limit.
    tokens: f32,
    bucket_tick: u32,
    /// Counted against `--max-connections` ([`Admit::try_admit`]); released
    /// when the connection goes.
    pub admitted: bool,
    /// Counted as handshaking (from accept until the request head is
    /// answered, or the connection goes).
    pub handshaking: bool,
    /// What the connection's token grants (only with authentication on).
    pub auth: Option<Box<Grant>>,
    /// Its allowance of broadcasts and token refreshes (pub/sub app).
    allowances: Allowances,
}

impl Session {
    /// A session for a connection just accepted (and counted as
    /// handshaking): the upgrade request is due within the handshake
    /// timeout.
    pub fn new(serial: u32, now: Now, config: &SessionConfig) -> Session {
        Session {
            serial,
            phase: Phase::Handshake,
            read_paused: false,
            rx: Receiver::new(),
            head: None,
            wq: None,
            topics: TopicIds::default(),
            deadline: now.tick.saturating_add(config.handshake_ticks),
            last_activity: now.tick,
            ping_at: 0,
            tokens: f32::MAX,
            bucket_tick: 0,
            admitted: false,
            handshaking: true,
            auth: None,
            allowances: Allowances::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Upgraded and not closing: it takes messages and fan-out.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Handles bytes the peer sent (unmasked in place). Replies go into
    /// `cx.out`; the caller writes them with [`Session::write_to`].
    pub fn on_bytes(&mut self, key: usize, data: &mut [u8], now: Now, cx: &mut Ctx<'_>) {
        // Any traffic answers an outstanding ping.
        self.last_activity = now.tick;
        self.ping_at = 0;
        let before = self.phase;
        match self.phase {
            Phase::Handshake => self.on_handshake_bytes(key, data, now, cx),
            Phase::Open => self.on_frames(key, data, now, cx),
            Phase::Closing { .. } => self.watch_for_peer_close(data, cx),
        }
        self.after_input(before, now, cx.config);
    }

    /// Starts the deadline that a phase change calls for.
    fn after_input(&mut self, before: Phase, now: Now, config: &SessionConfig) {
        match (before, self.phase) {
            (Phase::Handshake, Phase::Open) => {
                // Stagger heartbeats: connections accepted in one burst must
                // not all be pinged on the same tick.
                let spread = (config.ping_ticks / 8).max(1);
                let jitter = self.serial.wrapping_mul(0x9E37_79B9) % spread;
                self.set_deadline(now.tick + config.ping_ticks + jitter, now, config);
            }
            (Phase::Handshake | Phase::Open, Phase::Closing { .. }) => {
                self.deadline = close::closing_deadline(now, config);
            }
            _ => {}
        }
    }

    /// When [`Session::handle_timeout`] is due (a tick), if ever.
    pub fn poll_timeout(&self) -> Option<u32> {
        Some(self.deadline)
    }

    /// Bytes queued for the peer beyond what it took.
    pub fn queued_bytes(&self) -> usize {
        self.wq.as_ref().map_or(0, |q| q.len_bytes())
    }

    /// Output is queued: write it when the peer can take more.
    pub fn wants_write(&self) -> bool {
        self.wq.is_some()
    }

    /// Whether to read the peer now: not while its replies are backed up
    /// (backpressure), nor once nothing it sends matters.
    pub fn wants_read(&self) -> bool {
        !self.read_paused && !self.reads_done()
    }

    /// Whether this connection takes the shared compressed variant of
    /// fan-out frames (permessage-deflate with the full window the shared
    /// variant uses).
    pub fn takes_shared_deflate(&self) -> bool {
        self.rx
            .deflate()
            .is_some_and(|a| a.server_max_window_bits >= SHARED_WINDOW_BITS)
    }

    /// Returns heap buffers to the worker's pool before the slot is freed.
    pub fn release(&mut self, pool: &mut PartialPool) {
        self.rx.release(pool);
        self.head = None;
        self.wq = None;
    }
}

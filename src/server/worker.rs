//! One worker: a thread with its own `mio::Poll`, its own SO_REUSEPORT
//! listener, and a slab of the connections it accepted.
//!
//! Owns all IO of its connections: accepting, reading into a per-worker
//! scratch buffer, writing (straight to the socket, queueing only what the
//! socket refuses), deadlines, and shutdown. Nothing here is shared with other
//! workers; other threads reach a worker only through its inbox and waker.
//! Protocol decisions are delegated to [`super::conn`] and [`crate::protocol`].

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver as Inbox;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::app::pubsub::{
    broadcast_result_frame, deliver_to_topic, leave_topic, LocalBroadcast, PendingResult, PubSubCx,
    PubSubLimits,
};
use crate::config::Config;
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::{PartialPool, ReassemblyBudget};
use crate::protocol::{CloseCode, ReceiverLimits};
use crate::pubsub::frame::SHARED_WINDOW_BITS;
use crate::pubsub::history::Seq;
use crate::pubsub::outbox::Outbox;
use crate::pubsub::topics::LocalTopics;
use crate::pubsub::{Delivery, Hub, Notify, WorkerMsg};

use super::admission::Admission;
use super::conn::{Conn, Ctx, OnEof, Phase, RateLimit, Transition};
use super::listener;
use super::no_sigpipe::NoSigPipe;
use super::panic_guard::guarded;
use super::write_queue::{write_or_queue, Chunk};
use crate::escape::Esc;
use crate::protocol::frame::write_server_frame;
use crate::protocol::handshake::error_response;
use crate::protocol::OpCode;
use crate::security::{unix_now, Security};
use crate::stats::WorkerStats;
use crate::timer_wheel::TimerWheel;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, SocketAddr};

pub(crate) const LISTENER: Token = Token(usize::MAX);
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// Per-read scratch size: one read takes at most this much from a socket.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads (of up to `SCRATCH_BYTES`) one connection gets per loop turn. A
/// client that sends without pause must not keep the worker in its read
/// loop: the fan-out its messages produce, the other connections and the
/// timers all wait for the turn to end (a publisher flooding one topic once
/// kept a worker from ever flushing its outbox, so every frame piled up).
const READ_BUDGET: usize = 16;
/// Output produced while reading is flushed once it reaches this size.
const FLUSH_AT: usize = 64 * 1024;
/// Connections accepted per loop iteration before serving the others.
const ACCEPT_BATCH: usize = 256;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Inbox messages handled per loop iteration before serving sockets again.
const INBOX_BATCH: usize = 4096;
/// Most slices in one vectored write of fan-out frames.
const MAX_IOV: usize = 64;
/// How often unfinished broadcast results are re-checked (covers a
/// completion notice lost to a full inbox).
const PENDING_CHECK: Duration = Duration::from_millis(50);

/// What all workers of a server share (read-only, or internally synchronised).
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub security: Arc<Security>,
    /// `--max-reassembly-bytes`, shared by every worker's pool.
    pub reassembly: Arc<ReassemblyBudget>,
}
/// Timer resolution. Every deadline (handshake, heartbeat, idle, close) is
/// rounded up to a tick; a worker with timers wakes at most this often.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// Wheel size: 2048 × 50 ms ≈ 102 s per rotation, beyond every default.
const WHEEL_SLOTS: usize = 2048;

/// A duration in whole ticks, rounded up, at least 1.
fn ticks(d: Duration) -> u32 {
    (d.as_nanos().div_ceil(TICK.as_nanos()) as u32).max(1)
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    next_serial: u32,
    scratch: Box<[u8]>,
    out: Vec<u8>,
    pool: PartialPool,
    /// Compressor for replies and fan-out (permessage-deflate), reset per
    /// message: connections own none.
    deflater: Deflater,
    limits: ReceiverLimits,
    handshake: HandshakeConfig,
    config: Arc<Config>,
    stats: Arc<WorkerStats>,
    inbox: Inbox<WorkerMsg>,
    hub: Arc<Hub>,
    topics: LocalTopics,
    outbox: Outbox,
    pending: Slab<PendingResult>,
    broadcasts: Vec<LocalBroadcast>,
    pubsub_limits: PubSubLimits,
    pending_check_at: Option<Instant>,
    /// The inbox had more than one batch: drain again without sleeping.
    inbox_more: bool,
    admission: Arc<Admission>,
    security: Arc<Security>,
    peer_ips: FxHashMap<u32, IpAddr>,
    rate: Option<RateLimit>,
    /// Tick 0 of the timer wheel.
    epoch: Instant,
    wheel: TimerWheel,
    expired: Vec<u32>,
    handshake_ticks: u32,
    close_ticks: u32,
    ping_ticks: u32,
    /// How long a pinged connection has to send anything.
    answer_ticks: u32,
    accept_pending: bool,
    accept_paused_until: Option<Instant>,
    last_backoff_log: Option<Instant>,
    /// The address all listeners of the port share (to rejoin the group).
    listen_addr: Option<SocketAddr>,
    /// Set while this worker is out of the port's SO_REUSEPORT group
    /// because the process ran out of descriptors.
    left_group: Option<LeftGroup>,
    draining_until: Option<Instant>,
    /// `--max-handshakes-per-sec` token bucket: (tokens, last refill).
    handshake_bucket: Option<(f64, Instant)>,
    /// Open connections still to close during a spread drain: (when, key,
    /// serial), in time order.
    drain_queue: std::collections::VecDeque<(Instant, usize, u32)>,
    /// Connections to read again next turn: their reading was un-paused
    /// (backpressure eased), or they used up their read budget.
    read_again: Vec<usize>,
    /// Rate-limited summary of per-connection trouble (see `report_trouble`).
    trouble: TroubleReport,
    /// The largest frame a delivery can be: a max-size payload wrapped in
    /// the `message` envelope with a max-size topic (see `flush_outbox`).
    largest_delivery: usize,
    /// When a caught panic was last logged, and how many since went unlogged.
    panic_log: Option<(Instant, u64)>,
    /// Debug builds with `Config::debug_panic_trigger`: see `Ctx::debug_panic`.
    debug_panic: bool,
}

/// At most one log line per worker per this interval for caught panics (a
/// client that can trigger one can trigger it in a loop).
const PANIC_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Per-connection errors are logged at debug level only; at warn level a
/// worker says at most once per interval how many there were.
struct TroubleReport {
    next: Instant,
    last: [u64; 5],
}

const TROUBLE_INTERVAL: Duration = Duration::from_secs(10);

/// A worker that ran out of descriptors closes its listener so the kernel
/// hands new connections to the other listeners on the port (other workers,
/// other processes) instead of leaving them in a backlog nobody can accept
/// from; with `net.ipv4.tcp_migrate_req = 1` the connections already queued
/// move too. It binds a fresh listener once it has room again.
struct LeftGroup {
    /// Open connections when it left; a drop below this means room.
    open_at_leave: usize,
    /// Descriptors may also free up elsewhere in the process: try anyway.
    retry_at: Instant,
}

/// How often a worker out of the group tries to rejoin regardless.
const REJOIN_RETRY: Duration = Duration::from_secs(1);

fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        listener: std::net::TcpListener,
        inbox: Inbox<WorkerMsg>,
        stats: Arc<WorkerStats>,
        shared: &Shared,
    ) -> io::Result<Worker> {
        let config = shared.config.clone();
        let hub = shared.hub.clone();
        let admission = shared.admission.clone();
        let security = shared.security.clone();
        let listen_addr = listener.local_addr().ok();
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let limits = ReceiverLimits {
            max_frame_bytes: config.message_limit(),
            max_message_bytes: config.message_limit(),
            max_fragments: config.max_fragments,
        };
        let handshake = HandshakeConfig {
            path: config.path.clone(),
            max_head_bytes: config.max_request_head,
            subprotocols: Vec::new(),
            permessage_deflate: config.permessage_deflate,
        };
        let rate = (config.max_messages_per_sec > 0).then(|| {
            let per_sec = config.max_messages_per_sec as f32;
            RateLimit {
                per_tick: per_sec * TICK.as_secs_f32(),
                burst: 2.0 * per_sec,
            }
        });
        let ping_ticks = ticks(config.ping_interval);
        let handshake_ticks = ticks(config.handshake_timeout);
        let close_ticks = ticks(config.close_timeout);
        let answer_ticks = ticks(config.idle_timeout.saturating_sub(config.ping_interval));
        let largest_delivery = largest_delivery(&config);
        let broadcasts_per_sec = config.max_broadcasts_per_sec as f32;
        let pubsub_limits = PubSubLimits {
            max_topic_bytes: config.max_topic_bytes,
            max_subscriptions: config.max_subscriptions,
            client_broadcast: config.client_broadcast,
            broadcasts_per_tick: broadcasts_per_sec * TICK.as_secs_f32(),
            broadcast_burst: 2.0 * broadcasts_per_sec,
            refresh_ticks: ticks(config.min_refresh_interval),
        };
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            next_serial: 0,
            scratch: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
            out: Vec::with_capacity(FLUSH_AT),
            pool: PartialPool::with_budget(shared.reassembly.clone()),
            deflater: Deflater::default(),
            limits,
            handshake,
            config,
            stats,
            inbox,
            hub,
            topics: LocalTopics::default(),
            outbox: Outbox::default(),
            pending: Slab::new(),
            broadcasts: Vec::new(),
            pubsub_limits,
            pending_check_at: None,
            inbox_more: false,
            admission,
            security,
            peer_ips: FxHashMap::default(),
            rate,
            epoch: Instant::now(),
            wheel: TimerWheel::new(WHEEL_SLOTS, 0),
            expired: Vec::new(),
            handshake_ticks,
            close_ticks,
            ping_ticks,
            answer_ticks,
            // Connections may have queued before the first poll.
            accept_pending: true,
            accept_paused_until: None,
            last_backoff_log: None,
            listen_addr,
            left_group: None,
            draining_until: None,
            drain_queue: Default::default(),
            handshake_bucket: (shared.config.max_handshakes_per_sec > 0).then(|| {
                (
                    2.0 * f64::from(shared.config.max_handshakes_per_sec),
                    Instant::now(),
                )
            }),
            read_again: Vec::new(),
            trouble: TroubleReport {
                next: Instant::now() + TROUBLE_INTERVAL,
                last: [0; 5],
            },
            largest_delivery,
            panic_log: None,
            debug_panic: cfg!(debug_assertions) && shared.config.debug_panic_trigger,
        })
    }

    /// Runs the event loop until shutdown has drained (returns true), or
    /// until polling fails (returns false: the worker is lost).
    pub(crate) fn run(mut self) -> bool {
        let mut drained = false;
        let mut events = Events::with_capacity(1024);
        loop {
            // Connections set aside last turn are read this turn, after that
            // turn's fan-out went out.
            let carried = std::mem::take(&mut self.read_again);
            let timeout = if carried.is_empty() {
                self.poll_timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => self.drain_inbox(),
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        if ev.is_writable() {
                            self.on_writable(key);
                        }
                        if readable {
                            self.on_readable(key, ev.is_read_closed() || ev.is_error());
                        }
                    }
                }
            }
            if self.inbox_more {
                self.drain_inbox();
            }
            for key in carried {
                // Anything may have arrived: read until WouldBlock (or the
                // budget again).
                self.on_readable(key, true);
            }
            if self.accept_pending {
                self.accept_batch();
            }
            let now = Instant::now();
            self.maybe_rejoin(now);
            self.check_pending(now);
            self.flush_outbox();
            if !self.drain_queue.is_empty() {
                // After the flush: what was batched for them goes out first.
                self.close_due(now);
            }
            self.outbox.end_turn();
            self.expire(now);
            self.stats.timers.set(self.wheel.len() as u64);
            // The codecs count for themselves; published once per turn.
            self.stats
                .deflate_compressions
                .set(self.deflater.compressions());
            self.stats.deflate_inflations.set(self.pool.inflations());
            if now >= self.trouble.next {
                self.report_trouble(now);
            }
            if let Some(until) = self.draining_until {
                if self.conns.is_empty() || now >= until {
                    drained = true;
                    break;
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_now(key);
        }
        tracing::debug!(worker = self.id, "worker stopped");
        drained
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.inbox_more
            || (self.accept_pending
                && self.accept_paused_until.is_none()
                && self.listener.is_some())
        {
            return Some(Duration::ZERO);
        }
        let mut next: Option<Instant> = None;
        // With timers pending, wake at the next tick boundary.
        let next_tick =
            (!self.wheel.is_empty()).then(|| self.epoch + TICK * (self.wheel.now() as u32 + 1));
        let candidates = [
            next_tick,
            self.accept_paused_until,
            self.left_group.as_ref().map(|l| l.retry_at),
            self.draining_until,
            self.drain_queue.front().map(|d| d.0),
            self.pending_check_at,
        ];
        for t in candidates.into_iter().flatten() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn accept_batch(&mut self) {
        let now = Instant::now();
        if let Some(until) = self.accept_paused_until {
            if now < until {
                return;
            }
            self.accept_paused_until = None;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else {
                self.accept_pending = false;
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_conn(stream, peer.ip(), now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if is_descriptor_exhaustion(&e) => {
                    self.leave_group(now, &e);
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "accept failed");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Out of descriptors: leave the port's SO_REUSEPORT group (see
    /// [`LeftGroup`]). Spinning on accept would burn a core, and pausing
    /// with the listener open would strand connections in its backlog.
    fn leave_group(&mut self, now: Instant, e: &io::Error) {
        self.stats.accept_backoffs.inc();
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accept_pending = false;
        self.left_group = Some(LeftGroup {
            open_at_leave: self.conns.len(),
            retry_at: now + REJOIN_RETRY,
        });
        if self
            .last_backoff_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            self.last_backoff_log = Some(now);
            tracing::warn!(
                worker = self.id,
                open = self.conns.len(),
                error = %e,
                "out of descriptors: this worker stops listening until it has room; \
                 new connections go to the other listeners on the port \
                 (raise LimitNOFILE / ulimit -n)"
            );
        }
    }

    /// Binds a fresh listener into the port's group once there is room.
    fn maybe_rejoin(&mut self, now: Instant) {
        let Some(left) = self.left_group.as_mut() else {
            return;
        };
        if self.draining_until.is_some() {
            self.left_group = None;
            return;
        }
        // Early only after a handful of our own closes (1%, at least one);
        // otherwise once per REJOIN_RETRY, so a worker whose process is full
        // for other reasons cannot flap on every loop turn.
        let closed_enough = self.conns.len() + left.open_at_leave / 100 < left.open_at_leave;
        if now < left.retry_at && !closed_enough {
            return;
        }
        left.retry_at = now + REJOIN_RETRY;
        let Some(addr) = self.listen_addr else {
            return;
        };
        let mut listener = match listener::bind_reuseport(addr) {
            Ok(l) => TcpListener::from_std(l),
            Err(e) => {
                tracing::debug!(worker = self.id, error = %e, "rejoin failed; still full");
                return;
            }
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
        {
            tracing::debug!(worker = self.id, error = %e, "rejoin failed");
            return;
        }
        tracing::info!(worker = self.id, open = self.conns.len(), "listening again");
        self.listener = Some(listener);
        self.left_group = None;
        self.accept_pending = true;
    }

    fn add_conn(&mut self, mut stream: TcpStream, ip: IpAddr, now: Instant) {
        self.stats.accepted.inc();
        if !self.handshake_allowed(now) {
            // A reconnect storm: more upgrades than this worker is set to
            // serve. A fast 503 now, with a jittered Retry-After so the
            // retries do not come back as one wave, costs the worker less
            // than letting them queue and time out, and keeps the
            // established connections' latency.
            self.stats.handshakes_shed.inc();
            let _ = (&stream).read(&mut self.scratch);
            let retry = fastrand::u32(1..=5).to_string();
            let resp = error_response(
                503,
                "Service Unavailable",
                "too many connection attempts; retry later",
                &[("Retry-After", &retry)],
            );
            let _ = (&stream).write(&resp);
            return;
        }
        if let Err(why) = self.admission.try_accept(ip) {
            // Refused before it costs a slot, a timer or a buffer: one
            // address's unfinished handshakes must not hold the descriptors
            // every other client needs. Read what already arrived (closing
            // with unread bytes would reset the connection before the
            // answer is read), answer 503, close.
            self.stats.handshake_failures.inc();
            self.stats.rejected_unavailable.inc();
            let _ = (&stream).read(&mut self.scratch);
            let resp = error_response(
                503,
                "Service Unavailable",
                why.reason(),
                &[("Retry-After", "1")],
            );
            let _ = (&stream).write(&resp);
            return;
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY failed");
        }
        let deadline = self.tick(now) as u64 + self.handshake_ticks as u64;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // Edge-triggered, both directions, registered once: no epoll_ctl per
        // write; a WRITABLE edge only arrives after the socket was full.
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "register failed");
            self.admission.end_handshake(ip);
            self.admission.closed(ip);
            return;
        }
        // A peer that stops acknowledging what we send is dead: let the
        // kernel give up on it after the idle timeout instead of ~15 min of
        // retransmissions (covers receive-only clients, which are not pinged).
        if let Err(e) =
            socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(self.config.idle_timeout))
        {
            tracing::debug!(error = %e, "TCP_USER_TIMEOUT failed");
        }
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Conn::new(stream, serial);
        conn.handshaking = true;
        conn.timer = Some(self.wheel.schedule(deadline, key as u32));
        entry.insert(conn);
        // Kept while it handshakes (to uncount it), for good with the
        // per-IP connection limit on.
        self.peer_ips.insert(key as u32, ip);
        self.stats.open.inc();
    }

    /// Takes one upgrade from the worker's `--max-handshakes-per-sec`
    /// bucket (bursts of twice the rate); true when there is no limit.
    fn handshake_allowed(&mut self, now: Instant) -> bool {
        let Some((tokens, last)) = self.handshake_bucket.as_mut() else {
            return true;
        };
        let rate = f64::from(self.config.max_handshakes_per_sec);
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(2.0 * rate);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Logs one warning summarising connections closed for misbehaving since
    /// the last report, instead of one line per connection.
    fn report_trouble(&mut self, now: Instant) {
        let s = &self.stats;
        let counts = [
            s.protocol_errors.get(),
            s.handshake_failures.get(),
            s.handshake_timeouts.get(),
            s.rate_limited.get(),
            s.slow_consumers.get(),
        ];
        let mut d = [0u64; 5];
        for (i, c) in counts.iter().enumerate() {
            d[i] = c.wrapping_sub(self.trouble.last[i]);
        }
        if d.iter().any(|x| *x > 0) {
            tracing::warn!(
                worker = self.id,
                protocol_errors = d[0],
                refused_upgrades = d[1],
                handshake_timeouts = d[2],
                rate_limited = d[3],
                slow_consumers = d[4],
                "connections closed for misbehaving in the last {}s",
                TROUBLE_INTERVAL.as_secs()
            );
        }
        self.trouble = TroubleReport {
            next: now + TROUBLE_INTERVAL,
            last: counts,
        };
    }

    /// The timer tick `t` falls in.
    fn tick(&self, t: Instant) -> u32 {
        (t.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos()) as u32
    }

    /// Sets connection `key`'s one timer to fire at `deadline`, or earlier
    /// when its token expires first.
    fn set_timer(&mut self, key: usize, deadline: u32) {
        let expiry = self.token_deadline(key);
        if let Some(conn) = self.conns.get_mut(key) {
            let deadline = match (conn.phase, expiry) {
                (Phase::Open, Some(e)) => deadline.min(e),
                _ => deadline,
            };
            let id = match conn.timer.take() {
                Some(id) => self.wheel.reschedule(id, deadline as u64, key as u32),
                None => self.wheel.schedule(deadline as u64, key as u32),
            };
            conn.timer = Some(id);
        }
    }

    /// The tick at which connection `key`'s token (plus grace) runs out.
    fn token_deadline(&self, key: usize) -> Option<u32> {
        let grant = self.conns.get(key)?.auth.as_ref()?;
        let ends = grant.ends_at(self.config.jwt_expiry_grace.as_secs());
        let left = ends.saturating_sub(unix_now());
        let left_ticks =
            (left.saturating_mul(1000) / TICK.as_millis() as u64).min(u32::MAX as u64 / 2);
        Some(
            self.tick(Instant::now())
                .saturating_add(left_ticks as u32)
                .saturating_add(1),
        )
    }

    /// The deadline for a connection that just started closing.
    fn closing_deadline(&self, now: u32) -> u32 {
        match self.draining_until {
            Some(until) => self.tick(until) + 1,
            None => now + self.close_ticks,
        }
    }

    /// Reads until the socket is drained (or reading is paused), handling
    /// each chunk as it arrives, then flushes the replies.
    fn on_readable(&mut self, key: usize, read_closed: bool) {
        let now_tick = self.tick(Instant::now());
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.read_paused || conn.reads_done() {
                break;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    self.stats.bytes_in.add(n as u64);
                    // Any traffic answers an outstanding ping.
                    conn.last_activity = now_tick;
                    conn.ping_at = 0;
                    let mut cx = Ctx {
                        out: &mut self.out,
                        pool: &mut self.pool,
                        deflater: &mut self.deflater,
                        deflate_min_size: self.config.deflate_min_size,
                        limits: &self.limits,
                        handshake: &self.handshake,
                        stats: &self.stats,
                        app: self.config.app,
                        pubsub: PubSubCx {
                            worker: self.id,
                            hub: &self.hub,
                            topics: &mut self.topics,
                            pending: &mut self.pending,
                            broadcasts: &mut self.broadcasts,
                            limits: self.pubsub_limits,
                            security: &self.security,
                            stats: &self.stats,
                            now_tick,
                        },
                        now_tick,
                        admission: &self.admission,
                        peer_ips: &mut self.peer_ips,
                        rate: self.rate,
                        security: &self.security,
                        debug_panic: self.debug_panic,
                    };
                    let phase = conn.phase;
                    let data = &mut self.scratch[..n];
                    let handled = guarded(|| conn.on_bytes(key, data, &mut cx));
                    let transition = match handled {
                        Ok(t) => t,
                        Err(message) => {
                            self.on_panic(key, phase, &message);
                            return;
                        }
                    };
                    match transition {
                        Transition::Keep => {}
                        Transition::Upgraded => {
                            // Stagger heartbeats: connections accepted in one
                            // burst must not all be pinged on the same tick.
                            let spread = (self.ping_ticks / 8).max(1);
                            let jitter = conn.serial.wrapping_mul(0x9E37_79B9) % spread;
                            self.set_timer(key, now_tick + self.ping_ticks + jitter);
                        }
                        Transition::StartedClosing => {
                            let at = self.closing_deadline(now_tick);
                            self.set_timer(key, at);
                        }
                    }
                    if !self.broadcasts.is_empty() {
                        self.deliver_local_broadcasts(key);
                    }
                    if self.out.len() >= FLUSH_AT && !self.flush(key) {
                        return;
                    }
                    // A short read drained the socket. Under edge triggering
                    // new data raises a new edge, so stop here and save the
                    // read() that would return WouldBlock, unless the peer
                    // also closed (that edge is already spent).
                    if n < self.scratch.len() && !read_closed {
                        break;
                    }
                    reads += 1;
                    if reads >= READ_BUDGET {
                        self.read_again.push(key);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.on_eof(key);
                    return;
                }
            }
        }
        self.flush(key);
    }

    fn on_writable(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.wq.is_some()) {
            self.flush(key);
        }
    }

    /// The peer closed its side (or reading failed).
    fn on_eof(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.phase == Phase::Open) {
            self.stats.abrupt_closes.inc();
        }
        // The peer's FIN can arrive in the same read as its last request
        // (a close frame, a handshake, a message): the replies produced
        // from those bytes are still owed, and a half-closed peer may still
        // be reading. What the socket does not take now is drained (see
        // `Phase::after_peer_eof`).
        if !self.flush(key) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.phase.after_peer_eof(conn.wq.is_some()) {
            OnEof::Close => self.close_now(key),
            OnEof::Drain { phase, start_timer } => {
                conn.phase = phase;
                if start_timer {
                    let at = self.closing_deadline(self.tick(Instant::now()));
                    self.set_timer(key, at);
                }
            }
        }
    }

    /// Writes pending output (the shared `out` buffer, then/or the queue).
    /// Returns false if the connection was closed.
    fn flush(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            self.out.clear();
            return false;
        };
        let queued_before = conn.queued_bytes();
        let result = write_out(conn, &self.out);
        self.out.clear();
        track_queued(&self.stats, queued_before, conn.queued_bytes());
        match result {
            Ok(n) => self.stats.bytes_out.add(n as u64),
            Err(_) => {
                self.close_now(key);
                return false;
            }
        }
        if conn.close_complete() {
            // Both close frames are exchanged and ours is out: the server
            // closes the TCP connection first (RFC 6455 §7.1.1).
            self.close_now(key);
            return false;
        }
        if let Phase::Closing {
            write_shut: false,
            peer_closed,
        } = conn.phase
        {
            if conn.wq.is_none() {
                // Everything including our close frame is out: send FIN and
                // wait for the peer's close frame or FIN.
                if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close_now(key);
                    return false;
                }
                conn.phase = Phase::Closing {
                    write_shut: true,
                    peer_closed,
                };
            }
        }
        // Backpressure: a client that sends faster than it reads is not read
        // from while its replies exceed the cap; TCP pushes back on it.
        // Reading resumes at half the cap (no flapping on every write); a FIN
        // found then while replies are still queued drains them (`on_eof`).
        let queued = conn.queued_bytes();
        let cap = self.config.max_outbound_bytes;
        if queued > cap {
            conn.read_paused = true;
        } else if conn.read_paused && queued <= cap / 2 {
            conn.read_paused = false;
            self.read_again.push(key);
        }
        true
    }

    fn close_now(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            if let Some(id) = conn.timer.take() {
                self.wheel.cancel(id);
            }
            self.stats.queued_bytes.sub(conn.queued_bytes() as u64);
            let ip = self.peer_ips.remove(&(key as u32));
            if conn.admitted {
                self.admission.release();
            }
            if let Some(ip) = ip {
                if conn.handshaking {
                    self.admission.end_handshake(ip);
                }
                self.admission.closed(ip);
            }
            let user = conn.auth.as_ref().and_then(|g| g.user.as_deref());
            for id in conn.topics.drain(..) {
                if let Some(t) = self.topics.get(id) {
                    self.hub.presence.leave(&t.name, user);
                }
                leave_topic(&mut self.topics, &self.hub, self.id, id, key as u32);
            }
            conn.release(&mut self.pool);
            // Dropping the stream closes the descriptor, which also removes
            // it from the epoll set.
            self.stats.open.sub(1);
            self.stats.closed.inc();
        }
    }

    /// A panic was caught in connection `key`'s processing (it was in
    /// `phase` when that started). Only that connection pays: an upgraded
    /// one is closed with 1011 (RFC 6455 §7.4.1, "unexpected condition"), a
    /// handshaking or closing one is dropped. Counted, and logged at most
    /// once per interval per worker.
    fn on_panic(&mut self, key: usize, phase: Phase, message: &str) {
        self.stats.panics.inc();
        // Whatever the interrupted call wrote may be half a frame.
        self.out.clear();
        let now = Instant::now();
        match self.panic_log {
            Some((at, ref mut unlogged)) if now.duration_since(at) < PANIC_LOG_INTERVAL => {
                *unlogged += 1;
            }
            last => {
                let unlogged = last.map_or(0, |(_, n)| n);
                tracing::error!(
                    worker = self.id,
                    panic = %Esc::str(message),
                    unlogged_since_last = unlogged,
                    "a bug was hit while handling one connection: that connection was closed \
                     and the worker carries on (wsgate_panics counts them all)"
                );
                self.panic_log = Some((now, 0));
            }
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if phase == Phase::Open && conn.phase == Phase::Open {
            conn.start_close(
                CloseCode::INTERNAL_ERROR,
                "internal error",
                &mut self.out,
                false,
            );
            // Reading goes on only to see the peer's close frame; should its
            // receiver panic again, that is caught and the socket dropped.
            let at = self.closing_deadline(self.tick(now));
            self.set_timer(key, at);
            self.flush(key);
        } else {
            self.close_now(key);
        }
    }

    /// Runs the timers that are due.
    fn expire(&mut self, now: Instant) {
        let now_tick = self.tick(now);
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(now_tick as u64, &mut expired);
        for key in expired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            match conn.phase {
                Phase::Handshake => {
                    self.stats.handshake_timeouts.inc();
                    self.close_now(key);
                }
                Phase::Closing { .. } => self.close_now(key),
                Phase::Open => {
                    if let Err(message) = guarded(|| self.heartbeat(key, now_tick)) {
                        self.on_panic(key, Phase::Open, &message);
                    }
                }
            }
        }
        self.expired = expired;
    }

    /// The heartbeat timer of an open connection fired: ping it if it has
    /// been silent, close it if a ping went unanswered, else wait.
    fn heartbeat(&mut self, key: usize, now: u32) {
        let grace = self.config.jwt_expiry_grace.as_secs();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn
            .auth
            .as_ref()
            .is_some_and(|g| unix_now() >= g.ends_at(grace))
        {
            // The token ran out and no fresh one came ({"type":"refresh"}).
            self.stats.token_expiries.inc();
            conn.start_close(
                CloseCode::POLICY_VIOLATION,
                "token expired",
                &mut self.out,
                false,
            );
            let at = self.closing_deadline(now);
            self.set_timer(key, at);
            self.flush(key);
            return;
        }
        if conn.ping_at != 0 {
            let give_up = conn.ping_at.wrapping_add(self.answer_ticks);
            if now >= give_up {
                // Nothing arrived for the idle timeout. A close frame (1001)
                // tells a live-but-stuck client why; a dead one is dropped
                // by the close timeout.
                self.stats.idle_timeouts.inc();
                conn.start_close(CloseCode::GOING_AWAY, "idle timeout", &mut self.out, false);
                let at = self.closing_deadline(now);
                self.set_timer(key, at);
                self.flush(key);
            } else {
                self.set_timer(key, give_up);
            }
            return;
        }
        let due = conn.last_activity.wrapping_add(self.ping_ticks);
        if now >= due {
            write_server_frame(&mut self.out, OpCode::Ping, b"");
            conn.ping_at = now.max(1);
            self.stats.pings_sent.inc();
            self.set_timer(key, now + self.answer_ticks);
            self.flush(key);
        } else {
            self.set_timer(key, due);
        }
    }

    fn drain_inbox(&mut self) {
        // Clear the wake flag first: anything sent after this point either
        // is seen below or wakes us again.
        self.hub.clear_wake(self.id);
        self.inbox_more = false;
        for _ in 0..INBOX_BATCH {
            let Ok(msg) = self.inbox.try_recv() else {
                return;
            };
            match msg {
                WorkerMsg::DeliverAt(d, seq) => {
                    self.deliver_from_inbox(*d, Some(seq));
                    if self.outbox.is_heavy() {
                        self.flush_outbox_early();
                    }
                }
                WorkerMsg::Deliver(d) => {
                    self.deliver_from_inbox(d, None);
                    if self.outbox.is_heavy() {
                        self.flush_outbox_early();
                    }
                }
                WorkerMsg::TicketDone { pending } => self.complete_pending(pending),
                WorkerMsg::Resumed(r) => {
                    let open = self
                        .conns
                        .get(r.conn as usize)
                        .is_some_and(|c| c.serial == r.serial && c.phase == Phase::Open);
                    if open {
                        crate::app::pubsub::finish_resume(&mut self.topics, &mut self.outbox, *r);
                    }
                }
                WorkerMsg::Reply {
                    conn,
                    serial,
                    frame,
                } => {
                    // The connection may have closed, and its slot been
                    // reused, while the answer was made.
                    let open = self
                        .conns
                        .get(conn as usize)
                        .is_some_and(|c| c.serial == serial && c.phase == Phase::Open);
                    if open {
                        let f = self.outbox.add_frame(frame);
                        self.outbox.push(conn as usize, f);
                    }
                }
                WorkerMsg::Shutdown => self.begin_shutdown(),
                WorkerMsg::Probe => self.stats.watchdog.inc(),
                #[cfg(debug_assertions)]
                WorkerMsg::DebugPanic => panic!("debug: worker {} dies", self.id),
            }
        }
        // Batch used up: come back after serving sockets.
        self.inbox_more = true;
    }

    /// A publish or broadcast from another thread, for our connections.
    fn deliver_from_inbox(&mut self, d: Delivery, seq: Option<Seq>) {
        let count = match &d.topic {
            Some(topic) => match self.topics.id_of(topic) {
                Some(id) => deliver_to_topic(&mut self.topics, &mut self.outbox, id, d.frame, seq),
                None => 0,
            },
            None => {
                let f = self.outbox.add_frame(d.frame);
                self.deliver_to_all(f)
            }
        };
        if let Some(t) = d.ticket {
            if self.hub.part_done(&t, count, Some(self.id)) {
                if let Notify::Worker { pending, .. } = t.notify {
                    self.complete_pending(pending);
                }
            }
        }
    }

    /// Queues outbox frame `f` for every open connection; returns how many.
    fn deliver_to_all(&mut self, f: u32) -> u64 {
        let mut n = 0;
        for (key, conn) in self.conns.iter() {
            if conn.phase == Phase::Open {
                self.outbox.push(key, f);
                n += 1;
            }
        }
        n
    }

    /// The local part of publishes and broadcasts that connection `from`
    /// just sent. The batch is written out whenever it gets heavy, so one
    /// read full of tiny broadcasts costs a bounded arena, not one link per
    /// message per connection.
    fn deliver_local_broadcasts(&mut self, from: usize) {
        let mut list = std::mem::take(&mut self.broadcasts);
        for b in list.drain(..) {
            if self.outbox.is_heavy() {
                // `out` holds `from`'s replies: they go to `from` before
                // the batch (whose slow consumers get close frames via `out`).
                self.flush(from);
                self.flush_outbox_early();
            }
            if let Some(conn) = b.only {
                // A resume's replay, for its connection alone.
                if self
                    .conns
                    .get(conn as usize)
                    .is_some_and(|c| c.phase == Phase::Open)
                {
                    let f = self.outbox.add_frame(b.frame);
                    self.outbox.push(conn as usize, f);
                }
                continue;
            }
            let count = match &b.topic {
                Some(name) => match self.topics.id_of(name) {
                    Some(id) => {
                        deliver_to_topic(&mut self.topics, &mut self.outbox, id, b.frame, None)
                    }
                    None => 0,
                },
                None => {
                    let f = self.outbox.add_frame(b.frame);
                    self.deliver_to_all(f)
                }
            };
            if let Some(t) = b.ticket {
                if self.hub.part_done(&t, count, Some(self.id)) {
                    if let Notify::Worker { pending, .. } = t.notify {
                        self.complete_pending(pending);
                    }
                } else if self.pending_check_at.is_none() {
                    self.pending_check_at = Some(Instant::now() + PENDING_CHECK);
                }
            }
        }
        self.broadcasts = list;
    }

    /// Sends `broadcastResult` for a finished broadcast to its sender.
    fn complete_pending(&mut self, id: usize) {
        if !self.pending.get(id).is_some_and(|p| p.ticket.is_done()) {
            return;
        }
        let p = self.pending.remove(id);
        let alive = self
            .conns
            .get(p.conn as usize)
            .is_some_and(|c| c.serial == p.serial && c.phase == Phase::Open);
        if alive {
            let f = self.outbox.add_frame(broadcast_result_frame(&p));
            self.outbox.push(p.conn as usize, f);
        }
    }

    fn check_pending(&mut self, now: Instant) {
        let Some(at) = self.pending_check_at else {
            return;
        };
        if now < at {
            return;
        }
        let done: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.ticket.is_done())
            .map(|(k, _)| k)
            .collect();
        for id in done {
            self.complete_pending(id);
        }
        self.pending_check_at = (!self.pending.is_empty()).then(|| now + PENDING_CHECK);
    }

    /// Writes the batch within the turn because it grew past its bound.
    fn flush_outbox_early(&mut self) {
        self.stats.outbox_early_flushes.inc();
        self.flush_outbox();
    }

    /// Writes this iteration's fan-out: one vectored write per connection
    /// carrying every frame queued for it.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        // A subscriber is slow when more than the cap is queued *besides*
        // the largest frame it may be in the middle of: with a cap smaller
        // than one message, a reader keeping up would otherwise be cut for
        // every large message.
        let cap = self
            .config
            .max_outbound_bytes
            .saturating_add(self.largest_delivery);
        let now_tick = self.tick(Instant::now());
        let mut slow = Vec::new();
        let mut failed = Vec::new();
        for &key in self.outbox.dirty() {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.phase != Phase::Open {
                continue;
            }
            let deflate = wants_shared_deflate(conn);
            if deflate {
                // Compress once per publish: the first deflate subscriber
                // anywhere builds the shared compressed frame.
                let min = self.config.deflate_min_size;
                for f in self.outbox.frames_for(key) {
                    f.prepare_deflated(&mut self.deflater, min);
                }
            }
            let frames = self
                .outbox
                .frames_for(key)
                .map(move |f| f.for_peer(deflate));
            let count = frames.clone().count() as u64;
            self.stats.messages_out.add(count);
            self.stats.deliveries.add(count);
            let queued_before = conn.queued_bytes();
            conn.last_activity = now_tick;
            match write_frames(conn, frames) {
                Ok(n) => self.stats.bytes_out.add(n as u64),
                Err(_) => {
                    failed.push(key);
                    continue;
                }
            }
            track_queued(&self.stats, queued_before, conn.queued_bytes());
            if conn.queued_bytes() > cap {
                slow.push(key);
            }
        }
        self.outbox.clear();
        for key in failed {
            self.close_now(key);
        }
        for key in slow {
            self.disconnect_slow_consumer(key);
        }
    }

    /// A subscriber that stopped reading: its queue is freed at once and it
    /// is closed with 1008, so it cannot grow the server's memory.
    fn disconnect_slow_consumer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        self.stats.slow_consumers.inc();
        tracing::debug!(
            worker = self.id,
            key,
            queued = conn.queued_bytes(),
            "slow consumer"
        );
        // Free the queue at once, except the rest of the frame already half
        // sent, direct reply or fan-out (cutting it would put the close frame
        // inside its payload). What stays is at most one frame.
        if let Some(wq) = conn.wq.as_mut() {
            let dropped = wq.drop_unstarted();
            self.stats.queued_bytes.sub(dropped as u64);
            if wq.is_empty() {
                conn.wq = None;
            }
        }
        conn.start_close(
            CloseCode::POLICY_VIOLATION,
            "slow consumer",
            &mut self.out,
            false,
        );
        let at = self.closing_deadline(self.tick(Instant::now()));
        self.set_timer(key, at);
        self.flush(key);
    }

    /// Stops accepting and says goodbye (1001) to every connection, all at
    /// once or spread over `--drain-spread`; the loop exits when all are
    /// closed or the spread plus the drain timeout has passed.
    fn begin_shutdown(&mut self) {
        if self.draining_until.is_some() {
            return;
        }
        // Deliveries already batched go out before the goodbye.
        self.flush_outbox();
        let now = Instant::now();
        let spread = self.config.drain_spread;
        self.draining_until = Some(now + spread + self.config.drain_timeout);
        let drain_tick = self.closing_deadline(self.tick(now));
        if let Some(mut l) = self.listener.take() {
            // Closing the listener makes the kernel route new connections to
            // the other processes bound to the port.
            let _ = self.poll.registry().deregister(&mut l);
        }
        let mut open = Vec::new();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match conn.phase {
                Phase::Handshake => self.close_now(key),
                Phase::Open => open.push((key, conn.serial)),
                Phase::Closing { .. } => self.set_timer(key, drain_tick),
            }
        }
        if spread.is_zero() {
            for (key, _) in open {
                self.say_goodbye(key);
            }
            return;
        }
        // A herd of reconnects is what the spread avoids: each connection
        // gets its own moment in the window, in random order, so the
        // reconnects arrive at an even rate wherever clients came from.
        fastrand::shuffle(&mut open);
        let n = open.len() as f64;
        self.drain_queue = open
            .into_iter()
            .enumerate()
            .map(|(i, (key, serial))| {
                let at = now + spread.mul_f64((i as f64 + fastrand::f64()) / n);
                (at, key, serial)
            })
            .collect();
        self.close_due(now);
    }

    /// Closes the connections whose moment in the drain spread has come.
    fn close_due(&mut self, now: Instant) {
        while let Some(&(at, key, serial)) = self.drain_queue.front() {
            if at > now {
                return;
            }
            self.drain_queue.pop_front();
            let same = self
                .conns
                .get(key)
                .is_some_and(|c| c.serial == serial && c.phase == Phase::Open);
            if same {
                self.say_goodbye(key);
            }
        }
    }

    /// Closes one open connection for the drain: 1001, and a reason that
    /// tells the client when to come back, `{"reconnect_in_ms":N}` with N
    /// uniform in [0, max(spread, 1 s)] so the reconnects spread further.
    fn say_goodbye(&mut self, key: usize) {
        let drain_tick = self.closing_deadline(self.tick(Instant::now()));
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Fan-out already queued for this client goes out first.
        self.stats.shutdown_closes.inc();
        let window = self.config.drain_spread.max(Duration::from_secs(1));
        let ms = fastrand::u64(0..=window.as_millis() as u64);
        let reason = format!(r#"{{"reconnect_in_ms":{ms}}}"#);
        conn.start_close(CloseCode::GOING_AWAY, &reason, &mut self.out, false);
        self.set_timer(key, drain_tick);
        self.flush(key);
    }
}

/// Writes `out` after anything already queued; queues what the socket
/// refuses. `out` holds whole frames (or HTTP responses), which lets the
/// queue tell where the one in flight ends. Returns the bytes written.
fn write_out(conn: &mut Conn, out: &[u8]) -> io::Result<usize> {
    write_or_queue(&mut conn.wq, &mut NoSigPipe(&conn.stream), out)
}

/// Writes fan-out frames after anything already queued: straight to the
/// socket with one `writev` when nothing is queued, queueing (by reference)
/// whatever the socket refuses. Returns the bytes written.
fn write_frames<'a>(
    conn: &mut Conn,
    frames: impl Iterator<Item = &'a Arc<[u8]>> + Clone,
) -> io::Result<usize> {
    let mut written = 0;
    let mut rest = frames.clone();
    if conn.wq.is_none() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        let mut total = 0;
        for f in frames.clone().take(MAX_IOV) {
            slices[n] = IoSlice::new(f);
            n += 1;
            total += f.len();
        }
        loop {
            // One sendmsg (see NoSigPipe).
            match NoSigPipe(&conn.stream).write_vectored(&slices[..n]) {
                Ok(w) => {
                    written = w;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if written == total && frames.clone().nth(MAX_IOV).is_none() {
            return Ok(written);
        }
        // Skip what went out; queue the rest.
        let mut skip = written;
        let wq = conn.wq.get_or_insert_with(Default::default);
        for f in rest.by_ref() {
            if skip >= f.len() {
                skip -= f.len();
                continue;
            }
            if skip > 0 {
                wq.push_partial(f.clone(), skip);
                skip = 0;
            } else {
                wq.push(Chunk::Shared(f.clone()));
            }
        }
    } else if let Some(wq) = conn.wq.as_mut() {
        for f in rest {
            wq.push(Chunk::Shared(f.clone()));
        }
    }
    let wq = conn
        .wq
        .as_mut()
        .map(|q| q.write_to(&mut NoSigPipe(&conn.stream)));
    let more = match wq {
        Some(r) => r?,
        None => 0,
    };
    if conn.wq.as_ref().is_some_and(|q| q.is_empty()) {
        conn.wq = None;
    }
    Ok(written + more)
}

/// Whether `conn` takes the shared compressed variant of fan-out frames
/// (permessage-deflate with the full window the shared variant uses).
fn wants_shared_deflate(conn: &Conn) -> bool {
    conn.rx
        .deflate()
        .is_some_and(|a| a.server_max_window_bits >= SHARED_WINDOW_BITS)
}

/// The largest fan-out frame: payload, the JSON envelope with the longest
/// topic (escaped, up to 6 bytes a byte), and the frame header.
fn largest_delivery(config: &Config) -> usize {
    let payload = usize::try_from(config.message_limit()).unwrap_or(usize::MAX);
    payload
        .saturating_add(config.max_topic_bytes.saturating_mul(6))
        .saturating_add(64)
}

/// Moves the worker's queued-bytes gauge by one connection's change.
fn track_queued(stats: &WorkerStats, before: usize, after: usize) {
    if after >= before {
        stats.queued_bytes.add((after - before) as u64);
    } else {
        stats.queued_bytes.sub((before - after) as u64);
    }
}

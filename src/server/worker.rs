//! One worker: a thread with its own `mio::Poll`, its own SO_REUSEPORT
//! listener, and a slab of the connections it accepted.
//!
//! This file is the event loop: wait for readiness, read sockets into the
//! session of each connection, write what the sessions produced, run the
//! timers, and shut down. The clock is read once per loop turn and passed
//! down. Everything a connection decides lives in its
//! [`Session`](crate::session::Session); the worker only does IO and
//! scheduling. Around the loop:
//!
//! - `setup`: building a worker from the configuration;
//! - `accept`: accepting, admission before a slot is spent, and leaving /
//!   rejoining the port's SO_REUSEPORT group when out of descriptors;
//! - `handshake_rate`: what a handshake costs this worker, and the
//!   `--max-handshakes-per-sec auto` limit that follows;
//! - `timers`: ticks, the timer wheel, and when to wake up;
//! - `fanout`: the worker's side of [`LocalFanout`] (delivering a turn's
//!   fan-out frames to sessions);
//! - `shutdown`: the drain (goodbyes spread over `--drain-spread`);
//! - `trouble`: rate-limited logs of misbehaving connections and of caught
//!   panics.
//!
//! Nothing here is shared with other workers; other threads reach a worker
//! only through its inbox and waker.

mod accept;
mod fanout;
mod handshake_rate;
mod setup;
mod shutdown;
mod timers;
mod tls;
mod trouble;

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::{Events, Poll, Token};
use rustc_hash::FxHashMap;
use slab::Slab;

use crate::app::pubsub::{leave_topic, PubSubCx, PubSubLimits};
use crate::config::Config;
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::{PartialPool, ReassemblyBudget};
use crate::protocol::{CloseCode, ReceiverLimits};
use crate::pubsub::fanout::{InboxControl, LocalFanout};
use crate::pubsub::Hub;
use crate::security::Security;
use crate::session::{AfterWrite, Ctx, Now, Phase, RateLimit, SessionConfig};
use crate::timer_wheel::TimerWheel;

use super::admission::Admission;
use super::conn::Conn;
use super::panic_guard::guarded;
use crate::stats::WorkerStats;
use accept::{AcceptState, HandshakeBucket};
use fanout::Slots;
use shutdown::Drain;
use timers::Clock;
use tls::{TlsReadResult, TlsWorker};
use trouble::Trouble;

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

/// What all workers of a server share (read-only, or internally synchronised).
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub security: Arc<Security>,
    /// `--max-reassembly-bytes`, shared by every worker's pool.
    pub reassembly: Arc<ReassemblyBudget>,
    pub tls: Option<crate::tls::TlsContext>,
}

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    conns: Slab<Conn>,
    next_serial: u32,
    scratch: Box<[u8]>,
    /// Output the sessions produce while handling input or time, written
    /// straight to the socket (see [`crate::session::Session::write_to`]).
    out: Vec<u8>,
    pool: PartialPool,
    /// Compressor for replies and fan-out (permessage-deflate), reset per
    /// message: connections own none.
    deflater: Deflater,
    limits: ReceiverLimits,
    handshake: HandshakeConfig,
    session_config: SessionConfig,
    config: Arc<Config>,
    stats: Arc<WorkerStats>,
    hub: Arc<Hub>,
    fanout: LocalFanout,
    pubsub_limits: PubSubLimits,
    admission: Arc<Admission>,
    security: Arc<Security>,
    peer_ips: FxHashMap<u32, IpAddr>,
    rate: Option<RateLimit>,
    clock: Clock,
    wheel: TimerWheel,
    expired: Vec<u32>,
    accept: AcceptState,
    handshake_bucket: Option<HandshakeBucket>,
    drain: Drain,
    /// Connections to read again next turn: their reading was un-paused
    /// (backpressure eased), or they used up their read budget.
    read_again: Vec<usize>,
    /// Connections a fan-out write found gone, closed after it returns.
    doomed: Vec<usize>,
    trouble: Trouble,
    /// Debug builds with `Config::debug_panic_trigger`: see `Ctx::debug_panic`.
    debug_panic: bool,
    /// With `--tls-cert`: the buffers every TLS connection of this worker
    /// shares.
    tls: Option<TlsWorker>,
}

impl Worker {
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
                // A fresh reading: this turn's work took time, and sleeping
                // from a stale one would oversleep the next tick by as much.
                self.poll_timeout(Instant::now())
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.id, error = %e, "poll failed; worker stops");
                break;
            }
            // The one clock reading of this turn's work.
            let now = Instant::now();
            let t = self.clock.now(now);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept.pending = true,
                    WAKER => self.drain_inbox(now, t),
                    Token(key) => {
                        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                        if ev.is_writable() {
                            self.on_writable(key);
                        }
                        if readable {
                            self.read_measured(key, ev.is_read_closed() || ev.is_error(), now, t);
                        }
                    }
                }
            }
            if self.fanout.inbox_more() {
                self.drain_inbox(now, t);
            }
            for key in carried {
                // Anything may have arrived: read until WouldBlock (or the
                // budget again).
                self.read_measured(key, true, now, t);
            }
            if self.accept.pending {
                self.accept_batch(now, t);
            }
            self.maybe_rejoin(now);
            self.with_slots(t, None, |fanout, slots| fanout.check_pending(slots, now));
            self.flush_fanout(t);
            // After the flush: what was batched for them goes out first.
            self.close_due(now, t);
            self.fanout.end_turn();
            self.expire(now, t);
            self.publish_gauges();
            self.trouble.report_if_due(self.id, &self.stats, now);
            if self.drain.done(self.conns.is_empty(), now) {
                drained = true;
                break;
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_now(key);
        }
        tracing::debug!(worker = self.id, "worker stopped");
        drained
    }

    /// The counters the codecs and fan-out keep for themselves, published
    /// once per turn.
    fn publish_gauges(&mut self) {
        self.stats.timers.set(self.wheel.len() as u64);
        self.stats
            .deflate_compressions
            .set(self.deflater.compressions());
        self.stats.deflate_inflations.set(self.pool.inflations());
        self.stats
            .outbox_early_flushes
            .add(self.fanout.take_early_flushes());
    }

    fn drain_inbox(&mut self, now: Instant, t: Now) {
        let control = self.with_slots(t, None, |fanout, slots| fanout.drain_inbox(slots));
        if control == InboxControl::Shutdown {
            self.begin_shutdown(now, t);
        }
    }

    /// Reads until the socket is drained (or reading is paused), handing
    /// each chunk to the session as it arrives, then writes the replies.
    fn on_readable(&mut self, key: usize, read_closed: bool, now: Instant, t: Now) {
        let mut reads = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.session.wants_read() {
                break;
            }
            let read = match self.tls.as_mut() {
                Some(tw) if conn.tls.is_some() => match tw.read(conn, &self.stats) {
                    TlsReadResult::Bytes { raw, peer_closed } => Ok((raw, true, peer_closed)),
                    TlsReadResult::Eof => Ok((0, true, false)),
                    TlsReadResult::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
                    TlsReadResult::Interrupted => Err(io::ErrorKind::Interrupted.into()),
                    TlsReadResult::Failed => {
                        self.close_now(key);
                        return;
                    }
                },
                _ => (&conn.stream)
                    .read(&mut self.scratch)
                    .inspect(|&n| {
                        self.stats.bytes_in.add(n as u64);
                    })
                    .map(|n| (n, false, false)),
            };
            match read {
                Ok((0, _, _)) => {
                    self.on_eof(key, t);
                    return;
                }
                Ok((n, from_tls, peer_closed)) => {
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
                            topics: &mut self.fanout.topics,
                            pending: &mut self.fanout.pending,
                            broadcasts: &mut self.fanout.broadcasts,
                            limits: self.pubsub_limits,
                            security: &self.security,
                            stats: &self.stats,
                            now_tick: t.tick,
                        },
                        config: &self.session_config,
                        admission: &*self.admission,
                        peer_ips: &mut self.peer_ips,
                        rate: self.rate,
                        security: &self.security,
                        debug_panic: self.debug_panic,
                    };
                    let phase = conn.session.phase();
                    let data = match &mut self.tls {
                        Some(tw) if from_tls => &mut tw.plain[..],
                        _ => &mut self.scratch[..n],
                    };
                    let session = &mut conn.session;
                    // A TLS read may carry only handshake records.
                    if !data.is_empty() {
                        if let Err(message) = guarded(|| session.on_bytes(key, data, t, &mut cx)) {
                            self.on_panic(key, phase, &message, now, t);
                            return;
                        }
                    }
                    conn.sync_timer(&mut self.wheel, key);
                    if !self.fanout.broadcasts.is_empty() {
                        self.with_slots(t, Some(key), |fanout, slots| {
                            fanout.deliver_local_broadcasts(slots, now)
                        });
                        if !self.conns.contains(key) {
                            // Closed while its replies were in `out`.
                            self.out.clear();
                            return;
                        }
                    }
                    if self.out.len() >= FLUSH_AT && !self.flush(key) {
                        return;
                    }
                    if peer_closed {
                        // close_notify: the TLS stream's EOF.
                        if self.flush(key) {
                            self.on_eof(key, t);
                        }
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
                    self.on_eof(key, t);
                    return;
                }
            }
        }
        self.flush(key);
    }

    fn on_writable(&mut self, key: usize) {
        let pending = |c: &Conn| c.tls.as_ref().is_some_and(|t| t.has_pending());
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.session.wants_write() || pending(c))
        {
            self.flush(key);
        }
    }

    /// The peer closed its side (or reading failed). The session keeps
    /// writing what is owed, under the close timer (see `Session::on_eof`).
    fn on_eof(&mut self, key: usize, t: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.session.on_eof(t, &self.session_config) {
            self.stats.abrupt_closes.inc();
        }
        conn.sync_timer(&mut self.wheel, key);
        self.flush(key);
    }

    /// Writes the session's pending output (the shared `out` buffer, then
    /// or else its queue). Returns false if the connection was closed.
    fn flush(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            self.out.clear();
            return false;
        };
        if conn.flush_tls().is_err() {
            self.out.clear();
            self.close_now(key);
            return false;
        }
        let (session, mut sink) = conn.split();
        let written = session.write_to(&mut self.out, &mut sink, &self.session_config, &self.stats);
        match written {
            Ok(AfterWrite::Keep) => true,
            Ok(AfterWrite::ResumeReading) => {
                self.read_again.push(key);
                true
            }
            Ok(AfterWrite::Close) => {
                if !conn.finish_tls() {
                    // The last encrypted batch waits for the socket.
                    return true;
                }
                self.close_now(key);
                false
            }
            Err(_) => {
                self.close_now(key);
                false
            }
        }
    }

    /// Writes this turn's fan-out batch, then closes the connections that
    /// writing found gone.
    fn flush_fanout(&mut self, t: Now) {
        self.with_slots(t, None, |fanout, slots| fanout.flush(slots));
    }

    fn close_now(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        if let Some(id) = conn.timer.take() {
            self.wheel.cancel(id);
        }
        let s = &mut conn.session;
        self.stats.queued_bytes.sub(s.queued_bytes() as u64);
        let ip = self.peer_ips.remove(&(key as u32));
        if s.admitted {
            self.admission.release();
        }
        if let Some(ip) = ip {
            if s.handshaking {
                self.admission.end_handshake(ip);
            }
            self.admission.closed(ip);
        }
        let user = s.auth.as_ref().and_then(|g| g.user.as_deref());
        for id in s.topics.drain(..) {
            if let Some(topic) = self.fanout.topics.get(id) {
                self.hub.presence.leave(&topic.name, user);
            }
            leave_topic(&mut self.fanout.topics, &self.hub, self.id, id, key as u32);
        }
        s.release(&mut self.pool);
        // Dropping the stream closes the descriptor, which also removes it
        // from the epoll set.
        self.stats.open.sub(1);
        self.stats.closed.inc();
    }

    /// A panic was caught in connection `key`'s processing (it was in
    /// `phase` when that started). Only that connection pays: an upgraded
    /// one is closed with 1011 (RFC 6455 §7.4.1, "unexpected condition"), a
    /// handshaking or closing one is dropped.
    fn on_panic(&mut self, key: usize, phase: Phase, message: &str, now: Instant, t: Now) {
        self.stats.panics.inc();
        // Whatever the interrupted call wrote may be half a frame.
        self.out.clear();
        self.trouble.log_panic(self.id, message, now);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if phase == Phase::Open && conn.session.is_open() {
            conn.session.start_close(
                CloseCode::INTERNAL_ERROR,
                "internal error",
                &mut self.out,
                t,
                &self.session_config,
            );
            // Reading goes on only to see the peer's close frame; should its
            // receiver panic again, that is caught and the socket dropped.
            conn.sync_timer(&mut self.wheel, key);
            self.flush(key);
        } else {
            self.close_now(key);
        }
    }

    /// Runs `f` with the fan-out and a view of the connections it writes
    /// to, then closes those it found gone. `reading` is the connection
    /// whose replies are in `out` (flushed before any batch).
    fn with_slots<R>(
        &mut self,
        t: Now,
        reading: Option<usize>,
        f: impl FnOnce(&mut LocalFanout, &mut Slots<'_>) -> R,
    ) -> R {
        let mut slots = Slots {
            conns: &mut self.conns,
            wheel: &mut self.wheel,
            out: &mut self.out,
            deflater: &mut self.deflater,
            deflate_min_size: self.config.deflate_min_size,
            config: &self.session_config,
            stats: &self.stats,
            now: t,
            reading,
            doomed: &mut self.doomed,
            read_again: &mut self.read_again,
        };
        let r = f(&mut self.fanout, &mut slots);
        let mut doomed = std::mem::take(&mut self.doomed);
        for key in doomed.drain(..) {
            self.close_now(key);
        }
        self.doomed = doomed;
        r
    }
}

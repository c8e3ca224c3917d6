//! One worker: a thread with its own event loop, its own SO_REUSEPORT
//! listener, and a slab of the connections it accepted.
//!
//! [`Worker`] is generic over its loop ([`Io`]): the epoll (mio) loop in
//! `epoll`, or the io_uring loop in [`super::uring`]. This file holds what
//! both loops share: handing input to sessions, writing what the sessions
//! produced, closing, panics, and fan-out. The clock is read once per loop
//! turn and passed down. Everything a connection decides lives in its
//! [`Session`](crate::session::Session); the worker only does IO and
//! scheduling. Around it:
//!
//! - `epoll`: the epoll event loop (readiness, read/write until WouldBlock);
//! - `setup`: building a worker from the configuration;
//! - `accept`: admission before a connection costs a slot (both loops), the
//!   epoll loop's accept batch, and leaving / rejoining the port's
//!   SO_REUSEPORT group when out of descriptors;
//! - `handshake_rate`: what a handshake costs this worker, and the
//!   `--max-handshakes-per-sec auto` limit that follows;
//! - `timers`: ticks, the timer wheel, and when to wake up;
//! - `fanout`: the worker's side of [`LocalFanout`] (delivering a turn's
//!   fan-out frames to sessions);
//! - `shutdown`: the drain (goodbyes spread over `--drain-spread`);
//! - `tls`: with `--tls-cert`, the worker's TLS buffers and reading through
//!   TLS (both loops);
//! - `trouble`: rate-limited logs of misbehaving connections and of caught
//!   panics.
//!
//! Nothing here is shared with other workers; other threads reach a worker
//! only through its inbox and waker.

pub(super) mod accept;
pub(super) mod epoll;
mod fanout;
mod handshake_rate;
mod setup;
mod shutdown;
pub(super) mod timers;
pub(super) mod tls;
mod trouble;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Token;
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
use super::loop_io::Io;
use super::panic_guard::guarded;
use crate::stats::WorkerStats;
use accept::HandshakeBucket;
use fanout::Slots;
use shutdown::Drain;
use timers::Clock;
pub(super) use tls::TlsWorker;
use trouble::Trouble;

pub(crate) const LISTENER: Token = Token(usize::MAX);
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// Per-read scratch size: one read takes at most this much from a socket.
pub(super) const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads (of up to `SCRATCH_BYTES`) one connection gets per loop turn. A
/// client that sends without pause must not keep the worker in its read
/// loop: the fan-out its messages produce, the other connections and the
/// timers all wait for the turn to end (a publisher flooding one topic once
/// kept a worker from ever flushing its outbox, so every frame piled up).
pub(super) const READ_BUDGET: usize = 16;
/// Output produced while reading is flushed once it reaches this size.
pub(super) const FLUSH_AT: usize = 64 * 1024;

/// What all workers of a server share (read-only, or internally synchronised).
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub security: Arc<Security>,
    /// `--max-reassembly-bytes`, shared by every worker's pool.
    pub reassembly: Arc<ReassemblyBudget>,
    /// With `--tls-cert`: the TLS context every new connection starts from.
    pub tls: Option<crate::tls::TlsContext>,
}

pub(crate) struct Worker<I: Io> {
    pub(super) id: usize,
    /// The event loop's side: its poller or ring, and the listener.
    pub(super) io: I,
    pub(super) conns: Slab<Conn<I::Handle>>,
    pub(super) next_serial: u32,
    pub(super) scratch: Box<[u8]>,
    /// Output the sessions produce while handling input or time, written
    /// straight to the socket (see [`crate::session::Session::write_to`]).
    pub(super) out: Vec<u8>,
    pub(super) pool: PartialPool,
    /// Compressor for replies and fan-out (permessage-deflate), reset per
    /// message: connections own none.
    pub(super) deflater: Deflater,
    pub(super) limits: ReceiverLimits,
    pub(super) handshake: HandshakeConfig,
    pub(super) session_config: SessionConfig,
    pub(super) config: Arc<Config>,
    pub(super) stats: Arc<WorkerStats>,
    pub(super) hub: Arc<Hub>,
    pub(super) fanout: LocalFanout,
    pub(super) pubsub_limits: PubSubLimits,
    pub(super) admission: Arc<Admission>,
    pub(super) security: Arc<Security>,
    pub(super) peer_ips: FxHashMap<u32, IpAddr>,
    pub(super) rate: Option<RateLimit>,
    pub(super) clock: Clock,
    pub(super) wheel: TimerWheel,
    pub(super) expired: Vec<u32>,
    pub(super) handshake_bucket: Option<HandshakeBucket>,
    pub(super) drain: Drain,
    /// Connections to read again next turn: their reading was un-paused
    /// (backpressure eased), or they used up their read budget.
    pub(super) read_again: Vec<usize>,
    /// Connections a fan-out write found gone, closed after it returns.
    pub(super) doomed: Vec<usize>,
    pub(super) trouble: Trouble,
    /// With `--tls-cert`: the TLS buffers the worker's connections share
    /// (either loop; each keeps its connections' `TlsConn` in its handle).
    pub(super) tls: Option<TlsWorker>,
    /// Debug builds with `Config::debug_panic_trigger`: see `Ctx::debug_panic`.
    pub(super) debug_panic: bool,
}

impl<I: Io> Worker<I> {
    /// The work at the end of every loop turn, after input: fan-out out,
    /// the drain's due closes, timers, gauges. Returns true once the drain
    /// is done (the loop exits).
    pub(super) fn end_turn(&mut self, now: Instant, t: Now) -> bool {
        self.with_slots(t, None, |fanout, slots| fanout.check_pending(slots, now));
        self.flush_fanout(t);
        // After the flush: what was batched for them goes out first.
        self.close_due(now, t);
        self.fanout.end_turn();
        self.expire(now, t);
        self.publish_gauges();
        self.trouble.report_if_due(self.id, &self.stats, now);
        self.drain.done(self.conns.is_empty(), now)
    }

    /// Closes every connection (the loop is ending).
    pub(super) fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_now(key);
        }
    }

    /// The counters the codecs and fan-out keep for themselves, published
    /// once per turn.
    pub(super) fn publish_gauges(&mut self) {
        self.stats.timers.set(self.wheel.len() as u64);
        self.stats
            .deflate_compressions
            .set(self.deflater.compressions());
        self.stats.deflate_inflations.set(self.pool.inflations());
        self.stats
            .outbox_early_flushes
            .add(self.fanout.take_early_flushes());
    }

    pub(super) fn drain_inbox(&mut self, now: Instant, t: Now) {
        let control = self.with_slots(t, None, |fanout, slots| fanout.drain_inbox(slots));
        if control == InboxControl::Shutdown {
            self.begin_shutdown(now, t);
        }
    }

    /// Hands bytes read from connection `key` to its session, then delivers
    /// the local broadcasts they produced. Replies stay in `out` (the
    /// caller flushes them). Returns false if the connection is gone.
    pub(super) fn on_input(&mut self, key: usize, data: &mut [u8], now: Instant, t: Now) -> bool {
        self.stats.bytes_in.add(data.len() as u64);
        self.on_plaintext(key, data, now, t)
    }

    /// [`Worker::on_input`] for bytes already counted in (decrypted TLS
    /// input: `wsgate_bytes_in_total` counts what the socket gave).
    pub(super) fn on_plaintext(
        &mut self,
        key: usize,
        data: &mut [u8],
        now: Instant,
        t: Now,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
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
        let session = &mut conn.session;
        if let Err(message) = guarded(|| session.on_bytes(key, data, t, &mut cx)) {
            self.on_panic(key, phase, &message, now, t);
            return false;
        }
        conn.sync_timer(&mut self.wheel, key);
        if !self.fanout.broadcasts.is_empty() {
            self.with_slots(t, Some(key), |fanout, slots| {
                fanout.deliver_local_broadcasts(slots, now)
            });
            if !self.conns.contains(key) {
                // Closed while its replies were in `out`.
                self.out.clear();
                return false;
            }
        }
        true
    }

    /// The peer closed its side (or reading failed). The session keeps
    /// writing what is owed, under the close timer (see `Session::on_eof`).
    pub(super) fn on_eof(&mut self, key: usize, t: Now) {
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
    pub(super) fn flush(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key).filter(|c| I::is_live(&c.stream)) else {
            self.out.clear();
            return false;
        };
        // What the loop still holds from earlier writes (TLS records) goes
        // first: the session's bytes must not overtake it.
        if self.io.flush_held(&mut conn.stream).is_err() {
            self.out.clear();
            self.close_now(key);
            return false;
        }
        let written = conn.session.write_to(
            &mut self.out,
            &mut self.io.sink(&mut conn.stream),
            &self.session_config,
            &self.stats,
        );
        match written {
            Ok(AfterWrite::Keep) => true,
            Ok(AfterWrite::ResumeReading) => {
                self.read_again.push(key);
                true
            }
            Ok(AfterWrite::Close) => {
                if !self.io.finish(&mut conn.stream) {
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
    pub(super) fn flush_fanout(&mut self, t: Now) {
        self.with_slots(t, None, |fanout, slots| fanout.flush(slots));
    }

    pub(super) fn close_now(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| I::is_live(&c.stream)) else {
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
        for id in s.topics.take_all() {
            if let Some(topic) = self.fanout.topics.get(id) {
                self.hub.presence.leave(&topic.name, user);
            }
            leave_topic(&mut self.fanout.topics, &self.hub, self.id, id, key as u32);
        }
        s.release(&mut self.pool);
        if self.io.close(&mut conn.stream) {
            self.conns.remove(key);
        }
        self.stats.open.sub(1);
        self.stats.closed.inc();
    }

    /// A panic was caught in connection `key`'s processing (it was in
    /// `phase` when that started). Only that connection pays: an upgraded
    /// one is closed with 1011 (RFC 6455 §7.4.1, "unexpected condition"), a
    /// handshaking or closing one is dropped.
    pub(super) fn on_panic(
        &mut self,
        key: usize,
        phase: Phase,
        message: &str,
        now: Instant,
        t: Now,
    ) {
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
    pub(super) fn with_slots<R>(
        &mut self,
        t: Now,
        reading: Option<usize>,
        f: impl FnOnce(&mut LocalFanout, &mut Slots<'_, I>) -> R,
    ) -> R {
        let mut slots = Slots {
            io: &mut self.io,
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

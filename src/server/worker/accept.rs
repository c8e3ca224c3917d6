//! Accepting: a batch per turn, admission before a connection costs a slot
//! (the per-IP and total limits, `--max-handshakes-per-sec`), and leaving /
//! rejoining the port's SO_REUSEPORT group when the process is out of
//! descriptors. With `--max-handshakes-per-sec auto` it also times the
//! worker's handshake work (accepting, and reads of connections still in
//! their handshake) for the estimate in `handshake_rate`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};

use crate::config::HandshakeLimit;
use crate::protocol::handshake::error_response;
use crate::session::{Now, Session};

use super::super::conn::Conn;
use super::super::listener::{self, ListenOptions};
use super::super::loop_io::Io;
use super::super::tls_io::TlsState;
use super::epoll::{Epoll, EpollConn};
use super::handshake_rate::HandshakeRate;
use super::{Worker, LISTENER};

/// Connections accepted per loop turn before serving the others.
const ACCEPT_BATCH: usize = 256;
/// How long accepting pauses after an unexpected accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a worker out of the group tries to rejoin regardless.
const REJOIN_RETRY: Duration = Duration::from_secs(1);

/// The worker's listener and what it knows about accepting.
pub(crate) struct AcceptState {
    pub listener: Option<TcpListener>,
    /// The listener was readable and not yet drained.
    pub pending: bool,
    pub paused_until: Option<Instant>,
    last_backoff_log: Option<Instant>,
    /// The address all listeners of the port share (to rejoin the group).
    listen_addr: Option<SocketAddr>,
    /// Set while this worker is out of the port's SO_REUSEPORT group
    /// because the process ran out of descriptors.
    pub left_group: Option<LeftGroup>,
    /// What a rejoining listener is bound with (its accepted sockets
    /// inherit these).
    listen_options: ListenOptions,
}

impl AcceptState {
    pub fn new(
        listener: TcpListener,
        listen_addr: Option<SocketAddr>,
        listen_options: ListenOptions,
    ) -> AcceptState {
        AcceptState {
            listener: Some(listener),
            // Connections may have queued before the first poll.
            pending: true,
            paused_until: None,
            last_backoff_log: None,
            listen_addr,
            left_group: None,
            listen_options,
        }
    }

    /// Accepting can go on right now (poll without sleeping).
    pub fn ready(&self) -> bool {
        self.pending && self.paused_until.is_none() && self.listener.is_some()
    }
}

/// A worker that ran out of descriptors closes its listener so the kernel
/// hands new connections to the other listeners on the port (other workers,
/// other processes) instead of leaving them in a backlog nobody can accept
/// from; with `net.ipv4.tcp_migrate_req = 1` the connections already queued
/// move too. It binds a fresh listener once it has room again.
pub(crate) struct LeftGroup {
    /// Open connections when it left; a drop below this means room.
    open_at_leave: usize,
    /// Descriptors may also free up elsewhere in the process: try anyway.
    pub retry_at: Instant,
}

/// `--max-handshakes-per-sec` token bucket of one worker (bursts of twice
/// the rate). With `auto` the rate follows the measured cost of a
/// handshake ([`HandshakeRate`]) and nothing is refused before the first
/// measurement.
pub(crate) struct HandshakeBucket {
    /// Upgrades a second; None while `auto` has not measured yet.
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
    /// Set with `auto`.
    auto: Option<HandshakeRate>,
}

impl HandshakeBucket {
    pub fn new(limit: HandshakeLimit, now: Instant) -> Option<HandshakeBucket> {
        let (rate, auto) = match limit {
            HandshakeLimit::Off | HandshakeLimit::PerSec(0) => return None,
            HandshakeLimit::PerSec(n) => (Some(f64::from(n)), None),
            HandshakeLimit::Auto => (None, Some(HandshakeRate::new())),
        };
        Some(HandshakeBucket {
            rate,
            tokens: rate.map_or(0.0, |r| 2.0 * r),
            last: now,
            auto,
        })
    }

    /// The rate now (None: not limiting yet).
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Whether handshake work is timed (only `auto` needs it).
    pub fn measures(&self) -> bool {
        self.auto.is_some()
    }

    /// Takes one upgrade from the bucket.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_none() {
            return true;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// `auto`: `busy` of handshake work, and `started` handshakes let in.
    /// Returns the new rate when the estimate moved.
    fn record(&mut self, busy: Duration, started: u32, now: Instant) -> Option<f64> {
        let rate = self.auto.as_mut()?.record(busy, started, now)?;
        if self.rate.is_none() {
            // The first measurement: a full bucket, as a fixed limit
            // starts with.
            self.tokens = 2.0 * rate;
            self.last = now;
        } else {
            // Refill at the old rate up to now, then cap at the new burst.
            self.refill(now);
            self.tokens = self.tokens.min(2.0 * rate);
        }
        self.rate = Some(rate);
        Some(rate)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(2.0 * rate);
            self.last = now;
        }
    }

    /// The measured cost of a handshake (`auto` only, once measured).
    fn cost(&self) -> Option<Duration> {
        self.auto.as_ref()?.cost()
    }
}

fn is_descriptor_exhaustion(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(is_descriptor_exhaustion_errno)
}

/// Accept failed for want of descriptors or kernel memory.
pub(in crate::server) fn is_descriptor_exhaustion_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
    )
}

impl Worker<Epoll> {
    pub(super) fn accept_batch(&mut self, now: Instant, t: Now) {
        if let Some(until) = self.io.accept.paused_until {
            if now < until {
                return;
            }
            self.io.accept.paused_until = None;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.io.accept.listener.as_ref() else {
                self.io.accept.pending = false;
                return;
            };
            // `auto` counts accepting a connection it lets in as handshake
            // work (see `handshake_rate`).
            let start = self.measuring_handshakes().then(Instant::now);
            match listener.accept() {
                Ok((stream, peer)) => {
                    if self.add_conn(stream, peer.ip(), now, t) {
                        if let Some(start) = start {
                            let end = Instant::now();
                            self.handshake_work(end - start, 1, end);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.accept.pending = false;
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
                    self.io.accept.paused_until = Some(now + ACCEPT_BACKOFF);
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
        if let Some(mut l) = self.io.accept.listener.take() {
            let _ = self.io.poll.registry().deregister(&mut l);
        }
        self.io.accept.pending = false;
        self.io.accept.left_group = Some(LeftGroup {
            open_at_leave: self.conns.len(),
            retry_at: now + REJOIN_RETRY,
        });
        if self
            .io
            .accept
            .last_backoff_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
        {
            self.io.accept.last_backoff_log = Some(now);
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
    pub(super) fn maybe_rejoin(&mut self, now: Instant) {
        let Some(left) = self.io.accept.left_group.as_mut() else {
            return;
        };
        if self.drain.started() {
            self.io.accept.left_group = None;
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
        let Some(addr) = self.io.accept.listen_addr else {
            return;
        };
        let mut listener = match listener::bind_reuseport_with(addr, &self.io.accept.listen_options)
        {
            Ok(l) => TcpListener::from_std(l),
            Err(e) => {
                tracing::debug!(worker = self.id, error = %e, "rejoin failed; still full");
                return;
            }
        };
        if let Err(e) =
            self.io
                .poll
                .registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
        {
            tracing::debug!(worker = self.id, error = %e, "rejoin failed");
            return;
        }
        tracing::info!(worker = self.id, open = self.conns.len(), "listening again");
        self.io.accept.listener = Some(listener);
        self.io.accept.left_group = None;
        self.io.accept.pending = true;
    }
}

/// Why admission turned a connection away, and when to come back.
pub(in crate::server) struct Refusal {
    pub reason: &'static str,
    pub retry_after: String,
}

/// Refuses a connection before it costs a slot: reads what already arrived
/// (closing with unread bytes would reset the connection before the answer
/// is read), answers 503 (on a plain listener; a TLS one's client just sees
/// the close), and leaves the drop to the caller. `stream` is non-blocking.
pub(in crate::server) fn refuse<S: Read + Write>(
    mut stream: S,
    scratch: &mut [u8],
    r: &Refusal,
    tls: bool,
) {
    // What already arrived is read first, so the close is a FIN, not a
    // reset.
    let _ = stream.read(scratch);
    if tls {
        // A TLS client cannot read a plaintext answer: it sees the close.
        return;
    }
    let resp = error_response(
        503,
        "Service Unavailable",
        r.reason,
        &[("Retry-After", &r.retry_after)],
    );
    let _ = stream.write(&resp);
}

impl<I: Io> Worker<I> {
    /// Whether handshake work is being timed (`auto`).
    pub(in crate::server) fn measuring_handshakes(&self) -> bool {
        self.handshake_bucket
            .as_ref()
            .is_some_and(HandshakeBucket::measures)
    }

    /// Feeds `auto`'s estimate with `busy` of handshake work and `started`
    /// handshakes let in; publishes the limit when it moves.
    pub(in crate::server) fn handshake_work(&mut self, busy: Duration, started: u32, now: Instant) {
        let Some(bucket) = self.handshake_bucket.as_mut() else {
            return;
        };
        if let Some(rate) = bucket.record(busy, started, now) {
            self.stats.handshake_rate_limit.set(rate as u64);
            let cost = bucket.cost().unwrap_or_default();
            self.stats
                .handshake_cost_ns
                .set(u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// Admission of a connection just accepted from `ip`, before it costs a
    /// slot: `--max-handshakes-per-sec`, then the total, per-IP and
    /// handshaking caps. On success it is counted as handshaking.
    pub(in crate::server) fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.stats.accepted.inc();
        if !self.handshake_bucket.as_mut().is_none_or(|b| b.take(now)) {
            // A reconnect storm: more upgrades than this worker is set to
            // serve. A fast 503 now, with a jittered Retry-After so the
            // retries do not come back as one wave, costs the worker less
            // than letting them queue and time out, and keeps the
            // established connections' latency.
            self.stats.handshakes_shed.inc();
            return Err(Refusal {
                reason: "too many connection attempts; retry later",
                retry_after: fastrand::u32(1..=5).to_string(),
            });
        }
        if let Err(why) = self.admission.try_accept(ip) {
            // One address's unfinished handshakes must not hold the
            // descriptors every other client needs.
            self.stats.handshake_failures.inc();
            self.stats.rejected_unavailable.inc();
            return Err(Refusal {
                reason: why.reason(),
                retry_after: "1".into(),
            });
        }
        Ok(())
    }

    /// A connection that could not be set up after [`Worker::admit`]:
    /// uncounts it.
    pub(in crate::server) fn unadmit(&mut self, ip: IpAddr) {
        self.admission.end_handshake(ip);
        self.admission.closed(ip);
    }

    /// Puts an admitted connection in slot `key` (the slab's vacant key,
    /// which its IO was registered under) with a fresh session.
    pub(in crate::server) fn insert_conn(
        &mut self,
        key: usize,
        handle: I::Handle,
        ip: IpAddr,
        t: Now,
    ) {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let mut conn = Conn {
            stream: handle,
            timer: None,
            session: Session::new(serial, t, &self.session_config),
        };
        conn.sync_timer(&mut self.wheel, key);
        let inserted = self.conns.insert(conn);
        debug_assert_eq!(inserted, key);
        // Kept while it handshakes (to uncount it), for good with the
        // per-IP connection limit on.
        self.peer_ips.insert(key as u32, ip);
        self.stats.open.inc();
    }
}

impl Worker<Epoll> {
    /// Lets a new connection in (true), or refuses it at once (false).
    fn add_conn(&mut self, mut stream: TcpStream, ip: IpAddr, now: Instant, t: Now) -> bool {
        if let Err(r) = self.admit(ip, now) {
            refuse(&stream, &mut self.scratch, &r, self.tls.is_some());
            return false;
        }
        // TCP_NODELAY and TCP_USER_TIMEOUT come from the listener (see
        // `ListenOptions`): no setsockopt per connection.
        let key = self.conns.vacant_key();
        // Edge-triggered, both directions, registered once: no epoll_ctl per
        // write; a WRITABLE edge only arrives after the socket was full.
        if let Err(e) = self.io.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "register failed");
            self.unadmit(ip);
            return false;
        }
        // With TLS the handshake timeout and caps above run from here, so
        // they bound the TLS handshake too.
        let tls = match self.tls.as_ref().map(|tw| tw.new_conn()) {
            None => None,
            Some(Ok(tls)) => Some(Box::new(TlsState::new(tls))),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "TLS connection setup failed");
                self.unadmit(ip);
                return false;
            }
        };
        self.insert_conn(key, EpollConn { stream, tls }, ip, t);
        true
    }

    /// Reads connection `key` ([`Worker::on_readable`]); while it is in its
    /// handshake and the limit is `auto`, the time it takes counts as
    /// handshake work. (The handshake itself was counted when it was let
    /// in: one that never finishes, such as a client trickling its request
    /// until the handshake timeout, still counts once, and the time its
    /// reads took is part of what handshakes cost.)
    pub(super) fn read_measured(&mut self, key: usize, read_closed: bool, now: Instant, t: Now) {
        let handshaking = self.measuring_handshakes()
            && self.conns.get(key).is_some_and(|c| c.session.handshaking);
        if !handshaking {
            self.on_readable(key, read_closed, now, t);
            return;
        }
        let start = Instant::now();
        self.on_readable(key, read_closed, now, t);
        let end = Instant::now();
        self.handshake_work(end - start, 0, end);
    }
}

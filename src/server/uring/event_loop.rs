//! The io_uring worker loop: one `io_uring_enter` per turn submits every
//! queued operation and waits for completions (or the next timer); each
//! completion is handed to the worker code both loops share.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use socket2::SockRef;
use wsgate_uring::{Completion, EndReason, RecvBuf};

use super::super::listener::bind_reuseport_with;
use super::super::loop_io::Io;
use super::super::worker::accept::{is_descriptor_exhaustion_errno, refuse};
use super::super::worker::tls::TlsReadResult;
use super::super::worker::Worker;
use super::sink::{shutdown_write, SEND_WINDOW, TLS_WINDOW};
use super::{
    waker, Handle, Uring, CLOSING, FIN_PENDING, LISTENER, RECV_ARMED, RECV_CANCELING, STALLED,
    WAKER,
};
use crate::session::Now;

/// Send completions handled between two readings of the clock for the
/// turn's budgets. A send completion only counts bytes, so eight of them
/// stay far below [`SUBMIT_EVERY`]; after any other completion (a receive
/// can carry a buffer of broadcasts, each fanned out to every subscriber)
/// the clock is read at once, or a burst's fan-out would pile up in user
/// memory between submits. Reading it twice after every completion was the
/// loop's largest cost of its own in profiles of the handshake and echo
/// benchmarks (`clock_gettime`: about 1.5 % and 1 % of the worker's CPU).
const CHECK_EVERY: usize = 8;
/// Completions handled between two refreshes of the sessions' clock.
const CLOCK_EVERY: usize = 64;
/// Longest a turn hands completions to the sessions before the ring gets
/// the sends they produced: sends reach the kernel only between turns, so a
/// turn that feeds a fast sender's whole burst of broadcasts (thousands of
/// recv buffers, millions of deliveries) would hold every subscriber's
/// output back for seconds. The completions left wait, in order, for the
/// next turn, which then does not sleep.
const TURN_BUDGET: Duration = Duration::from_millis(20);
/// How long a turn works through its backlog between two submits.
const SUBMIT_EVERY: Duration = Duration::from_millis(1);
/// How often a worker out of the port's group tries to rejoin it.
const REJOIN_RETRY: Duration = Duration::from_secs(1);
/// How long accepting pauses after the multishot accept ended on an error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl Worker<Uring> {
    /// Runs the event loop until shutdown has drained (returns true), or
    /// until the ring fails (returns false: the worker is lost).
    pub(crate) fn run(mut self) -> bool {
        let mut drained = false;
        // Completions not handled yet, in the order the kernel posted them
        // (a turn ends after `TURN_BUDGET`; the rest wait here).
        let mut backlog: VecDeque<Completion> = VecDeque::with_capacity(1024);
        let mut fresh = Vec::with_capacity(1024);
        loop {
            let timeout =
                if self.read_again.is_empty() && self.io.rearm.is_empty() && backlog.is_empty() {
                    self.poll_timeout(Instant::now())
                } else {
                    Some(Duration::ZERO)
                };
            if let Err(e) = self.io.ring.wait(1, timeout, &mut fresh) {
                tracing::error!(worker = self.id, error = %e, "io_uring wait failed; worker stops");
                break;
            }
            let started = Instant::now();
            let mut now = started;
            let mut t = self.clock.now(now);
            self.take_sends_first(&mut fresh, &mut backlog);
            let mut i = 0;
            let mut sends_unchecked = 0;
            let mut submitted = started;
            while let Some(c) = backlog.pop_front() {
                if i > 0 && i % CLOCK_EVERY == 0 {
                    // One wait can return thousands of completions (a
                    // fast sender's whole receive queue): deadlines set
                    // late in the batch must not start from a stale clock.
                    now = Instant::now();
                    t = self.clock.now(now);
                }
                let cheap = matches!(c, Completion::Sent { .. });
                self.on_completion(c, now, t);
                i += 1;
                if cheap {
                    sends_unchecked += 1;
                    if sends_unchecked < CHECK_EVERY {
                        continue;
                    }
                }
                sends_unchecked = 0;
                let elapsed = Instant::now();
                if elapsed - started >= TURN_BUDGET {
                    break;
                }
                if elapsed - submitted >= SUBMIT_EVERY {
                    // A long turn (a fast sender's burst, each message
                    // fanned out to many subscribers) hands its fan-out and
                    // sends to the kernel as it goes, and takes the sends
                    // the kernel finished: otherwise every subscriber's
                    // share of the whole turn waits in user memory (its
                    // session queue) until the turn ends, where the epoll
                    // loop's writes put it in the socket buffers at once;
                    // memory freed after such a peak stays with the
                    // allocator.
                    self.flush_fanout(t);
                    // A refused submit (the kernel busy) is retried by the
                    // turn's wait.
                    let _ = self.io.ring.submit();
                    if let Err(e) = self.io.ring.reap(&mut fresh) {
                        tracing::error!(worker = self.id, error = %e, "io_uring reap failed; worker stops");
                        self.close_all();
                        return false;
                    }
                    self.take_sends_first(&mut fresh, &mut backlog);
                    submitted = Instant::now();
                }
            }
            if self.fanout.inbox_more() {
                self.drain_inbox(now, t);
            }
            self.rearm_reads(now, t);
            self.retry_stalled();
            self.maybe_rearm_accept(now);
            self.io.close_lingering(now);
            if self.end_turn(now, t) {
                drained = true;
                break;
            }
            self.publish_ring_stats();
        }
        self.close_all();
        tracing::debug!(worker = self.id, "worker stopped");
        drained
    }

    /// Handles the finished sends among `fresh` completions at once and
    /// queues the rest behind `backlog`, in order. Sends go first: a
    /// subscriber's bytes still counted in the ring after the kernel took
    /// them hold its next frames in its session queue, and a fast sender's
    /// backlog of received data (seconds of it in a debug build) would make
    /// every subscriber that keeps up look like a slow consumer. Moving a
    /// send's completion earlier is safe: it precedes its connection's
    /// `Closed` in the kernel, and a slot is reused only after `Closed` is
    /// handled.
    fn take_sends_first(
        &mut self,
        fresh: &mut Vec<Completion>,
        backlog: &mut VecDeque<Completion>,
    ) {
        for c in fresh.drain(..) {
            match c {
                Completion::Sent { token, n, .. } => self.on_sent(token as usize, n),
                Completion::SendFailed { token, .. } => self.on_send_failed(token as usize),
                c => backlog.push_back(c),
            }
        }
    }

    fn on_completion(&mut self, c: Completion, now: Instant, t: Now) {
        match c {
            Completion::Accepted { fd, .. } => self.on_accepted(fd, now, t),
            Completion::AcceptEnded { reason, .. } => {
                if self.io.listener.is_some() {
                    let backoff =
                        matches!(reason, EndReason::Error(e) if is_descriptor_exhaustion_errno(e));
                    if backoff {
                        self.leave_group(now);
                    } else {
                        // Ended by the kernel (or an error that passes):
                        // again at the end of the turn, a little later if
                        // it failed.
                        let error = matches!(reason, EndReason::Error(_));
                        self.io.accept_rearm = Some(if error { now + ACCEPT_BACKOFF } else { now });
                    }
                }
            }
            Completion::Received { token, buf } => self.on_received(token as usize, buf, now, t),
            Completion::RecvEnded { token, reason } => {
                self.on_recv_ended(token as usize, reason, t)
            }
            Completion::Readable { token: WAKER } => {
                waker::drain(&self.io.wake_rx);
                self.drain_inbox(now, t);
            }
            Completion::PollEnded { token: WAKER, .. } => {
                // Still owned by the ring: watch it again.
                if let Some(fd) = self.io.wake_fd {
                    let _ = self.io.ring.poll_readable(fd);
                }
            }
            Completion::Readable { .. } | Completion::PollEnded { .. } => {}
            Completion::Sent { token, n, .. } => self.on_sent(token as usize, n),
            Completion::SendFailed { token, .. } => self.on_send_failed(token as usize),
            Completion::Closed { token, .. } => {
                if token != LISTENER && token != WAKER {
                    self.io.held.remove(&(token as usize));
                    // No operation on it is left in the kernel: the slot
                    // (and its key, the token) can be reused.
                    self.conns.try_remove(token as usize);
                }
            }
        }
    }

    fn on_accepted(&mut self, fd: std::os::fd::OwnedFd, now: Instant, t: Now) {
        // `auto` counts setting up a connection it lets in as handshake
        // work (see `handshake_rate`), as the epoll loop counts its accept.
        let start = self.measuring_handshakes().then(Instant::now);
        if self.set_up_accepted(fd, now, t) {
            if let Some(start) = start {
                let end = Instant::now();
                self.handshake_work(end - start, 1, end);
            }
        }
    }

    /// Admits and arms a connection just accepted; false if it was turned
    /// away or could not be set up.
    fn set_up_accepted(&mut self, fd: std::os::fd::OwnedFd, now: Instant, t: Now) -> bool {
        let Some(ip) = SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.ip())
        else {
            // Reset before its accept completion was handled (the address
            // comes from getpeername, which fails on a reset socket): counted
            // as accepted and closed, as the epoll loop counts it.
            self.stats.accepted.inc();
            self.stats.closed.inc();
            return false;
        };
        if let Err(r) = self.admit(ip, now) {
            let stream = std::net::TcpStream::from(fd);
            if stream.set_nonblocking(true).is_ok() {
                refuse(&stream, &mut self.scratch, &r, self.tls.is_some());
            }
            return false;
        }
        // With TLS the handshake timeout and caps above run from here, so
        // they bound the TLS handshake too.
        let tls = match self.tls.as_ref().map(|tw| tw.new_conn()) {
            None => None,
            Some(Ok(tls)) => Some(Box::new(tls)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "TLS connection setup failed");
                self.unadmit(ip);
                return false;
            }
        };
        // TCP_NODELAY and TCP_USER_TIMEOUT come from the listener (see
        // `ListenOptions`): no setsockopt per connection.
        let key = self.conns.vacant_key();
        let h = self.io.ring.adopt(key as u64, fd);
        let mut handle = Handle {
            fd: h,
            in_ring: 0,
            flags: 0,
            tls,
        };
        match self.io.ring.recv_multi(h) {
            Ok(()) => handle.flags |= RECV_ARMED,
            Err(e) => {
                tracing::warn!(error = %e, "arming recv failed");
                let _ = self.io.ring.close(h);
                self.unadmit(ip);
                return false;
            }
        }
        self.insert_conn(key, handle, ip, t);
        true
    }

    /// Input for connection `key`; while it is in its handshake and the
    /// limit is `auto`, the time it takes counts as handshake work (as the
    /// epoll loop's `read_measured`).
    fn on_received(&mut self, key: usize, buf: RecvBuf, now: Instant, t: Now) {
        let handshaking = self.measuring_handshakes()
            && self.conns.get(key).is_some_and(|c| c.session.handshaking);
        if !handshaking {
            return self.take_received(key, buf, now, t);
        }
        let start = Instant::now();
        self.take_received(key, buf, now, t);
        let end = Instant::now();
        self.handshake_work(end - start, 0, end);
    }

    fn take_received(&mut self, key: usize, buf: RecvBuf, now: Instant, t: Now) {
        let Some(conn) = self.conns.get(key).filter(|c| !c.stream.has(CLOSING)) else {
            return;
        };
        if !conn.session.wants_read() || self.io.held.contains_key(&key) {
            // Paused: the recv's cancel is on its way; keep this input, in
            // order, for when reading resumes.
            if conn.session.wants_read() || !conn.session.reads_done() {
                self.io
                    .held
                    .entry(key)
                    .or_default()
                    .bytes
                    .extend_from_slice(&buf);
            }
            return;
        }
        let alive = if conn.stream.tls.is_some() {
            self.tls_input(key, buf, now, t)
        } else {
            // The session unmasks in place; the ring's buffer goes back at
            // once.
            let n = buf.len();
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch[..n].copy_from_slice(&buf);
            drop(buf);
            let alive = self.on_input(key, &mut scratch[..n], now, t);
            self.scratch = scratch;
            alive
        };
        if !alive || !self.flush(key) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let h = &mut conn.stream;
        if !conn.session.wants_read() && h.has(RECV_ARMED) && !h.has(RECV_CANCELING) {
            // Backpressure (or nothing more to read): stop the multishot;
            // what is already on its way is still handed to the session.
            h.flags |= RECV_CANCELING;
            let _ = self.io.ring.cancel_recv(h.fd);
        }
    }

    /// Ciphertext received on TLS connection `key`: decrypted, the records
    /// that produced (handshake flights, tickets, an alert) handed to the
    /// ring at once, ahead of any reply, and the plaintext handed to the
    /// session; close_notify is its EOF, a TLS error closes it (after the
    /// alert). Returns false if the connection is gone or closing.
    ///
    /// `bytes` (a received buffer) is dropped, and so given back to the
    /// ring, as soon as it is decrypted.
    fn tls_input<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        key: usize,
        bytes: B,
        now: Instant,
        t: Now,
    ) -> bool {
        let (Some(tw), Some(conn)) = (self.tls.as_mut(), self.conns.get_mut(key)) else {
            return false;
        };
        let Some(tls) = conn.stream.tls.as_deref_mut() else {
            return false;
        };
        if bytes.is_empty() {
            return true;
        }
        let mut records = Vec::new();
        let fill = |b: &mut [u8]| {
            b.copy_from_slice(&bytes);
            Ok(bytes.len())
        };
        let read = tw.read(tls, bytes.len(), fill, &mut records, &self.stats);
        drop(bytes);
        let sent = self.io.sink(&mut conn.stream).send_records(records);
        match read {
            TlsReadResult::Bytes { peer_closed, .. } if sent.is_ok() => {
                if !self.take_plaintext(key, now, t) {
                    return false;
                }
                if peer_closed {
                    self.on_close_notify(key, t);
                }
                self.conns.get(key).is_some_and(|c| !c.stream.has(CLOSING))
            }
            // A TLS error (its alert is on its way), or records the ring
            // refused.
            _ => {
                self.close_now(key);
                false
            }
        }
    }

    fn on_recv_ended(&mut self, key: usize, reason: EndReason, t: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.stream.flags &= !(RECV_ARMED | RECV_CANCELING);
        if conn.stream.has(CLOSING) {
            return;
        }
        match reason {
            EndReason::NoBuffers | EndReason::Terminated | EndReason::Canceled => {
                self.io.rearm.push(key)
            }
            EndReason::Eof | EndReason::Error(_) => match self.io.held.get_mut(&key) {
                // The FIN comes after the held input.
                Some(held) => held.eof = true,
                None => self.on_eof(key, t),
            },
        }
    }

    /// Hands a resumed connection its held input, a scratch buffer at a
    /// time while it keeps reading. Returns true when none is left.
    fn feed_held(&mut self, key: usize, now: Instant, t: Now) -> bool {
        let Some(mut held) = self.io.held.remove(&key) else {
            return true;
        };
        let mut at = 0;
        while at < held.bytes.len() {
            if !self.conns.get(key).is_some_and(|c| c.session.wants_read()) {
                break;
            }
            let end = held.bytes.len().min(at + self.scratch.len());
            let alive = if self.conns.get(key).is_some_and(|c| c.stream.tls.is_some()) {
                self.tls_input(key, &held.bytes[at..end], now, t)
            } else {
                self.on_input(key, &mut held.bytes[at..end], now, t)
            };
            at = end;
            if !alive || !self.flush(key) {
                return false;
            }
        }
        if at < held.bytes.len() {
            held.bytes.drain(..at);
            self.io.held.insert(key, held);
            return false;
        }
        if held.eof {
            self.on_eof(key, t);
            return false;
        }
        true
    }

    fn on_send_failed(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.stream.in_ring = 0;
            self.io.end_linger(&mut conn.stream);
        }
        self.close_now(key);
    }

    fn on_sent(&mut self, key: usize, n: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let h = &mut conn.stream;
        h.in_ring = h
            .in_ring
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        if h.has(CLOSING) {
            if h.in_ring == 0 {
                self.io.end_linger(h);
            }
            return;
        }
        if h.in_ring == 0 && h.has(FIN_PENDING) && shutdown_write(&self.io.ring, h).is_err() {
            self.close_now(key);
            return;
        }
        // All sent, or room again: write the session's queue (like a
        // writable edge on the epoll loop). With nothing queued this still
        // lifts a backpressure pause that a fan-out write ended.
        let room_below = if h.tls.is_some() {
            TLS_WINDOW
        } else {
            SEND_WINDOW / 2
        };
        if (conn.session.wants_write() && h.in_ring < room_below) || h.in_ring == 0 {
            // Room again: the session's queue goes out (like a writable
            // edge on the epoll loop).
            self.flush(key);
        }
    }

    /// Re-arms the multishot recvs that ended for want of buffers, by the
    /// kernel, or by a backpressure pause that has eased.
    fn rearm_reads(&mut self, now: Instant, t: Now) {
        if self.io.ring.buffers_lent() >= u32::from(self.io.ring.buffers_total()) {
            // Every buffer is in the backlog: a recv armed now would end
            // with ENOBUFS at once. The backlog is worked off next turn
            // (which does not sleep while connections wait here).
            return;
        }
        let mut keys = std::mem::take(&mut self.io.rearm);
        keys.append(&mut self.read_again);
        for key in keys.drain(..) {
            if !self.feed_held(key, now, t) {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let h = &mut conn.stream;
            if h.has(CLOSING) || h.has(RECV_ARMED) || !conn.session.wants_read() {
                continue;
            }
            if self.io.ring.recv_multi(h.fd).is_ok() {
                h.flags |= RECV_ARMED;
            }
        }
        self.io.rearm = keys;
    }

    /// Flushes the connections whose sends could not be queued last time
    /// (rare: only while the kernel's completion queue overflowed).
    fn retry_stalled(&mut self) {
        if !std::mem::take(&mut self.io.stalled) {
            return;
        }
        let keys: Vec<usize> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.stream.has(STALLED))
            .map(|(k, c)| {
                c.stream.flags &= !STALLED;
                k
            })
            .collect();
        for key in keys {
            self.flush(key);
        }
    }

    /// Out of descriptors: close the listener so the kernel hands new
    /// connections to the other listeners on the port (as the epoll loop
    /// does), and bind a fresh one after `REJOIN_RETRY`.
    fn leave_group(&mut self, now: Instant) {
        self.stats.accept_backoffs.inc();
        if let Some(l) = self.io.listener.take() {
            let _ = self.io.ring.close(l);
        }
        self.io.accept_rearm = None;
        self.io.rejoin_at = Some(now + REJOIN_RETRY);
        tracing::warn!(
            worker = self.id,
            open = self.conns.len(),
            "out of descriptors: this worker stops listening until it has room; \
             new connections go to the other listeners on the port \
             (raise LimitNOFILE / ulimit -n)"
        );
    }

    fn maybe_rejoin(&mut self, now: Instant) {
        let (Some(at), Some(addr)) = (self.io.rejoin_at, self.io.listen_addr) else {
            return;
        };
        if now < at || self.drain.started() {
            return;
        }
        self.io.rejoin_at = Some(now + REJOIN_RETRY);
        let Ok(l) = bind_reuseport_with(addr, &self.io.listen_options) else {
            return;
        };
        let fd = self.io.ring.adopt(LISTENER, l.into());
        if self.io.ring.accept_multi(fd).is_ok() {
            tracing::info!(worker = self.id, open = self.conns.len(), "listening again");
            self.io.listener = Some(fd);
            self.io.rejoin_at = None;
        } else {
            let _ = self.io.ring.close(fd);
        }
    }

    fn maybe_rearm_accept(&mut self, now: Instant) {
        self.maybe_rejoin(now);
        let (Some(at), Some(l)) = (self.io.accept_rearm, self.io.listener) else {
            return;
        };
        if now < at {
            return;
        }
        self.io.accept_rearm = None;
        if let Err(e) = self.io.ring.accept_multi(l) {
            tracing::warn!(worker = self.id, error = %e, "re-arming accept failed");
            self.io.accept_rearm = Some(now + ACCEPT_BACKOFF);
        }
    }

    /// The ring's counters, as the worker's metrics.
    fn publish_ring_stats(&mut self) {
        let s = self.io.ring.stats();
        self.stats.uring_enters.set(s.enters);
        self.stats.uring_sqes.set(s.sqes);
        self.stats.uring_cqes.set(s.cqes);
        self.stats.uring_cq_overflows.set(s.cq_overflow_seen);
        self.stats.uring_enobufs.set(s.enobufs);
        self.stats.uring_short_sends.set(s.short_sends);
        self.stats
            .uring_buffers_lent
            .set(u64::from(self.io.ring.buffers_lent()));
    }
}

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
    broadcast_result_frame, deliver_to_topic, LocalBroadcast, PendingResult, PubSubCx,
    PubSubLimits,
};
use crate::config::Config;
use crate::protocol::handshake::HandshakeConfig;
use crate::protocol::message::PartialPool;
use crate::protocol::{CloseCode, ReceiverLimits};
use crate::pubsub::outbox::{FramesFor, Outbox};
use crate::pubsub::topics::LocalTopics;
use crate::pubsub::{Delivery, Hub, Notify, WorkerMsg};

use super::conn::{Conn, Ctx, Phase, Transition};
use super::deadline::DeadlineQueue;
use super::stats::WorkerStats;
use super::write_queue::{Chunk, WriteQueue};

pub(crate) const LISTENER: Token = Token(usize::MAX);
pub(crate) const WAKER: Token = Token(usize::MAX - 1);

/// Per-read scratch size: one read takes at most this much from a socket.
const SCRATCH_BYTES: usize = 64 * 1024;
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

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    next_serial: u32,
    scratch: Box<[u8]>,
    out: Vec<u8>,
    pool: PartialPool,
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
    handshake_deadlines: DeadlineQueue,
    close_deadlines: DeadlineQueue,
    accept_pending: bool,
    accept_paused_until: Option<Instant>,
    last_backoff_log: Option<Instant>,
    draining_until: Option<Instant>,
    /// Connections whose reading was paused and may resume.
    resume: Vec<usize>,
}

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
        config: Arc<Config>,
        stats: Arc<WorkerStats>,
        inbox: Inbox<WorkerMsg>,
        hub: Arc<Hub>,
    ) -> io::Result<Worker> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let limits = ReceiverLimits {
            max_frame_bytes: config.max_message_size,
            max_message_bytes: config.max_message_size,
            max_fragments: config.max_fragments,
        };
        let handshake = HandshakeConfig {
            path: config.path.clone(),
            max_head_bytes: config.max_request_head,
            subprotocols: Vec::new(),
        };
        let pubsub_limits = PubSubLimits {
            max_topic_bytes: config.max_topic_bytes,
            max_subscriptions: config.max_subscriptions,
        };
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            next_serial: 0,
            scratch: vec![0u8; SCRATCH_BYTES].into_boxed_slice(),
            out: Vec::with_capacity(FLUSH_AT),
            pool: PartialPool::default(),
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
            handshake_deadlines: DeadlineQueue::default(),
            close_deadlines: DeadlineQueue::default(),
            // Connections may have queued before the first poll.
            accept_pending: true,
            accept_paused_until: None,
            last_backoff_log: None,
            draining_until: None,
            resume: Vec::new(),
        })
    }

    /// Runs the event loop until shutdown has drained.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
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
            while let Some(key) = self.resume.pop() {
                self.on_readable(key, true);
            }
            if self.accept_pending {
                self.accept_batch();
            }
            let now = Instant::now();
            self.check_pending(now);
            self.flush_outbox();
            self.expire(now);
            if let Some(until) = self.draining_until {
                if self.conns.is_empty() || now >= until {
                    break;
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_now(key);
        }
        tracing::debug!(worker = self.id, "worker stopped");
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.inbox_more
            || (self.accept_pending && self.accept_paused_until.is_none() && self.listener.is_some())
        {
            return Some(Duration::ZERO);
        }
        let mut next: Option<Instant> = None;
        let candidates = [
            self.handshake_deadlines.next(),
            self.close_deadlines.next(),
            self.accept_paused_until,
            self.draining_until,
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
                Ok((stream, _peer)) => self.add_conn(stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if is_descriptor_exhaustion(&e) => {
                    // Spinning on accept would burn a core; connections wait
                    // in the kernel backlog until descriptors free up.
                    self.stats.accept_backoffs.inc();
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    if self
                        .last_backoff_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5))
                    {
                        self.last_backoff_log = Some(now);
                        tracing::warn!(
                            worker = self.id,
                            open = self.conns.len(),
                            error = %e,
                            "out of descriptors: accepting paused (raise LimitNOFILE / ulimit -n)"
                        );
                    }
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

    fn add_conn(&mut self, mut stream: TcpStream, now: Instant) {
        self.stats.accepted.inc();
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY failed");
        }
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
            return;
        }
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        entry.insert(Conn::new(stream, serial));
        self.stats.open.inc();
        self.handshake_deadlines
            .push(now + self.config.handshake_timeout, key, serial);
    }

    /// Reads until the socket is drained (or reading is paused), handling
    /// each chunk as it arrives, then flushes the replies.
    fn on_readable(&mut self, key: usize, read_closed: bool) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.read_paused {
                break;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => {
                    self.stats.bytes_in.add(n as u64);
                    let mut cx = Ctx {
                        out: &mut self.out,
                        pool: &mut self.pool,
                        limits: &self.limits,
                        handshake: &self.handshake,
                        stats: &self.stats,
                        app: self.config.app,
                        pubsub: PubSubCx {
                            worker: self.id,
                            hub: &self.hub,
                            topics: &mut self.topics,
                            outbox: &mut self.outbox,
                            pending: &mut self.pending,
                            broadcasts: &mut self.broadcasts,
                            limits: self.pubsub_limits,
                        },
                    };
                    let transition = conn.on_bytes(key, &mut self.scratch[..n], &mut cx);
                    if transition == Transition::StartedClosing {
                        let at = Instant::now() + self.config.close_timeout;
                        self.close_deadlines.push(at, key, conn.serial);
                    }
                    if !self.broadcasts.is_empty() {
                        self.deliver_local_broadcasts();
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
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close_now(key);
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

    /// The peer closed its side.
    fn on_eof(&mut self, key: usize) {
        // In any phase there is nothing more to do: an open connection lost
        // its peer without a close frame, a closing one got its answer.
        self.out.clear();
        self.close_now(key);
    }

    /// Writes pending output (the shared `out` buffer, then/or the queue).
    /// Returns false if the connection was closed.
    fn flush(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            self.out.clear();
            return false;
        };
        let result = write_out(conn, &self.out);
        self.out.clear();
        match result {
            Ok(n) => self.stats.bytes_out.add(n as u64),
            Err(_) => {
                self.close_now(key);
                return false;
            }
        }
        if let Phase::Closing { write_shut: false } = conn.phase {
            if conn.wq.is_none() {
                // Everything including our close frame is out: send FIN, and
                // wait for the peer's FIN (closing first is the server's job).
                if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close_now(key);
                    return false;
                }
                conn.phase = Phase::Closing { write_shut: true };
            }
        }
        // Backpressure: a client that sends faster than it reads is not read
        // from while its replies exceed the cap; TCP pushes back on it.
        let queued = conn.queued_bytes();
        let cap = self.config.max_outbound_bytes;
        if queued > cap {
            conn.read_paused = true;
        } else if conn.read_paused && queued <= cap / 2 {
            conn.read_paused = false;
            self.resume.push(key);
        }
        true
    }

    fn close_now(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            for id in conn.topics.drain(..) {
                if let Some(name) = self.topics.leave(id, key as u32) {
                    self.hub.directory.leave(&name, self.id);
                }
            }
            conn.release(&mut self.pool);
            // Dropping the stream closes the descriptor, which also removes
            // it from the epoll set.
            self.stats.open.sub(1);
            self.stats.closed.inc();
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(e) = self.handshake_deadlines.pop_expired(now) {
            let timed_out = self
                .conns
                .get(e.key)
                .is_some_and(|c| c.serial == e.serial && c.phase == Phase::Handshake);
            if timed_out {
                self.stats.handshake_timeouts.inc();
                self.close_now(e.key);
            }
        }
        // While draining for shutdown, the drain timeout governs instead.
        if self.draining_until.is_none() {
            while let Some(e) = self.close_deadlines.pop_expired(now) {
                let stuck = self.conns.get(e.key).is_some_and(|c| {
                    c.serial == e.serial && matches!(c.phase, Phase::Closing { .. })
                });
                if stuck {
                    self.close_now(e.key);
                }
            }
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
                WorkerMsg::Deliver(d) => self.deliver_from_inbox(d),
                WorkerMsg::TicketDone { pending } => self.complete_pending(pending),
                WorkerMsg::Shutdown => self.begin_shutdown(),
            }
        }
        // Batch used up: come back after serving sockets.
        self.inbox_more = true;
    }

    /// A publish or broadcast from another thread, for our connections.
    fn deliver_from_inbox(&mut self, d: Delivery) {
        let count = match &d.topic {
            Some(topic) => match self.topics.id_of(topic) {
                Some(id) => deliver_to_topic(&self.topics, &mut self.outbox, id, d.frame),
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

    /// The local part of broadcasts our own clients sent.
    fn deliver_local_broadcasts(&mut self) {
        let mut list = std::mem::take(&mut self.broadcasts);
        for b in list.drain(..) {
            let count = self.deliver_to_all(b.frame);
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

    /// Writes this iteration's fan-out: one vectored write per connection
    /// carrying every frame queued for it.
    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let cap = self.config.max_outbound_bytes;
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
            let frames = self.outbox.frames_for(key);
            self.stats.messages_out.add(frames.clone().count() as u64);
            match write_frames(conn, frames) {
                Ok(n) => self.stats.bytes_out.add(n as u64),
                Err(_) => {
                    failed.push(key);
                    continue;
                }
            }
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
        tracing::debug!(worker = self.id, key, queued = conn.queued_bytes(), "slow consumer");
        // Free the queue at once, except the rest of a frame already half
        // sent (cutting it would corrupt the stream before the close frame).
        if let Some(wq) = conn.wq.as_mut() {
            wq.drop_unstarted();
            if wq.is_empty() {
                conn.wq = None;
            }
        }
        conn.start_close(CloseCode::POLICY_VIOLATION, "slow consumer", &mut self.out);
        let at = Instant::now() + self.config.close_timeout;
        self.close_deadlines.push(at, key, conn.serial);
        self.flush(key);
    }

    /// Stops accepting and says goodbye (1001) to every connection; the loop
    /// exits when all are closed or the drain timeout passes.
    fn begin_shutdown(&mut self) {
        if self.draining_until.is_some() {
            return;
        }
        let now = Instant::now();
        self.draining_until = Some(now + self.config.drain_timeout);
        if let Some(mut l) = self.listener.take() {
            // Closing the listener makes the kernel route new connections to
            // the other processes bound to the port.
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match conn.phase {
                Phase::Handshake => self.close_now(key),
                Phase::Open => {
                    // Fan-out already queued for this client goes out first.
                    conn.start_close(CloseCode::GOING_AWAY, "server shutting down", &mut self.out);
                    self.flush(key);
                }
                Phase::Closing { .. } => {}
            }
        }
    }
}

/// Writes `out` after anything already queued; queues what the socket
/// refuses. Returns the bytes written.
fn write_out(conn: &mut Conn, out: &[u8]) -> io::Result<usize> {
    if let Some(wq) = conn.wq.as_mut() {
        if !out.is_empty() {
            wq.push(Chunk::Owned(out.to_vec()));
        }
        let n = wq.write_to(&mut conn.stream)?;
        if wq.is_empty() {
            conn.wq = None;
        }
        return Ok(n);
    }
    let mut written = 0;
    while written < out.len() {
        match conn.stream.write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if written < out.len() {
        let mut wq = Box::<WriteQueue>::default();
        wq.push(Chunk::Owned(out[written..].to_vec()));
        conn.wq = Some(wq);
    }
    Ok(written)
}

/// Writes fan-out frames after anything already queued: straight to the
/// socket with one `writev` when nothing is queued, queueing (by reference)
/// whatever the socket refuses. Returns the bytes written.
fn write_frames(conn: &mut Conn, frames: FramesFor<'_>) -> io::Result<usize> {
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
            match conn.stream.write_vectored(&slices[..n]) {
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
    let wq = conn.wq.as_mut().map(|q| q.write_to(&mut conn.stream));
    let more = match wq {
        Some(r) => r?,
        None => 0,
    };
    if conn.wq.as_ref().is_some_and(|q| q.is_empty()) {
        conn.wq = None;
    }
    Ok(written + more)
}

//! The admin HTTP listener: the publish API for backends, metrics and health
//! checks, served by one thread with its own `mio` loop.
//!
//! Owns the admin port's connections: accepting within a cap, reading each
//! request within a deadline, waiting for publish counts without blocking
//! anyone else, writing answers. It reaches the workers only through the hub
//! and never touches a client connection. Routing lives in [`routes`], the
//! HTTP wire rules in [`http`].
//!
//! - `POST /publish?topic=T` (body: JSON payload) → `{"delivered":N}`
//! - `POST /publish?user=U` → to every connection of user U (JWT `sub`)
//! - `POST /broadcast` (body: JSON payload) → `{"delivered":N}`
//! - `GET /presence?topic=T[&users=1]` → cluster-wide subscriptions (and users)
//! - `GET /metrics` → Prometheus text format
//! - `GET /healthz` → 200 while the process runs, 503 once a worker died
//! - `GET /readyz` → 200 while accepting, 503 while draining or a worker died
//! - `POST /drain` → 202: `/readyz` answers 503 from now on, the workers
//!   close their connections (spread over `--drain-spread`) and the process
//!   exits as on SIGTERM
//!
//! With `--admin-tls-cert`/`--admin-tls-key` every path is served over HTTPS
//! only (see [`stream`]); the request deadline runs from accept, so it bounds
//! the TLS handshake too.
//!
//! Why one event loop rather than a thread per connection: a client that
//! announces a body and never sends it, or simply holds connections open,
//! must not take threads (or the health checks) with it. Every connection
//! has a deadline, their number is capped (the oldest unfinished request
//! makes room for a new one), and a publish waiting for delivery counts
//! holds a channel, not a thread.

mod http;
mod routes;
mod stream;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::metrics::MetricsSource;
use crate::pubsub::Hub;
use http::{parse_head, Head, Response};
use routes::Outcome;
use stream::AdminStream;

/// Admin connections held at once; past it the oldest one still sending its
/// request is closed to make room (health checks always get in).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for the workers' delivery counts.
const COUNT_WAIT: Duration = Duration::from_secs(5);
/// How long an answer may take to be read by the client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long unread request bytes are drained before the
/// socket closes (closing with unread bytes would reset the connection and
/// could destroy the answer in flight).
const LINGER: Duration = Duration::from_secs(1);
/// How often waiting publishes are checked for their counts.
const COUNT_POLL: Duration = Duration::from_millis(2);

const LISTENER: Token = Token(usize::MAX);
const WAKER: Token = Token(usize::MAX - 1);

/// Why the admin listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    #[error("--admin-token-file {}: {source}", path.display())]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--admin-token-file {} is empty", path.display())]
    EmptyToken { path: std::path::PathBuf },
    #[error("admin listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

pub struct AdminServer {
    addr: SocketAddr,
    draining: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// What request handling reads.
pub(crate) struct Shared {
    hub: Arc<Hub>,
    metrics: MetricsSource,
    config: Arc<Config>,
    draining: Arc<AtomicBool>,
    /// Tells whoever runs the server that `POST /drain` was called.
    drain_requested: crossbeam_channel::Sender<()>,
    /// `--admin-token-file`'s token.
    token: Option<String>,
    /// `--admin-tls-cert`: the admin API speaks HTTPS only.
    tls: Option<crate::tls::TlsContext>,
}

enum State {
    /// The request (head, then body) is arriving.
    Reading { continue_sent: bool },
    /// A publish waits for the workers' delivery count.
    Counting(Receiver<u64>),
    /// A blocking answer (presence) is being made on its own thread.
    Answering(Receiver<Response>),
    /// The answer is being written.
    Writing { out: Vec<u8>, pos: usize },
    /// Answered; the rest of the request is read and dropped until EOF.
    Lingering,
}

struct Conn {
    stream: AdminStream,
    buf: Vec<u8>,
    head: Option<Head>,
    state: State,
    accepted: Instant,
    deadline: Instant,
}

impl AdminServer {
    pub fn start(
        addr: SocketAddr,
        hub: Arc<Hub>,
        config: Arc<Config>,
        metrics: MetricsSource,
        drain_requested: crossbeam_channel::Sender<()>,
        tls: Option<crate::tls::TlsContext>,
    ) -> Result<AdminServer, AdminStartError> {
        let token = match &config.admin_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let listen = |source| AdminStartError::Listen { addr, source };
        // SO_REUSEPORT like the public port, so a new process can start on
        // the same admin address during a zero-downtime restart; the kernel
        // spreads requests over both until the old one exits.
        let std_listener = crate::server::listener::bind_reuseport(addr).map_err(listen)?;
        let addr = std_listener.local_addr().map_err(listen)?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new().map_err(listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(listen)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(listen)?);
        let draining = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            hub,
            metrics,
            config,
            draining: draining.clone(),
            drain_requested,
            token,
            tls,
        };
        let mut admin = Loop {
            poll,
            listener,
            conns: Slab::new(),
            shared,
            stop: stop.clone(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
        };
        let thread = std::thread::Builder::new()
            .name("wsgate-admin".into())
            .spawn(move || admin.run())
            .map_err(listen)?;
        Ok(AdminServer {
            addr,
            draining,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/readyz` reports 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Stops the loop and waits for it: the listener is closed (and out of
    /// the port's SO_REUSEPORT group) when this returns.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "waking the admin loop failed");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the bearer token; an empty file is a mistake, not "no token".
fn read_token(path: &std::path::Path) -> Result<String, AdminStartError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdminStartError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminStartError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    shared: Shared,
    stop: Arc<AtomicBool>,
    buf: Box<[u8]>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, Some(self.timeout(now))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "admin poll failed; the admin listener stops");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => self.on_event(key),
                }
            }
            self.check_counts();
            self.expire(Instant::now());
        }
        // Dropping the loop closes the listener and every connection.
    }

    fn timeout(&self, now: Instant) -> Duration {
        let mut next = now + Duration::from_secs(1);
        for (_, c) in &self.conns {
            if matches!(c.state, State::Counting(_) | State::Answering(_)) {
                return COUNT_POLL;
            }
            next = next.min(c.deadline);
        }
        next.saturating_duration_since(now)
    }

    fn accept(&mut self) {
        loop {
            let (tcp, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS && !self.evict_oldest_reader() {
                // Every slot is answering: this one waits for none.
                self.shared
                    .metrics
                    .admin
                    .evicted
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let tls = self.shared.tls.as_ref().map(|t| t.server_config());
            let mut stream = match AdminStream::new(tcp, tls) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "admin TLS set-up failed");
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                stream.tcp(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::debug!(error = %e, "admin register failed");
                continue;
            }
            let now = Instant::now();
            entry.insert(Conn {
                stream,
                buf: Vec::new(),
                head: None,
                state: State::Reading {
                    continue_sent: false,
                },
                accepted: now,
                deadline: now + REQUEST_TIMEOUT,
            });
        }
    }

    /// Closes the connection that has been sending its request longest.
    fn evict_oldest_reader(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Reading { .. } | State::Lingering))
            .min_by_key(|(_, c)| c.accepted)
            .map(|(k, _)| k);
        match oldest {
            Some(k) => {
                self.conns.remove(k);
                self.shared
                    .metrics
                    .admin
                    .evicted
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn on_event(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.state {
            State::Reading { .. } | State::Lingering => self.read(key),
            State::Writing { .. } => self.write(key),
            State::Counting(_) | State::Answering(_) => {}
        }
    }

    /// Reads what arrived; answers once the request is complete.
    fn read(&mut self, key: usize) {
        let limit = self.shared.config.message_limit();
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            match conn.stream.read(&mut self.buf) {
                Ok(0) => {
                    // The peer is done sending: nothing more can complete
                    // the request, and a lingering socket may close.
                    self.conns.remove(key);
                    return;
                }
                Ok(n) => {
                    if matches!(conn.state, State::Lingering) {
                        continue;
                    }
                    conn.buf.extend_from_slice(&self.buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conns.remove(key);
                    return;
                }
            }
            if self.conns.get(key).is_some_and(|c| c.head.is_none()) {
                if let Some(resp) = self.take_head(key, limit) {
                    return self.answer(key, resp);
                }
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if let Some(head) = &conn.head {
                let need = head.len as u64 + head.body_len;
                if conn.buf.len() as u64 >= need {
                    return self.complete(key);
                }
            }
        }
    }

    /// Parses the head once it is in; returns an answer if the request ends
    /// there (refused, or not allowed).
    fn take_head(&mut self, key: usize, limit: u64) -> Option<Response> {
        let conn = self.conns.get_mut(key)?;
        let head = match parse_head(&conn.buf) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => return Some(Response::error(e.status(), &e.to_string())),
        };
        if !routes::authorized(&self.shared, &head) {
            self.shared
                .metrics
                .admin
                .unauthorized
                .fetch_add(1, Ordering::Relaxed);
            return Some(
                Response::error(401, "missing or wrong bearer token")
                    .with_header("WWW-Authenticate", "Bearer"),
            );
        }
        if head.body_len > limit {
            return Some(Response::error(413, &format!("body exceeds {limit} bytes")));
        }
        let waiting_for_body = (conn.buf.len() as u64) < head.len as u64 + head.body_len;
        if head.expects_continue && waiting_for_body {
            if let State::Reading { continue_sent } = &mut conn.state {
                if !*continue_sent {
                    *continue_sent = true;
                    // 25 bytes into an empty socket buffer: it fits.
                    let _ = conn.stream.write(http::CONTINUE);
                }
            }
        }
        conn.head = Some(head);
        None
    }

    /// The whole request is in: route it.
    fn complete(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(head) = conn.head.take() else {
            return;
        };
        let end = head.len + head.body_len as usize;
        let body = conn.buf.get(head.len..end).unwrap_or(&[]);
        match routes::route(&self.shared, &head, body) {
            Outcome::Now(resp) => self.answer(key, resp),
            Outcome::Counting(rx) => {
                conn.buf = Vec::new();
                conn.state = State::Counting(rx);
                conn.deadline = Instant::now() + COUNT_WAIT;
            }
            Outcome::Answering(rx) => {
                conn.buf = Vec::new();
                conn.state = State::Answering(rx);
                conn.deadline = Instant::now() + COUNT_WAIT;
            }
        }
    }

    fn answer(&mut self, key: usize, resp: Response) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.buf = Vec::new();
        conn.state = State::Writing {
            out: resp.encode(),
            pos: 0,
        };
        conn.deadline = Instant::now() + WRITE_TIMEOUT;
        self.write(key);
    }

    fn write(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let State::Writing { out, pos } = &mut conn.state else {
            return;
        };
        while *pos < out.len() {
            match conn.stream.write(&out[*pos..]) {
                Ok(0) => break,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.conns.remove(key);
                    return;
                }
            }
        }
        // Over TLS the last records may still wait for room in the socket.
        match conn.stream.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.conns.remove(key);
                return;
            }
        }
        // All out: FIN, then drop whatever else the client sends until its
        // EOF (or the linger time).
        conn.stream.shutdown_write();
        conn.state = State::Lingering;
        conn.deadline = Instant::now() + LINGER;
        self.read(key);
    }

    /// Answers publishes whose counts have arrived.
    fn check_counts(&mut self) {
        let mut done = Vec::new();
        for (key, c) in &self.conns {
            match &c.state {
                State::Counting(rx) => match rx.try_recv() {
                    Ok(n) => done.push((key, routes::delivered(n))),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => done.push((
                        key,
                        Response::error(504, "workers did not confirm delivery in time"),
                    )),
                },
                State::Answering(rx) => match rx.try_recv() {
                    Ok(resp) => done.push((key, resp)),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => {
                        done.push((key, Response::error(500, "no answer was made")))
                    }
                },
                _ => {}
            }
        }
        for (key, resp) in done {
            self.answer(key, resp);
        }
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in due {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            match conn.state {
                State::Reading { .. } => {
                    self.shared
                        .metrics
                        .admin
                        .timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    self.answer(key, Response::error(408, "request not received in time"));
                }
                State::Counting(_) => self.answer(
                    key,
                    Response::error(504, "workers did not confirm delivery in time"),
                ),
                State::Answering(_) => self.answer(key, Response::error(504, "no answer in time")),
                State::Writing { .. } | State::Lingering => {
                    self.conns.remove(key);
                }
            }
        }
    }
}

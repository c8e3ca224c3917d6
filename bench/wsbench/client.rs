//! The load generator's connection engine: many WebSocket client
//! connections on one mio event loop, with no buffer held by an idle one.
//!
//! Owns connecting (from a rotating set of source addresses, bound before
//! connect so ephemeral ports last), the upgrade (request, 101 check, accept
//! key check), masked client frames, answering pings, and turning server
//! text frames into small events the scenarios consume. Scenarios decide
//! what to send and when; they never touch sockets.
//!
//! wss://: each connection then carries a buffered rustls `ClientConnection`
//! (boxed, so a plain connection pays one pointer for it). The upgrade
//! request is queued as plaintext as soon as TCP connects and goes out when
//! the TLS handshake completes; everything above the TLS layer is the same
//! as for ws://. An idle TLS connection keeps rustls' session state and its
//! 4 KiB receive buffer (rustls shrinks it back when empty).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use rustls_pki_types::ServerName;
use slab::Slab;
use wsgate::protocol::deflate::Inflater;
use wsgate::protocol::frame::{write_client_frame, FrameHeader, OpCode, Role};
use wsgate::protocol::handshake::accept_key;

use crate::results::TlsHandshakes;
use crate::tls;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshaking,
    Open,
}

struct Conn {
    stream: TcpStream,
    state: State,
    /// Index of the key used in the upgrade (derived, not stored).
    key_seed: u32,
    /// Bytes of an incomplete response head or frame.
    rx: Option<Vec<u8>>,
    /// Bytes the socket did not take (ws:// only: rustls keeps what the
    /// socket did not take of a TLS connection).
    tx: Option<Vec<u8>>,
    /// The TLS session of a wss:// connection, from TCP connect on.
    tls: Option<Box<ClientConnection>>,
    started: Instant,
}

/// What happened on a connection, for the scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
    Opened {
        key: usize,
        handshake: Duration,
    },
    Failed {
        reason: &'static str,
    },
    /// A text message: its `"type"` (first 24 bytes after `{"type":"`) and
    /// the first `"seq":N` number in it, if any.
    Text {
        key: usize,
        kind: MsgKind,
        seq: Option<u64>,
        /// With [`Engine::positions`] on: the history position in a
        /// `message` or `subscribed` text.
        pos: Option<Pos>,
    },
    Closed {
        key: usize,
        code: Option<u16>,
    },
}

/// A history position: `"offset":N`, `"epoch":"E"`, and
/// `"recovered":true|false` when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub offset: u64,
    pub epoch: Epoch,
    pub recovered: Option<bool>,
}

/// An epoch string, inline (no allocation per message); longer ones are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch {
    bytes: [u8; 48],
    len: u8,
}

impl Epoch {
    fn new(s: &[u8]) -> Epoch {
        let len = s.len().min(48);
        let mut bytes = [0u8; 48];
        bytes[..len].copy_from_slice(&s[..len]);
        Epoch {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

/// The position in `text`, if it has an `"offset"`.
pub fn find_pos(text: &[u8]) -> Option<Pos> {
    let offset = find_number(text, b"\"offset\":")?;
    const E: &[u8] = b"\"epoch\":\"";
    let epoch = text
        .windows(E.len())
        .rposition(|w| w == E)
        .map(|at| {
            let rest = &text[at + E.len()..];
            let end = rest.iter().position(|b| *b == b'"').unwrap_or(rest.len());
            Epoch::new(&rest[..end])
        })
        .unwrap_or(Epoch::new(b""));
    let recovered = if contains(text, b"\"recovered\":true") {
        Some(true)
    } else if contains(text, b"\"recovered\":false") {
        Some(false)
    } else {
        None
    };
    Some(Pos {
        offset,
        epoch,
        recovered,
    })
}

fn contains(text: &[u8], what: &[u8]) -> bool {
    text.windows(what.len()).any(|w| w == what)
}

/// The number after the last `key` in `text` (the server writes the
/// position after the payload, so the last one is the server's).
fn find_number(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgKind {
    Broadcast,
    BroadcastResult,
    Message,
    Subscribed,
    Echo,
    Other,
}

fn classify(text: &[u8]) -> MsgKind {
    const P: &[u8] = br#"{"type":""#;
    let Some(rest) = text.strip_prefix(P) else {
        return MsgKind::Echo; // raw echo of a non-JSON/other message
    };
    let kinds: [(&[u8], MsgKind); 5] = [
        (b"broadcastResult\"", MsgKind::BroadcastResult),
        (b"broadcast\"", MsgKind::Broadcast),
        (b"message\"", MsgKind::Message),
        (b"subscribed\"", MsgKind::Subscribed),
        (b"echo\"", MsgKind::Echo),
    ];
    kinds
        .iter()
        .find(|(p, _)| rest.starts_with(p))
        .map_or(MsgKind::Other, |(_, k)| *k)
}

/// The first `"seq":<digits>` in `text`.
pub fn find_seq(text: &[u8]) -> Option<u64> {
    const P: &[u8] = b"\"seq\":";
    let at = text.windows(P.len()).position(|w| w == P)? + P.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Offer permessage-deflate and inflate compressed (RSV1) messages.
    pub deflate: bool,
    /// wss://: the client configuration and the name the certificate must have.
    pub tls: Option<TlsTarget>,
}

/// The TLS side of a wss:// target.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

pub struct Engine {
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    target: Target,
    src_ips: Vec<IpAddr>,
    next_src: usize,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    mask_state: u32,
    pub connecting: usize,
    pub open: usize,
    pub failures: HashMap<&'static str, u64>,
    /// Parse history positions into [`Ev::Text`] (off: no cost for the
    /// scenarios that do not need them).
    pub positions: bool,
    /// Bytes read from every socket: what the server put on the wire.
    pub bytes_in: u64,
    /// Messages that arrived compressed.
    pub compressed_in: u64,
    /// wss:// connections opened with a full TLS handshake.
    pub tls_full: u64,
    /// wss:// connections opened with a resumed TLS handshake (a ticket
    /// or session from an earlier connection).
    pub tls_resumed: u64,
    /// One decompressor for all connections (the server negotiates no
    /// context takeover, so each message inflates on its own).
    inflater: Option<Box<Inflater>>,
    /// Recent compressed payloads and what they said: a fan-out message
    /// arrives as the same bytes on every connection, and inflating it
    /// 10,000 times would make the load generator, not the server, the
    /// bottleneck. Equal bytes inflate to equal text. Many, because
    /// connections may lag each other by many messages.
    seen_compressed: HashMap<Vec<u8>, (MsgKind, Option<u64>, Option<Pos>)>,
}

/// Compressed payloads remembered (see `Engine::seen_compressed`); the
/// memory is forgotten whole when it is full.
const SEEN_COMPRESSED: usize = 4096;

impl Engine {
    pub fn new(target: Target, src_ips: Vec<IpAddr>) -> io::Result<Engine> {
        Ok(Engine {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            target,
            src_ips,
            next_src: 0,
            scratch: vec![0; 256 * 1024],
            frame: Vec::with_capacity(256),
            mask_state: 0x9E37_79B9,
            connecting: 0,
            open: 0,
            failures: HashMap::new(),
            positions: false,
            bytes_in: 0,
            compressed_in: 0,
            tls_full: 0,
            tls_resumed: 0,
            inflater: None,
            seen_compressed: HashMap::new(),
        })
    }

    fn fail(&mut self, reason: &'static str, out: &mut Vec<Ev>) {
        *self.failures.entry(reason).or_default() += 1;
        out.push(Ev::Failed { reason });
    }

    fn fail_connect(&mut self, reason: &'static str, out: &mut Vec<Ev>) -> Option<usize> {
        self.fail(reason, out);
        None
    }

    /// Starts one connection (non-blocking) and returns its key. Failures
    /// show up as events (and `None`).
    pub fn connect(&mut self, out: &mut Vec<Ev>) -> Option<usize> {
        let addr = self.target.addr;
        let socket = match socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        ) {
            Ok(s) => s,
            Err(e) => return self.fail_connect(io_reason(&e), out),
        };
        if !self.src_ips.is_empty() {
            let ip = self.src_ips[self.next_src % self.src_ips.len()];
            self.next_src += 1;
            // Bind before connect so each source address has its own ports.
            // IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(),
            // which only needs the 4-tuple to be unique; a plain bind(ip, 0)
            // must find a port free for every destination and its search
            // slows to a crawl once most ports of an address are taken.
            let _ = socket.set_reuse_address(true);
            set_bind_address_no_port(&socket);
            if let Err(e) = socket.bind(&SocketAddr::new(ip, 0).into()) {
                return self.fail_connect(io_reason(&e), out);
            }
        }
        let _ = socket.set_nonblocking(true);
        let _ = socket.set_nodelay(true);
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return self.fail_connect(io_reason(&e), out),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail_connect(io_reason(&e), out);
        }
        entry.insert(Conn {
            stream,
            state: State::Connecting,
            key_seed: key as u32,
            rx: None,
            tx: None,
            tls: None,
            started: Instant::now(),
        });
        self.connecting += 1;
        Some(key)
    }

    fn ws_key(seed: u32) -> String {
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 40503) >> 8) as u8;
        }
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need not be secret for a load generator.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_ne_bytes()
    }

    /// Sends one text message on connection `key` (if open).
    pub fn send_text(&mut self, key: usize, text: &[u8]) -> bool {
        let mask = self.next_mask();
        self.frame.clear();
        write_client_frame(&mut self.frame, true, OpCode::Text, mask, text);
        let frame = std::mem::take(&mut self.frame);
        let ok = self.write(key, &frame);
        self.frame = frame;
        ok
    }

    fn write(&mut self, key: usize, bytes: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if let Some(tls) = c.tls.as_mut() {
            // Buffered by rustls (as plaintext until the handshake is done).
            return tls.writer().write_all(bytes).is_ok() && flush_tls(&mut c.stream, tls).is_ok();
        }
        if let Some(q) = c.tx.as_mut() {
            q.extend_from_slice(bytes);
            return true;
        }
        let mut done = 0;
        while done < bytes.len() {
            match c.stream.write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if done < bytes.len() {
            c.tx = Some(bytes[done..].to_vec());
        }
        true
    }

    /// The TLS handshake counts of a wss:// engine (`None` for ws://).
    pub fn tls_handshakes(&self) -> Option<TlsHandshakes> {
        self.target.tls.as_ref().map(|_| TlsHandshakes {
            tls_full: self.tls_full,
            tls_resumed: self.tls_resumed,
        })
    }

    /// Closes every connection with a close frame (1000) and drops them.
    pub fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let mut f = Vec::new();
            write_client_frame(
                &mut f,
                true,
                OpCode::Close,
                self.next_mask(),
                &1000u16.to_be_bytes(),
            );
            if self.conns[k].state == State::Open {
                self.write(k, &f);
            }
            let mut c = self.conns.remove(k);
            if let Some(tls) = c.tls.as_mut() {
                tls.send_close_notify();
                let _ = flush_tls(&mut c.stream, tls);
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        self.open = 0;
        self.connecting = 0;
    }

    pub fn keys(&self) -> Vec<usize> {
        self.conns
            .iter()
            .filter(|(_, c)| c.state == State::Open)
            .map(|(k, _)| k)
            .collect()
    }

    /// Drops connection `key` without a close frame (churn).
    pub fn drop_conn(&mut self, key: usize) {
        if let Some(c) = self.conns.try_remove(key) {
            if c.state == State::Open {
                self.open -= 1;
            } else {
                self.connecting -= 1;
            }
        }
    }

    /// Waits up to `timeout` for IO and appends what happened to `out`.
    pub fn poll(&mut self, timeout: Duration, out: &mut Vec<Ev>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (key, readable, writable) in ready {
            if writable {
                self.on_writable(key, out);
            }
            if readable {
                self.on_readable(key, out);
            }
        }
        Ok(())
    }

    fn kill(
        &mut self,
        key: usize,
        reason: Option<&'static str>,
        code: Option<u16>,
        out: &mut Vec<Ev>,
    ) {
        if let Some(c) = self.conns.try_remove(key) {
            match c.state {
                State::Open => {
                    self.open -= 1;
                    out.push(Ev::Closed { key, code });
                }
                _ => {
                    self.connecting -= 1;
                    self.fail(reason.unwrap_or("closed during handshake"), out);
                }
            }
        }
    }

    fn on_writable(&mut self, key: usize, out: &mut Vec<Ev>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.state == State::Connecting {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.kill(key, Some(io_reason(&e)), None, out),
            }
            if c.stream.peer_addr().is_err() {
                return; // not connected yet
            }
            c.state = State::Handshaking;
            if let Some(t) = &self.target.tls {
                match ClientConnection::new(t.config.clone(), t.name.clone()) {
                    Ok(mut tls) => {
                        // As unbounded as the ws:// send queue: the
                        // scenarios bound what they send.
                        tls.set_buffer_limit(None);
                        c.tls = Some(Box::new(tls));
                    }
                    Err(e) => return self.kill(key, Some(tls::failure_reason(&e)), None, out),
                }
            }
            let offer = if self.target.deflate {
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            } else {
                ""
            };
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
                self.target.path,
                self.target.host,
                Self::ws_key(c.key_seed)
            );
            if !self.write(key, req.as_bytes()) {
                self.kill(key, Some("reset"), None, out);
            }
            return;
        }
        if let Some(tls) = c.tls.as_mut() {
            if flush_tls(&mut c.stream, tls).is_err() {
                self.kill(key, Some("reset"), None, out);
            }
            return;
        }
        if let Some(mut q) = c.tx.take() {
            let mut done = 0;
            while done < q.len() {
                match c.stream.write(&q[done..]) {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return self.kill(key, Some("reset"), None, out),
                }
            }
            q.drain(..done);
            if !q.is_empty() {
                c.tx = Some(q);
            }
        }
    }

    fn on_readable(&mut self, key: usize, out: &mut Vec<Ev>) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.state == State::Connecting {
                return;
            }
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => return self.kill(key, Some("closed during handshake"), None, out),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.kill(key, Some(io_reason(&e)), None, out),
            };
            self.bytes_in += n as u64;
            let mut buf = if let Some(tls) = c.tls.as_mut() {
                let mut plain = c.rx.take().unwrap_or_default();
                let got = tls_input(tls, &self.scratch[..n], &mut plain);
                // Handshake messages, alerts, key updates it made in reply.
                let flushed = flush_tls(&mut c.stream, tls);
                if let Err(reason) = got {
                    return self.kill(key, Some(reason), None, out);
                }
                if flushed.is_err() {
                    return self.kill(key, Some("reset"), None, out);
                }
                plain
            } else {
                match c.rx.take() {
                    Some(mut b) => {
                        b.extend_from_slice(&self.scratch[..n]);
                        b
                    }
                    None => self.scratch[..n].to_vec(),
                }
            };
            let used = self.consume(key, &buf, out);
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if used < buf.len() {
                buf.drain(..used);
                c.rx = Some(buf);
            }
            if n < self.scratch.len() {
                return;
            }
        }
    }

    /// Handles whole units (response head, frames) in `buf`; returns bytes used.
    fn consume(&mut self, key: usize, buf: &[u8], out: &mut Vec<Ev>) -> usize {
        let mut pos = 0;
        if self.conns[key].state == State::Handshaking {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > 8192 {
                    self.kill(key, Some("bad response"), None, out);
                }
                return 0;
            };
            let head = &buf[..end + 4];
            if !head.starts_with(b"HTTP/1.1 101") {
                let reason = match head.get(9..12) {
                    Some(b"503") => "503 server full",
                    Some(b"429") => "429 rate limited",
                    Some(b"401") => "401 unauthorized",
                    _ => "bad status",
                };
                self.kill(key, Some(reason), None, out);
                return buf.len();
            }
            let want = accept_key(Self::ws_key(self.conns[key].key_seed).as_bytes());
            let text = String::from_utf8_lossy(head).to_ascii_lowercase();
            let ok = text.contains(&format!(
                "sec-websocket-accept: {}",
                String::from_utf8_lossy(&want).to_ascii_lowercase()
            ));
            if !ok {
                self.kill(key, Some("bad accept key"), None, out);
                return buf.len();
            }
            let c = &mut self.conns[key];
            match c.tls.as_ref().and_then(|t| t.handshake_kind()) {
                Some(HandshakeKind::Resumed) => self.tls_resumed += 1,
                Some(_) => self.tls_full += 1,
                None => {}
            }
            c.state = State::Open;
            self.connecting -= 1;
            self.open += 1;
            out.push(Ev::Opened {
                key,
                handshake: c.started.elapsed(),
            });
            pos = end + 4;
        }
        let rsv = if self.target.deflate { 0x4 } else { 0 };
        loop {
            let Ok(Some((h, n))) = FrameHeader::decode(&buf[pos..], Role::Client, rsv) else {
                return pos;
            };
            let total = n + h.payload_len as usize;
            if buf.len() - pos < total {
                return pos;
            }
            let payload = &buf[pos + n..pos + total];
            pos += total;
            match h.opcode {
                OpCode::Text | OpCode::Binary if h.rsv & 0x4 != 0 => {
                    self.compressed_in += 1;
                    let seen = self.seen_compressed.get(payload).cloned();
                    let (kind, seq, pos) = match seen {
                        Some(hit) => hit,
                        None => {
                            let inflater = self.inflater.get_or_insert_with(Default::default);
                            let Ok(text) = inflater.inflate(payload, 64 << 20) else {
                                self.kill(key, Some("bad compressed message"), None, out);
                                return buf.len();
                            };
                            let got = (
                                classify(text),
                                find_seq(text),
                                if self.positions { find_pos(text) } else { None },
                            );
                            if self.seen_compressed.len() >= SEEN_COMPRESSED {
                                self.seen_compressed.clear();
                            }
                            self.seen_compressed.insert(payload.to_vec(), got);
                            got
                        }
                    };
                    out.push(Ev::Text {
                        key,
                        kind,
                        seq,
                        pos,
                    });
                }
                OpCode::Text | OpCode::Binary => out.push(Ev::Text {
                    key,
                    kind: classify(payload),
                    seq: find_seq(payload),
                    pos: if self.positions {
                        find_pos(payload)
                    } else {
                        None
                    },
                }),
                OpCode::Ping => {
                    let mut f = Vec::new();
                    write_client_frame(&mut f, true, OpCode::Pong, self.next_mask(), payload);
                    self.write(key, &f);
                }
                OpCode::Close => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    self.kill(key, None, code, out);
                    return buf.len();
                }
                _ => {}
            }
        }
    }
}

/// Writes what rustls has for the socket until it is written or the socket
/// would block (the rest goes on the next writable event).
fn flush_tls(stream: &mut TcpStream, tls: &mut ClientConnection) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Feeds ciphertext read from the socket to rustls and appends the
/// plaintext it yields to `plain`; a TLS failure comes back as its reason.
fn tls_input(
    tls: &mut ClientConnection,
    mut cipher: &[u8],
    plain: &mut Vec<u8>,
) -> Result<(), &'static str> {
    // rustls takes at most a record's worth per read_tls, and nothing once
    // the server's close_notify came (what follows it is ignored).
    while !cipher.is_empty() {
        if tls
            .read_tls(&mut cipher)
            .map_err(|_| "tls: record too large")?
            == 0
        {
            break;
        }
        let state = tls
            .process_new_packets()
            .map_err(|e| tls::failure_reason(&e))?;
        let want = state.plaintext_bytes_to_read();
        if want > 0 {
            let at = plain.len();
            plain.resize(at + want, 0);
            tls.reader()
                .read_exact(&mut plain[at..])
                .map_err(|_| "tls: read error")?;
        }
    }
    Ok(())
}

fn io_reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => "no ephemeral port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of descriptors",
        _ => "io error",
    }
}

/// Sets IP_BIND_ADDRESS_NO_PORT. Best effort: without the option (old
/// kernels) bind still works, slower.
fn set_bind_address_no_port(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is owned by `socket` and open for this call;
    // the option value points at a live c_int whose size is passed with it.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Parses `127.0.0.2-127.0.0.40`, `127.0.0.2,127.0.0.3` or a single address.
pub fn parse_src_ips(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr =
                a.trim().parse().map_err(|_| format!("bad address {a:?}"))?;
            let b: std::net::Ipv4Addr =
                b.trim().parse().map_err(|_| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part:?}"));
            }
            out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
        } else {
            out.push(part.parse().map_err(|_| format!("bad address {part:?}"))?);
        }
    }
    for ip in &out {
        if !ip.is_loopback() {
            return Err(format!(
                "{ip} is not a loopback address (benchmarks stay on 127.0.0.0/8)"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server (rustls, on a thread) that answers the upgrade with 101,
    /// then close_notify and more bytes in the same write: rustls takes
    /// nothing after a close_notify, and the engine must not keep offering
    /// it the rest (it would spin forever on one connection).
    #[test]
    fn bytes_after_a_close_notify_do_not_stall_the_engine() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tls.read(&mut b).unwrap();
                assert!(n > 0, "client closed before its request");
                head.extend_from_slice(&b[..n]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let ws_key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim();
            let accept = String::from_utf8(accept_key(ws_key.as_bytes()).to_vec()).unwrap();
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            tls.conn.writer().write_all(reply.as_bytes()).unwrap();
            tls.conn.send_close_notify();
            let mut wire = Vec::new();
            while tls.conn.wants_write() {
                tls.conn.write_tls(&mut wire).unwrap();
            }
            // More than rustls takes in one read_tls: the start of a record.
            wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x10, 0x00]);
            wire.extend_from_slice(&[0u8; 8000]);
            tls.sock.write_all(&wire).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let options = tls::TlsOptions {
                insecure: true,
                ..tls::TlsOptions::default()
            };
            let target = Target {
                addr,
                host: addr.to_string(),
                path: "/ws".into(),
                deflate: false,
                tls: Some(TlsTarget {
                    config: tls::client_config(&options).unwrap(),
                    name: tls::server_name("127.0.0.1").unwrap(),
                }),
            };
            let mut engine = Engine::new(target, vec![]).unwrap();
            let mut out = Vec::new();
            engine.connect(&mut out);
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until
                && !out
                    .iter()
                    .any(|e| matches!(e, Ev::Closed { .. } | Ev::Failed { .. }))
            {
                engine.poll(Duration::from_millis(10), &mut out).unwrap();
            }
            let _ = tx.send(out);
        });
        let events = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the engine returns (it spun on the bytes after close_notify)");
        server.join().unwrap();
        assert!(
            matches!(events.first(), Some(Ev::Opened { .. })),
            "{events:?}"
        );
        assert!(
            matches!(events.last(), Some(Ev::Closed { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn source_ranges() {
        let v = parse_src_ips("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3].to_string(), "127.0.0.9");
        assert!(parse_src_ips("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_src_ips("10.0.0.1").is_err(), "only loopback");
        assert!(parse_src_ips("nope").is_err());
    }

    #[test]
    fn message_classification_and_seq() {
        assert_eq!(
            classify(br#"{"type":"broadcastResult","payload":1}"#),
            MsgKind::BroadcastResult
        );
        assert_eq!(
            classify(br#"{"type":"broadcast","payload":1}"#),
            MsgKind::Broadcast
        );
        assert_eq!(
            classify(br#"{"type":"message","topic":"t"}"#),
            MsgKind::Message
        );
        assert_eq!(classify(b"raw"), MsgKind::Echo);
        assert_eq!(
            find_seq(br#"{"type":"broadcast","payload":{"seq":42,"t":1}}"#),
            Some(42)
        );
        assert_eq!(find_seq(br#"{"seq":"x"}"#), None);
        assert_eq!(find_seq(b"none"), None);
        let m = br#"{"type":"message","topic":"t","payload":{"offset":1,"epoch":"x"},"offset":7,"epoch":"e"}"#;
        let p = find_pos(m).unwrap();
        assert_eq!((p.offset, p.recovered, p.epoch.as_str()), (7, None, "e"));
        let s = br#"{"type":"subscribed","topic":"t","recovered":false,"epoch":"e","offset":9}"#;
        let q = find_pos(s).unwrap();
        assert_eq!((q.offset, q.epoch, q.recovered), (9, p.epoch, Some(false)));
        assert_eq!(find_pos(br#"{"type":"message","payload":1}"#), None);
    }
}

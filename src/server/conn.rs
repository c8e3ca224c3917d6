//! One client connection (a slab entry): its socket and protocol state, and
//! what happens to the bytes it receives.
//!
//! Owns the per-connection phase machine (handshake → open → closing) and
//! turns protocol events into output bytes. It writes replies into the
//! worker's shared output buffer and never touches the socket for reading;
//! the worker owns reading, writing, timers and the slab.
//!
//! Memory: an idle open connection is this struct alone. `head` exists only
//! while an upgrade request arrives in pieces, `wq` only while the socket is
//! backed up, and the receiver's reassembly buffer only mid-message.

use std::net::IpAddr;

use mio::net::TcpStream;
use rustc_hash::FxHashMap;

use crate::app;
use crate::app::pubsub::{Allowances, Caller, PubSubCx};
use crate::config::AppKind;
use crate::escape::Esc;
use crate::protocol::close::close_payload;
use crate::protocol::deflate::{Deflater, Replies, ReplyDeflate};
use crate::protocol::frame::write_server_frame;
use crate::protocol::handshake::{
    error_response, parse_request, scan_head, write_accept_response, HandshakeConfig,
    HandshakeError,
};
use crate::protocol::message::PartialPool;
use crate::protocol::{CloseCode, Event, OpCode, Receiver, ReceiverLimits};

use super::admission::Admission;
use super::write_queue::WriteQueue;
use crate::security::{Grant, Refused, Security};
use crate::stats::WorkerStats;
use crate::timer_wheel::TimerId;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) the HTTP upgrade request.
    Handshake,
    /// Exchanging frames.
    Open,
    /// Our last bytes (a close frame or an HTTP error) are queued; data
    /// frames are no longer processed. Once the bytes are flushed: if the
    /// peer has sent its close frame the socket is closed (the server closes
    /// TCP first, RFC 6455 §7.1.1); otherwise the write side is shut down and
    /// the socket closes on the peer's close frame, its FIN, or the timeout.
    ///
    /// `peer_closed` also covers a peer whose FIN arrived while output was
    /// still queued: nothing more is read, and what is queued is still
    /// written (a half-closed peer may be reading) until the queue is empty
    /// or the close timeout passes.
    Closing { write_shut: bool, peer_closed: bool },
}

/// What the worker does when the peer's input ends (FIN or a read error),
/// after one last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEof {
    /// Nothing is owed to the peer: close the socket now.
    Close,
    /// Output is still queued: enter `phase` (read side closed, draining
    /// writes) and close once the queue is written or the close timeout
    /// passes. `start_timer` says the close timer is not running yet.
    Drain { phase: Phase, start_timer: bool },
}

impl Phase {
    /// Decides what the end of the peer's input means. Replies produced from
    /// its last bytes (the answer to its close frame, an echo) are still
    /// owed, and a half-closed peer may still be reading (RFC 6455 §5.5.1,
    /// §7.1.1), so queued output is drained, bounded by the close timeout.
    pub fn after_peer_eof(self, output_queued: bool) -> OnEof {
        if !output_queued {
            return OnEof::Close;
        }
        match self {
            // Closing already runs the close timer.
            Phase::Closing { write_shut, .. } => OnEof::Drain {
                phase: Phase::Closing {
                    write_shut,
                    peer_closed: true,
                },
                start_timer: false,
            },
            Phase::Handshake | Phase::Open => OnEof::Drain {
                phase: Phase::Closing {
                    write_shut: false,
                    peer_closed: true,
                },
                start_timer: true,
            },
        }
    }
}

/// What the worker must do after a connection handled its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Keep,
    /// The upgrade completed: start the heartbeat clock.
    Upgraded,
    /// The connection entered [`Phase::Closing`]: start its close timer.
    StartedClosing,
}

/// Inbound message rate limit (token bucket), in tokens per timer tick.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_tick: f32,
    pub burst: f32,
}

/// Per-worker state a connection borrows while it handles input.
pub struct Ctx<'a> {
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
    /// The worker's current timer tick.
    pub now_tick: u32,
    pub admission: &'a Admission,
    /// Peer address of admitted connections, kept only for the per-IP limit.
    pub peer_ips: &'a mut FxHashMap<u32, IpAddr>,
    pub rate: Option<RateLimit>,
    pub security: &'a Security,
    /// Debug builds: [`crate::config::DEBUG_PANIC_MESSAGE`] panics (tests).
    pub debug_panic: bool,
}

pub struct Conn {
    pub stream: TcpStream,
    /// Distinguishes this connection from earlier users of the same slab slot.
    pub serial: u32,
    pub phase: Phase,
    /// Reading stops while more than the outbound cap is queued (backpressure).
    pub read_paused: bool,
    pub rx: Receiver,
    /// The upgrade request so far, when it did not arrive in one read.
    pub head: Option<Vec<u8>>,
    pub wq: Option<Box<WriteQueue>>,
    /// Local topic ids this connection subscribed to (pub/sub app).
    pub topics: Vec<u32>,
    /// Its one timer: handshake, heartbeat, idle or close deadline by phase.
    pub timer: Option<TimerId>,
    /// Tick of the last traffic in either direction (pings excluded).
    pub last_activity: u32,
    /// Tick a ping went unanswered since, or 0.
    pub ping_at: u32,
    /// Token bucket of the inbound message rate limit.
    pub tokens: f32,
    pub bucket_tick: u32,
    /// Counted by [`Admission`] against `--max-connections`; released when
    /// the connection goes.
    pub admitted: bool,
    /// Counted by [`Admission`] as handshaking (from accept until the
    /// request head is answered, or the connection goes).
    pub handshaking: bool,
    /// What the connection's token grants (only with authentication on).
    pub auth: Option<Box<Grant>>,
    /// Its allowance of broadcasts and token refreshes (pub/sub app).
    pub allowances: Allowances,
}

enum HeadStatus {
    NeedMore,
    Done(Transition),
}

impl Conn {
    pub fn new(stream: TcpStream, serial: u32) -> Conn {
        Conn {
            stream,
            serial,
            phase: Phase::Handshake,
            read_paused: false,
            rx: Receiver::new(),
            head: None,
            wq: None,
            topics: Vec::new(),
            timer: None,
            last_activity: 0,
            ping_at: 0,
            tokens: f32::MAX,
            bucket_tick: 0,
            admitted: false,
            handshaking: false,
            auth: None,
            allowances: Allowances::default(),
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.wq.as_ref().map_or(0, |q| q.len_bytes())
    }

    /// Handles bytes just read from the socket (may be unmasked in place).
    pub fn on_bytes(&mut self, key: usize, data: &mut [u8], cx: &mut Ctx<'_>) -> Transition {
        match self.phase {
            Phase::Handshake => self.on_handshake_bytes(key, data, cx),
            Phase::Open => self.on_frames(key, data, cx),
            Phase::Closing { .. } => {
                self.watch_for_peer_close(data, cx);
                Transition::Keep
            }
        }
    }

    fn on_handshake_bytes(&mut self, key: usize, data: &mut [u8], cx: &mut Ctx<'_>) -> Transition {
        let cap = cx.handshake.max_head_bytes;
        // Only the bytes new in this read are scanned for the end of the
        // head, and the head is parsed once, when that end has arrived:
        // re-parsing from the start on every read made a head sent a byte
        // per segment cost quadratic time.
        if let Some(mut head) = self.head.take() {
            let scanned = head.len();
            head.extend_from_slice(data);
            match scan_head(&head, scanned, cap) {
                Ok(None) => {
                    self.head = Some(head);
                    Transition::Keep
                }
                Ok(Some(_)) => match self.try_upgrade(key, &mut head, cx) {
                    HeadStatus::NeedMore => {
                        self.head = Some(head);
                        Transition::Keep
                    }
                    HeadStatus::Done(t) => t,
                },
                Err(e) => self.reject(key, &e, cx),
            }
        } else {
            match scan_head(data, 0, cap) {
                Ok(None) => {
                    self.head = Some(data.to_vec());
                    Transition::Keep
                }
                Ok(Some(_)) => match self.try_upgrade(key, data, cx) {
                    HeadStatus::NeedMore => {
                        self.head = Some(data.to_vec());
                        Transition::Keep
                    }
                    HeadStatus::Done(t) => t,
                },
                Err(e) => self.reject(key, &e, cx),
            }
        }
    }

    /// The request head is answered (accepted or refused): the connection
    /// stops counting as handshaking. Returns the peer's address (known
    /// from accept). It is kept past this point only for the per-IP limit.
    fn end_handshake(&mut self, key: usize, cx: &mut Ctx<'_>) -> Option<IpAddr> {
        let ip = cx.peer_ips.get(&(key as u32)).copied();
        if std::mem::take(&mut self.handshaking) {
            if let Some(ip) = ip {
                cx.admission.end_handshake(ip);
            }
        }
        if !cx.admission.tracks_ips() {
            cx.peer_ips.remove(&(key as u32));
        }
        ip
    }

    fn try_upgrade(&mut self, key: usize, buf: &mut [u8], cx: &mut Ctx<'_>) -> HeadStatus {
        let head_len = match parse_request(buf, cx.handshake) {
            Ok(None) => return HeadStatus::NeedMore,
            Ok(Some(req)) => {
                let ip = self.end_handshake(key, cx);
                let checked =
                    cx.security
                        .check_upgrade(ip, req.origin, req.authorization, req.query);
                let grant = match checked {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::debug!(
                            reason = %Esc::str(&why.to_string()),
                            origin = %Esc::str(req.origin.unwrap_or("-")),
                            "upgrade refused"
                        );
                        self.refuse(&why, cx);
                        return HeadStatus::Done(Transition::StartedClosing);
                    }
                };
                if let Err(why) = cx.admission.try_admit() {
                    cx.stats.handshake_failures.inc();
                    cx.stats.rejected_unavailable.inc();
                    cx.out.extend_from_slice(&error_response(
                        503,
                        "Service Unavailable",
                        why.reason(),
                        &[("Retry-After", "1")],
                    ));
                    self.phase = Phase::Closing {
                        write_shut: false,
                        peer_closed: false,
                    };
                    return HeadStatus::Done(Transition::StartedClosing);
                }
                self.admitted = true;
                if let Some(g) = grant {
                    tracing::debug!(
                        user = %Esc::str(g.user.as_deref().unwrap_or("-")),
                        exp = g.exp,
                        "authenticated"
                    );
                    cx.stats.authenticated.inc();
                    if let (Some(user), AppKind::PubSub) = (&g.user, cx.app) {
                        app::pubsub::join_user(user, key as u32, &mut self.topics, &mut cx.pubsub);
                    }
                    self.auth = Some(Box::new(g));
                }
                write_accept_response(&req, cx.out);
                if let Some(agreed) = req.deflate {
                    // The connection's whole compression state: two bytes.
                    self.rx.enable_deflate(agreed);
                    cx.stats.deflate_negotiated.inc();
                }
                req.head_len
            }
            Err(e) => {
                return HeadStatus::Done(self.reject(key, &e, cx));
            }
        };
        self.phase = Phase::Open;
        cx.stats.upgraded.inc();
        if let Some(r) = cx.rate {
            self.tokens = r.burst;
            self.bucket_tick = cx.now_tick;
        }
        self.allowances.broadcast_tokens = cx.pubsub.limits.broadcast_burst;
        self.allowances.broadcast_tick = cx.now_tick;
        // Bytes pipelined after the head are the first frame bytes.
        let rest = &mut buf[head_len..];
        HeadStatus::Done(if rest.is_empty() {
            Transition::Upgraded
        } else {
            match self.on_frames(key, rest, cx) {
                Transition::Keep => Transition::Upgraded,
                t => t,
            }
        })
    }

    /// Answers a request head that is not a valid upgrade (400, 404, 405,
    /// 426, 431) and starts closing.
    fn reject(&mut self, key: usize, e: &HandshakeError, cx: &mut Ctx<'_>) -> Transition {
        self.end_handshake(key, cx);
        // The error texts are ours (no client bytes), but escaped anyway so
        // a future variant quoting the request cannot forge log lines.
        tracing::debug!(error = %Esc::str(&e.to_string()), "upgrade refused");
        cx.stats.handshake_failures.inc();
        let by_status = match e.status().0 {
            404 => &cx.stats.rejected_not_found,
            405 => &cx.stats.rejected_method,
            426 => &cx.stats.rejected_version,
            431 => &cx.stats.rejected_too_large,
            _ => &cx.stats.rejected_bad_request,
        };
        by_status.inc();
        cx.out.extend_from_slice(&e.response());
        self.head = None;
        self.phase = Phase::Closing {
            write_shut: false,
            peer_closed: false,
        };
        Transition::StartedClosing
    }

    /// Answers a refused upgrade (401, 403 or 429) and starts closing.
    fn refuse(&mut self, why: &Refused, cx: &mut Ctx<'_>) {
        cx.stats.handshake_failures.inc();
        let (status, phrase) = why.status();
        let (counter, extra): (_, &[(&str, &str)]) = match why {
            Refused::Auth(_) => (
                &cx.stats.rejected_unauthorized,
                &[("WWW-Authenticate", "Bearer")],
            ),
            Refused::Origin => (&cx.stats.rejected_forbidden, &[]),
            Refused::HandshakeRate => (&cx.stats.rejected_rate, &[("Retry-After", "1")]),
        };
        counter.inc();
        cx.out
            .extend_from_slice(&error_response(status, phrase, &why.to_string(), extra));
        self.phase = Phase::Closing {
            write_shut: false,
            peer_closed: false,
        };
    }

    fn on_frames(&mut self, key: usize, data: &mut [u8], cx: &mut Ctx<'_>) -> Transition {
        let mut peer_close: Option<CloseCode> = None;
        let deflate = self.rx.deflate().map(|a| ReplyDeflate {
            deflater: &mut *cx.deflater,
            window_bits: a.server_max_window_bits,
            min_size: cx.deflate_min_size,
        });
        let out = &mut Replies::new(&mut *cx.out, deflate);
        let stats = cx.stats;
        let app_kind = cx.app;
        let pubsub = &mut cx.pubsub;
        let mut caller = Caller {
            key: key as u32,
            serial: self.serial,
            topics: &mut self.topics,
            auth: &mut self.auth,
            allowances: &mut self.allowances,
        };
        // Refill the token bucket once per read, spend one per frame.
        let mut rate_exceeded = false;
        let limited = cx.rate.is_some();
        if let Some(r) = cx.rate {
            let elapsed = cx.now_tick.wrapping_sub(self.bucket_tick) as f32;
            self.tokens = (self.tokens + elapsed * r.per_tick).min(r.burst);
            self.bucket_tick = cx.now_tick;
        }
        let tokens = &mut self.tokens;
        let debug_panic = cfg!(debug_assertions) && cx.debug_panic;
        let result = self.rx.feed(data, cx.limits, cx.pool, &mut |ev| {
            if limited {
                if *tokens < 1.0 || rate_exceeded {
                    rate_exceeded = true;
                    return;
                }
                *tokens -= 1.0;
            }
            match ev {
                Event::Message(kind, payload) => {
                    stats.messages_in.inc();
                    match app_kind {
                        AppKind::Echo => {
                            if debug_panic
                                && payload == crate::config::DEBUG_PANIC_MESSAGE.as_bytes()
                            {
                                panic!("debug panic trigger");
                            }
                            app::echo::on_message(kind, payload, out);
                            stats.messages_out.inc();
                        }
                        AppKind::PubSub => {
                            app::pubsub::on_message(kind, payload, &mut caller, pubsub, out)
                        }
                    }
                }
                Event::Ping(payload) => write_server_frame(out.out(), OpCode::Pong, payload),
                Event::Pong(_) => {}
                Event::Close(frame) => peer_close = Some(frame.reply_code()),
            }
        });
        if rate_exceeded {
            stats.rate_limited.inc();
            let reason = "message rate limit exceeded";
            self.start_close(CloseCode::POLICY_VIOLATION, reason, cx.out, false);
            return Transition::StartedClosing;
        }
        match result {
            Err(e) => {
                tracing::debug!(error = %Esc::str(&e.to_string()), "protocol error");
                stats.protocol_errors.inc();
                if e == crate::protocol::message::ProtocolError::ReassemblyBudget {
                    stats.reassembly_refused.inc();
                }
                self.start_close(e.close_code(), &e.to_string(), cx.out, false);
                Transition::StartedClosing
            }
            Ok(()) => match peer_close {
                // Echo the peer's code (§5.5.1); then we close the TCP first.
                Some(code) => {
                    stats.peer_closes.inc();
                    self.start_close(code, "", cx.out, true);
                    Transition::StartedClosing
                }
                None => Transition::Keep,
            },
        }
    }

    /// Queues a close frame and stops sending anything else. `peer_closed`
    /// says this answers the peer's close frame.
    pub fn start_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        out: &mut Vec<u8>,
        peer_closed: bool,
    ) {
        let (payload, n) = close_payload(code, reason);
        write_server_frame(out, OpCode::Close, &payload[..n]);
        self.phase = Phase::Closing {
            write_shut: false,
            peer_closed,
        };
    }

    /// While closing, only the peer's close frame matters: it completes the
    /// handshake. Everything else is discarded.
    fn watch_for_peer_close(&mut self, data: &mut [u8], cx: &mut Ctx<'_>) {
        let Phase::Closing {
            write_shut,
            peer_closed: false,
        } = self.phase
        else {
            return;
        };
        if self.rx.is_done() {
            return;
        }
        let mut closed = false;
        let _ = self.rx.feed(data, cx.limits, cx.pool, &mut |ev| {
            closed |= matches!(ev, Event::Close(_));
        });
        if closed {
            self.phase = Phase::Closing {
                write_shut,
                peer_closed: true,
            };
        }
    }

    /// The peer will send nothing that matters (its close frame or its FIN
    /// came): reading it would only discard bytes.
    pub fn reads_done(&self) -> bool {
        matches!(
            self.phase,
            Phase::Closing {
                peer_closed: true,
                ..
            }
        )
    }

    /// The close handshake is over (or the peer is gone) and our bytes are
    /// out: nothing is left to wait for.
    pub fn close_complete(&self) -> bool {
        self.reads_done() && self.wq.is_none()
    }

    /// Returns heap buffers to the worker's pool before the slot is freed.
    pub fn release(&mut self, pool: &mut PartialPool) {
        self.rx.release(pool);
        self.head = None;
        self.wq = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_eof_with_nothing_queued_closes_at_once() {
        for phase in [
            Phase::Handshake,
            Phase::Open,
            Phase::Closing {
                write_shut: true,
                peer_closed: false,
            },
            Phase::Closing {
                write_shut: false,
                peer_closed: true,
            },
        ] {
            assert_eq!(phase.after_peer_eof(false), OnEof::Close, "{phase:?}");
        }
    }

    #[test]
    fn the_peers_eof_with_output_queued_drains_it_under_the_close_timer() {
        let draining = Phase::Closing {
            write_shut: false,
            peer_closed: true,
        };
        // An open connection (an echo still queued): start the close timer.
        assert_eq!(
            Phase::Open.after_peer_eof(true),
            OnEof::Drain {
                phase: draining,
                start_timer: true
            }
        );
        // Our close frame queued (after a protocol error, or answering the
        // peer's close frame): the close timer already runs.
        for peer_closed in [false, true] {
            let closing = Phase::Closing {
                write_shut: false,
                peer_closed,
            };
            assert_eq!(
                closing.after_peer_eof(true),
                OnEof::Drain {
                    phase: draining,
                    start_timer: false
                }
            );
        }
    }

    #[test]
    fn an_idle_connection_is_small() {
        // The slab stores Conn inline; this is the user-space cost of an idle
        // connection (plus the slab's per-entry tag).
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 192, "Conn grew to {size} bytes");
    }
}

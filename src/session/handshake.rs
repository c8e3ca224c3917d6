//! The upgrade: the HTTP request head arriving (in pieces or whole), the
//! security and admission checks, and the 101 answer or the HTTP error that
//! ends the connection.

use std::net::IpAddr;

use crate::app;
use crate::config::AppKind;
use crate::escape::Esc;
use crate::protocol::handshake::{
    error_response, parse_request, scan_head, write_accept_response, HandshakeError,
};
use crate::security::Refused;

use super::{Ctx, Now, Phase, Session};

/// The process-wide admission an upgrade answers to. The worker implements
/// it over its admission state; a trait, so that the session does not
/// depend on the IO side.
pub trait Admit {
    /// The request head from `ip` was answered: it stops counting as
    /// handshaking.
    fn end_handshake(&self, ip: IpAddr);
    /// Whether each connection's address is kept until it closes (the
    /// per-IP connection limit is on).
    fn tracks_ips(&self) -> bool;
    /// Takes one `--max-connections` slot, or says why not (the text of
    /// the 503 answer).
    fn try_admit(&self) -> Result<(), &'static str>;
}

#[derive(Debug, PartialEq, Eq)]
enum HeadStatus {
    NeedMore,
    Done,
}

impl Session {
    pub(super) fn on_handshake_bytes(
        &mut self,
        key: usize,
        data: &mut [u8],
        now: Now,
        cx: &mut Ctx<'_>,
    ) {
        let cap = cx.handshake.max_head_bytes;
        // Only the bytes new in this read are scanned for the end of the
        // head, and the head is parsed once, when that end has arrived:
        // re-parsing from the start on every read made a head sent a byte
        // per segment cost quadratic time.
        if let Some(mut head) = self.head.take() {
            let scanned = head.len();
            head.extend_from_slice(data);
            match scan_head(&head, scanned, cap) {
                Ok(None) => self.head = Some(head),
                Ok(Some(_)) => {
                    if self.try_upgrade(key, &mut head, now, cx) == HeadStatus::NeedMore {
                        self.head = Some(head);
                    }
                }
                Err(e) => self.reject(key, &e, cx),
            }
        } else {
            match scan_head(data, 0, cap) {
                Ok(None) => self.head = Some(Box::new(data.to_vec())),
                Ok(Some(_)) => {
                    if self.try_upgrade(key, data, now, cx) == HeadStatus::NeedMore {
                        self.head = Some(Box::new(data.to_vec()));
                    }
                }
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

    fn try_upgrade(
        &mut self,
        key: usize,
        buf: &mut [u8],
        now: Now,
        cx: &mut Ctx<'_>,
    ) -> HeadStatus {
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
                        return HeadStatus::Done;
                    }
                };
                if let Err(why) = cx.admission.try_admit() {
                    cx.stats.handshake_failures.inc();
                    cx.stats.rejected_unavailable.inc();
                    cx.out.extend_from_slice(&error_response(
                        503,
                        "Service Unavailable",
                        why,
                        &[("Retry-After", "1")],
                    ));
                    self.close_after_response();
                    return HeadStatus::Done;
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
                self.reject(key, &e, cx);
                return HeadStatus::Done;
            }
        };
        self.phase = Phase::Open;
        cx.stats.upgraded.inc();
        if let Some(r) = cx.rate {
            self.tokens = r.burst;
            self.bucket_tick = now.tick;
        }
        self.allowances.broadcast_tokens = cx.pubsub.limits.broadcast_burst;
        self.allowances.broadcast_tick = now.tick;
        // Bytes pipelined after the head are the first frame bytes.
        let rest = &mut buf[head_len..];
        if !rest.is_empty() {
            self.on_frames(key, rest, now, cx);
        }
        HeadStatus::Done
    }

    /// Answers a request head that is not a valid upgrade (400, 404, 405,
    /// 426, 431) and starts closing.
    fn reject(&mut self, key: usize, e: &HandshakeError, cx: &mut Ctx<'_>) {
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
        self.close_after_response();
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
        self.close_after_response();
    }
}

//! An open connection's input: frames to app messages (echo or pub/sub),
//! pings answered, the inbound message rate limit, and the close that a
//! protocol error, the rate limit or the peer's close frame starts. The
//! close deadline itself is set by [`Session::on_bytes`].

use crate::app;
use crate::app::pubsub::Caller;
use crate::config::AppKind;
use crate::escape::Esc;
use crate::protocol::deflate::{Replies, ReplyDeflate};
use crate::protocol::frame::write_server_frame;
use crate::protocol::{CloseCode, Event, OpCode};

use super::{Ctx, Now, Session};

impl Session {
    pub(super) fn on_frames(&mut self, key: usize, data: &mut [u8], now: Now, cx: &mut Ctx<'_>) {
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
            let elapsed = now.tick.wrapping_sub(self.bucket_tick) as f32;
            self.tokens = (self.tokens + elapsed * r.per_tick).min(r.burst);
            self.bucket_tick = now.tick;
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
            self.queue_close(CloseCode::POLICY_VIOLATION, reason, cx.out, false);
            return;
        }
        match result {
            Err(e) => {
                tracing::debug!(error = %Esc::str(&e.to_string()), "protocol error");
                stats.protocol_errors.inc();
                if e == crate::protocol::message::ProtocolError::ReassemblyBudget {
                    stats.reassembly_refused.inc();
                }
                self.queue_close(e.close_code(), &e.to_string(), cx.out, false);
            }
            Ok(()) => {
                // Echo the peer's code (§5.5.1); then we close the TCP first.
                if let Some(code) = peer_close {
                    stats.peer_closes.inc();
                    self.queue_close(code, "", cx.out, true);
                }
            }
        }
    }
}

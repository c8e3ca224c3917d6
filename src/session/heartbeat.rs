//! Deadlines: the handshake timeout, the heartbeat (ping a silent peer,
//! give up on one that does not answer), token expiry, and the close
//! timeout. A session keeps one deadline at a time, chosen by its phase.

use crate::protocol::frame::write_server_frame;
use crate::protocol::{CloseCode, OpCode};
use crate::stats::WorkerStats;

use super::{Now, Phase, Session, SessionConfig};

/// What the caller does after [`Session::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Write what the session produced (a ping, a close frame) and wait
    /// for the next deadline.
    Keep,
    /// The connection is over (handshake or close timeout): drop it now.
    Close,
}

impl Session {
    /// Sets the one deadline; while open, no later than the token's end.
    pub(super) fn set_deadline(&mut self, tick: u32, now: Now, config: &SessionConfig) {
        self.deadline = match (self.phase, self.token_deadline(now, config)) {
            (Phase::Open, Some(e)) => tick.min(e),
            _ => tick,
        };
    }

    /// The tick at which the connection's token (plus grace) runs out.
    fn token_deadline(&self, now: Now, config: &SessionConfig) -> Option<u32> {
        let grant = self.auth.as_ref()?;
        let left = grant
            .ends_at(config.jwt_grace_secs)
            .saturating_sub(now.unix);
        let left_ticks =
            (left.saturating_mul(1000) / config.tick_ms.max(1)).min(u64::from(u32::MAX / 2));
        Some(now.tick.saturating_add(left_ticks as u32).saturating_add(1))
    }

    /// Time passed: acts on the deadline if it is due. Output (a ping, a
    /// close frame) goes into `out`.
    pub fn handle_timeout(
        &mut self,
        now: Now,
        out: &mut Vec<u8>,
        config: &SessionConfig,
        stats: &WorkerStats,
    ) -> Timeout {
        if now.tick < self.deadline {
            return Timeout::Keep;
        }
        match self.phase {
            Phase::Handshake => {
                stats.handshake_timeouts.inc();
                Timeout::Close
            }
            // The peer did not finish the close handshake (or read what was
            // queued for it) in time.
            Phase::Closing { .. } => Timeout::Close,
            Phase::Open => {
                self.heartbeat(now, out, config, stats);
                Timeout::Keep
            }
        }
    }

    /// The heartbeat deadline of an open connection: close it if its token
    /// ran out or a ping went unanswered, ping it if it has been silent,
    /// else wait.
    fn heartbeat(
        &mut self,
        now: Now,
        out: &mut Vec<u8>,
        config: &SessionConfig,
        stats: &WorkerStats,
    ) {
        if self
            .auth
            .as_ref()
            .is_some_and(|g| now.unix >= g.ends_at(config.jwt_grace_secs))
        {
            // The token ran out and no fresh one came ({"type":"refresh"}).
            stats.token_expiries.inc();
            self.start_close(
                CloseCode::POLICY_VIOLATION,
                "token expired",
                out,
                now,
                config,
            );
            return;
        }
        if self.ping_at != 0 {
            let give_up = self.ping_at.wrapping_add(config.answer_ticks);
            if now.tick >= give_up {
                // Nothing arrived for the idle timeout. A close frame (1001)
                // tells a live-but-stuck client why; a dead one is dropped
                // by the close timeout.
                stats.idle_timeouts.inc();
                self.start_close(CloseCode::GOING_AWAY, "idle timeout", out, now, config);
            } else {
                self.set_deadline(give_up, now, config);
            }
            return;
        }
        let due = self.last_activity.wrapping_add(config.ping_ticks);
        if now.tick >= due {
            write_server_frame(out, OpCode::Ping, b"");
            self.ping_at = now.tick.max(1);
            stats.pings_sent.inc();
            self.set_deadline(now.tick + config.answer_ticks, now, config);
        } else {
            self.set_deadline(due, now, config);
        }
    }
}

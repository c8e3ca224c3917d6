//! Time for one worker: the tick clock, the timer wheel that holds every
//! session's deadline, and how long the loop may sleep.
//!
//! Sessions keep their own deadline (in ticks); the worker mirrors it in the
//! wheel (`Conn::sync_timer`) and calls `Session::handle_timeout` when it is
//! due, so there is no OS timer per connection.

use std::time::{Duration, Instant};

use crate::security::unix_now;
use crate::session::{Now, Timeout};

use super::super::loop_io::Io;
use super::Worker;

/// Timer resolution. Every deadline (handshake, heartbeat, idle, close) is
/// rounded up to a tick; a worker with timers wakes at most this often.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// Wheel size: 2048 × 50 ms ≈ 102 s per rotation, beyond every default.
pub(super) const WHEEL_SLOTS: usize = 2048;

/// A duration in whole ticks, rounded up, at least 1.
pub(super) fn ticks(d: Duration) -> u32 {
    (d.as_nanos().div_ceil(TICK.as_nanos()) as u32).max(1)
}

/// Converts the worker's clock reading into the time sessions see.
pub(crate) struct Clock {
    /// Tick 0.
    epoch: Instant,
}

impl Clock {
    pub fn new(epoch: Instant) -> Clock {
        Clock { epoch }
    }

    /// The tick `t` falls in.
    pub fn tick(&self, t: Instant) -> u32 {
        (t.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos()) as u32
    }

    /// The start of tick `tick`.
    pub fn at(&self, tick: u64) -> Instant {
        self.epoch + TICK * tick as u32
    }

    /// This turn's time for sessions (the wall clock only for token expiry).
    pub fn now(&self, t: Instant) -> Now {
        Now {
            tick: self.tick(t),
            unix: unix_now(),
        }
    }
}

impl<I: Io> Worker<I> {
    /// How long the loop may sleep in `poll`.
    pub(in crate::server) fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.fanout.inbox_more() || self.io.accept_ready() {
            return Some(Duration::ZERO);
        }
        // With timers pending, wake at the next tick boundary.
        let next_tick = (!self.wheel.is_empty()).then(|| self.clock.at(self.wheel.now() + 1));
        [
            next_tick,
            self.io.accept_wake(),
            self.drain.next_wake(),
            self.fanout.next_check(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    /// Runs the deadlines that are due.
    pub(in crate::server) fn expire(&mut self, now: Instant, t: Now) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.advance(u64::from(t.tick), &mut expired);
        for key in expired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.timer = None;
            let phase = conn.session.phase();
            let (session, out) = (&mut conn.session, &mut self.out);
            let (config, stats) = (&self.session_config, &*self.stats);
            match super::guarded(|| session.handle_timeout(t, out, config, stats)) {
                Ok(Timeout::Close) => self.close_now(key),
                Ok(Timeout::Keep) => {
                    conn.sync_timer(&mut self.wheel, key);
                    if !self.out.is_empty() {
                        self.flush(key);
                    }
                }
                Err(message) => self.on_panic(key, phase, &message, now, t),
            }
        }
        self.expired = expired;
    }
}

//! Shutdown: stop accepting and say goodbye (1001) to every connection, all
//! at once or spread over `--drain-spread` (a handshake in progress is
//! finished first, then said goodbye to); the loop exits when all are
//! closed or the spread plus `--drain-timeout` has passed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::CloseCode;
use crate::session::{Now, Phase};

use super::super::loop_io::Io;
use super::Worker;

/// A worker's drain, once begun.
#[derive(Default)]
pub(crate) struct Drain {
    /// When the worker stops regardless.
    until: Option<Instant>,
    /// Open connections still to close during a spread drain: (when, key,
    /// serial), in time order.
    queue: VecDeque<(Instant, usize, u32)>,
    /// Connections accepted before the drain whose handshake was still in
    /// progress: (key, serial). Closing them would leave their clients
    /// with a connection that ends before any response, where a client
    /// whose connect came a moment later reaches the next process; the
    /// io_uring loop's multishot accept takes connections off the queue as
    /// they arrive, so it has one or two of these at most drains. Each gets
    /// its 101 and then the goodbye (its handshake timeout and the drain's
    /// end still bound it).
    handshaking: Vec<(usize, u32)>,
}

impl Drain {
    pub fn started(&self) -> bool {
        self.until.is_some()
    }

    /// The next moment the drain needs the loop awake.
    pub fn next_wake(&self) -> Option<Instant> {
        [self.until, self.queue.front().map(|d| d.0)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the loop should exit now.
    pub fn done(&self, no_connections: bool, now: Instant) -> bool {
        self.until
            .is_some_and(|until| no_connections || now >= until)
    }
}

impl<I: Io> Worker<I> {
    pub(in crate::server) fn begin_shutdown(&mut self, now: Instant, t: Now) {
        if self.drain.started() {
            return;
        }
        // Deliveries already batched go out before the goodbye.
        self.flush_fanout(t);
        let spread = self.config.drain_spread;
        let until = now + spread + self.config.drain_timeout;
        self.drain.until = Some(until);
        // Every close from now on must be done by the end of the drain.
        self.session_config.drain_deadline = Some(self.clock.tick(until) + 1);
        self.io.stop_listening();
        let mut open = Vec::new();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key).filter(|c| I::is_live(&c.stream)) else {
                continue;
            };
            match conn.session.phase() {
                Phase::Handshake => self.drain.handshaking.push((key, conn.session.serial)),
                Phase::Open => open.push((key, conn.session.serial)),
                Phase::Closing { .. } => {
                    conn.session.on_drain(t, &self.session_config);
                    conn.sync_timer(&mut self.wheel, key);
                }
            }
        }
        if spread.is_zero() {
            for (key, _) in open {
                self.say_goodbye(key, t);
            }
            return;
        }
        // A herd of reconnects is what the spread avoids: each connection
        // gets its own moment in the window, in random order, so the
        // reconnects arrive at an even rate wherever clients came from.
        fastrand::shuffle(&mut open);
        let n = open.len() as f64;
        self.drain.queue = open
            .into_iter()
            .enumerate()
            .map(|(i, (key, serial))| {
                let at = now + spread.mul_f64((i as f64 + fastrand::f64()) / n);
                (at, key, serial)
            })
            .collect();
        self.close_due(now, t);
    }

    /// Closes the connections whose moment in the drain spread has come,
    /// and says goodbye to those whose handshake finished since the drain
    /// began.
    pub(in crate::server) fn close_due(&mut self, now: Instant, t: Now) {
        if !self.drain.handshaking.is_empty() {
            let mut waiting = std::mem::take(&mut self.drain.handshaking);
            waiting.retain(|&(key, serial)| {
                let Some(conn) = self
                    .conns
                    .get(key)
                    .filter(|c| I::is_live(&c.stream) && c.session.serial == serial)
                else {
                    return false;
                };
                match conn.session.phase() {
                    Phase::Handshake => true,
                    Phase::Open => {
                        self.say_goodbye(key, t);
                        false
                    }
                    Phase::Closing { .. } => false,
                }
            });
            self.drain.handshaking = waiting;
        }
        while let Some(&(at, key, serial)) = self.drain.queue.front() {
            if at > now {
                return;
            }
            self.drain.queue.pop_front();
            let same = self.conns.get(key).is_some_and(|c| {
                I::is_live(&c.stream) && c.session.serial == serial && c.session.is_open()
            });
            if same {
                self.say_goodbye(key, t);
            }
        }
    }

    /// Closes one open connection for the drain: 1001, and a reason that
    /// tells the client when to come back, `{"reconnect_in_ms":N}` with N
    /// uniform in [0, max(spread, 1 s)] so the reconnects spread further.
    fn say_goodbye(&mut self, key: usize, t: Now) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        self.stats.shutdown_closes.inc();
        let window = self.config.drain_spread.max(Duration::from_secs(1));
        let ms = fastrand::u64(0..=window.as_millis() as u64);
        let reason = format!(r#"{{"reconnect_in_ms":{ms}}}"#);
        conn.session.start_close(
            CloseCode::GOING_AWAY,
            &reason,
            &mut self.out,
            t,
            &self.session_config,
        );
        conn.sync_timer(&mut self.wheel, key);
        // Fan-out already queued for this client goes out first.
        self.flush(key);
    }
}

//! Rate-limited reporting of per-connection trouble. Per-connection errors
//! are logged at debug level only (a client can cause them in a loop); at
//! warn level a worker says at most once per interval how many there were,
//! and logs a caught panic at most once per interval.

use std::time::{Duration, Instant};

use crate::escape::Esc;

use crate::stats::WorkerStats;

/// How often the summary of connections closed for misbehaving is logged.
const TROUBLE_INTERVAL: Duration = Duration::from_secs(10);
/// At most one log line per worker per this interval for caught panics (a
/// client that can trigger one can trigger it in a loop).
const PANIC_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) struct Trouble {
    next: Instant,
    /// The counters at the last report.
    last: [u64; 5],
    /// When a caught panic was last logged, and how many since went unlogged.
    panic_log: Option<(Instant, u64)>,
}

impl Trouble {
    pub fn new(now: Instant) -> Trouble {
        Trouble {
            next: now + TROUBLE_INTERVAL,
            last: [0; 5],
            panic_log: None,
        }
    }

    /// Logs one warning summarising connections closed for misbehaving since
    /// the last report, instead of one line per connection.
    pub fn report_if_due(&mut self, worker: usize, s: &WorkerStats, now: Instant) {
        if now < self.next {
            return;
        }
        let counts = [
            s.protocol_errors.get(),
            s.handshake_failures.get(),
            s.handshake_timeouts.get(),
            s.rate_limited.get(),
            s.slow_consumers.get(),
        ];
        let mut d = [0u64; 5];
        for (i, c) in counts.iter().enumerate() {
            d[i] = c.wrapping_sub(self.last[i]);
        }
        if d.iter().any(|x| *x > 0) {
            tracing::warn!(
                worker,
                protocol_errors = d[0],
                refused_upgrades = d[1],
                handshake_timeouts = d[2],
                rate_limited = d[3],
                slow_consumers = d[4],
                "connections closed for misbehaving in the last {}s",
                TROUBLE_INTERVAL.as_secs()
            );
        }
        self.next = now + TROUBLE_INTERVAL;
        self.last = counts;
    }

    /// Logs a caught panic (escaped: its text may quote client bytes), or
    /// counts it as unlogged within the interval.
    pub fn log_panic(&mut self, worker: usize, message: &str, now: Instant) {
        match self.panic_log {
            Some((at, ref mut unlogged)) if now.duration_since(at) < PANIC_LOG_INTERVAL => {
                *unlogged += 1;
            }
            last => {
                let unlogged = last.map_or(0, |(_, n)| n);
                tracing::error!(
                    worker,
                    panic = %Esc::str(message),
                    unlogged_since_last = unlogged,
                    "a bug was hit while handling one connection: that connection was closed \
                     and the worker carries on (wsgate_panics counts them all)"
                );
                self.panic_log = Some((now, 0));
            }
        }
    }
}

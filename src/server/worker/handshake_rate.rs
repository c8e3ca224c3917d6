//! `--max-handshakes-per-sec auto`: how many upgrades per second one worker
//! can take while handshakes use at most half of its time.
//!
//! Owns the estimate only (sans-IO: the worker passes in how long it spent
//! and the clock reading; nothing here reads a clock or a socket), so it can
//! be driven with simulated time in tests.
//!
//! **What is measured.** The worker's own wall time spent on handshake
//! work: accepting a connection that is let in (the `accept` call, epoll
//! registration, the slot), and every read of a connection still in its
//! handshake, through parsing the request (and the TLS handshake, when
//! there is one), checking its token, and writing the 101 or the error.
//! Handshakes are counted when they are let in, each once, so one that
//! never finishes (a client trickling its request until the handshake
//! timeout) is still one handshake, and what its reads cost is spread over
//! all of them rather than over only those that finished. Counting at
//! accept runs a little ahead of the reads it pays for: the estimate errs
//! low, on the side of shedding less. Wall time rather than CPU time: a `clock_gettime`
//! through the vDSO costs nanoseconds, a thread CPU clock is a system call;
//! and when the machine is short of CPU the worker really does serve fewer
//! handshakes a second, which wall time sees and CPU time does not. What
//! is not seen: the kernel's TCP work before `accept`, and the 503s of shed
//! connections (a read, a write and a close, far less than a handshake);
//! the other half of the worker's time is headroom for both, and for the
//! established connections.
//!
//! **From cost to limit.** With a handshake costing `c` seconds, `share / c`
//! handshakes a second take `share` of the worker's time (`share` = ½), so
//! the established connections keep the other half even when upgrades
//! arrive faster than that. The limit is kept within [`FLOOR`, `CEILING`]:
//! a slow measurement (a machine swapping) must not shut the door, and a
//! tiny one must not take the bucket out of the picture.
//!
//! **Smoothing.** Costs are summed over windows of [`WINDOW`] (or
//! [`WINDOW_SAMPLES`] handshakes, whichever comes first, so a storm updates
//! the estimate within milliseconds), and each window's mean feeds an
//! exponentially weighted moving average ([`ALPHA`]). A window's mean may
//! raise the average to at most [`MAX_RISE`] times its value: one handshake
//! stalled by preemption or a page fault moves the limit by a fifth at
//! most, while a cost that really rises lifts the average window after
//! window (fourfold within about a second). A cost that falls is taken as
//! it comes, only smoothed.
//!
//! **Cold start.** Until [`MIN_SAMPLES`] handshakes were measured there is
//! no limit: nothing is shed on a guess. The first estimate is the mean of
//! those first handshakes, which already averages out the slower first few
//! (cold caches, lazily built state).

use std::time::{Duration, Instant};

/// Share of the worker's time handshakes may take.
pub const SHARE: f64 = 0.5;
/// Lowest limit auto sets, per worker and second.
pub const FLOOR: f64 = 50.0;
/// Highest limit auto sets, per worker and second.
pub const CEILING: f64 = 100_000.0;
/// Handshakes measured before the first limit.
pub const MIN_SAMPLES: u32 = 32;
/// A window closes after this long (with at least one handshake in it) ...
pub const WINDOW: Duration = Duration::from_millis(100);
/// ... or after this many handshakes.
pub const WINDOW_SAMPLES: u32 = 256;
/// Weight of a window's mean in the moving average.
pub const ALPHA: f64 = 0.25;
/// A window's mean counts as at most this many times the current average.
pub const MAX_RISE: f64 = 2.0;

/// The measured cost of a handshake on one worker, and the limit it gives.
#[derive(Debug)]
pub struct HandshakeRate {
    /// Seconds per handshake (smoothed); None before the first estimate.
    cost: Option<f64>,
    window_start: Option<Instant>,
    window_busy: Duration,
    window_count: u32,
}

impl Default for HandshakeRate {
    fn default() -> Self {
        Self::new()
    }
}

impl HandshakeRate {
    pub fn new() -> HandshakeRate {
        HandshakeRate {
            cost: None,
            window_start: None,
            window_busy: Duration::ZERO,
            window_count: 0,
        }
    }

    /// Adds `busy` of handshake work and `started` handshakes, at `now`.
    /// Returns the new limit when the estimate changed (a window closed).
    pub fn record(&mut self, busy: Duration, started: u32, now: Instant) -> Option<f64> {
        let start = *self.window_start.get_or_insert(now);
        self.window_busy += busy;
        self.window_count = self.window_count.saturating_add(started);
        let needed = if self.cost.is_none() { MIN_SAMPLES } else { 1 };
        let full = self.window_count >= WINDOW_SAMPLES
            || (self.window_count >= needed && now.saturating_duration_since(start) >= WINDOW);
        if !full {
            return None;
        }
        let mean = self.window_busy.as_secs_f64() / f64::from(self.window_count);
        self.cost = Some(match self.cost {
            None => mean,
            Some(avg) => avg + ALPHA * (mean.min(avg * MAX_RISE) - avg),
        });
        self.window_start = Some(now);
        self.window_busy = Duration::ZERO;
        self.window_count = 0;
        self.limit()
    }

    /// Handshakes per second this worker takes now; None while unmeasured.
    pub fn limit(&self) -> Option<f64> {
        let cost = self.cost?;
        if cost <= 0.0 {
            return Some(CEILING);
        }
        Some((SHARE / cost).clamp(FLOOR, CEILING))
    }

    /// The smoothed cost of one handshake; None while unmeasured.
    pub fn cost(&self) -> Option<Duration> {
        self.cost.map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// Feeds `per_sec` handshakes a second, each costing `cost`, for
    /// `secs`, starting at `t` (advanced). Returns the last limit reported.
    fn feed(
        r: &mut HandshakeRate,
        t: &mut Instant,
        per_sec: u32,
        cost: Duration,
        secs: f64,
    ) -> Option<f64> {
        let step = Duration::from_secs_f64(1.0 / f64::from(per_sec));
        let n = (secs * f64::from(per_sec)) as u32;
        let mut last = None;
        for _ in 0..n {
            *t += step;
            if let Some(l) = r.record(cost, 1, *t) {
                last = Some(l);
            }
        }
        last
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.02
    }

    #[test]
    fn a_steady_cost_gives_half_the_time_to_handshakes() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        let l = feed(&mut r, &mut t, 1000, 100 * US, 2.0).unwrap();
        // 100 µs a handshake: 10,000 a second would fill the worker, half
        // of that leaves the other half to open connections.
        assert!(close(l, 5_000.0), "{l}");
        assert!(close(r.limit().unwrap(), 5_000.0));
        assert!(close(r.cost().unwrap().as_secs_f64(), 100e-6));
    }

    #[test]
    fn cold_start_sets_no_limit_until_enough_handshakes_were_measured() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        // Even a very slow first handshake, long after the window: no limit.
        t += Duration::from_secs(5);
        assert_eq!(r.record(50 * MS, 1, t), None);
        assert_eq!(r.limit(), None);
        for _ in 1..MIN_SAMPLES - 1 {
            t += MS;
            assert_eq!(r.record(20 * US, 1, t), None);
        }
        assert_eq!(r.limit(), None, "still one short");
        t += Duration::from_secs(1);
        let l = r.record(20 * US, 1, t).expect("the 32nd closes the window");
        // The cold 50 ms is averaged with 31 warm ones, not taken alone.
        let mean = (50_000.0 + 31.0 * 20.0) / 32.0 * 1e-6;
        assert!(close(l, SHARE / mean), "{l}");
    }

    #[test]
    fn cost_rising_under_load_lowers_the_limit_and_falling_raises_it() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        let before = feed(&mut r, &mut t, 2000, 50 * US, 1.0).unwrap();
        assert!(close(before, 10_000.0), "{before}");
        // The machine gets busy: handshakes take four times as long.
        let mut seen = vec![];
        for _ in 0..20 {
            seen.push(feed(&mut r, &mut t, 2000, 200 * US, 0.11).unwrap());
        }
        assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{seen:?}");
        let after = *seen.last().unwrap();
        assert!(close(after, 2_500.0), "{after}");
        // Within a second it is most of the way there.
        assert!(seen[9] < 3_000.0, "{seen:?}");
        // And back.
        let relieved = feed(&mut r, &mut t, 2000, 50 * US, 2.0).unwrap();
        assert!(close(relieved, 10_000.0), "{relieved}");
    }

    #[test]
    fn a_single_outlier_does_not_collapse_the_limit() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        let before = feed(&mut r, &mut t, 1000, 100 * US, 1.0).unwrap();
        // One handshake stalled for 200 ms (preempted, a page fault) in a
        // window of its own.
        t += Duration::from_millis(150);
        let hit = r.record(200 * MS, 1, t).unwrap();
        assert!(hit >= before * 0.75, "{before} -> {hit}");
        // The same outlier among a window of normal ones.
        let mut r2 = HandshakeRate::new();
        let mut t2 = Instant::now();
        let before2 = feed(&mut r2, &mut t2, 1000, 100 * US, 1.0).unwrap();
        r2.record(200 * MS, 1, t2);
        let after2 = feed(&mut r2, &mut t2, 1000, 100 * US, 0.11).unwrap();
        assert!(after2 >= before2 * 0.75, "{before2} -> {after2}");
        // And the limit recovers.
        let recovered = feed(&mut r, &mut t, 1000, 100 * US, 2.0).unwrap();
        assert!(close(recovered, before), "{recovered}");
    }

    #[test]
    fn the_limit_stays_within_floor_and_ceiling() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        assert_eq!(
            feed(&mut r, &mut t, 100, Duration::ZERO, 1.0),
            Some(CEILING)
        );
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        assert!(close(
            feed(&mut r, &mut t, 100, 10 * US, 1.0).unwrap(),
            CEILING / 2.0
        ));
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        assert_eq!(feed(&mut r, &mut t, 40, 100 * MS, 2.0), Some(FLOOR));
    }

    #[test]
    fn a_storm_updates_the_estimate_within_milliseconds() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        feed(&mut r, &mut t, 100, 100 * US, 1.0).unwrap();
        // 20,000 a second: windows close by count, not by time.
        let mut updates = 0;
        for _ in 0..WINDOW_SAMPLES * 4 {
            t += 50 * US;
            updates += usize::from(r.record(100 * US, 1, t).is_some());
        }
        assert_eq!(updates, 4);
    }

    #[test]
    fn time_without_handshakes_keeps_the_estimate() {
        let (mut r, mut t) = (HandshakeRate::new(), Instant::now());
        let before = feed(&mut r, &mut t, 1000, 100 * US, 1.0).unwrap();
        t += Duration::from_secs(3600);
        // An hour without handshakes does not age the estimate away: the
        // window left open closes with what it holds, at the same cost.
        r.record(Duration::ZERO, 0, t);
        assert!(close(r.limit().unwrap(), before));
        // A read of a handshake already counted adds time, not a sample.
        t += Duration::from_secs(3600);
        assert_eq!(r.record(10 * US, 0, t), None);
        assert!(close(r.limit().unwrap(), before));
    }
}

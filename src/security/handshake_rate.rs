//! Per-IP handshake rate limit (token bucket per client address; off by
//! default). Protects the accept path from one address reconnecting in a
//! tight loop. Buckets of quiet addresses are swept so the map stays bounded
//! by the number of recently active addresses.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

#[derive(Debug)]
pub struct HandshakeRate {
    per_sec: f64,
    burst: f64,
    /// (tokens, last refill in ms since the Unix epoch)
    buckets: DashMap<IpAddr, (f64, u64)>,
    last_sweep: AtomicU64,
}

/// Buckets untouched for this long are full again and can be forgotten.
const SWEEP_MS: u64 = 60_000;

impl HandshakeRate {
    pub fn new(per_sec: f64, burst: f64) -> HandshakeRate {
        HandshakeRate {
            per_sec,
            burst: burst.max(1.0),
            buckets: DashMap::new(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// Takes one handshake token for `ip` at `now_ms` (milliseconds since
    /// the Unix epoch); false when none is left.
    pub fn allow_at(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.sweep(now_ms);
        let mut b = self.buckets.entry(ip).or_insert((self.burst, now_ms));
        let (tokens, last) = *b;
        let refilled =
            (tokens + (now_ms.saturating_sub(last)) as f64 / 1000.0 * self.per_sec).min(self.burst);
        if refilled < 1.0 {
            *b = (refilled, now_ms);
            return false;
        }
        *b = (refilled - 1.0, now_ms);
        true
    }

    fn sweep(&self, now_ms: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < SWEEP_MS
            || self
                .last_sweep
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.buckets
            .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < SWEEP_MS);
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let r = HandshakeRate::new(2.0, 3.0);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let t = 1_000_000;
        assert!(r.allow_at(ip, t) && r.allow_at(ip, t) && r.allow_at(ip, t));
        assert!(!r.allow_at(ip, t));
        assert!(r.allow_at(other, t), "buckets are per address");
        assert!(!r.allow_at(ip, t + 400));
        assert!(r.allow_at(ip, t + 500), "2/s refills one token in 500 ms");
        // Quiet addresses are forgotten.
        assert!(r.allow_at(other, t + 200_000));
        assert_eq!(r.tracked(), 1);
    }
}

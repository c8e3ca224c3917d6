//! Per-worker counters, readable from any thread.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so an
//! increment is a relaxed load and store (no locked instruction) on a cache
//! line no other worker writes. Readers (tests, the admin endpoint) see
//! eventually-consistent values and aggregate across workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter with a single writer thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts `n` (for gauges). Only the owning worker may call this.
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Everything one worker counts.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// TCP connections accepted.
    pub accepted: Counter,
    /// Connections currently held (any phase).
    pub open: Counter,
    /// Successful WebSocket upgrades.
    pub upgraded: Counter,
    /// Upgrade requests refused with an HTTP error, or timed out.
    pub handshake_failures: Counter,
    pub handshake_timeouts: Counter,
    /// Connections closed for a protocol violation.
    pub protocol_errors: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Times accepting paused because the process ran out of descriptors.
    pub accept_backoffs: Counter,
    pub closed: Counter,
    /// Subscribers disconnected (1008) for not reading their fan-out.
    pub slow_consumers: Counter,
}

/// A plain copy of a worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub open: u64,
    pub upgraded: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub protocol_errors: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accept_backoffs: u64,
    pub closed: u64,
    pub slow_consumers: u64,
}

impl WorkerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted.get(),
            open: self.open.get(),
            upgraded: self.upgraded.get(),
            handshake_failures: self.handshake_failures.get(),
            handshake_timeouts: self.handshake_timeouts.get(),
            protocol_errors: self.protocol_errors.get(),
            messages_in: self.messages_in.get(),
            messages_out: self.messages_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            accept_backoffs: self.accept_backoffs.get(),
            closed: self.closed.get(),
            slow_consumers: self.slow_consumers.get(),
        }
    }
}

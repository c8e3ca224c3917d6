//! The counters the running parts bump, readable from any thread: one
//! [`WorkerStats`] per worker, and the admin listener's [`AdminStats`].
//!
//! A leaf: it depends on nothing else in the crate, so the workers, the
//! apps they run and the exposition ([`crate::metrics`]) can all share it.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so an
//! increment is a relaxed load and store (no locked instruction) on a cache
//! line no other worker writes. Readers (tests, the admin endpoint) see
//! eventually-consistent values and aggregate across workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the admin listener counts (exported with the other metrics).
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Admin connections closed to stay within the admin connection cap.
    pub evicted: AtomicU64,
    /// Admin requests that did not arrive within the admin request timeout.
    pub timeouts: AtomicU64,
    /// Admin requests refused for a missing or wrong bearer token.
    pub unauthorized: AtomicU64,
}

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

    /// Sets a gauge. Only the owning worker may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Declares the live counters and their plain snapshot from one list.
macro_rules! worker_stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Everything one worker counts.
        #[derive(Debug, Default)]
        pub struct WorkerStats {
            $($(#[$doc])* pub $name: Counter,)*
        }

        /// A plain copy of a worker's (or all workers') counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl WorkerStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.get(),)* }
            }
        }

        impl std::ops::AddAssign for StatsSnapshot {
            fn add_assign(&mut self, o: StatsSnapshot) {
                $(self.$name += o.$name;)*
            }
        }

        impl StatsSnapshot {
            /// (name, value) pairs, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

worker_stats! {
    /// TCP connections accepted.
    accepted,
    /// Connections currently held (any phase).
    open,
    /// Successful WebSocket upgrades.
    upgraded,
    /// Upgrade requests refused with an HTTP error (all reasons).
    handshake_failures,
    /// ... of which malformed (400).
    rejected_bad_request,
    /// ... of which wrong path (404).
    rejected_not_found,
    /// ... of which not GET (405).
    rejected_method,
    /// ... of which unsupported WebSocket version (426).
    rejected_version,
    /// ... of which a request head over the cap (431).
    rejected_too_large,
    /// ... of which over a connection limit (503).
    rejected_unavailable,
    /// ... of which without a valid token (401).
    rejected_unauthorized,
    /// ... of which from a disallowed Origin (403).
    rejected_forbidden,
    /// ... of which over the per-IP handshake rate (429).
    rejected_rate,
    /// New connections answered 503 at once because the worker was over
    /// `--max-handshakes-per-sec` (not counted as handshake failures).
    handshakes_shed,
    /// Gauge: the worker's `--max-handshakes-per-sec` now (fixed, or what
    /// `auto` measured); 0 while no limit applies.
    handshake_rate_limit,
    /// Gauge: with `auto`, the measured (smoothed) cost of one handshake
    /// on this worker, in nanoseconds; 0 until measured.
    handshake_cost_ns,
    /// Upgrades that presented a valid token.
    authenticated,
    /// Connections closed (1008) when their token expired.
    token_expiries,
    /// Connections closed for not finishing the upgrade in time.
    handshake_timeouts,
    /// Connections closed for a protocol violation.
    protocol_errors,
    messages_in,
    messages_out,
    bytes_in,
    bytes_out,
    /// Times accepting paused because the process ran out of descriptors.
    accept_backoffs,
    closed,
    /// Subscribers disconnected (1008) for not reading their fan-out.
    slow_consumers,
    /// Connections closed (1008) for exceeding the message rate.
    rate_limited,
    /// Connections closed (1001) after the idle timeout.
    idle_timeouts,
    /// Heartbeat pings sent.
    pings_sent,
    /// Watchdog probes answered (proves the event loop turns).
    watchdog,
    /// Gauge: 1 while the worker's thread runs (0 once it ended, e.g. by a
    /// panic outside a connection's processing).
    alive,
    /// Panics caught while handling one connection (that connection was
    /// closed, 1011 if it was upgraded; the worker carried on).
    panics,
    /// Connections the peer closed with a close frame.
    peer_closes,
    /// Open connections lost without a close frame (EOF, reset).
    abrupt_closes,
    /// Connections sent 1001 because the server is draining.
    shutdown_closes,
    /// Fan-out frames written (publish and broadcast deliveries).
    deliveries,
    /// Connections that negotiated permessage-deflate.
    deflate_negotiated,
    /// Messages run through the worker's compressor (replies, and each
    /// fan-out frame once, whatever its subscriber count).
    deflate_compressions,
    /// Compressed client messages inflated.
    deflate_inflations,
    /// Gauge: bytes queued for clients whose sockets are backed up.
    queued_bytes,
    /// Gauge: timers in the wheel.
    timers,
    /// io_uring backend: `io_uring_enter` calls (submits and waits).
    uring_enters,
    /// io_uring backend: submission queue entries pushed.
    uring_sqes,
    /// io_uring backend: completion queue entries reaped.
    uring_cqes,
    /// io_uring backend: times the completion queue overflowed into the
    /// kernel's list (completions are kept, not lost).
    uring_cq_overflows,
    /// io_uring backend: multishot recvs ended by an empty buffer ring
    /// (re-armed once buffers are back; no data is lost).
    uring_enobufs,
    /// io_uring backend: sends the socket took only part of (the rest was
    /// resubmitted in order).
    uring_short_sends,
    /// io_uring backend, gauge: receive buffers lent out of the ring.
    uring_buffers_lent,
    /// Connections closed (1009) because the process's reassembly budget
    /// (`--max-reassembly-bytes`) was spent.
    reassembly_refused,
    /// Client broadcasts refused (not allowed, or over the per-connection rate).
    broadcasts_refused,
    /// Token refreshes whose signature was checked.
    refresh_checks,
    /// Token refreshes refused without a check (too frequent, or a repeat of
    /// a token already refused).
    refreshes_refused,
    /// Subscribes refused by a topic budget (per connection or process).
    subscribes_refused,
    /// Subscriptions removed because a refreshed token no longer allows them.
    subscriptions_revoked,
    /// Times a worker wrote its fan-out batch early because it grew past
    /// its size bound within one loop turn.
    outbox_early_flushes,
    /// TLS handshakes completed with a full key exchange.
    tls_handshakes_full,
    /// TLS handshakes completed by resumption (ticket or session cache).
    tls_handshakes_resumed,
    /// TLS connections closed: the handshake failed (garbage, no common
    /// version or suite, bad message).
    tls_failed_handshake,
    /// ... the handshake buffered past `--tls-handshake-buffer`.
    tls_failed_too_large,
    /// ... a record after the handshake was bad (MAC failure, ...).
    tls_failed_bad_record,
    /// ... the server could not encrypt (keys exhausted, misuse).
    tls_failed_server_close,
}

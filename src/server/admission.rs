//! Admission control, shared by all workers: the process-wide limit on
//! upgraded connections, the optional per-IP connection limit, and the caps
//! on connections still in their handshake (per client address and overall).
//!
//! Per-IP counts start at accept time, not at the upgrade: a client that
//! opens thousands of sockets and never finishes a request head must be
//! stopped before it holds the process's descriptors, or it locks out every
//! other address. Touched once at accept, once when the head is answered and
//! once at close, never per message. The caller answers refusals with 503.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` upgraded connections are held.
    Full,
    /// `--max-connections-per-ip` connections from this address are held.
    PerIp,
    /// `--max-handshaking` connections are still in their handshake.
    Handshaking,
    /// `--max-handshaking-per-ip` connections from this address (IPv6: its
    /// /64) are still in their handshake.
    HandshakingPerIp,
}

impl Refusal {
    /// The body of the 503 that answers it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "server is at its connection limit",
            Refusal::PerIp => "too many connections from your address",
            Refusal::Handshaking => "too many connections are being set up; retry",
            Refusal::HandshakingPerIp => "too many unfinished handshakes from your address",
        }
    }
}

#[derive(Debug, Default)]
pub struct Admission {
    max_total: usize,
    max_per_ip: u32,
    max_handshaking: usize,
    max_handshaking_per_ip: u32,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, u32>,
    handshaking: AtomicUsize,
    handshaking_per_ip: DashMap<IpAddr, u32>,
    pub refused_full: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_handshaking: AtomicU64,
    pub refused_handshaking_per_ip: AtomicU64,
}

/// The key an address is counted under for handshakes: IPv6 clients get a
/// /64 each (one subscriber's allocation; counting single addresses would
/// hand one attacker 2^64 allowances), IPv4-mapped IPv6 is its IPv4 address.
fn handshake_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !(u64::MAX as u128))),
        },
    }
}

/// Takes one from `map[key]` under `limit` (0 = no limit).
fn take(map: &DashMap<IpAddr, u32>, key: IpAddr, limit: u32) -> bool {
    let mut n = map.entry(key).or_insert(0);
    if *n >= limit {
        return false;
    }
    *n += 1;
    true
}

/// Gives one back to `map[key]`, dropping the entry at zero.
fn give(map: &DashMap<IpAddr, u32>, key: IpAddr) {
    let gone = match map.get_mut(&key) {
        Some(mut n) => {
            *n = n.saturating_sub(1);
            *n == 0
        }
        None => false,
    };
    if gone {
        map.remove_if(&key, |_, n| *n == 0);
    }
}

impl Admission {
    /// `0` means "no limit" for either.
    pub fn new(max_total: usize, max_per_ip: u32) -> Admission {
        Admission {
            max_total,
            max_per_ip,
            ..Default::default()
        }
    }

    /// Caps connections that have not finished their handshake, overall and
    /// per client address (`0` = no limit).
    pub fn with_handshake_caps(mut self, max: usize, max_per_ip: u32) -> Admission {
        self.max_handshaking = max;
        self.max_handshaking_per_ip = max_per_ip;
        self
    }

    /// Whether the per-IP connection limit is on (then every connection's
    /// address is kept until it closes).
    pub fn tracks_ips(&self) -> bool {
        self.max_per_ip > 0
    }

    /// Upgraded connections held right now.
    pub fn admitted(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections accepted and not yet past their handshake.
    pub fn handshaking(&self) -> usize {
        self.handshaking.load(Ordering::Relaxed)
    }

    /// A connection was just accepted from `ip`: counts it against the
    /// per-IP connection limit and the handshake caps, or says why not.
    /// On `Ok` the caller later calls [`Admission::end_handshake`] once and,
    /// when [`Admission::tracks_ips`], [`Admission::closed`] once.
    pub fn try_accept(&self, ip: IpAddr) -> Result<(), Refusal> {
        let limit = if self.max_handshaking == 0 {
            usize::MAX
        } else {
            self.max_handshaking
        };
        let counted = self
            .handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if counted.is_err() {
            self.refused_handshaking.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Handshaking);
        }
        if self.max_handshaking_per_ip > 0
            && !take(
                &self.handshaking_per_ip,
                handshake_key(ip),
                self.max_handshaking_per_ip,
            )
        {
            self.handshaking.fetch_sub(1, Ordering::AcqRel);
            self.refused_handshaking_per_ip
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::HandshakingPerIp);
        }
        if self.tracks_ips() && !take(&self.per_ip, ip, self.max_per_ip) {
            self.end_handshake(ip);
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        Ok(())
    }

    /// The connection from `ip` is no longer handshaking (its request was
    /// answered, or it closed first).
    pub fn end_handshake(&self, ip: IpAddr) {
        self.handshaking.fetch_sub(1, Ordering::AcqRel);
        if self.max_handshaking_per_ip > 0 {
            give(&self.handshaking_per_ip, handshake_key(ip));
        }
    }

    /// A connection from `ip` counted by [`Admission::try_accept`] closed.
    pub fn closed(&self, ip: IpAddr) {
        if self.tracks_ips() {
            give(&self.per_ip, ip);
        }
    }

    /// Admits one upgrade under `--max-connections`, or refuses it.
    pub fn try_admit(&self) -> Result<(), Refusal> {
        let limit = if self.max_total == 0 {
            usize::MAX
        } else {
            self.max_total
        };
        let admitted = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if admitted.is_err() {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Gives back what [`Admission::try_admit`] took.
    pub fn release(&self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_limit_at_upgrade() {
        let a = Admission::new(2, 0);
        assert_eq!(a.try_admit(), Ok(()));
        assert_eq!(a.try_admit(), Ok(()));
        assert_eq!(a.try_admit(), Err(Refusal::Full));
        assert_eq!(a.admitted(), 2);
        a.release();
        assert_eq!(a.try_admit(), Ok(()));
        assert_eq!(a.refused_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn per_ip_connections_count_from_accept_until_close() {
        let a = Admission::new(0, 2);
        let (ip1, ip2) = (ip("127.0.0.2"), ip("127.0.0.3"));
        assert_eq!(a.try_accept(ip1), Ok(()));
        assert_eq!(a.try_accept(ip1), Ok(()));
        // Still handshaking or upgraded makes no difference.
        a.end_handshake(ip1);
        assert_eq!(a.try_accept(ip1), Err(Refusal::PerIp));
        assert_eq!(a.try_accept(ip2), Ok(()));
        a.closed(ip1);
        assert_eq!(a.try_accept(ip1), Ok(()));
        assert_eq!(a.refused_per_ip.load(Ordering::Relaxed), 1);
        // The refused one left no handshake count behind.
        assert_eq!(a.handshaking(), 3);
    }

    #[test]
    fn handshake_caps_per_address_and_overall() {
        let a = Admission::new(0, 0).with_handshake_caps(3, 2);
        let (ip1, ip2) = (ip("127.0.0.2"), ip("127.0.0.3"));
        assert_eq!(a.try_accept(ip1), Ok(()));
        assert_eq!(a.try_accept(ip1), Ok(()));
        assert_eq!(a.try_accept(ip1), Err(Refusal::HandshakingPerIp));
        assert_eq!(a.try_accept(ip2), Ok(()));
        assert_eq!(a.try_accept(ip("127.0.0.4")), Err(Refusal::Handshaking));
        a.end_handshake(ip1);
        assert_eq!(a.try_accept(ip1), Ok(()));
        assert_eq!(a.handshaking(), 3);
        assert_eq!(a.refused_handshaking.load(Ordering::Relaxed), 1);
        assert_eq!(a.refused_handshaking_per_ip.load(Ordering::Relaxed), 1);
        for x in [ip1, ip1, ip2] {
            a.end_handshake(x);
        }
        assert_eq!(a.handshaking(), 0);
        assert!(
            a.handshaking_per_ip.is_empty(),
            "entries are dropped at zero"
        );
    }

    #[test]
    fn ipv6_clients_share_a_64_and_mapped_ipv4_is_ipv4() {
        let a = Admission::new(0, 0).with_handshake_caps(0, 1);
        assert_eq!(a.try_accept(ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(
            a.try_accept(ip("2001:db8:1:2:ffff::9")),
            Err(Refusal::HandshakingPerIp)
        );
        assert_eq!(a.try_accept(ip("2001:db8:1:3::1")), Ok(()));
        assert_eq!(a.try_accept(ip("10.0.0.1")), Ok(()));
        assert_eq!(
            a.try_accept(ip("::ffff:10.0.0.1")),
            Err(Refusal::HandshakingPerIp)
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let a = Admission::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(a.try_admit(), Ok(()));
            assert_eq!(a.try_accept(ip("127.0.0.1")), Ok(()));
        }
    }
}

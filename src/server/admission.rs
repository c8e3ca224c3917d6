//! Admission control: the process-wide connection limit and the optional
//! per-IP limit, shared by all workers.
//!
//! Touched once per upgrade and once per close of an upgraded connection,
//! never per message. Refusals are answered by the caller with 503.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
    PerIp,
}

#[derive(Debug, Default)]
pub struct Admission {
    max_total: usize,
    max_per_ip: u32,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, u32>,
    pub refused_full: AtomicU64,
    pub refused_per_ip: AtomicU64,
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

    pub fn tracks_ips(&self) -> bool {
        self.max_per_ip > 0
    }

    /// Upgraded connections held right now.
    pub fn admitted(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits one connection, or says why not. `ip` is needed only when
    /// [`Admission::tracks_ips`].
    pub fn try_admit(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
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
        if let (true, Some(ip)) = (self.tracks_ips(), ip) {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(n);
                self.total.fetch_sub(1, Ordering::AcqRel);
                self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(())
    }

    /// Gives back what [`Admission::try_admit`] took.
    pub fn release(&self, ip: Option<IpAddr>) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let (true, Some(ip)) = (self.tracks_ips(), ip) {
            let gone = match self.per_ip.get_mut(&ip) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if gone {
                self.per_ip.remove_if(&ip, |_, n| *n == 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_per_ip_limits() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "127.0.0.2".parse().unwrap();
        let ip2: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(a.try_admit(Some(ip1)), Ok(()));
        assert_eq!(a.try_admit(Some(ip1)), Ok(()));
        assert_eq!(a.try_admit(Some(ip1)), Err(Refusal::PerIp));
        assert_eq!(a.try_admit(Some(ip2)), Ok(()));
        assert_eq!(a.try_admit(Some(ip2)), Err(Refusal::Full));
        assert_eq!(a.admitted(), 3);
        a.release(Some(ip1));
        assert_eq!(a.try_admit(Some(ip2)), Ok(()));
        assert_eq!(a.refused_full.load(Ordering::Relaxed), 1);
        assert_eq!(a.refused_per_ip.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn zero_means_unlimited() {
        let a = Admission::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(a.try_admit(None), Ok(()));
        }
    }
}

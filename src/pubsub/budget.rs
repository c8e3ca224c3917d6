//! Process-wide topic budgets: how many subscriptions (connection × topic)
//! and how many topic entries (topic × worker with subscribers) the whole
//! process may hold.
//!
//! Owns only the counting. A per-connection cap alone does not bound the
//! process: a million connections with a hundred 256-byte topics each would
//! take tens of gigabytes. Workers reserve here before they grow their topic
//! tables and give back when entries go; past a limit the client's subscribe
//! is refused (error 429) and the connection stays open.

use std::sync::atomic::{AtomicU64, Ordering};

/// One shared count with a ceiling.
#[derive(Debug)]
pub struct Allowance {
    limit: u64,
    used: AtomicU64,
    /// Reservations refused because the count was at its limit.
    refused: AtomicU64,
}

impl Allowance {
    pub fn new(limit: u64) -> Allowance {
        Allowance {
            limit,
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Takes one unit if the count is below its limit.
    pub fn take(&self) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.limit).then_some(u + 1)
            })
            .is_ok();
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Gives back one unit taken with [`Allowance::take`].
    pub fn give(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// The process's topic budgets (`--max-total-subscriptions`, `--max-topics`).
#[derive(Debug)]
pub struct TopicBudget {
    pub subscriptions: Allowance,
    pub topics: Allowance,
}

impl TopicBudget {
    pub fn new(max_subscriptions: u64, max_topics: u64) -> TopicBudget {
        TopicBudget {
            subscriptions: Allowance::new(max_subscriptions),
            topics: Allowance::new(max_topics),
        }
    }

    /// No limits (tests, embedding).
    pub fn unlimited() -> TopicBudget {
        TopicBudget::new(u64::MAX, u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_counts_refusals() {
        let a = Allowance::new(2);
        assert!(a.take() && a.take());
        assert!(!a.take());
        assert_eq!((a.used(), a.refused()), (2, 1));
        a.give();
        assert!(a.take());
    }
}

//! Counting one publish's deliveries across workers.
//!
//! A ticket is created with the number of workers the publish went to; each
//! adds its local delivery count and marks its part done. Whoever finishes
//! the last part notifies the requester: a channel (the admin HTTP thread) or
//! the worker that owns the sender (for `broadcastResult.listenCount`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Acquire};

use crossbeam_channel::Sender;

/// Who learns the total.
#[derive(Debug)]
pub enum Notify {
    /// Send the total on this channel (bounded(1); never blocks).
    Channel(Sender<u64>),
    /// Tell worker `worker` that its pending result `pending` is complete.
    Worker { worker: usize, pending: usize },
}

#[derive(Debug)]
pub struct Ticket {
    remaining: AtomicUsize,
    delivered: AtomicU64,
    pub notify: Notify,
}

impl Ticket {
    pub fn new(parts: usize, notify: Notify) -> Ticket {
        Ticket {
            remaining: AtomicUsize::new(parts),
            delivered: AtomicU64::new(0),
            notify,
        }
    }

    /// Adds one part's count. Returns true if this completed the ticket
    /// (the caller then notifies; see [`super::Hub::part_done`]).
    pub fn part_done(&self, delivered: u64) -> bool {
        self.delivered.fetch_add(delivered, AcqRel);
        self.remaining.fetch_sub(1, AcqRel) == 1
    }

    pub fn is_done(&self) -> bool {
        self.remaining.load(Acquire) == 0
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_part_completes() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let t = Ticket::new(3, Notify::Channel(tx));
        assert!(!t.part_done(5));
        assert!(!t.part_done(0));
        assert!(!t.is_done());
        assert!(t.part_done(2));
        assert!(t.is_done());
        assert_eq!(t.delivered(), 7);
    }
}

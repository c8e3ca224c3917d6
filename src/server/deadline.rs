//! Deadlines with a fixed duration per kind, kept in FIFO order.
//!
//! Every handshake gets the same timeout, so deadlines are pushed in
//! increasing order and expiry is a pop from the front: O(1) per connection,
//! and the scan touches only connections that have a deadline, never all of
//! them. Entries are not removed on cancel; a stale entry (the connection
//! finished its handshake, or the slab slot was reused) is recognised by its
//! serial number and skipped.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub at: Instant,
    pub key: usize,
    pub serial: u32,
}

#[derive(Debug, Default)]
pub struct DeadlineQueue {
    entries: VecDeque<Entry>,
}

impl DeadlineQueue {
    /// Adds a deadline; `at` must not be earlier than the last one pushed.
    pub fn push(&mut self, at: Instant, key: usize, serial: u32) {
        debug_assert!(self.entries.back().is_none_or(|e| e.at <= at));
        self.entries.push_back(Entry { at, key, serial });
    }

    /// The earliest pending deadline.
    pub fn next(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.at)
    }

    /// Pops the next entry whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        if self.entries.front()?.at <= now {
            self.entries.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_order() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        q.push(t0, 1, 10);
        q.push(t0 + Duration::from_secs(1), 2, 20);
        assert_eq!(q.next(), Some(t0));
        assert_eq!(q.pop_expired(t0).map(|e| e.key), Some(1));
        assert_eq!(q.pop_expired(t0), None);
        assert_eq!(q.pop_expired(t0 + Duration::from_secs(2)).map(|e| e.serial), Some(20));
        assert_eq!(q.next(), None);
    }
}

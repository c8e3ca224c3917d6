//! A hashed timing wheel: O(1) schedule and cancel, one tick source per
//! worker, no OS timer per connection.
//!
//! Pure data structure: time is a tick number passed in by the caller (the
//! worker converts its clock to ticks). Each slot holds an intrusive doubly
//! linked list of entries kept in a slab, so cancel is O(1) given the id.
//! Deadlines further away than one rotation simply stay in their slot until
//! the rotation that reaches them (each visit checks the deadline).

use slab::Slab;

const NONE: u32 = u32::MAX;

/// Identifies a scheduled timer (valid until it fires or is cancelled).
/// Stored as entry index + 1, so `Option<TimerId>` is 4 bytes (it sits in
/// every connection's slab entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId(std::num::NonZeroU32);

impl TimerId {
    fn new(index: u32) -> TimerId {
        TimerId(std::num::NonZeroU32::MIN.saturating_add(index))
    }

    fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

#[derive(Debug)]
struct Entry {
    deadline: u64,
    key: u32,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
pub struct TimerWheel {
    slots: Box<[u32]>,
    entries: Slab<Entry>,
    /// The last tick that was processed.
    now: u64,
}

impl TimerWheel {
    /// A wheel with `slots` slots (rounded up to a power of two), starting at tick `now`.
    pub fn new(slots: usize, now: u64) -> TimerWheel {
        TimerWheel {
            slots: vec![NONE; slots.next_power_of_two().max(2)].into_boxed_slice(),
            entries: Slab::new(),
            now,
        }
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Schedules `key` to fire at tick `deadline` (a past deadline fires on
    /// the next `advance`).
    pub fn schedule(&mut self, deadline: u64, key: u32) -> TimerId {
        let deadline = deadline.max(self.now + 1);
        let slot = self.slot_of(deadline);
        let head = self.slots[slot];
        let id = self.entries.insert(Entry {
            deadline,
            key,
            prev: NONE,
            next: head,
        }) as u32;
        if head != NONE {
            self.entries[head as usize].prev = id;
        }
        self.slots[slot] = id;
        TimerId::new(id)
    }

    /// Cancels a timer. Cancelling an id that already fired is a bug the
    /// caller avoids by clearing its id when the timer fires.
    pub fn cancel(&mut self, id: TimerId) {
        let Some(e) = self.entries.try_remove(id.index()) else {
            return;
        };
        if e.prev != NONE {
            self.entries[e.prev as usize].next = e.next;
        } else {
            let slot = self.slot_of(e.deadline);
            self.slots[slot] = e.next;
        }
        if e.next != NONE {
            self.entries[e.next as usize].prev = e.prev;
        }
    }

    /// The tick timer `id` fires at (`None` once it fired or was cancelled).
    pub fn deadline(&self, id: TimerId) -> Option<u64> {
        self.entries.get(id.index()).map(|e| e.deadline)
    }

    /// Cancels `id` and schedules anew.
    pub fn reschedule(&mut self, id: TimerId, deadline: u64, key: u32) -> TimerId {
        self.cancel(id);
        self.schedule(deadline, key)
    }

    /// Advances to tick `now`, appending the keys of expired timers to
    /// `expired` in deadline order per slot. Their ids become invalid.
    pub fn advance(&mut self, now: u64, expired: &mut Vec<u32>) {
        if now <= self.now {
            return;
        }
        // Past one full rotation every slot is visited once.
        let steps = (now - self.now).min(self.slots.len() as u64);
        let start = now - steps + 1;
        for tick in start..=now {
            let slot = self.slot_of(tick);
            let mut id = self.slots[slot];
            while id != NONE {
                let (deadline, key, next) = {
                    let e = &self.entries[id as usize];
                    (e.deadline, e.key, e.next)
                };
                if deadline <= now {
                    self.cancel(TimerId::new(id));
                    expired.push(key);
                }
                id = next;
            }
        }
        self.now = now;
    }

    /// The current tick (the last one advanced to).
    pub fn now(&self) -> u64 {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(w: &mut TimerWheel, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        w.advance(now, &mut v);
        v.sort();
        v
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = TimerWheel::new(8, 0);
        w.schedule(3, 1);
        w.schedule(5, 2);
        assert!(fire(&mut w, 2).is_empty());
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert_eq!(fire(&mut w, 10), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_rotation_wait_for_their_round() {
        let mut w = TimerWheel::new(8, 0);
        w.schedule(3, 1); // slot 3, this round
        w.schedule(11, 2); // slot 3, next round
        w.schedule(100, 3);
        assert_eq!(fire(&mut w, 3), vec![1]);
        assert!(fire(&mut w, 10).is_empty());
        assert_eq!(fire(&mut w, 11), vec![2]);
        assert!(fire(&mut w, 99).is_empty());
        assert_eq!(fire(&mut w, 100), vec![3]);
    }

    #[test]
    fn a_long_jump_fires_everything_due() {
        let mut w = TimerWheel::new(8, 0);
        for k in 0..50u32 {
            w.schedule(1 + k as u64 * 3, k);
        }
        assert_eq!(fire(&mut w, 1000).len(), 50);
    }

    #[test]
    fn cancel_and_reschedule_are_exact() {
        let mut w = TimerWheel::new(16, 0);
        let a = w.schedule(4, 1);
        let b = w.schedule(4, 2);
        let c = w.schedule(4, 3);
        w.cancel(b); // middle of the slot's list
        let a = w.reschedule(a, 9, 1);
        assert_eq!(fire(&mut w, 4), vec![3]);
        w.cancel(c); // already fired: a no-op
        assert_eq!(fire(&mut w, 9), vec![1]);
        w.cancel(a);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut w = TimerWheel::new(8, 10);
        w.schedule(3, 7);
        assert_eq!(fire(&mut w, 11), vec![7]);
    }

    #[test]
    fn many_timers_random_order() {
        let mut w = TimerWheel::new(64, 0);
        let mut ids = Vec::new();
        let mut x: u64 = 12345;
        for k in 0..2000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = 1 + (x >> 33) % 500;
            ids.push((w.schedule(d, k), d, k));
        }
        // Cancel every third.
        let mut want: Vec<(u64, u32)> = Vec::new();
        for (i, (id, d, k)) in ids.iter().enumerate() {
            if i % 3 == 0 {
                w.cancel(*id);
            } else {
                want.push((*d, *k));
            }
        }
        let mut got = Vec::new();
        for now in 1..=500 {
            let mut fired = Vec::new();
            w.advance(now, &mut fired);
            for k in fired {
                got.push((now, k));
            }
        }
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}

//! Exactly-once on the receiving side: each cluster message carries its
//! publisher's node id, an epoch and a sequence number per channel, so a
//! node can drop a message it has already delivered and count the ones that
//! never arrived.
//!
//! A channel's messages from one publisher come from one publisher thread
//! through one Redis shard, so they arrive in order; a message at or below
//! the last sequence seen is a duplicate (a publish retried after `MOVED` or
//! a lost connection), a jump forward is a loss (a failover window, a publish
//! the sender had to drop). The window is one high-water mark per
//! (channel, publisher) — O(1) memory per stream — and the table is bounded:
//! at most [`MAX_STREAMS`] streams; past it the table is cleared and the
//! next message of each stream starts a new baseline (no loss counted, and a
//! duplicate arriving right then would pass once). Streams of a channel
//! this node stopped subscribing to are forgotten, so a later
//! re-subscription does not count what it was not listening to as lost.

use std::collections::HashMap;
use std::sync::Arc;

/// Streams (channel × publisher) remembered at most (~80 bytes each).
pub const MAX_STREAMS: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
struct Mark {
    epoch: u32,
    seq: u64,
}

/// What to do with an arriving message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: deliver it. `lost` messages of the stream were skipped before it.
    Deliver { lost: u64 },
    /// Already delivered (or older than what was): drop it.
    Duplicate,
}

/// The high-water marks of every stream this node receives.
#[derive(Debug, Default)]
pub struct Dedup {
    channels: HashMap<Arc<str>, HashMap<u64, Mark>>,
    streams: usize,
}

impl Dedup {
    /// Judges message `seq` of `epoch` from `node` on `channel`.
    pub fn check(&mut self, channel: &str, node: u64, epoch: u32, seq: u64) -> Verdict {
        if self.streams >= MAX_STREAMS {
            self.channels.clear();
            self.streams = 0;
        }
        let marks = match self.channels.get_mut(channel) {
            Some(m) => m,
            None => self.channels.entry(Arc::from(channel)).or_default(),
        };
        match marks.get_mut(&node) {
            None => {
                marks.insert(node, Mark { epoch, seq });
                self.streams += 1;
                Verdict::Deliver { lost: 0 }
            }
            // The publisher restarted or renumbered: a new baseline.
            Some(m) if m.epoch != epoch => {
                *m = Mark { epoch, seq };
                Verdict::Deliver { lost: 0 }
            }
            Some(m) if seq <= m.seq => Verdict::Duplicate,
            Some(m) => {
                let lost = seq - m.seq - 1;
                m.seq = seq;
                Verdict::Deliver { lost }
            }
        }
    }

    /// This node no longer listens to `channel`.
    pub fn forget(&mut self, channel: &str) {
        if let Some(m) = self.channels.remove(channel) {
            self.streams -= m.len();
        }
    }

    pub fn streams(&self) -> usize {
        self.streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_gaps() {
        let mut d = Dedup::default();
        assert_eq!(d.check("c", 1, 7, 1), Verdict::Deliver { lost: 0 });
        assert_eq!(d.check("c", 1, 7, 2), Verdict::Deliver { lost: 0 });
        assert_eq!(d.check("c", 1, 7, 2), Verdict::Duplicate);
        assert_eq!(d.check("c", 1, 7, 1), Verdict::Duplicate);
        assert_eq!(d.check("c", 1, 7, 6), Verdict::Deliver { lost: 3 });
        // Another publisher, another channel: separate streams.
        assert_eq!(d.check("c", 2, 7, 1), Verdict::Deliver { lost: 0 });
        assert_eq!(d.check("d", 1, 7, 1), Verdict::Deliver { lost: 0 });
        assert_eq!(d.streams(), 3);
        // A restarted publisher (new epoch) starts over without a loss.
        assert_eq!(d.check("c", 1, 8, 1), Verdict::Deliver { lost: 0 });
        assert_eq!(d.check("c", 1, 8, 1), Verdict::Duplicate);
    }

    #[test]
    fn forgetting_a_channel_does_not_count_its_gap() {
        let mut d = Dedup::default();
        d.check("c", 1, 0, 1);
        d.forget("c");
        assert_eq!(d.streams(), 0);
        assert_eq!(d.check("c", 1, 0, 50), Verdict::Deliver { lost: 0 });
    }

    #[test]
    fn bounded() {
        let mut d = Dedup::default();
        for n in 0..MAX_STREAMS as u64 + 10 {
            d.check("c", n, 0, 1);
        }
        assert!(d.streams() <= MAX_STREAMS);
    }
}

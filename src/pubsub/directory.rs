//! The topic directory: for each topic, the set of workers that have at least
//! one local subscriber, so a publish is sent only to workers that need it.
//!
//! Shared by all threads (a sharded concurrent map). It is written when a
//! worker's first subscriber to a topic joins or its last one leaves, and
//! read once per publish — never per delivery.

use std::sync::Arc;

use dashmap::DashMap;

/// Most workers one process runs (the size of [`WorkerSet`]).
pub const MAX_WORKERS: usize = 256;

/// A set of worker ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSet([u64; MAX_WORKERS / 64]);

impl WorkerSet {
    /// Workers `0..n`.
    pub fn all(n: usize) -> WorkerSet {
        let mut s = WorkerSet::default();
        for w in 0..n.min(MAX_WORKERS) {
            s.insert(w);
        }
        s
    }

    pub fn insert(&mut self, w: usize) {
        self.0[w / 64] |= 1 << (w % 64);
    }

    pub fn remove(&mut self, w: usize) {
        self.0[w / 64] &= !(1 << (w % 64));
    }

    pub fn contains(&self, w: usize) -> bool {
        w < MAX_WORKERS && self.0[w / 64] & (1 << (w % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|x| *x == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|x| x.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_WORKERS).filter(move |w| self.contains(*w))
    }
}

/// Topic → workers with subscribers.
#[derive(Debug, Default)]
pub struct TopicDirectory {
    map: DashMap<Arc<str>, WorkerSet>,
}

impl TopicDirectory {
    /// Records that `worker` now has subscribers for `topic`. Returns true
    /// if no worker had any before (the node's first subscriber).
    pub fn join(&self, topic: &str, worker: usize) -> bool {
        let mut set = self.map.entry(topic.into()).or_default();
        let first = set.is_empty();
        set.insert(worker);
        first
    }

    /// Records that `worker` has no more subscribers for `topic`. Returns
    /// true if no worker has any now (the node's last subscriber left).
    pub fn leave(&self, topic: &str, worker: usize) -> bool {
        let empty = match self.map.get_mut(topic) {
            Some(mut set) => {
                set.remove(worker);
                set.is_empty()
            }
            None => false,
        };
        if empty {
            self.map.remove_if(topic, |_, set| set.is_empty());
        }
        empty
    }

    /// Every topic with at least one local subscriber.
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.map.iter().map(|e| e.key().clone()).collect()
    }

    /// Workers that have subscribers for `topic`.
    pub fn workers_for(&self, topic: &str) -> WorkerSet {
        self.map.get(topic).map(|s| *s).unwrap_or_default()
    }

    /// Number of topics with at least one subscriber anywhere.
    pub fn topic_count(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_sets() {
        let mut s = WorkerSet::default();
        s.insert(0);
        s.insert(65);
        s.insert(255);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 65, 255]);
        assert_eq!(s.len(), 3);
        s.remove(65);
        assert!(!s.contains(65) && s.contains(255));
        assert_eq!(WorkerSet::all(3).iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn directory_tracks_first_join_and_last_leave() {
        let d = TopicDirectory::default();
        assert!(d.join("t", 1));
        assert!(!d.join("t", 3));
        assert_eq!(d.workers_for("t").iter().collect::<Vec<_>>(), vec![1, 3]);
        assert!(!d.leave("t", 1));
        assert_eq!(d.workers_for("t").iter().collect::<Vec<_>>(), vec![3]);
        assert_eq!(d.topics().len(), 1);
        assert!(d.leave("t", 3));
        assert!(d.workers_for("t").is_empty());
        assert_eq!(d.topic_count(), 0);
    }
}

//! One worker's subscriptions: topic name → the local connections subscribed.
//!
//! Owned by a single worker and never shared. Subscriber sets are hash sets
//! of slab keys (O(1) join and leave, no fix-ups when others leave); the
//! connection keeps the list of topic ids it joined so closing it leaves
//! every topic without a scan.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use slab::Slab;

use super::history::Seq;

#[derive(Debug)]
pub struct Topic {
    pub name: Arc<str>,
    pub subscribers: FxHashSet<u32>,
    /// Subscribers that joined a topic with history at position `seq`: a
    /// message at or before it that still reaches this worker was in their
    /// replay (or before their subscribe) and is skipped for them. A fence
    /// goes away with the first message past it (messages arrive in offset
    /// order), so this is empty except right after subscribes.
    pub fences: Vec<(u32, Seq)>,
}

#[derive(Debug, Default)]
pub struct LocalTopics {
    by_name: HashMap<Arc<str>, u32>,
    topics: Slab<Topic>,
}

/// What a join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub topic_id: u32,
    /// The connection was not subscribed before.
    pub new_member: bool,
    /// First local subscriber: the directory must learn about this worker.
    pub first_local: bool,
}

impl LocalTopics {
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: u32) -> Option<&Topic> {
        self.topics.get(id as usize)
    }

    pub fn join(&mut self, name: &str, conn: u32) -> Joined {
        let (id, first_local) = match self.by_name.get(name) {
            Some(id) => (*id, false),
            None => {
                let name: Arc<str> = name.into();
                let id = self.topics.insert(Topic {
                    name: name.clone(),
                    subscribers: FxHashSet::default(),
                    fences: Vec::new(),
                }) as u32;
                self.by_name.insert(name, id);
                (id, true)
            }
        };
        let new_member = self.topics[id as usize].subscribers.insert(conn);
        Joined {
            topic_id: id,
            new_member,
            first_local,
        }
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Topic> {
        self.topics.get_mut(id as usize)
    }

    /// Makes `conn` skip topic `id`'s messages up to `seq` (see [`Topic::fences`]).
    pub fn fence(&mut self, id: u32, conn: u32, seq: Seq) {
        if let Some(t) = self.topics.get_mut(id as usize) {
            t.fences.retain(|(c, _)| *c != conn);
            t.fences.push((conn, seq));
        }
    }

    /// Removes `conn` from topic `id`. Returns the topic's name if it has no
    /// local subscribers left (the directory must forget this worker).
    pub fn leave(&mut self, id: u32, conn: u32) -> Option<Arc<str>> {
        let topic = self.topics.get_mut(id as usize)?;
        topic.subscribers.remove(&conn);
        // The slab key may be reused by a later connection.
        topic.fences.retain(|(c, _)| *c != conn);
        if !topic.subscribers.is_empty() {
            return None;
        }
        let topic = self.topics.remove(id as usize);
        self.by_name.remove(&topic.name);
        Some(topic.name)
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave() {
        let mut t = LocalTopics::default();
        let a = t.join("news", 1);
        assert!(a.first_local && a.new_member);
        let b = t.join("news", 2);
        assert_eq!(b.topic_id, a.topic_id);
        assert!(!b.first_local && b.new_member);
        assert!(!t.join("news", 2).new_member);
        assert_eq!(t.get(a.topic_id).unwrap().subscribers.len(), 2);
        assert_eq!(t.leave(a.topic_id, 1), None);
        assert_eq!(t.leave(a.topic_id, 2).as_deref(), Some("news"));
        assert!(t.is_empty());
        assert_eq!(t.id_of("news"), None);
    }
}

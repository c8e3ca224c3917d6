//! This node's presence: how many subscriptions each topic has here, and by
//! which users (JWT `sub`), for `GET /presence`.
//!
//! Written on every subscribe and unsubscribe (one sharded-map update, no
//! Redis), read by the admin API and by the cluster's presence writer, which
//! publishes the topics marked dirty in batches (through the hub's
//! [`super::uplink::Uplink`]). Users' reserved topics are not counted.
//!
//! Also owns the presence answer both `GET /presence` and a client's
//! `{"type":"presence"}` get: this node's counts, or the cluster-wide ones
//! when the uplink keeps them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use dashmap::{DashMap, DashSet};

use super::uplink::PresenceUnavailable;
use super::users;
use super::Hub;

/// Users listed per topic and node at most; past it only the count is exact.
pub const MAX_USERS_LISTED: usize = 1000;

#[derive(Debug, Default, Clone)]
pub struct TopicPresence {
    /// Subscriptions (connections) to the topic on this node.
    pub subscriptions: u64,
    /// Connections per authenticated user among them.
    pub users: HashMap<Arc<str>, u32>,
}

/// Per-topic presence on this node.
#[derive(Debug, Default)]
pub struct LocalPresence {
    topics: DashMap<Arc<str>, TopicPresence>,
    dirty: DashSet<Arc<str>>,
}

impl LocalPresence {
    /// A connection (of `user`, if authenticated) subscribed to `topic`.
    pub fn join(&self, topic: &str, user: Option<&str>) {
        if users::is_reserved(topic) {
            return;
        }
        let mut e = match self.topics.get_mut(topic) {
            Some(e) => e,
            None => self.topics.entry(Arc::from(topic)).or_default(),
        };
        e.subscriptions += 1;
        if let Some(u) = user {
            match e.users.get_mut(u) {
                Some(n) => *n += 1,
                None => {
                    e.users.insert(Arc::from(u), 1);
                }
            }
        }
        let key = e.key().clone();
        drop(e);
        self.dirty.insert(key);
    }

    /// A connection (of `user`) left `topic`.
    pub fn leave(&self, topic: &str, user: Option<&str>) {
        if users::is_reserved(topic) {
            return;
        }
        let Some(mut e) = self.topics.get_mut(topic) else {
            return;
        };
        e.subscriptions = e.subscriptions.saturating_sub(1);
        if let Some(u) = user {
            if let Some(n) = e.users.get_mut(u) {
                *n -= 1;
                if *n == 0 {
                    e.users.remove(u);
                }
            }
        }
        let key = e.key().clone();
        let empty = e.subscriptions == 0;
        drop(e);
        if empty {
            self.topics.remove_if(topic, |_, p| p.subscriptions == 0);
        }
        self.dirty.insert(key);
    }

    /// The topic's presence here (zero if none).
    pub fn get(&self, topic: &str) -> TopicPresence {
        self.topics
            .get(topic)
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Takes the topics changed since the last call.
    pub fn take_dirty(&self) -> Vec<Arc<str>> {
        let keys: Vec<Arc<str>> = self.dirty.iter().map(|k| k.key().clone()).collect();
        for k in &keys {
            self.dirty.remove(k);
        }
        keys
    }

    /// Every topic with subscriptions here.
    pub fn topics(&self) -> Vec<Arc<str>> {
        self.topics.iter().map(|e| e.key().clone()).collect()
    }
}

/// Presence of one topic over every node (this node's alone without a
/// cluster).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Presence {
    pub subscriptions: u64,
    pub users: BTreeSet<String>,
    /// False when some node had more users than it lists.
    pub users_complete: bool,
}

/// The presence of `topic` as the JSON object both `GET /presence` and the
/// client's `{"type":"presence"}` answer: this node's own counts without a
/// cluster, the cluster-wide ones with one (a blocking call then: see
/// [`needs_remote`]).
pub fn answer(
    hub: &Hub,
    topic: &str,
    users: bool,
) -> Result<serde_json::Value, PresenceUnavailable> {
    let local = hub.presence.get(topic);
    let remote = hub.uplink.as_ref().and_then(|u| u.presence());
    let p = match remote {
        None => Presence {
            subscriptions: local.subscriptions,
            users: local.users.keys().map(|u| u.to_string()).collect(),
            users_complete: true,
        },
        Some(r) => r.query(topic, &local)?,
    };
    let mut body = serde_json::json!({ "topic": topic, "subscriptions": p.subscriptions });
    if users {
        body["users"] = serde_json::json!(p.users);
        body["users_complete"] = p.users_complete.into();
    }
    Ok(body)
}

/// Whether answering asks the other nodes (a network round trip: run it
/// off the event loops), or only reads this node's counts.
pub fn needs_remote(hub: &Hub) -> bool {
    hub.uplink.as_ref().is_some_and(|u| u.presence().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_users() {
        let p = LocalPresence::default();
        p.join("t", Some("alice"));
        p.join("t", Some("alice"));
        p.join("t", None);
        p.join(&users::user_topic("alice"), Some("alice"));
        let t = p.get("t");
        assert_eq!(t.subscriptions, 3);
        assert_eq!(t.users.get("alice"), Some(&2));
        assert_eq!(p.take_dirty().len(), 1);
        assert!(p.take_dirty().is_empty());
        p.leave("t", Some("alice"));
        p.leave("t", Some("alice"));
        assert!(p.get("t").users.is_empty());
        p.leave("t", None);
        assert_eq!(p.get("t").subscriptions, 0);
        assert!(p.topics().is_empty());
        assert_eq!(p.take_dirty().len(), 1);
    }
}

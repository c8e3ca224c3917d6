//! What this node's pub/sub needs from the other nodes, as traits the
//! cluster bridge implements: publishes handed out for other nodes, topic
//! interest reported (so only nodes with subscribers get a topic),
//! cluster-wide presence asked for, and topic history held for every node. Pub/sub never learns how nodes talk
//! (Redis, sharded or not): it depends on these traits, not on
//! [`crate::cluster`].

use std::sync::Arc;

use super::presence::{Presence, TopicPresence};

/// The way to the other nodes, held by the hub when this node is part of a
/// cluster.
pub trait Uplink: Send + Sync {
    /// Hands a publish (`topic` Some) or broadcast (None) accepted here to
    /// the other nodes. Never waits: what cannot be handed over is dropped
    /// and counted by the implementation.
    fn publish(&self, topic: Option<&str>, payload: &[u8]);

    /// `topic` gained its first or lost its last subscriber on this node.
    /// Never waits.
    fn topic_changed(&self, topic: &str);

    /// Cluster-wide presence, once it runs (None: this node's own counts
    /// are the answer).
    fn presence(&self) -> Option<Arc<dyn RemotePresence>>;
}

/// Where the subscriptions of every node are counted.
pub trait RemotePresence: Send + Sync {
    /// The topic's presence over all live nodes; this node's own part is
    /// `local` (fresher than what it last reported). Blocks on the network:
    /// call it off the event loops.
    fn query(&self, topic: &str, local: &TopicPresence) -> Result<Presence, PresenceUnavailable>;
}

/// Why cluster-wide presence could not be answered (the implementation's
/// own error, kept as the source).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PresenceUnavailable(pub Box<dyn std::error::Error + Send + Sync>);

/// Where topic positions and history live when the cluster holds them (in
/// Redis), so that any node can serve any client's resume. A publish to a
/// history topic goes there first and comes back to every node, this one
/// included, at the position the holder gave it.
pub trait HistoryHolder: Send + Sync {
    /// Hands a publish to the holder. Never waits: what cannot be handed
    /// over is dropped and counted by the implementation.
    fn publish(&self, topic: &str, payload: &[u8]);

    /// Queues the resume of connection `conn` (`serial`) of `worker`, which
    /// subscribed to `topic` (`since`: the client's last offset and epoch).
    /// The answer arrives in the worker's inbox carrying the returned token.
    /// Never waits.
    fn resume(
        &self,
        worker: usize,
        conn: u32,
        serial: u32,
        topic: &str,
        since: Option<(u64, &str)>,
    ) -> Result<u64, ResumeRefused>;
}

/// A resume not queued: too many are waiting already.
#[derive(Debug, thiserror::Error)]
#[error("too many resumes waiting")]
pub struct ResumeRefused;

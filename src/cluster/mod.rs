//! The cluster bridge: several wsgate nodes share topics, broadcasts and
//! messages to users through Redis pub/sub — one Redis (`--redis`) or a
//! Redis Cluster with sharded pub/sub (`--redis-cluster`).
//!
//! - [`wire`]: channel names and the node-tagged message format (pure).
//! - [`bridge`]: the threads that talk to one Redis, reconnect with back-off,
//!   and hand messages from other nodes to the local workers through the
//!   one publish path ([`crate::pubsub::publish`]).
//! - [`sharded`]: the same over a Redis Cluster, shard by shard.
//! - [`slots`]: hash slots and the slot map (pure).
//! - [`history_stream`]: topic history and positions kept in Redis
//!   streams, so a client can resume on any node.
//! - [`presence`]: cluster-wide subscription counts kept in Redis.
//! - [`dedup`]: per-publisher sequence numbers: duplicates dropped, gaps
//!   counted as lost (pure).
//!
//! The bridge implements pub/sub's [`crate::pubsub::uplink::Uplink`] (pub/sub
//! never names this module). Workers never wait for Redis: they hand
//! publishes to the bridge through a bounded channel and deliver locally
//! themselves. With Redis down, local
//! delivery goes on and what was meant for other nodes is counted as dropped.

pub mod bridge;
pub mod dedup;
pub mod history_stream;
pub mod presence;
pub mod sharded;
pub mod slots;
pub mod wire;

pub use bridge::{ClusterLink, ClusterStats};

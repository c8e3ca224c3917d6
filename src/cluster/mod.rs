//! The cluster bridge: several wsgate nodes share topics and broadcasts
//! through Redis pub/sub.
//!
//! - [`wire`]: channel names and the node-tagged message format (pure).
//! - [`bridge`]: the threads that talk to Redis, reconnect with back-off, and
//!   hand messages from other nodes to the local workers through the hub.
//!
//! Workers never wait for Redis: they hand publishes to the bridge through a
//! bounded channel and deliver locally themselves. With Redis down, local
//! delivery goes on and what was meant for other nodes is counted as dropped.

pub mod bridge;
pub mod wire;

pub use bridge::{ClusterLink, ClusterStats};

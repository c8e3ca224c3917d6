//! Applications: what the messages on a connection mean.
//!
//! The event loop hands an app each complete message and a buffer to write
//! replies into; an app never sees sockets or frames.
//! - [`echo`]: every message back to its sender (conformance testing).
//! - [`pubsub`] with [`commands`]: the JSON topic/broadcast protocol;
//!   [`topic_ids`]: the topics one connection is in.

pub mod commands;
pub mod echo;
pub mod pubsub;
pub mod topic_ids;

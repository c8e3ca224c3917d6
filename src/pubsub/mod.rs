//! Publish/subscribe across workers: who subscribes where, how one publish
//! reaches every subscriber exactly once, encoded once.
//!
//! - [`directory`]: which workers have subscribers for a topic (shared; written
//!   only when a worker's first subscriber joins or its last leaves).
//! - [`topics`]: one worker's own topic → subscriber table (not shared).
//! - [`hub`]: the per-worker inboxes and wakers; how deliveries travel.
//! - [`publish`]: the one publish path (clients, the admin API, other
//!   nodes): number, encode once, dispatch, hand to the other nodes.
//! - [`ticket`]: counting deliveries across workers (`listenCount`, HTTP replies).
//! - [`presence`]: subscriptions per topic (and by which users) on this node.
//! - [`users`]: messages to a user, as reserved per-user topics.
//! - [`frame`]: a publish's frame, shared by all subscribers, compressed
//!   at most once (permessage-deflate).
//! - [`offload`]: blocking work (Redis round trips) off the event loops.
//! - [`fanout`]: one worker's local fan-out (inbox deliveries, its own
//!   connections' publishes, pending broadcast results), written through
//!   the worker's [`fanout::Connections`].
//! - [`outbox`]: one worker's per-iteration batch of frames per connection,
//!   so each connection gets one write per loop iteration.
//!
//! - [`budget`]: process-wide caps on subscriptions and topic entries.
//! - [`uplink`]: what pub/sub needs from other nodes (the cluster bridge
//!   implements it).
//! - [`text`]: the JSON texts publishes and broadcasts become.
//! - [`history`]: the last messages of each topic and their positions, for
//!   clients that resume after a reconnect.
//!
//! Nothing here touches sockets; the worker does the writing.

pub mod budget;
pub mod directory;
pub mod fanout;
pub mod frame;
pub mod history;
pub mod hub;
pub mod offload;
pub mod outbox;
pub mod presence;
pub mod publish;
pub mod text;
pub mod ticket;
pub mod topics;
pub mod uplink;
pub mod users;

pub use frame::OutFrame;
pub use hub::{Delivery, Hub, Wake, WorkerMsg};
pub use ticket::{Notify, Ticket};

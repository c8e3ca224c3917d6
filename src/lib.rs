//! wsgate: a WebSocket server built to hold a million connections per box.
//!
//! The crate is laid out like the architecture, top to bottom (each module
//! uses only those below it; `tests/module_graph.rs` checks there is no
//! cycle):
//! - [`node`]: one wsgate process wired together: [`start`] and the
//!   [`ServerHandle`], typed start-up errors ([`StartError`]).
//! - [`protocol`]: the sans-IO RFC 6455 core (handshake, frame codec, message
//!   reassembly, close rules). No sockets, no clocks.
//! - [`server`]: the IO side: SO_REUSEPORT listeners, one mio event loop per
//!   worker thread, each connection a socket and a session in a slab.
//! - [`session`]: one connection's state machine, sans-IO: upgrade, close
//!   handshake, heartbeat and idle deadlines, backpressure, write queue and
//!   slow-consumer cut. Bytes and time in, bytes out.
//! - [`app`]: what a connection's messages mean (echo, pub/sub commands).
//! - [`pubsub`]: topics and cross-worker fan-out (directory, hub, outbox).
//! - [`admin`]: the admin HTTP listener (publish API, metrics, health).
//! - [`cluster`]: the Redis bridge between nodes.
//! - [`config`]: the command line.
//! - [`stats`]: the counters workers and the admin listener bump.
//! - [`escape`]: client text made safe for log lines.
//! - [`limits`]: the process's descriptor budget.
//! - [`tls`]: native TLS (wss://) as a sans-IO layer under the session.

// The server holds no `unsafe`: socket options and `MSG_NOSIGNAL` sends go
// through socket2 and mio, which own the FFI.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod escape;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod pubsub;
pub mod security;
pub mod server;
pub mod session;
pub mod stats;
pub mod systemd;
pub mod timer_wheel;
pub mod tls;

pub use config::Config;
pub use node::{start, ServerHandle, StartError};

//! wsgate: a WebSocket server built to hold a million connections per box.
//!
//! The crate is laid out like the architecture:
//! - [`protocol`]: the sans-IO RFC 6455 core (handshake, frame codec, message
//!   reassembly, close rules). No sockets, no clocks.
//! - [`session`]: one connection's state machine, sans-IO: upgrade, close
//!   handshake, heartbeat and idle deadlines, backpressure, write queue and
//!   slow-consumer cut. Bytes and time in, bytes out.
//! - [`server`]: the IO side: SO_REUSEPORT listeners, one mio event loop per
//!   worker thread, each connection a socket and a session in a slab.
//! - [`app`]: what a connection's messages mean (echo, pub/sub commands).
//! - [`pubsub`]: topics and cross-worker fan-out (directory, hub, outbox).
//! - [`admin`]: the admin HTTP listener (publish API, metrics, health).
//! - [`cluster`]: the Redis bridge between nodes.
//! - [`config`]: the command line.
//! - [`escape`]: client text made safe for log lines.
//! - [`limits`]: the process's descriptor budget.

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
pub mod protocol;
pub mod pubsub;
pub mod security;
pub mod server;
pub mod session;
pub mod systemd;
pub mod timer_wheel;

pub use config::Config;
pub use server::{start, ServerHandle};

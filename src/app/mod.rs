//! Applications: what the messages on a connection mean.
//!
//! The event loop hands an app each complete message and a buffer to write
//! replies into; an app never sees sockets or frames.

pub mod echo;

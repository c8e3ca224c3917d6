//! A safe io_uring event-loop API for one thread, for wsgate's io_uring
//! backend: multishot accept, multishot recv into a provided-buffer ring
//! shared by all connections (an idle connection owns no buffer), sends of
//! owned or shared (`Arc`) bytes batched into one `io_uring_enter`, cancel
//! and close without leaks or use-after-free.
//!
//! All `unsafe` lives in the private `sys` module; see its header for the
//! ownership invariants and the crate README for the rules callers follow.
//! It also holds the one socket option the server sets that no safe crate
//! wraps ([`set_tcp_defer_accept`]).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod multishot;
mod ring;
mod send;
mod sys;

pub use error::{Error, Feature};
pub use ring::{Completion, EndReason, Fd, Features, RecvBuf, Ring, RingConfig, Stats};
pub use send::{SendData, MAX_SEND};
pub use sys::set_tcp_defer_accept;

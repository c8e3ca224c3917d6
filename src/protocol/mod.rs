//! The sans-IO RFC 6455 core.
//!
//! Everything in this module tree is pure code over byte slices: the upgrade
//! handshake, the frame codec, the incremental UTF-8 validator, the message
//! reassembler, the close-handshake rules and permessage-deflate. It owns no sockets, reads no clocks
//! and imports nothing from `mio`; the event loop in [`crate::server`] owns the
//! IO and calls in here. That separation is what lets the RFC be tested
//! exhaustively by unit tests, property tests and fuzz targets.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::CloseCode;
pub use frame::{FrameHeader, OpCode};
pub use message::{Event, MessageKind, ProtocolError, Receiver, ReceiverLimits};

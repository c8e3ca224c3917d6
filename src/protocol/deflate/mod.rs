//! permessage-deflate (RFC 7692) without context takeover.
//!
//! - [`negotiate`]: the `Sec-WebSocket-Extensions` offers and the answer.
//! - [`codec`]: per-worker compressor and decompressor, reset per message,
//!   with the inflated-size limit enforced while inflating.
//! - [`replies`]: a connection's direct replies, compressed per message.
//!
//! A connection that negotiated the extension keeps only [`Agreed`] (two
//! bytes) in its receiver; all DEFLATE state belongs to its worker.

pub mod codec;
pub mod negotiate;
pub mod replies;

pub use codec::{Deflater, InflateError, Inflater};
pub use negotiate::{negotiate, Agreed};
pub use replies::{Replies, ReplyDeflate};

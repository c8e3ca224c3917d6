//! The echo app: every message goes back to its sender with its opcode.
//! This is what the Autobahn conformance suite drives.

use crate::protocol::deflate::Replies;
use crate::protocol::MessageKind;

/// Appends the echo of one message to `out` (compressed per message when
/// the connection negotiated permessage-deflate).
pub fn on_message(kind: MessageKind, payload: &[u8], out: &mut Replies<'_>) {
    out.message(kind.opcode(), payload);
}

//! The echo app: every message goes back to its sender with its opcode.
//! This is what the Autobahn conformance suite drives.

use crate::protocol::frame::write_server_frame;
use crate::protocol::MessageKind;

/// Appends the echo of one message to `out`.
pub fn on_message(kind: MessageKind, payload: &[u8], out: &mut Vec<u8>) {
    write_server_frame(out, kind.opcode(), payload);
}

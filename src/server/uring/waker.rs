//! The io_uring loop's wake-up: other threads (the hub, the admin API, the
//! cluster bridge) write a byte to one end of a socket pair; the ring
//! watches the other end with a multishot poll, and the loop drains it
//! before draining the inbox. A full socket means a wake-up is already
//! pending, so a write that would block is a success.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use crate::pubsub::Wake;

/// The sending side, held by the hub.
pub(crate) struct SocketWaker(UnixStream);

/// A waker and the read end its worker's ring watches.
pub(crate) fn pair() -> io::Result<(SocketWaker, UnixStream)> {
    let (tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((SocketWaker(tx), rx))
}

impl Wake for SocketWaker {
    fn wake(&self) -> io::Result<()> {
        match (&self.0).write(&[1]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            r => r.map(drop),
        }
    }
}

/// Empties the read end (wake-ups coalesce: one drain answers them all).
pub(crate) fn drain(rx: &UnixStream) {
    let mut buf = [0u8; 64];
    while matches!((&*rx).read(&mut buf), Ok(n) if n > 0) {}
}

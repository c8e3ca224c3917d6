//! What a worker's event loop provides to the worker code both loops share
//! (sessions, fan-out, timers, admission, the drain): a [`Sink`] per
//! connection, closing a connection, and the listener's state.
//!
//! Two loops implement it: the epoll (mio) loop in `worker::epoll`, and the
//! io_uring loop in [`super::uring`]. Nothing above this trait knows which
//! one runs a connection.

use std::time::{Duration, Instant};

use crate::session::Sink;

pub(crate) trait Io {
    /// What a connection's slab entry holds to do its IO.
    type Handle;
    /// Writes to one connection.
    type Sink<'a>: Sink
    where
        Self: 'a;

    /// The sink of the connection behind `h`.
    fn sink<'a>(&'a mut self, h: &'a mut Self::Handle) -> Self::Sink<'a>;

    /// Writes what the loop holds for the connection outside the session's
    /// queue (the epoll loop's encrypted TLS records) ahead of new output.
    /// `Ok(true)` when nothing is left; an error means the connection is
    /// broken. The io_uring loop holds nothing of the kind.
    fn flush_held(&mut self, _h: &mut Self::Handle) -> std::io::Result<bool> {
        Ok(true)
    }

    /// The session is done and its output written: ends the stream (a TLS
    /// close_notify behind what is still encrypted and waiting). True when
    /// the connection can be closed now; false when its last bytes wait for
    /// the socket, in which case the connection stays until it is writable
    /// again (the session's close timer still bounds that).
    fn finish(&mut self, _h: &mut Self::Handle) -> bool {
        true
    }

    /// False once [`Io::close`] was called but the slot is still held (the
    /// io_uring loop keeps it until the kernel confirms the close): such a
    /// connection takes no output and no fan-out.
    fn is_live(h: &Self::Handle) -> bool;

    /// Closes the connection. Returns true when its slab slot may be freed
    /// now; false when the loop frees it later.
    fn close(&mut self, h: &mut Self::Handle) -> bool;

    /// Stops accepting for good (the drain): the kernel then hands new
    /// connections to the other listeners on the port.
    fn stop_listening(&mut self);

    /// Accepting can go on right now (the loop must not sleep).
    fn accept_ready(&self) -> bool;

    /// The next moment the listener side needs the loop awake (a backoff or
    /// a rejoin attempt ending).
    fn accept_wake(&self) -> Option<Instant>;

    /// Longest one inbox drain may run, if shorter than pub/sub's default
    /// (see `Connections::inbox_budget`).
    fn inbox_budget() -> Option<Duration> {
        None
    }
}

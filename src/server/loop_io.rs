//! What a worker's event loop provides to the worker code both loops share
//! (sessions, fan-out, timers, admission, the drain): a [`Sink`] per
//! connection, closing a connection, and the listener's state.
//!
//! Two loops implement it: the epoll (mio) loop in `worker::epoll`, and the
//! io_uring loop in [`super::uring`]. Nothing above this trait knows which
//! one runs a connection.

use std::time::Instant;

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
}

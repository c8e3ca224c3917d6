//! One slab entry of a worker: a client socket, its protocol session, and
//! its one timer in the worker's wheel. All protocol state is in the
//! [`Session`]; this is what the worker adds to do its IO and scheduling,
//! and the glue that lets a session write to a socket ([`Sink`]) and count
//! against the process's admission ([`Admit`]). What the event loop keeps per
//! connection (the epoll loop: the socket and, with TLS, its boxed
//! `TlsState`) is the loop's handle type.

use std::io;
use std::net::IpAddr;

use crate::session::{Admit, Session, Sink};
use crate::timer_wheel::{TimerId, TimerWheel};

use super::admission::Admission;
use super::no_sigpipe::NoSigPipe;

/// `H` is what the worker's event loop keeps per connection
/// ([`super::loop_io::Io::Handle`]): the mio stream, or the io_uring handle.
pub(crate) struct Conn<H> {
    pub stream: H,
    /// The wheel entry for the session's deadline ([`Session::poll_timeout`]).
    pub timer: Option<TimerId>,
    pub session: Session,
}

impl<H> Conn<H> {
    /// Moves the wheel entry to the session's current deadline (a no-op
    /// when it did not change, which is the common case after a read).
    pub fn sync_timer(&mut self, wheel: &mut TimerWheel, key: usize) {
        let Some(deadline) = self.session.poll_timeout() else {
            if let Some(id) = self.timer.take() {
                wheel.cancel(id);
            }
            return;
        };
        let deadline = u64::from(deadline);
        self.timer = Some(match self.timer {
            Some(id) if wheel.deadline(id) == Some(deadline) => id,
            Some(id) => wheel.reschedule(id, deadline, key as u32),
            None => wheel.schedule(deadline, key as u32),
        });
    }
}

impl Admit for Admission {
    fn end_handshake(&self, ip: IpAddr) {
        Admission::end_handshake(self, ip);
    }

    fn tracks_ips(&self) -> bool {
        Admission::tracks_ips(self)
    }

    fn try_admit(&self) -> Result<(), &'static str> {
        Admission::try_admit(self).map_err(|why| why.reason())
    }
}

impl Sink for NoSigPipe<'_> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_is_small() {
        // The slab stores Conn inline; this is the user-space cost of an idle
        // connection on the epoll loop (plus the slab's per-entry tag), TLS
        // state pointer included. Debug builds of mio add a selector id to
        // every socket; what counts is the release layout, where the socket
        // is just its descriptor.
        let size = std::mem::size_of::<Conn<super::super::worker::epoll::EpollConn>>();
        let release = (size - std::mem::size_of::<mio::net::TcpStream>()
            + std::mem::size_of::<std::os::fd::RawFd>())
        .next_multiple_of(8);
        eprintln!(
            "Conn<EpollConn>: {release} B in a release build, session {} B",
            std::mem::size_of::<Session>()
        );
        assert!(
            release <= 168,
            "Conn grew to {release} bytes ({size} in this build)"
        );
    }
}

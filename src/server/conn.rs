//! One slab entry of a worker: a client socket, its protocol session, and
//! its one timer in the worker's wheel. All protocol state is in the
//! [`Session`]; this is what the worker adds to do its IO and scheduling,
//! and the glue that lets a session write to a socket ([`Sink`]) and count
//! against the process's admission ([`Admit`]). A TLS connection also has
//! its [`TlsState`], boxed so that plain connections grow by one pointer.

use std::io;
use std::net::IpAddr;

use mio::net::TcpStream;

use crate::session::{Admit, Session, Sink};
use crate::timer_wheel::{TimerId, TimerWheel};

use super::admission::Admission;
use super::no_sigpipe::NoSigPipe;
use super::tls_io::{ConnSink, TlsState};

pub(crate) struct Conn {
    pub stream: TcpStream,
    /// The wheel entry for the session's deadline ([`Session::poll_timeout`]).
    pub timer: Option<TimerId>,
    pub session: Session,
    /// With `--tls-cert`: the TLS layer between the socket and the session.
    pub tls: Option<Box<TlsState>>,
}

impl Conn {
    /// The session and the sink it writes to (through TLS when on).
    pub fn split(&mut self) -> (&mut Session, ConnSink<'_>) {
        let sink = match self.tls.as_deref_mut() {
            Some(tls) => ConnSink::Tls {
                stream: &self.stream,
                tls,
            },
            None => ConnSink::Plain(NoSigPipe(&self.stream)),
        };
        (&mut self.session, sink)
    }

    /// The session is done: ends a TLS stream with close_notify behind
    /// whatever is still encrypted and waiting. True when everything is out
    /// and the socket can be dropped; false when the socket is full, so the
    /// caller keeps the connection until it is writable again (the
    /// session's close timer still bounds that).
    pub fn finish_tls(&mut self) -> bool {
        let Some(tls) = self.tls.as_deref_mut() else {
            return true;
        };
        if !tls.close_notify() {
            return true;
        }
        !matches!(tls.flush(&self.stream), Ok(false))
    }

    /// Writes the TLS records waiting for the socket, if any. `Ok(true)`
    /// when none are left (always, for a plain connection).
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            Some(tls) => tls.flush(&self.stream),
            None => Ok(true),
        }
    }

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
        // connection (plus the slab's per-entry tag). Debug builds of mio add
        // a selector id to every socket; what counts is the release layout,
        // where the socket is just its descriptor.
        let size = std::mem::size_of::<Conn>();
        let release = (size - std::mem::size_of::<TcpStream>()
            + std::mem::size_of::<std::os::fd::RawFd>())
        .next_multiple_of(8);
        assert!(
            release <= 192,
            "Conn grew to {release} bytes ({size} in this build)"
        );
    }
}

//! An admin connection's byte stream: plain TCP, or TLS over it when the
//! admin listener has a certificate (`--admin-tls-cert`).
//!
//! Owns the TLS state of admin connections only. The admin API serves a few
//! dozen connections at most, so it uses rustls' buffered connection (its
//! buffers per connection are no concern here) rather than the client
//! listener's unbuffered layer in [`crate::tls`]. The admin loop sees the
//! same non-blocking `Read`/`Write` either way: `WouldBlock` means "wait for
//! the next readiness event", and [`AdminStream::flush`] reports whether
//! everything written has reached the socket.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

pub(super) enum AdminStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub(super) struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
}

impl AdminStream {
    /// Wraps an accepted socket; with `tls` the TLS handshake starts with
    /// the client's first bytes.
    pub fn new(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<AdminStream> {
        Ok(match tls {
            None => AdminStream::Plain(tcp),
            Some(config) => AdminStream::Tls(Box::new(TlsStream {
                tcp,
                tls: ServerConnection::new(config.clone()).map_err(io::Error::other)?,
            })),
        })
    }

    /// The socket, to register with the poll.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            AdminStream::Plain(tcp) => tcp,
            AdminStream::Tls(s) => &mut s.tcp,
        }
    }

    /// Ends our direction: TLS close_notify (best effort), then FIN.
    pub fn shutdown_write(&mut self) {
        if let AdminStream::Tls(s) = self {
            s.tls.send_close_notify();
            let _ = s.flush_records();
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl TlsStream {
    /// Writes queued TLS records to the socket until none are left
    /// (`WouldBlock` when the socket is full: the rest goes on the next
    /// writable event).
    fn flush_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.tcp)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                // Ok(0) is the peer's close_notify: the end of the request.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Handshake messages (or alerts) owed to the peer go out first;
            // a full socket buffer leaves them for the writable event.
            match self.flush_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert rustls queued tells the peer why.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Read for AdminStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            AdminStream::Plain(tcp) => tcp.read(buf),
            AdminStream::Tls(s) => s.read_plaintext(buf),
        }
    }
}

impl Write for AdminStream {
    /// Plain: what the socket took. TLS: what rustls took into its send
    /// buffer; call [`Write::flush`] until it succeeds before closing.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            AdminStream::Plain(tcp) => tcp.write(buf),
            AdminStream::Tls(s) => loop {
                let n = s.tls.writer().write(buf)?;
                match s.flush_records() {
                    // rustls' send buffer was full and is empty now: it
                    // takes the bytes this time.
                    Ok(()) if n == 0 && !buf.is_empty() => continue,
                    Ok(()) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => return Ok(n),
                    Err(e) => return Err(e),
                }
            },
        }
    }

    /// Everything written is on the socket (`WouldBlock` while it is not).
    fn flush(&mut self) -> io::Result<()> {
        match self {
            AdminStream::Plain(_) => Ok(()),
            AdminStream::Tls(s) => s.flush_records(),
        }
    }
}

//! A session's output as io_uring sends. The session writes through a
//! [`Sink`] as it does to a socket: owned bytes (replies, an HTTP answer)
//! are copied into a send, whole fan-out frames are sent by reference (the
//! `Arc` moves into the ring: one encoded frame for every subscriber's
//! send). The ring keeps a connection's sends in order, one in the kernel
//! at a time.
//!
//! The sink takes bytes only while the connection has less than
//! [`SEND_WINDOW`] in the ring; past it, it answers WouldBlock like a full
//! socket, so what the peer does not take piles up in the session's own
//! write queue, where `--max-outbound-bytes` backpressure and the
//! slow-consumer cut apply as on the epoll loop.
//!
//! With TLS the sink encrypts what the session writes, batched as on the
//! epoll loop ([`encrypt_batch`]: up to 64 KiB of plaintext, one record per
//! 16 KiB), into an owned send; frames are never shared (each subscriber's
//! records are its own). It takes a batch only while the connection has
//! less than [`TLS_WINDOW`] in the ring, so ciphertext waiting in user
//! memory stays within about two batches and the rest waits as *plaintext*
//! in the session's queue, where the same budgets apply as on epoll.

use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use wsgate_uring::{Ring, SendData};

use super::super::tls_io::{encrypt_batch, BATCH};
use super::{Handle, FIN_PENDING, STALLED};
use crate::session::Sink;

/// Bytes one connection may have in the ring before its sink reports full:
/// the ring's counterpart of a socket send buffer, sized like Linux's
/// default `tcp_wmem` maximum (4 MiB). On the epoll loop a write lands in
/// the socket buffer at once; here it waits in the ring until the turn's
/// submit, so a smaller window would make a reader that keeps up look like
/// a slow consumer when several large frames go out in one turn. Fan-out
/// frames in the window are shared (`Arc`), not copies.
pub(crate) const SEND_WINDOW: u32 = 4 << 20;
/// Most bytes of owned output (replies, a batch of queued small frames)
/// copied into one send. Copies are user memory, unlike the shared frames
/// or an epoll loop's socket buffer, so a crowd of backed-up connections
/// must not hold megabytes of them each.
///
/// The sink copies only while the connection has nothing in the ring: the
/// ring sends a connection's sends one at a time anyway, so bytes copied
/// behind a send in flight would leave no sooner than bytes kept in the
/// session's queue (by reference) and copied when it completes, and
/// growing a queued copy send by send reallocated it every time (a
/// broadcast burst to 2,000 subscribers left glibc holding ~40 MB of
/// freed, fragmented copies).
pub(crate) const COPY_WINDOW: u32 = 64 << 10;
/// Smallest frame sent by reference behind sends already in the ring. The
/// ring keeps one send per connection in the kernel and the next one goes
/// in after its completion, one loop turn later: a burst of small fan-out
/// frames each sent on its own would trickle out one frame per connection
/// per turn, with a queue entry per frame (a 10,000-message burst to 2,000
/// subscribers stalled at a few MB delivered with 400 MB of entries).
/// Smaller frames wait in the session's queue instead (`Arc`s, no copy)
/// and go out together, copied into one send of up to [`COPY_WINDOW`].
pub(crate) const SHARE_BEHIND_MIN: usize = 16 << 10;

/// Ciphertext one TLS connection may have in the ring before its sink
/// reports full: one batch, so a batch encrypted now can follow the one
/// still in flight (or the handshake records and tickets just sent) without
/// waiting for a turn, and no more.
pub(crate) const TLS_WINDOW: u32 = BATCH as u32;

pub(crate) struct RingSink<'a> {
    pub(super) ring: &'a mut Ring,
    pub(super) h: &'a mut Handle,
    /// Set when a send could not be queued (the submission queue was full
    /// and the kernel busy): the loop retries the stalled connections.
    pub(super) stalled: &'a mut bool,
}

impl RingSink<'_> {
    fn full(&self) -> bool {
        self.h.in_ring >= SEND_WINDOW
    }

    /// Bytes of owned output it takes now (like a socket's free buffer):
    /// none while a send is in the ring (see [`COPY_WINDOW`]).
    fn room(&self) -> usize {
        if self.h.in_ring > 0 {
            0
        } else {
            COPY_WINDOW as usize
        }
    }

    /// Hands TLS records to the ring. They are sealed with sequence numbers
    /// the peer expects in order, so unlike plaintext they cannot be taken
    /// back and retried: if the ring refuses them (its submission queue
    /// full while the kernel takes none, see [`RingSink::write_tls`]), the
    /// stream is broken and the connection is closed.
    pub(super) fn send_records(&mut self, records: Vec<u8>) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self.send(SendData::owned(records)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS records refused by the ring",
            )),
            r => r,
        }
    }

    /// A session write on a TLS connection: one encrypted batch.
    fn write_tls(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.h.in_ring >= TLS_WINDOW || *self.stalled {
            // Once the ring refused a submission this turn, encrypt nothing
            // more until it is retried (`STALLED`): records, once made,
            // must go out.
            if *self.stalled {
                self.h.flags |= STALLED;
            }
            return Err(would_block());
        }
        let Some(tls) = self.h.tls.as_deref_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let mut records = Vec::new();
        let n = encrypt_batch(tls, bufs, &mut records)?;
        self.send_records(records)?;
        Ok(n)
    }

    fn send(&mut self, data: SendData) -> io::Result<()> {
        let len = data.len();
        match self.ring.send(self.h.fd, data) {
            Ok(()) => {}
            Err(wsgate_uring::Error::Enter(_)) => {
                // Not queued: the kernel could not take submissions (its
                // completion queue is full). Full for now; retried once
                // this turn's completions are reaped.
                self.h.flags |= STALLED;
                *self.stalled = true;
                return Err(would_block());
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
        }
        self.h.in_ring = self
            .h
            .in_ring
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl Write for RingSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.h.tls.is_some() {
            return self.write_tls(&[IoSlice::new(buf)]);
        }
        if self.room() == 0 {
            return Err(would_block());
        }
        let n = buf.len().min(self.room());
        self.send(SendData::owned(buf[..n].to_vec()))?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.h.tls.is_some() {
            return self.write_tls(bufs);
        }
        if self.room() == 0 {
            return Err(would_block());
        }
        // One send for all of them (the slow path: a backed-up queue).
        let room = self.room();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut bytes = Vec::with_capacity(total.min(room));
        for b in bufs {
            let take = b.len().min(room - bytes.len());
            bytes.extend_from_slice(&b[..take]);
            if bytes.len() == room {
                break;
            }
        }
        let n = bytes.len();
        self.send(SendData::owned(bytes))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for RingSink<'_> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = self.h.tls.as_deref_mut() {
            // close_notify, then the FIN behind it.
            let mut records = Vec::new();
            tls.close_notify(&mut records).map_err(io::Error::other)?;
            self.send_records(records)?;
        }
        if self.h.in_ring > 0 {
            // FIN after the last queued byte, not before it.
            self.h.flags |= FIN_PENDING;
            return Ok(());
        }
        shutdown_write(self.ring, self.h)
    }

    fn write_shared(&mut self, frame: &Arc<[u8]>) -> Option<io::Result<bool>> {
        if self.h.tls.is_some() {
            // Encrypted per subscriber: bytes only.
            return None;
        }
        if self.full() || (self.h.in_ring > 0 && frame.len() < SHARE_BEHIND_MIN) {
            return Some(Ok(false));
        }
        match self.send(SendData::shared(frame.clone())) {
            Ok(()) => Some(Ok(true)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(Ok(false)),
            Err(e) => Some(Err(e)),
        }
    }
}

/// Sends FIN on the connection's socket.
pub(super) fn shutdown_write(ring: &Ring, h: &mut Handle) -> io::Result<()> {
    h.flags &= !FIN_PENDING;
    let fd = ring
        .borrow_fd(h.fd)
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
    socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

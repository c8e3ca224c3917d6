//! The io_uring event loop: a second loop over the same sessions, pub/sub
//! and timers as the epoll loop (see [`super::worker`]); nothing above
//! [`super::loop_io::Io`] knows which loop runs a connection. All io_uring
//! `unsafe` lives in the `wsgate-uring` crate; this module uses its safe
//! [`Ring`].
//!
//! Per worker: one [`Ring`] with its provided-buffer ring; the worker's
//! `SO_REUSEPORT` listener adopted with a multishot accept; one multishot
//! recv per connection (an idle connection owns no buffer); session output
//! and fan-out frames as sends, all submitted by the turn's one
//! `io_uring_enter`, which also waits (its timeout is the next timer
//! deadline).
//!
//! - this file: the loop's side of a worker ([`Uring`]) and its per-
//!   connection handle ([`Handle`]);
//! - `sink`: a session's output as ring sends ([`sink::RingSink`]), with
//!   `--tls-cert` encrypted first (the TLS layer shared with the epoll loop:
//!   `tls_io`, `worker::tls`);
//! - `waker`: the cross-thread wake-up, a socket the ring watches;
//! - `event_loop`: the loop and what each completion does.

mod event_loop;
mod sink;
pub(crate) mod waker;

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use wsgate_uring::{Fd, Ring, RingConfig};

use super::listener::ListenOptions;
use super::loop_io::Io;
use crate::tls::TlsConn;
pub(crate) use sink::RingSink;

/// Token of the worker's listener in the ring.
const LISTENER: u64 = u64::MAX;
/// Token of the wake-up socket.
const WAKER: u64 = u64::MAX - 1;

/// Receive buffers in a worker's provided-buffer ring, and their size:
/// 256 KiB per worker in all, whatever the connection count. A buffer is
/// lent only from a recv completion until its bytes are handed to the
/// session (or the turn's backlog of completions is worked off), so the
/// ring needs about one turn's receives, not one buffer per connection; the
/// kernel cycles through all of them, so each one ends up touched (resident)
/// and a larger ring is pure memory. When a turn's receives outrun it, a
/// connection's recv ends with `-ENOBUFS` (`wsgate_uring_enobufs_total`) and
/// is re-armed once buffers are back: its bytes wait in the kernel's socket
/// buffer meanwhile, as TCP intends.
const RECV_BUFFERS: u16 = 128;
const RECV_BUFFER_SIZE: u32 = 2048;

/// Longest one inbox drain runs before the turn hands its sends to the
/// kernel (the rest of the inbox is drained next turn, without sleeping).
const INBOX_BUDGET: Duration = Duration::from_millis(2);

/// The ring settings of a worker.
pub(crate) fn ring_config() -> RingConfig {
    RingConfig {
        buffers: RECV_BUFFERS,
        buffer_size: RECV_BUFFER_SIZE,
        ..RingConfig::default()
    }
}

/// One connection's IO state in the ring (in the worker's slab entry).
pub(crate) struct Handle {
    fd: Fd,
    /// Bytes handed to the ring and not yet reported sent: the sink takes
    /// more only below [`sink::SEND_WINDOW`] ([`sink::TLS_WINDOW`] with
    /// TLS), so the session's own queue (and its backpressure and
    /// slow-consumer rules) sees the backlog.
    in_ring: u32,
    flags: u8,
    /// With `--tls-cert`: the connection's TLS state (boxed, so a plain
    /// connection grows by one pointer). Its records go straight into the
    /// ring; it keeps no ciphertext buffer of its own.
    tls: Option<Box<TlsConn>>,
}

/// A multishot recv is armed (its `RecvEnded` has not arrived).
const RECV_ARMED: u8 = 1;
/// `Ring::close` was called: the slot waits for `Closed`.
const CLOSING: u8 = 2;
/// The session asked for FIN while sends were still in the ring: sent when
/// the last of them completes.
const FIN_PENDING: u8 = 4;
/// A `cancel_recv` is on its way (reading paused by backpressure).
const RECV_CANCELING: u8 = 8;
/// Closed by the worker while its last bytes were still in the ring: the
/// descriptor is closed once they are sent (or at the linger deadline).
const LINGER: u8 = 16;
/// A send could not be queued (see `RingSink`): flushed again next turn.
const STALLED: u8 = 32;

/// How long a closed connection's last bytes (a close frame, an HTTP error)
/// may take to leave the ring before the descriptor is closed regardless.
/// On the epoll loop these bytes are in the kernel's socket buffer when the
/// descriptor closes; here they are still in the ring, and closing would
/// cancel them.
const LINGER_FOR: Duration = Duration::from_secs(2);

impl Handle {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Input held for a paused connection, and whether the peer's FIN came
/// after it.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    eof: bool,
}

/// The io_uring loop's side of a worker.
pub(crate) struct Uring {
    ring: Ring,
    /// The listener, while accepting.
    listener: Option<Fd>,
    /// The multishot accept ended and must be re-armed (after this time,
    /// when it ended on an error).
    accept_rearm: Option<Instant>,
    /// The address all listeners of the port share, and when to bind a
    /// fresh listener into the port's group after leaving it for want of
    /// descriptors.
    listen_addr: Option<std::net::SocketAddr>,
    /// What a rejoining listener is bound with (accepted sockets inherit
    /// TCP_NODELAY and TCP_USER_TIMEOUT from it).
    listen_options: ListenOptions,
    rejoin_at: Option<Instant>,
    /// Read end of the wake-up socket (see `waker`), and its handle in the
    /// ring (a duplicate descriptor of it).
    wake_rx: UnixStream,
    wake_fd: Option<Fd>,
    /// Connections whose multishot recv ended for want of buffers (or was
    /// ended by the kernel): re-armed at the end of the turn, once this
    /// turn's buffers are back in the ring.
    rearm: Vec<usize>,
    /// Input that arrived after a connection paused reading (backpressure),
    /// before its multishot recv was cancelled: handed to the session when
    /// it reads again. Bounded by what the kernel delivers while the cancel
    /// is on its way; connections that keep up have no entry.
    held: FxHashMap<usize, Held>,
    /// Closed connections whose last sends are still in the ring, with the
    /// deadline after which they are closed anyway (in deadline order).
    lingering: VecDeque<(Instant, Fd)>,
    /// Some connection is `STALLED`.
    stalled: bool,
}

impl Uring {
    /// Closes the lingering connections whose deadline passed (a peer that
    /// does not read its last bytes).
    fn close_lingering(&mut self, now: Instant) {
        while let Some(&(at, fd)) = self.lingering.front() {
            if at > now {
                return;
            }
            self.lingering.pop_front();
            // Already closed (its sends finished) is fine.
            let _ = self.ring.close(fd);
        }
    }

    /// A lingering connection's sends are done (or failed): close it now.
    fn end_linger(&mut self, h: &mut Handle) {
        if h.has(LINGER) {
            h.flags &= !LINGER;
            let _ = self.ring.close(h.fd);
        }
    }

    /// Sets up the worker's ring (probing every feature it uses), adopts
    /// the listener with a multishot accept and watches the wake-up socket.
    pub(crate) fn new(
        listener: TcpListener,
        listen_options: ListenOptions,
        wake_rx: UnixStream,
    ) -> Result<Uring, wsgate_uring::Error> {
        let listen_addr = listener.local_addr().ok();
        let mut ring = Ring::new(ring_config())?;
        let lfd = ring.adopt(LISTENER, listener.into());
        ring.accept_multi(lfd)?;
        let wfd = ring.adopt(
            WAKER,
            wake_rx
                .try_clone()
                .map_err(wsgate_uring::Error::Enter)?
                .into(),
        );
        ring.poll_readable(wfd)?;
        Ok(Uring {
            ring,
            listener: Some(lfd),
            accept_rearm: None,
            listen_addr,
            listen_options,
            rejoin_at: None,
            wake_rx,
            wake_fd: Some(wfd),
            rearm: Vec::new(),
            lingering: VecDeque::new(),
            held: FxHashMap::default(),
            stalled: false,
        })
    }
}

impl Io for Uring {
    type Handle = Handle;
    type Sink<'a> = RingSink<'a>;

    fn sink<'a>(&'a mut self, h: &'a mut Handle) -> RingSink<'a> {
        RingSink {
            ring: &mut self.ring,
            h,
            stalled: &mut self.stalled,
        }
    }

    fn finish(&mut self, h: &mut Handle) -> bool {
        if let Some(tls) = h.tls.as_deref_mut() {
            // close_notify before the FIN (which closing the descriptor
            // sends once the ring has sent everything: see `close`).
            let mut records = Vec::new();
            if tls.close_notify(&mut records).is_ok() {
                let _ = self.sink(h).send_records(records);
            }
        }
        true
    }

    fn is_live(h: &Handle) -> bool {
        !h.has(CLOSING)
    }

    fn close(&mut self, h: &mut Handle) -> bool {
        h.flags |= CLOSING;
        if h.in_ring > 0 {
            h.flags |= LINGER;
            self.lingering
                .push_back((Instant::now() + LINGER_FOR, h.fd));
            return false;
        }
        // The ring cancels the connection's operations and closes the
        // descriptor once none is left in the kernel; its slot is freed at
        // `Closed`, so no completion can reach a reused slot.
        self.ring.close(h.fd).is_err()
    }

    fn stop_listening(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self.ring.close(l);
        }
        self.accept_rearm = None;
        self.rejoin_at = None;
    }

    fn accept_ready(&self) -> bool {
        false
    }

    fn inbox_budget() -> Option<Duration> {
        // Sends reach the kernel between turns: a 20 ms drain of broadcasts
        // to a large local crowd would hold every subscriber's share in its
        // session queue meanwhile (and the allocator keeps such a peak).
        Some(INBOX_BUDGET)
    }

    fn accept_wake(&self) -> Option<Instant> {
        [
            self.accept_rearm,
            self.rejoin_at,
            self.lingering.front().map(|l| l.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::Conn;
    use super::Handle;

    #[test]
    fn an_idle_connection_is_small_on_io_uring_too() {
        // The slab stores Conn inline: the handle (fd handle, bytes in the
        // ring, flags, the TLS state's pointer) is all the loop adds per
        // connection in the server; the ring's own bookkeeping (its 32-byte
        // descriptor entry) is on top, in `wsgate-uring`.
        assert!(std::mem::size_of::<Handle>() <= 24);
        let size = std::mem::size_of::<Conn<Handle>>();
        eprintln!("Conn<Handle>: {size} B");
        assert!(size <= 176, "Conn<Handle> grew to {size} bytes");
    }
}

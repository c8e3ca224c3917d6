//! A TCP echo server on one io_uring: the shape wsgate's io_uring worker
//! loop takes (accept → adopt → recv into a ring buffer → session bytes →
//! send; close on EOF/error; re-arm multishots the kernel ended).
//!
//! `cargo run -p wsgate-uring --release --example echo -- 127.0.0.1:9000`
//! then e.g. `nc 127.0.0.1 9000`.

use std::net::TcpListener;

use slab::Slab;
use wsgate_uring::{Completion, EndReason, Fd, Ring, RingConfig};

const LISTENER: u64 = u64::MAX;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let mut ring = Ring::new(RingConfig::default())?;
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    eprintln!("echo on {addr}");
    let lfd = ring.adopt(LISTENER, listener.into());
    ring.accept_multi(lfd)?;
    // The server keeps a session per connection here; the echo "session" is
    // just the ring handle.
    let mut conns: Slab<Fd> = Slab::new();
    let mut out = Vec::new();
    // Multishots to re-arm at the end of the turn (after this turn's buffers
    // went back to the ring), so an empty ring does not spin.
    let mut rearm = Vec::new();
    loop {
        // One io_uring_enter: submits every send/recv/close queued in the
        // previous turn and waits for at least one completion.
        ring.wait(1, None, &mut out)?;
        for c in out.drain(..) {
            match c {
                Completion::Accepted { fd, .. } => {
                    socket2::SockRef::from(&fd).set_nodelay(true)?;
                    let key = conns.vacant_key();
                    let h = ring.adopt(key as u64, fd);
                    conns.insert(h);
                    ring.recv_multi(h)?;
                }
                Completion::AcceptEnded { reason, .. } => {
                    eprintln!("accept ended ({reason:?}), re-arming");
                    ring.accept_multi(lfd)?;
                }
                // session.on_bytes(&buf) → output; the buffer returns to the
                // ring when `buf` drops at the end of this arm.
                Completion::Received { token, buf } => {
                    ring.send(conns[token as usize], buf.to_vec())?
                }
                Completion::RecvEnded {
                    token,
                    reason: EndReason::NoBuffers | EndReason::Terminated,
                } => rearm.push(conns[token as usize]),
                Completion::RecvEnded { token, .. } | Completion::SendFailed { token, .. } => {
                    // EOF, error or cancel: close once (a second close of the
                    // same handle reports Closing/StaleFd, which is fine).
                    let _ = ring.close(conns[token as usize]);
                }
                Completion::Sent { .. } => {}
                // The server watches its wake-up eventfd (pub/sub, admin)
                // with `poll_readable`; this example has none.
                Completion::Readable { .. } | Completion::PollEnded { .. } => {}
                Completion::Closed { token, .. } => {
                    conns.remove(token as usize);
                }
            }
        }
        for h in rearm.drain(..) {
            let _ = ring.recv_multi(h);
        }
    }
}

//! A program that embeds the server need not ignore SIGPIPE: Rust binaries
//! do by default, but a C host, or a program that restored the default
//! action (as command-line tools do for pipes), would be killed by the first
//! write to a client that vanished. A test binary of its own, because the
//! signal disposition is process-wide.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use wsgate::protocol::frame::OpCode;

#[test]
fn writing_to_a_client_that_reset_raises_no_sigpipe() {
    // A handler instead of the runtime's SIG_IGN: any SIGPIPE the server's
    // writes raise is recorded (under the default action it would kill us).
    let raised = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGPIPE, raised.clone()).unwrap();
    let server = start_echo(|_| {});
    let addr = server.local_addr();
    for round in 0..3u64 {
        let mut c = RawClient::upgraded(addr);
        // A small receive window keeps most of the echo in the server's
        // queue, and the server stops reading this client (backpressure).
        socket2::SockRef::from(&c.tcp)
            .set_recv_buffer_size(64 << 10)
            .unwrap();
        c.send_frame(true, OpCode::Binary, &pseudo_random(round + 1, 8 << 20));
        eventually(Duration::from_secs(10), "the echo is queued", || {
            server.total_stats().queued_bytes > 0
        });
        // FIN, then reset: the server's socket is in CLOSE_WAIT when the
        // reset arrives, so its next write fails with EPIPE (not
        // ECONNRESET), the error that comes with SIGPIPE.
        c.tcp.shutdown(std::net::Shutdown::Write).unwrap();
        socket2::SockRef::from(&c.tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        eventually(Duration::from_secs(5), "the connection is released", || {
            server.total_stats().open == 0
        });
        assert!(
            !raised.load(Ordering::SeqCst),
            "a server write raised SIGPIPE (round {round})"
        );
    }
    assert_still_serves(addr);
}

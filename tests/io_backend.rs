//! Both event loops serve the same protocol: a server started with each
//! `--io-backend` echoes, fans out to subscribers and closes cleanly, and
//! the io_uring one really runs on its ring (its counters move; the epoll
//! one's stay at zero). The rest of the suite runs on either backend with
//! `WSGATE_IO_BACKEND=io-uring` (see tests/run-all.sh).

mod common;

use std::time::Duration;

use common::*;
use wsgate::config::IoBackend;
use wsgate::protocol::frame::OpCode;

fn start(backend: IoBackend, app_echo: bool) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.io_backend = backend;
    cfg.workers = Some(2);
    if app_echo {
        cfg.app = wsgate::config::AppKind::Echo;
    }
    wsgate::start(cfg).expect("start")
}

fn echo_and_fanout(backend: IoBackend) -> wsgate::ServerHandle {
    let server = start(backend, false);
    let addr = server.local_addr();
    // Subscribers on both workers (connections spread over the listeners).
    let mut subs: Vec<_> = (0..8).map(|_| connect(addr)).collect();
    for s in &mut subs {
        subscribe(s, "news");
    }
    let mut publisher = connect(addr);
    for i in 0..20 {
        publish(&mut publisher, "news", &i.to_string());
    }
    for s in &mut subs {
        for i in 0..20 {
            let v = recv(s);
            assert_eq!(v["type"], "message", "{v}");
            assert_eq!(v["payload"], i, "in order");
        }
    }
    server
}

#[test]
fn the_io_uring_loop_serves_pubsub_on_its_ring() {
    let server = echo_and_fanout(IoBackend::IoUring);
    let s = server.total_stats();
    assert!(s.uring_enters > 0, "no io_uring_enter counted");
    // At least a recv armed and a send for each of the 9 connections
    // (frames queued for one subscriber in one turn share a send).
    assert!(s.uring_sqes >= 18, "{} SQEs", s.uring_sqes);
    assert!(s.uring_cqes > 0);
}

#[test]
fn the_epoll_loop_never_touches_a_ring() {
    let server = echo_and_fanout(IoBackend::Epoll);
    assert_eq!(server.total_stats().uring_enters, 0);
}

#[test]
fn large_echoes_and_a_clean_close_on_io_uring() {
    let server = start(IoBackend::IoUring, true);
    let mut c = RawClient::upgraded(server.local_addr());
    // Larger than a ring buffer (4 KiB) and than the send window (256 KiB):
    // reassembled from many recvs, sent in several sends, in order.
    for (seed, n) in [(1, 10), (2, 5000), (3, 300_000), (4, 2 << 20)] {
        let payload = pseudo_random(seed, n);
        c.send_frame(true, OpCode::Binary, &payload);
        assert_eq!(c.frame(), (OpCode::Binary, payload));
    }
    c.send_frame(true, OpCode::Close, &close_payload(1000, b"bye"));
    c.expect_close(1000);
    c.expect_eof();
    eventually(Duration::from_secs(5), "slot released", || {
        server.total_stats().open == 0
    });
    assert_eq!(server.total_stats().queued_bytes, 0);
}

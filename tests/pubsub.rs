//! The pub/sub app over real sockets: the JSON protocol, cross-worker
//! fan-out, listenCount, ordering, slow consumers, and the HTTP publish API.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

use common::*;
use wsgate::config::AppKind;
use wsgate::protocol::OpCode;

fn start(workers: usize, tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = AppKind::PubSub;
    cfg.workers = Some(workers);
    cfg.drain_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

/// Opens `n` clients and makes sure both workers got some (SO_REUSEPORT
/// spreads by hash of the source port, so a few hundred always do).
fn clients_on_all_workers(server: &wsgate::ServerHandle, n: usize) -> Vec<Ws> {
    let clients: Vec<Ws> = (0..n).map(|_| connect(server.local_addr())).collect();
    let per_worker: Vec<u64> = server.stats().iter().map(|s| s.upgraded).collect();
    assert!(
        per_worker.iter().filter(|&&u| u > 0).count() > 1,
        "connections did not spread over workers: {per_worker:?}"
    );
    clients
}

#[test]
fn subscribe_publish_unsubscribe_round_trip() {
    let server = start(2, |_| {});
    let mut sub = connect(server.local_addr());
    let mut publisher = connect(server.local_addr());
    subscribe(&mut sub, "news");

    // The payload arrives byte for byte as it was sent (never re-serialised).
    let payload = r#"{ "headline" : "caf\u00e9",  "n":1.50e2 }"#;
    send(
        &mut publisher,
        &format!(r#"{{"type":"publish","topic":"news","payload":{payload}}}"#),
    );
    let text = recv_text(&mut sub);
    assert_eq!(
        text,
        format!(r#"{{"type":"message","topic":"news","payload":{payload}}}"#)
    );

    send(&mut sub, r#"{"type":"unsubscribe","topic":"news"}"#);
    let v = recv(&mut sub);
    assert_eq!(
        (v["type"].as_str(), v["topic"].as_str()),
        (Some("unsubscribed"), Some("news"))
    );

    // After unsubscribing, "news" no longer arrives: a later message on
    // another topic from the same publisher is the next thing received.
    send(
        &mut publisher,
        r#"{"type":"publish","topic":"news","payload":"stale"}"#,
    );
    subscribe(&mut sub, "marker");
    send(
        &mut publisher,
        r#"{"type":"publish","topic":"marker","payload":"m"}"#,
    );
    let v = recv(&mut sub);
    assert_eq!(v["topic"], "marker");
    assert_eq!(v["payload"], "m");
}

#[test]
fn echo_and_application_ping() {
    let server = start(1, |_| {});
    let mut c = connect(server.local_addr());
    let text = r#"{"type":"echo","payload":{"k":[1,2,3]}}"#;
    send(&mut c, text);
    assert_eq!(recv_text(&mut c), text);
    send(&mut c, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut c), serde_json::json!({"type":"pong"}));
}

#[test]
fn broadcast_reaches_every_worker_with_exact_listen_count() {
    let server = start(2, |_| {});
    let mut clients = clients_on_all_workers(&server, 60);
    let n = clients.len() as u64;
    let (sender, others) = clients.split_first_mut().unwrap();
    send(sender, r#"{"type":"broadcast","payload":{"hello":"all"}}"#);
    for c in others.iter_mut() {
        assert_eq!(
            recv_text(c),
            r#"{"type":"broadcast","payload":{"hello":"all"}}"#
        );
    }
    // The sender gets its own copy, then the result.
    let v = recv(sender);
    assert_eq!(v["type"], "broadcast");
    let v = recv(sender);
    assert_eq!(v["type"], "broadcastResult");
    assert_eq!(v["payload"]["hello"], "all");
    assert_eq!(v["listenCount"], n);
}

#[test]
fn publish_order_is_kept_for_every_subscriber() {
    let server = start(2, |_| {});
    let mut subs = clients_on_all_workers(&server, 40);
    for s in subs.iter_mut() {
        subscribe(s, "seq");
    }
    let mut publisher = connect(server.local_addr());
    const N: u64 = 1000;
    for i in 0..N {
        send(
            &mut publisher,
            &format!(r#"{{"type":"publish","topic":"seq","payload":{i}}}"#),
        );
    }
    for s in subs.iter_mut() {
        for i in 0..N {
            let v = recv(s);
            assert_eq!(v["payload"], i, "out of order or missing");
        }
    }
}

#[test]
fn malformed_commands_get_errors_and_the_connection_stays_usable() {
    let server = start(1, |c| c.max_subscriptions = 2);
    let mut c = connect(server.local_addr());
    let long_topic = "t".repeat(257);
    let cases = [
        ("not json".to_string(), 400),
        (r#"{"payload":1}"#.to_string(), 400),
        (r#"{"type":"dance"}"#.to_string(), 404),
        (r#"{"type":"publish","topic":"x"}"#.to_string(), 400),
        (r#"{"type":"subscribe"}"#.to_string(), 400),
        (
            format!(r#"{{"type":"subscribe","topic":"{long_topic}"}}"#),
            413,
        ),
    ];
    for (text, code) in cases {
        send(&mut c, &text);
        let v = recv(&mut c);
        assert_eq!(v["type"], "error", "{text}");
        assert_eq!(v["code"], code, "{text}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(recv(&mut c)["code"], 415);
    subscribe(&mut c, "a");
    subscribe(&mut c, "b");
    send(&mut c, r#"{"type":"subscribe","topic":"c"}"#);
    assert_eq!(recv(&mut c)["code"], 429);
    // Re-subscribing to a topic already held is not a new subscription.
    subscribe(&mut c, "a");
    send(&mut c, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut c)["type"], "pong");
}

#[test]
fn http_publish_and_broadcast_reach_subscribers() {
    let server = start(2, |_| {});
    let admin = server.admin_addr().expect("admin listener");
    let mut subs = clients_on_all_workers(&server, 30);
    for s in subs.iter_mut().take(10) {
        subscribe(s, "room/1");
    }
    let (status, body) = http(
        admin,
        "POST",
        "/publish?topic=room%2F1",
        r#"{"from":"backend"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["delivered"],
        10
    );
    for s in subs.iter_mut().take(10) {
        assert_eq!(
            recv_text(s),
            r#"{"type":"message","topic":"room/1","payload":{"from":"backend"}}"#
        );
    }
    let (status, body) = http(admin, "POST", "/broadcast", "[1,2]");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["delivered"],
        30
    );
    for s in subs.iter_mut() {
        assert_eq!(recv_text(s), r#"{"type":"broadcast","payload":[1,2]}"#);
    }
    // A topic nobody holds: delivered to no one.
    let (status, body) = http(admin, "POST", "/publish?topic=empty", "1");
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":0}"#));

    // Bad input is refused with a clear message.
    assert_eq!(http(admin, "POST", "/publish", "1").0, 400);
    let (status, body) = http(admin, "POST", "/publish?topic=t", "{not json");
    assert_eq!(status, 400);
    assert!(body.contains("JSON"), "{body}");
    assert_eq!(http(admin, "GET", "/publish?topic=t", "").0, 405);
    assert_eq!(http(admin, "GET", "/nope", "").0, 404);
    assert_eq!(http(admin, "GET", "/healthz", "").0, 200);
    assert_eq!(http(admin, "GET", "/readyz", "").0, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A subscriber cut for slow consumption while a large direct reply to it is
/// half written still reads that reply whole, then a well-formed 1008 close
/// frame: a close frame never starts inside another frame (RFC 6455 §5.2,
/// §5.4), whichever kind of frame was in flight.
#[test]
fn a_slow_consumer_cut_never_splits_a_frame() {
    // Messages up to 9 MiB: the 8 MiB echo below is allowed, and a
    // subscriber is cut once more than the cap is queued besides one such
    // message.
    let server = start(1, |c| {
        c.max_outbound_bytes = 256 << 10;
        c.max_message_size = Some(9 << 20);
    });
    let addr = server.local_addr();
    let mut slow = RawClient::upgraded(addr);
    // A small receive window: the reply below cannot all fit in the kernel
    // buffers, so the server has to queue its tail.
    socket2::SockRef::from(&slow.tcp)
        .set_recv_buffer_size(32 << 10)
        .unwrap();
    slow.send_frame(true, OpCode::Text, br#"{"type":"subscribe","topic":"t"}"#);
    let subscribed = br#"{"type":"subscribed","topic":"t"}"#.to_vec();
    assert_eq!(slow.frame(), (OpCode::Text, subscribed));
    let mut publisher = connect(addr);
    publish(&mut publisher, "t", "1");
    let first = br#"{"type":"message","topic":"t","payload":1}"#.to_vec();
    assert_eq!(slow.frame(), (OpCode::Text, first));

    // A direct reply (the echo command) far larger than the socket buffers,
    // which the client does not read yet.
    let echo = format!(r#"{{"type":"echo","payload":"{}"}}"#, "x".repeat(8 << 20));
    slow.send_frame(true, OpCode::Text, echo.as_bytes());
    eventually(Duration::from_secs(10), "the reply is queued", || {
        server.total_stats().queued_bytes > 256 << 10
    });
    // Fan-out behind the half-written reply crosses the cap: the cut.
    let big = format!(r#""{}""#, "y".repeat(512 << 10));
    eventually(Duration::from_secs(10), "slow consumer cut", || {
        publish(&mut publisher, "t", &big);
        server.total_stats().slow_consumers > 0
    });

    // The client reads now: the whole reply, then 1008, then the FIN.
    match slow.next_within(Duration::from_secs(20)) {
        Got::Frame(OpCode::Text, p) => assert!(p == echo.as_bytes(), "reply altered"),
        other => panic!("expected the whole reply, got {other:?}"),
    }
    slow.expect_close(1008);
}

/// A subscriber that stops reading while 50 MiB are published at it is
/// disconnected with 1008; a fast subscriber on the same topic gets every
/// message, and the server's memory stays bounded.
#[test]
fn slow_consumer_is_disconnected_and_memory_stays_bounded() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Proc::wsgate(
        port,
        &[
            "--workers",
            "2",
            "--max-outbound-bytes",
            "1048576",
            "--max-message-size",
            "131072",
        ],
        &[],
    );
    let pid = child.0.id();

    let mut slow = connect(addr);
    subscribe(&mut slow, "flood");
    let mut fast = connect(addr);
    subscribe(&mut fast, "flood");
    let rss_before = rss_kib(pid);

    const MESSAGES: usize = 800; // 800 × 64 KiB = 50 MiB
    let payload = format!("\"{}\"", "x".repeat(64 * 1024 - 2));
    // The publisher stays at most 8 messages (512 KiB) ahead of the fast
    // subscriber: a healthy reader, however slow this build is, never
    // crosses the 1 MiB bound, while the stalled one falls behind by 50 MiB.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = received.clone();
    let reader = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let text = recv_text(&mut fast);
            assert!(text.len() > 64 * 1024, "message {i} truncated");
            progress.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        fast
    });
    let mut publisher = connect(addr);
    let mut peak_rss = 0;
    for i in 0..MESSAGES {
        while i >= received.load(std::sync::atomic::Ordering::Acquire) + 8 {
            std::thread::sleep(Duration::from_micros(200));
        }
        send(
            &mut publisher,
            &format!(r#"{{"type":"publish","topic":"flood","payload":{payload}}}"#),
        );
        if i % 50 == 0 {
            peak_rss = peak_rss.max(rss_kib(pid));
        }
    }
    let _fast = reader.join().expect("fast subscriber got every message");
    peak_rss = peak_rss.max(rss_kib(pid));

    // The slow subscriber now reads: what the kernel buffered, then 1008.
    let mut code = None;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match slow.read() {
            Ok(Message::Close(Some(frame))) => {
                code = Some(u16::from(frame.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1008), "slow consumer was not closed with 1008");
    let growth_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 24,
        "server RSS grew by {growth_mib} MiB while 50 MiB went to a stalled subscriber"
    );
}

/// `wsgate_messages_out` counts pub/sub command replies as its help text
/// says, not only echo replies and deliveries.
#[test]
fn command_replies_count_as_messages_out() {
    let server = start(1, |_| {});
    let mut c = connect(server.local_addr());
    for _ in 0..5 {
        send(&mut c, r#"{"type":"ping"}"#);
        assert_eq!(recv(&mut c)["type"], "pong");
    }
    subscribe(&mut c, "t");
    send(&mut c, r#"{"type":"nonsense"}"#);
    assert_eq!(recv(&mut c)["type"], "error");
    let t = server.total_stats();
    // 5 pongs, 1 subscribed, 1 error; nothing was published.
    assert_eq!((t.messages_out, t.deliveries), (7, 0), "{t:?}");
}

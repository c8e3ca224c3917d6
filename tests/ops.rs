//! Operations over real sockets: /metrics parsed by a real Prometheus
//! parser and checked against what the test did; health and readiness
//! through a drain.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::Message;

use common::*;

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// Sums a metric over its samples whose labels include `want`.
fn metric(scrape: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
}

#[test]
fn metrics_count_what_happened() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    let server = wsgate::start(cfg).unwrap();
    let admin = server.admin_addr().unwrap();
    let mut clients: Vec<Ws> = (0..100).map(|_| connect(server.local_addr())).collect();
    for c in clients.iter_mut().take(10) {
        c.send(Message::text(r#"{"type":"subscribe","topic":"m"}"#))
            .unwrap();
        c.read().unwrap();
    }
    clients[50]
        .send(Message::text(
            r#"{"type":"publish","topic":"m","payload":1}"#,
        ))
        .unwrap();
    for c in clients.iter_mut().take(10) {
        c.read().unwrap();
    }
    // A refused upgrade (wrong path) is counted by status.
    let mut bad = TcpStream::connect(server.local_addr()).unwrap();
    bad.write_all(
        b"GET /nope HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    assert!(sink.starts_with(b"HTTP/1.1 404"));
    drop(bad);
    // Counters are eventually consistent: give the workers a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let s = loop {
        let s = scrape(admin);
        if metric(&s, "wsgate_connections_open", &[]) == 100.0
            && metric(&s, "wsgate_handshake_failures_total", &[("status", "404")]) == 1.0
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not settle: open {} 404s {}",
            metric(&s, "wsgate_connections_open", &[]),
            metric(&s, "wsgate_handshake_failures_total", &[("status", "404")])
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(metric(&s, "wsgate_upgrades_total", &[]), 100.0);
    assert_eq!(metric(&s, "wsgate_connections_admitted", &[]), 100.0);
    assert_eq!(metric(&s, "wsgate_deliveries_total", &[]), 10.0);
    assert_eq!(metric(&s, "wsgate_publishes_total", &[]), 1.0);
    assert_eq!(metric(&s, "wsgate_topics", &[]), 1.0);
    // Per-worker series exist for both workers.
    for w in ["0", "1"] {
        assert!(s
            .samples
            .iter()
            .any(|x| x.metric == "wsgate_connections_open" && x.labels.get("worker") == Some(w)));
    }
    assert!(metric(&s, "wsgate_process_resident_memory_bytes", &[]) > 1e6);
    assert!(metric(&s, "wsgate_process_open_fds", &[]) >= 100.0);

    // Ten clients leave with a close frame: counted as peer closes.
    for mut c in clients.drain(..10) {
        c.close(None).unwrap();
        while c.read().is_ok() {}
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s = scrape(admin);
        let closed = metric(
            &s,
            "wsgate_connections_closed_total",
            &[("reason", "peer_close")],
        );
        if closed == 10.0 && metric(&s, "wsgate_connections_open", &[]) == 90.0 {
            break;
        }
        assert!(Instant::now() < deadline, "closes not counted: {closed}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readiness_turns_503_while_draining() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.drain_timeout = Duration::from_secs(2);
    let server = wsgate::start(cfg).unwrap();
    let admin = server.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert_eq!(http_get(admin, "/readyz").0, 200);
    // A client that ignores the goodbye keeps the drain going.
    let _stubborn = TcpStream::connect(server.local_addr()).unwrap();
    let _held = connect(server.local_addr());
    server.shutdown();
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(http_get(admin, "/healthz").0, 200);
}

/// During a zero-downtime restart the new process binds the same admin
/// address as the old one (SO_REUSEPORT, like the public port); when the old
/// one has exited the new one answers alone. Both are real processes: a
/// restart is two processes, and only a process exit (not a handle dropped
/// inside a test binary) is what takes the old listener out of the group.
#[test]
fn a_second_process_can_share_the_admin_address_during_a_restart() {
    let port = free_port();
    let admin_port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    // Each process is started with its log on a pipe; it is up, both
    // listeners bound, once it logs that it is listening.
    let start = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--log-level", "info", "--drain-timeout", "1s"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut said = false;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !said && line.contains("listening") {
                    said = true;
                    let _ = tx.send(());
                }
            }
        });
        let p = Proc(child);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("wsgate logs that it is listening");
        p
    };
    let mut old = start();
    assert_eq!(http_get(admin, "/readyz").0, 200, "the old process answers");
    // The new process binds the same admin address while the old one runs.
    let mut new = start();
    assert!(new.0.try_wait().unwrap().is_none());
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit(Duration::from_secs(10)).success());
    for _ in 0..20 {
        assert_eq!(http_get(admin, "/readyz").0, 200, "the new process answers");
    }
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit(Duration::from_secs(10)).success());
}

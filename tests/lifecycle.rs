//! Connection lifecycle over real sockets: heartbeats and idle timeouts,
//! connection and rate limits, graceful shutdown, zero-downtime restart and
//! systemd notifications.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

use common::*;
use wsgate::config::AppKind;
use wsgate::protocol::frame::{write_client_frame, FrameHeader, OpCode, Role};

fn start(app: AppKind, tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = app;
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(2);
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

const UPGRADE: &str =
    "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends the upgrade request on a raw socket; returns the response head.
fn raw_upgrade(tcp: &mut TcpStream) -> String {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(UPGRADE.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A raw socket that reads server frames, keeping bytes past the frame.
struct FrameReader {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next server frame: (opcode, payload), or None at EOF.
    fn next(&mut self) -> Option<(OpCode, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some((h, n))) = FrameHeader::decode(&self.buf, Role::Client, 0) {
                let total = n + h.payload_len as usize;
                if self.buf.len() >= total {
                    let frame = (h.opcode, self.buf[n..total].to_vec());
                    self.buf.drain(..total);
                    return Some(frame);
                }
            }
            match self.tcp.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
    }
}

fn read_frame(r: &mut FrameReader) -> Option<(OpCode, Vec<u8>)> {
    r.next()
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn a_client_that_never_answers_pings_is_closed_after_the_idle_timeout() {
    let server = start(AppKind::Echo, |c| {
        c.ping_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(600);
    });
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    assert!(raw_upgrade(&mut tcp).starts_with("HTTP/1.1 101"));
    let mut tcp = FrameReader {
        tcp,
        buf: Vec::new(),
    };
    let t0 = Instant::now();
    let (op, _) = read_frame(&mut tcp).expect("a ping");
    assert_eq!(op, OpCode::Ping);
    let pinged = t0.elapsed();
    assert!(
        pinged >= Duration::from_millis(150),
        "pinged too early: {pinged:?}"
    );
    // We do not answer: a close 1001 follows at the idle timeout.
    let (op, payload) = read_frame(&mut tcp).expect("a close frame");
    assert_eq!(op, OpCode::Close);
    assert_eq!(close_code(&payload), 1001);
    let closed = t0.elapsed();
    assert!(
        closed >= Duration::from_millis(500) && closed < Duration::from_secs(2),
        "closed after {closed:?}"
    );
    assert_eq!(
        read_frame(&mut tcp),
        None,
        "TCP closes after the close frame"
    );
    let t = server.total_stats();
    assert_eq!(t.idle_timeouts, 1);
    assert!(t.pings_sent >= 1);
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let server = start(AppKind::Echo, |c| {
        c.ping_interval = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(300);
    });
    let mut ws = connect(server.local_addr());
    ws.get_mut()
        .get_mut_plain()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let until = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while Instant::now() < until {
        // tungstenite answers pings with pongs as part of read().
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
    assert!(pings >= 3, "expected repeated pings, got {pings}");
    ws.send(Message::text("still here")).unwrap();
    ws.get_mut()
        .get_mut_plain()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => break assert_eq!(t.as_str(), "still here"),
            _ => continue,
        }
    }
    assert_eq!(server.total_stats().idle_timeouts, 0);
}

trait PlainStream {
    fn get_mut_plain(&mut self) -> &mut TcpStream;
}

impl PlainStream for MaybeTlsStream<TcpStream> {
    fn get_mut_plain(&mut self) -> &mut TcpStream {
        match self {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("tests use plain TCP"),
        }
    }
}

#[test]
fn a_client_that_only_receives_traffic_is_not_pinged() {
    let server = start(AppKind::PubSub, |c| {
        // Traffic every ~40 ms against a 300 ms interval: a margin wide
        // enough that a loaded machine's scheduling gaps (seen past 150 ms
        // with 8 runnable threads per core) are not mistaken for silence,
        // while 2 s still spans six intervals that traffic must postpone.
        c.ping_interval = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(800);
    });
    let mut sub = connect(server.local_addr());
    sub.send(Message::text(r#"{"type":"subscribe","topic":"tick"}"#))
        .unwrap();
    assert!(matches!(sub.read().unwrap(), Message::Text(_)));
    let mut publisher = connect(server.local_addr());
    let until = Instant::now() + Duration::from_millis(2000);
    let mut n = 0;
    while Instant::now() < until {
        publisher
            .send(Message::text(
                r#"{"type":"publish","topic":"tick","payload":1}"#,
            ))
            .unwrap();
        match sub.read().unwrap() {
            Message::Text(_) => n += 1,
            other => panic!("receive-only subscriber got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(n > 20);
    let t = server.total_stats();
    assert_eq!(t.pings_sent, 0, "busy connections must not be pinged");
    assert_eq!(t.idle_timeouts, 0);
}

#[test]
fn max_connections_refuses_upgrades_with_503_until_one_leaves() {
    let server = start(AppKind::Echo, |c| c.max_connections = 3);
    let mut held: Vec<Ws> = (0..3).map(|_| connect(server.local_addr())).collect();
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    let head = raw_upgrade(&mut tcp);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    // One leaves: the next upgrade is admitted.
    let mut gone = held.pop().unwrap();
    gone.close(None).unwrap();
    while gone.read().is_ok() {}
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(3);
    let _admitted = loop {
        let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
        if raw_upgrade(&mut tcp).starts_with("HTTP/1.1 101") {
            break tcp;
        }
        assert!(Instant::now() < deadline, "slot was not released");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(server.admitted(), 3);
}

#[test]
fn max_connections_per_ip_counts_each_source_address() {
    let server = start(AppKind::Echo, |c| c.max_connections_per_ip = 2);
    let _a = connect(server.local_addr());
    let _b = connect(server.local_addr());
    let mut third = TcpStream::connect(server.local_addr()).unwrap();
    assert!(raw_upgrade(&mut third).starts_with("HTTP/1.1 503"));
    // Another loopback source address has its own allowance.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.connect(&server.local_addr().into()).unwrap();
    let mut other: TcpStream = socket.into();
    assert!(raw_upgrade(&mut other).starts_with("HTTP/1.1 101"));
}

#[test]
fn a_message_flood_is_closed_with_1008() {
    let server = start(AppKind::Echo, |c| c.max_messages_per_sec = 10);
    let mut tcp = TcpStream::connect(server.local_addr()).unwrap();
    assert!(raw_upgrade(&mut tcp).starts_with("HTTP/1.1 101"));
    let mut burst = Vec::new();
    for _ in 0..100 {
        write_client_frame(&mut burst, true, OpCode::Text, [1, 2, 3, 4], b"spam");
    }
    tcp.write_all(&burst).unwrap();
    let mut tcp = FrameReader {
        tcp,
        buf: Vec::new(),
    };
    let mut echoes = 0;
    loop {
        match read_frame(&mut tcp) {
            Some((OpCode::Text, _)) => echoes += 1,
            Some((OpCode::Close, p)) => {
                assert_eq!(close_code(&p), 1008);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst allowance (2 s worth) was served, the rest refused.
    assert_eq!(echoes, 20);
    assert_eq!(server.total_stats().rate_limited, 1);
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let port = free_port();
    let mut proc = Proc::wsgate(port, &["--drain-timeout", "3s", "--workers", "2"], &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients: Vec<Ws> = (0..20).map(|_| connect(addr)).collect();
    let t0 = Instant::now();
    proc.signal(libc::SIGTERM);
    for c in clients.iter_mut() {
        let code = loop {
            match c.read() {
                Ok(Message::Close(Some(f))) => break u16::from(f.code),
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        assert_eq!(code, 1001);
        // Complete the close handshake like a well-behaved client.
        while c.read().is_ok() {}
    }
    let status = proc.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "drain waited for the timeout"
    );
}

#[test]
fn a_client_that_ignores_the_goodbye_does_not_hold_shutdown_past_the_drain_timeout() {
    let port = free_port();
    let mut proc = Proc::wsgate(port, &["--drain-timeout", "500ms"], &[]);
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(raw_upgrade(&mut tcp).starts_with("HTTP/1.1 101"));
    let t0 = Instant::now();
    proc.signal(libc::SIGTERM);
    // We never read nor close.
    let status = proc.wait_exit(Duration::from_secs(5));
    assert!(status.success());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn notify_socket_gets_ready_watchdog_and_stopping() {
    let dir = temp_dir("notify");
    let path = dir.path().join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = free_port();
    let mut proc = Proc::wsgate(
        port,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut got = String::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(got.contains("READY=1") && got.contains("WATCHDOG=1")) {
        assert!(Instant::now() < deadline, "got only {got:?}");
        let n = sock.recv(&mut buf).unwrap();
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
        got.push('\n');
    }
    proc.signal(libc::SIGTERM);
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 before exit");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert!(proc.wait_exit(Duration::from_secs(5)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lets the kernel move connections waiting in a closing listener's accept
/// queue to the other listeners of the port (Linux ≥ 5.14). sysctl.conf sets
/// it for production; the restart test needs it too.
fn enable_tcp_migrate_req() {
    std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
        .expect("net.ipv4.tcp_migrate_req must be writable (run as root) for the restart test");
}

#[test]
fn zero_downtime_restart_loses_no_connect_attempt() {
    enable_tcp_migrate_req();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut old = Proc::wsgate(port, &["--drain-timeout", "2s"], &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    // A client reconnect loop: connect, upgrade, echo, close. A connection
    // the old process closes with 1001 (going away) simply reconnects; a
    // refused, reset or failed connect or upgrade is a failure.
    let looper = std::thread::spawn(move || {
        let (mut ok, mut moved, mut failed) = (0u32, 0u32, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Acquire) {
            let attempt = (|| -> Result<(), String> {
                let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let (mut ws, _) = tungstenite::client::client(
                    format!("ws://{addr}/ws"),
                    MaybeTlsStream::Plain(tcp),
                )
                .map_err(|e| format!("upgrade: {e}"))?;
                ws.send(Message::text("hi"))
                    .map_err(|e| format!("send: {e}"))?;
                loop {
                    match ws.read().map_err(|e| format!("read: {e}"))? {
                        Message::Text(_) => break,
                        Message::Close(Some(f)) if u16::from(f.code) == 1001 => {
                            return Err("going away".into())
                        }
                        Message::Close(f) => return Err(format!("closed: {f:?}")),
                        _ => {}
                    }
                }
                let _ = ws.close(None);
                Ok(())
            })();
            match attempt {
                Ok(()) => ok += 1,
                Err(e) if e == "going away" => moved += 1,
                Err(e) => failed.push(e),
            }
        }
        (ok, moved, failed)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Start the new process on the same port, then retire the old one.
    let mut new = Proc::wsgate(port, &[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit(Duration::from_secs(5)).success());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (ok, moved, failed) = looper.join().unwrap();
    assert!(ok > 50, "only {ok} successful round trips");
    assert!(
        moved <= 2,
        "{moved} connections were moved off the old process"
    );
    assert!(
        failed.is_empty(),
        "{} attempts failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The new process serves on.
    let mut ws = connect(addr);
    ws.send(Message::text(r#"{"type":"echo","payload":1}"#))
        .unwrap();
    assert!(matches!(ws.read().unwrap(), Message::Text(_)));
    drop(ws);
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit(Duration::from_secs(5)).success());
}

/// A process that runs out of descriptors stops listening, so the kernel
/// gives new connections to the other process on the port instead of leaving
/// them in a backlog nobody accepts from (what made a one-box cluster stall
/// as its fullest nodes filled up).
#[test]
fn a_process_out_of_descriptors_hands_new_connections_to_the_others() {
    enable_tcp_migrate_req();
    let port = free_port();
    let admin_port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // `ulimit -n` caps both soft and hard limits for the exec'd server.
    let mut small = Proc(
        std::process::Command::new("bash")
            .args(["-c", "ulimit -n 150 && exec \"$@\"", "wsgate"])
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .args([
                "--listen",
                &addr.to_string(),
                "--workers",
                "1",
                "--app",
                "echo",
            ])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--log-level", "error"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn wsgate"),
    );
    small.wait_listening(port, Duration::from_secs(10));
    let _big = Proc::wsgate(port, &["--workers", "1", "--app", "echo"], &[]);
    let mut clients = Vec::new();
    for i in 0..400 {
        let tcp = TcpStream::connect(addr).expect("connect");
        // Without the hand-over a client queued at the full process would
        // wait here until the timeout.
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (mut ws, _) =
            tungstenite::client::client(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
                .unwrap_or_else(|e| panic!("client {i}: upgrade failed: {e}"));
        ws.send(Message::text(format!("n{i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("n{i}")));
        clients.push(ws);
    }
    let (status, body) = http(
        format!("127.0.0.1:{admin_port}").parse().unwrap(),
        "GET",
        "/metrics",
        "",
    );
    assert_eq!(status, 200);
    let left: f64 = body
        .lines()
        .filter(|l| l.starts_with("wsgate_accept_backoffs_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
        .expect("the exhaustion counter is exported");
    assert!(
        left >= 1.0,
        "the small process never filled up: the test did not test anything"
    );
    drop(small);
}

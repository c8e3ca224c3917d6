//! One attacker vs. everyone else: budgets. Each test has one client (or a
//! handful) spend a budget that used to be unbounded, over real sockets, and
//! checks the outcome the README's "Limits and defaults" table promises: the
//! attacker is refused (error reply or close code), the refusal is counted,
//! and well-behaved clients carry on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;

use common::*;
use wsgate::protocol::frame::OpCode;

const SECRET: &str = "budget-secret-0123456789";

fn start(tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_a_minute() -> u64 {
    wsgate::security::unix_now() + 60
}

/// A tungstenite client presenting `token`.
fn connect_with(addr: SocketAddr, token: &str) -> Ws {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/ws?token={token}");
    let (ws, _) = tungstenite::client::client(url, tungstenite::stream::MaybeTlsStream::Plain(tcp))
        .expect("upgrade with token");
    ws
}

fn send_json(ws: &mut Ws, v: Value) {
    send(ws, &v.to_string());
}

/// The next reply that is not a delivery of some other traffic.
fn reply_of(ws: &mut Ws, kinds: &[&str]) -> Value {
    loop {
        let v = recv(ws);
        if kinds.contains(&v["type"].as_str().unwrap_or("")) {
            return v;
        }
    }
}

fn broadcast_reply(ws: &mut Ws) -> Value {
    reply_of(ws, &["broadcastResult", "error"])
}

// ---------------------------------------------------------------- item 5 --

/// Who may broadcast: a token limited to some topics may not reach every
/// connection unless it carries `"broadcast": true`; `--client-broadcast`
/// narrows it further.
#[test]
fn broadcast_needs_permission_when_the_token_is_limited() {
    let server = start(|c| c.jwt_secret = Some(SECRET.into()));
    let addr = server.local_addr();
    let limited = hs256(json!({"exp": in_a_minute(), "topics": ["chat.room1"]}));
    let mut ws = connect_with(addr, &limited);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 1}));
    let v = broadcast_reply(&mut ws);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403)),
        "{v}"
    );

    let allowed = hs256(json!({"exp": in_a_minute(), "topics": ["chat.room1"], "broadcast": true}));
    let mut ws = connect_with(addr, &allowed);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 2}));
    assert_eq!(broadcast_reply(&mut ws)["type"], "broadcastResult");

    // A token with no topic restriction may, unless it says otherwise.
    let open = hs256(json!({"exp": in_a_minute()}));
    let mut ws = connect_with(addr, &open);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 3}));
    assert_eq!(broadcast_reply(&mut ws)["type"], "broadcastResult");
    let denied = hs256(json!({"exp": in_a_minute(), "broadcast": false}));
    let mut ws = connect_with(addr, &denied);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 4}));
    assert_eq!(broadcast_reply(&mut ws)["code"], 403);
    assert!(server.total_stats().broadcasts_refused >= 2);
}

#[test]
fn client_broadcast_token_and_off() {
    use wsgate::config::ClientBroadcast;
    let server = start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.client_broadcast = ClientBroadcast::Token;
    });
    let open = hs256(json!({"exp": in_a_minute()}));
    let mut ws = connect_with(server.local_addr(), &open);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 1}));
    assert_eq!(broadcast_reply(&mut ws)["code"], 403);
    let claim = hs256(json!({"exp": in_a_minute(), "broadcast": true}));
    let mut ws = connect_with(server.local_addr(), &claim);
    send_json(&mut ws, json!({"type": "broadcast", "payload": 2}));
    assert_eq!(broadcast_reply(&mut ws)["type"], "broadcastResult");
    drop(server);

    let server = start(|c| c.client_broadcast = ClientBroadcast::Off);
    let mut ws = connect(server.local_addr());
    send_json(&mut ws, json!({"type": "broadcast", "payload": 1}));
    assert_eq!(broadcast_reply(&mut ws)["code"], 403);
    // The admin API still broadcasts.
    let (status, body) = http(server.admin_addr().unwrap(), "POST", "/broadcast", "5");
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    assert_eq!(recv(&mut ws)["payload"], 5);
}

// ---------------------------------------------------------------- item 3 --

/// A client's broadcasts are rate limited per connection: past the burst
/// they are refused (429) and nobody else receives them.
#[test]
fn broadcasts_are_rate_limited_per_connection() {
    let server = start(|c| c.max_broadcasts_per_sec = 5);
    let addr = server.local_addr();
    let mut other = connect(addr);
    let mut spammer = connect(addr);
    for i in 0..50 {
        send_json(&mut spammer, json!({"type": "broadcast", "payload": i}));
    }
    let (mut ok, mut refused) = (0, 0);
    while ok + refused < 50 {
        let v = broadcast_reply(&mut spammer);
        match v["type"].as_str() {
            Some("broadcastResult") => ok += 1,
            _ => {
                assert_eq!(v["code"], 429, "{v}");
                refused += 1;
            }
        }
    }
    // Burst of 2 × 5, plus what refilled while the 50 arrived.
    assert!((10..=15).contains(&ok), "{ok} broadcasts went through");
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = other.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let mut seen = 0;
    while let Ok(Message::Text(_)) = other.read() {
        seen += 1;
    }
    assert_eq!(
        seen, ok,
        "the other client got exactly the accepted broadcasts"
    );
    assert_eq!(server.total_stats().broadcasts_refused, refused as u64);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Non-blocking upgraded sockets drained by one thread, so the server's
/// writes never back up (the test is about the server's own arena).
struct Crowd {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Crowd {
    fn join(addr: SocketAddr, n: usize, extra: Vec<TcpStream>) -> Crowd {
        let mut socks: Vec<TcpStream> = extra;
        for _ in 0..n {
            let c = RawClient::upgraded(addr);
            c.tcp.set_nonblocking(true).unwrap();
            socks.push(c.tcp);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !s.load(Relaxed) {
                let mut got = 0;
                for sock in &mut socks {
                    while let Ok(n) = sock.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got += n;
                        b.fetch_add(n as u64, Relaxed);
                    }
                }
                if got == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // Dropping the sockets closes every connection.
        });
        Crowd {
            stop,
            bytes,
            reader: Some(reader),
        }
    }

    /// Waits until nothing has arrived for `quiet`.
    fn settle(&self, quiet: Duration, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = self.bytes.load(Relaxed);
        let mut since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.bytes.load(Relaxed);
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
        panic!("deliveries did not settle within {within:?}");
    }

    fn leave(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
    }
}

/// 10,000 tiny broadcasts from one client to 2,000 connections: the
/// worker's fan-out batch is written out whenever it grows past its bound,
/// and the arena shrinks once the burst is over, so the server's RSS comes
/// back to its baseline when the clients are gone (it kept ~100 MiB).
#[test]
fn broadcast_amplification_memory_comes_back() {
    const CONNECTIONS: usize = 2000;
    const BROADCASTS: usize = 10_000;
    let port = free_port();
    let server = Proc::wsgate(
        port,
        &[
            "--workers",
            "2",
            "--max-broadcasts-per-sec",
            "0",
            "--max-messages-per-sec",
            "0",
        ],
        &[],
    );
    let pid = server.0.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Baseline: the same crowd once, with a little traffic, then gone.
    let mut warm = RawClient::upgraded(addr);
    let crowd = Crowd::join(addr, CONNECTIONS, Vec::new());
    for i in 0..20 {
        warm.send_frame(
            true,
            OpCode::Text,
            format!(r#"{{"type":"broadcast","payload":{i}}}"#).as_bytes(),
        );
    }
    crowd.settle(Duration::from_millis(500), Duration::from_secs(30));
    drop(warm);
    crowd.leave();
    std::thread::sleep(Duration::from_secs(1));
    let baseline = rss_kib(pid);

    let attacker = RawClient::upgraded(addr);
    let mut writer = attacker.tcp.try_clone().unwrap();
    attacker.tcp.set_nonblocking(true).unwrap();
    let crowd = Crowd::join(addr, CONNECTIONS, vec![attacker.tcp]);
    let mut burst = Vec::new();
    for i in 0..BROADCASTS {
        burst.extend(client_frame(
            true,
            OpCode::Text,
            format!(r#"{{"type":"broadcast","payload":{i}}}"#).as_bytes(),
        ));
    }
    // The socket is shared with the (non-blocking) reader: write around
    // WouldBlock instead of making it blocking.
    let mut sent = 0;
    while sent < burst.len() {
        match writer.write(&burst[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("attacker write: {e}"),
        }
    }
    let mut peak = 0;
    let started = Instant::now();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while started.elapsed() < Duration::from_secs(3) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    crowd.settle(Duration::from_secs(1), Duration::from_secs(120));
    peak = peak.max(sampler.join().unwrap());
    let delivered = crowd.bytes.load(Relaxed);
    drop(writer);
    crowd.leave();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = rss_kib(pid);
    while after > baseline + 8 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid);
    }
    eprintln!(
        "RSS baseline {baseline} KiB, peak {peak} KiB, after {after} KiB; {delivered} bytes delivered"
    );
    // Every connection got (most of) the burst: the test did amplify.
    assert!(
        delivered > (CONNECTIONS * BROADCASTS * 20) as u64,
        "only {delivered} bytes delivered"
    );
    assert!(
        after <= baseline + 8 * 1024,
        "RSS stayed at {after} KiB after the burst (baseline {baseline} KiB)"
    );
}

// ---------------------------------------------------------------- item 4 --

/// Partly received messages share one process-wide budget: connections that
/// park unfinished messages (kept alive with pings) are closed with 1009
/// once it is spent, counted, and everyone else is served.
#[test]
fn unfinished_messages_share_a_reassembly_budget() {
    let server = start(|c| {
        c.app = wsgate::config::AppKind::Echo;
        c.max_message_size = Some(256 * 1024);
        c.max_reassembly_bytes = 1 << 20;
    });
    let addr = server.local_addr();
    let chunk = vec![b'x'; 200 * 1024];
    let mut hoarders = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let mut c = RawClient::upgraded(addr);
        c.send_frame(false, OpCode::Binary, &chunk);
        c.send_frame(true, OpCode::Ping, b"still here");
        match c.next() {
            Got::Frame(OpCode::Pong, _) => hoarders.push(c),
            Got::Frame(OpCode::Close, p) => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1009);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // 1 MiB holds five 200 KiB messages, not eight.
    assert_eq!((hoarders.len(), refused), (5, 3));
    assert_eq!(server.total_stats().reassembly_refused, 3);
    // A message that arrives whole needs no reassembly: still echoed.
    assert_still_serves(addr);
    // A hoarder that finishes gives its share back.
    let mut h = hoarders.pop().unwrap();
    h.send_frame(true, OpCode::Continuation, b"!");
    assert!(matches!(h.frame(), (OpCode::Binary, p) if p.len() == chunk.len() + 1));
    let mut next = RawClient::upgraded(addr);
    next.send_frame(false, OpCode::Binary, &chunk);
    next.send_frame(true, OpCode::Ping, b"");
    assert!(matches!(next.frame(), (OpCode::Pong, _)));
}

/// The pub/sub app takes chat-sized messages by default; the echo app (used
/// for conformance) keeps 16 MiB.
#[test]
fn message_size_default_depends_on_the_app() {
    let server = start(|_| {});
    let mut c = RawClient::upgraded(server.local_addr());
    c.send_frame(true, OpCode::Text, &vec![b' '; 65 * 1024]);
    c.expect_close(1009);
    let echo = start_echo(|_| {});
    let mut c = RawClient::upgraded(echo.local_addr());
    let big = vec![b'a'; 1 << 20];
    c.send_frame(true, OpCode::Binary, &big);
    assert_eq!(c.frame(), (OpCode::Binary, big));
}

// ---------------------------------------------------------------- item 7 --

/// A subscriber that reads as fast as it can is never cut as a slow
/// consumer for a message under --max-message-size, even when the message
/// is larger than --max-outbound-bytes (it was, for 50-70 % of readers).
#[test]
fn readers_of_max_size_messages_are_not_slow_consumers() {
    const SIZE: usize = 4 << 20;
    let server = start(|c| {
        c.max_message_size = Some(SIZE as u64 + 64);
        c.max_outbound_bytes = 1 << 20;
    });
    let addr = server.local_addr();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let mut ws = connect(addr);
            subscribe(&mut ws, "big");
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let v = recv_text(&mut ws);
                    assert!(v.len() > SIZE, "short delivery");
                }
            })
        })
        .collect();
    let mut publisher = connect(addr);
    let payload = format!("\"{}\"", "p".repeat(SIZE - 2));
    for _ in 0..3 {
        publish(&mut publisher, "big", &payload);
    }
    for r in readers {
        r.join().expect("every reader got every message");
    }
    assert_eq!(server.total_stats().slow_consumers, 0);
}

// ---------------------------------------------------------- items 8 and 9 --

struct RsaKeys {
    dir: std::path::PathBuf,
    private: Vec<u8>,
}

impl Drop for RsaKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A temporary folder removed when the test ends, pass or fail.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An RSA key pair made with openssl for this test.
fn rsa_keys() -> RsaKeys {
    let dir =
        std::env::temp_dir().join(format!("wsgate-rsa-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(st.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        dir.join("pub.pem").to_str().unwrap(),
    ]);
    let private = std::fs::read(&key).unwrap();
    RsaKeys { dir, private }
}

/// A token that looks like RS256 but whose signature is random: checking it
/// costs a full RSA verification.
fn forged_rs256(i: usize) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64.encode(json!({"exp": in_a_minute(), "n": i}).to_string());
    let sig = b64.encode(pseudo_random(i as u64 + 1, 256));
    format!("{header}.{claims}.{sig}")
}

/// A raw client upgraded with `token` in the query.
fn raw_with_token(addr: SocketAddr, token: &str) -> RawClient {
    let mut c = RawClient::connect(addr);
    c.send(upgrade_request(&format!("/ws?token={token}"), SAMPLE_KEY).as_bytes());
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ping_rtts(ws: &mut Ws, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            send(ws, r#"{"type":"ping"}"#);
            assert_eq!(reply_of(ws, &["pong"])["type"], "pong");
            let rtt = t.elapsed();
            std::thread::sleep(Duration::from_millis(5));
            rtt
        })
        .collect()
}

/// Refresh spam with forged RS256 tokens: one signature check per
/// connection per --min-refresh-interval, a repeated token refused by its
/// hash, and a neighbour's ping round trip on the same worker stays put.
/// The spam is paced at ~4,000 refreshes a second, under the per-connection
/// message limit: checking each one would take the worker far more than a
/// second per second, while parsing and refusing them costs little. (An
/// unpaced flood would measure how fast a debug build parses, on a machine
/// whose cores the spamming threads share, not what a refresh costs.)
#[test]
fn refresh_spam_costs_one_check_per_interval() {
    let keys = rsa_keys();
    let server = start(|c| {
        c.workers = Some(1);
        c.jwt_public_key_file = Some(keys.dir.join("pub.pem").to_str().unwrap().into());
    });
    let addr = server.local_addr();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&keys.private).unwrap(),
        )
        .unwrap()
    };
    let mut victim = connect_with(addr, &sign(json!({"exp": in_a_minute()})));
    let quiet = median(ping_rtts(&mut victim, 40));

    // Spams `text(i)` from one connection, 20 frames every 5 ms, while the
    // victim pings; returns the victim's median round trip, what was sent,
    // the time it took and the signature checks made meanwhile.
    let mut spam_while_pinging = |text: &dyn Fn(usize) -> String| {
        let attacker = raw_with_token(addr, &sign(json!({"exp": in_a_minute()})));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let frames: Vec<Vec<u8>> = (0..2000)
            .map(|i| client_frame(true, OpCode::Text, text(i).as_bytes()))
            .collect();
        let spam = {
            let (stop, sent) = (stop.clone(), sent.clone());
            let mut w = attacker.tcp.try_clone().unwrap();
            let mut r = attacker.tcp;
            std::thread::spawn(move || {
                // Replies are read and dropped so the attacker is never
                // paused by backpressure: it gets the server's full
                // attention.
                r.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let sink_stop = stop.clone();
                let sink = std::thread::spawn(move || {
                    let mut b = vec![0u8; 64 * 1024];
                    while !sink_stop.load(Relaxed) {
                        if matches!(r.read(&mut b), Ok(0)) {
                            break;
                        }
                    }
                });
                for batch in frames.chunks(20).cycle() {
                    if stop.load(Relaxed) || w.write_all(&batch.concat()).is_err() {
                        break;
                    }
                    sent.fetch_add(20, Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = w.shutdown(std::net::Shutdown::Both);
                let _ = sink.join();
            })
        };
        std::thread::sleep(Duration::from_millis(400));
        let checks_before = server.total_stats().refresh_checks;
        let started = Instant::now();
        let busy = median(ping_rtts(&mut victim, 40));
        let elapsed = started.elapsed();
        let checks = server.total_stats().refresh_checks - checks_before;
        stop.store(true, Relaxed);
        spam.join().unwrap();
        (busy, sent.load(Relaxed), elapsed, checks)
    };
    let (busy, sent, elapsed, checks) =
        spam_while_pinging(&|i| json!({"type": "refresh", "token": forged_rs256(i)}).to_string());
    eprintln!(
        "ping median quiet {quiet:?}, during refresh spam {busy:?}; \
         {sent} refreshes sent, {checks} checked in {elapsed:?}"
    );
    assert!(sent > 1000, "the spam did not get going");
    assert!(
        checks <= elapsed.as_secs() + 2,
        "{checks} signatures checked in {elapsed:?}"
    );
    assert!(
        busy <= quiet * 2 + Duration::from_millis(5),
        "ping round trip went from {quiet:?} to {busy:?}"
    );
    assert!(server.total_stats().refreshes_refused > 1000);
}

/// The limit holds from the worker's first tick: a client that connects
/// the moment the server starts gets its second refresh refused too (it
/// was checked, signature and all, when both fell in the first 50 ms).
#[test]
fn a_second_refresh_right_after_start_is_rate_limited() {
    let server = start(|c| c.jwt_secret = Some(SECRET.into()));
    let mut ws = connect_with(server.local_addr(), &hs256(json!({"exp": in_a_minute()})));
    let fresh = hs256(json!({"exp": in_a_minute() + 60}));
    send_json(&mut ws, json!({"type": "refresh", "token": fresh}));
    assert_eq!(
        reply_of(&mut ws, &["refreshed", "error"])["type"],
        "refreshed"
    );
    send_json(&mut ws, json!({"type": "refresh", "token": "not.a.token"}));
    assert_eq!(reply_of(&mut ws, &["refreshed", "error"])["code"], 429);
    let s = server.total_stats();
    assert_eq!((s.refresh_checks, s.refreshes_refused), (1, 1));
}

#[test]
fn a_repeated_refused_token_is_refused_unchecked() {
    let server = start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.min_refresh_interval = Duration::ZERO;
    });
    let mut ws = connect_with(server.local_addr(), &hs256(json!({"exp": in_a_minute()})));
    let bad = hs256(json!({"exp": 1}));
    for _ in 0..5 {
        send_json(&mut ws, json!({"type": "refresh", "token": bad}));
        assert_eq!(reply_of(&mut ws, &["error"])["code"], 401);
    }
    let s = server.total_stats();
    assert_eq!((s.refresh_checks, s.refreshes_refused), (1, 4));
}

/// A refresh to a token with narrower `topics` leaves what it no longer
/// allows, says so, and publishes to the revoked topic stop arriving.
#[test]
fn a_narrower_refresh_revokes_subscriptions() {
    let server = start(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.workers = Some(1);
    });
    let addr = server.local_addr();
    let wide = hs256(json!({"sub": "u", "exp": in_a_minute(), "topics": ["a", "news.*"]}));
    let mut ws = connect_with(addr, &wide);
    subscribe(&mut ws, "a");
    subscribe(&mut ws, "news.x");
    let narrow = hs256(json!({"sub": "u", "exp": in_a_minute() + 5, "topics": ["a"]}));
    send_json(&mut ws, json!({"type": "refresh", "token": narrow}));
    assert_eq!(recv(&mut ws)["type"], "refreshed");
    let v = recv(&mut ws);
    assert_eq!(
        (v["type"].as_str(), v["topic"].as_str()),
        (Some("unsubscribed"), Some("news.x")),
        "{v}"
    );
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let admin = server.admin_addr().unwrap();
    let (_, body) = http(admin, "POST", "/publish?topic=news.x", "1");
    assert_eq!(body, r#"{"delivered":0}"#);
    let (_, body) = http(admin, "POST", "/publish?topic=a", "2");
    assert_eq!(body, r#"{"delivered":1}"#);
    let v = recv(&mut ws);
    assert_eq!(
        (v["topic"].as_str(), v["payload"].as_u64()),
        (Some("a"), Some(2))
    );
    assert_eq!(server.total_stats().subscriptions_revoked, 1);
}

// --------------------------------------------------------------- item 10 --

/// Topic state has process-wide budgets: past them subscribe is refused
/// (429) and counted, and what connections leave is given back.
#[test]
fn topic_budgets_are_process_wide() {
    let server = start(|c| {
        c.max_topics = 6;
        c.max_total_subscriptions = 10;
        c.max_subscriptions = 100;
    });
    let addr = server.local_addr();
    let mut a = connect(addr);
    for i in 0..6 {
        subscribe(&mut a, &format!("t{i}"));
    }
    send_json(&mut a, json!({"type": "subscribe", "topic": "t6"}));
    let v = recv(&mut a);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(429)),
        "{v}"
    );
    // Existing topics still take subscribers until the subscription budget.
    let mut b = connect(addr);
    let mut joined = 0;
    for i in 0..6 {
        send_json(
            &mut b,
            json!({"type": "subscribe", "topic": format!("t{i}")}),
        );
        if recv(&mut b)["type"] == "subscribed" {
            joined += 1;
        }
    }
    // On another worker a topic takes a new entry: what fits depends on the
    // worker b landed on, but the process never passes 10 subscriptions.
    assert!(joined <= 4, "{joined}");
    let scrape = http(server.admin_addr().unwrap(), "GET", "/metrics", "").1;
    assert!(
        scrape.contains("wsgate_subscriptions 10") || joined < 4,
        "{scrape}"
    );
    assert!(scrape.contains("wsgate_topic_budget_refused"));
    drop(a);
    eventually(Duration::from_secs(3), "budget given back", || {
        let mut c = connect(addr);
        send_json(&mut c, json!({"type": "subscribe", "topic": "fresh"}));
        recv(&mut c)["type"] == "subscribed"
    });
}

// --------------------------------------------------------------- item 11 --

/// Threads named like the calling one. Threads inherit their creator's
/// name unless given one, so this counts what the server started from this
/// test's thread without the name it gives its own (other tests run in
/// parallel in this process).
fn threads_named_like_me() -> usize {
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| *c == me)
        .count()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "")
}

/// Requests that announce a body and never send it, and hundreds of idle
/// connections, neither hang the health check nor take a thread each.
#[test]
fn admin_slowloris_does_not_hang_health_checks() {
    let server = start(|_| {});
    let admin = server.admin_addr().unwrap();
    let threads = threads_named_like_me();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .unwrap();
        stalled.push(s);
    }
    for _ in 0..500 {
        stalled.push(TcpStream::connect(admin).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    let grown = threads_named_like_me().saturating_sub(threads);
    let t = Instant::now();
    assert_eq!(get(admin, "/healthz").0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "healthz took {:?}",
        t.elapsed()
    );
    assert!(grown < 5, "{grown} threads for idle admin connections");
    let scrape = get(admin, "/metrics").1;
    assert!(
        !scrape.contains("wsgate_admin_evicted 0\n"),
        "evictions are counted"
    );
}

/// An unfinished request is answered 408 and closed after the request
/// timeout.
#[test]
fn admin_requests_have_a_deadline() {
    let server = start(|_| {});
    let mut s = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /broadcast HTTP/1.1\r\nContent-Length: 10\r\n\r\n12")
        .unwrap();
    let t = Instant::now();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(t.elapsed() < Duration::from_secs(12));
}

#[test]
fn admin_token_guards_everything_but_the_probes() {
    let dir = TempDir(std::env::temp_dir().join(format!("wsgate-admin-token-{}", free_port())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("token");
    std::fs::write(&file, "s3cr3t-admin\n").unwrap();
    let server = start(|c| c.admin_token_file = Some(file.clone()));
    let admin = server.admin_addr().unwrap();
    assert_eq!(get(admin, "/healthz").0, 200);
    assert_eq!(get(admin, "/readyz").0, 200);
    assert_eq!(get(admin, "/metrics").0, 401);
    assert_eq!(http(admin, "POST", "/broadcast", "1").0, 401);
    let with = |token: &str| {
        let mut s = TcpStream::connect(admin).unwrap();
        write!(
            s,
            "POST /broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 1\r\n\r\n1"
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    assert!(with("wrong").starts_with("HTTP/1.1 401"));
    assert!(with("s3cr3t-admin").starts_with("HTTP/1.1 200"));
}

/// Once the server is stopped, its admin listener is closed for real (it
/// stayed in the SO_REUSEPORT group, taking a share of a successor's
/// requests).
#[test]
fn the_admin_listener_closes_when_the_server_stops() {
    let server = start(|_| {});
    let admin = server.admin_addr().unwrap();
    let (status, body) = get(admin, "/nope");
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");
    server.shutdown();
    server.join();
    let refused = TcpStream::connect(admin);
    assert!(refused.is_err(), "the admin port still accepts");
}

/// A publish waiting for delivery counts does not hold up other requests,
/// and big bodies sent with `Expect: 100-continue` (curl) work.
#[test]
fn admin_expect_continue() {
    let server = start(|_| {});
    let mut ws = connect(server.local_addr());
    subscribe(&mut ws, "t");
    let mut s = TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = format!("\"{}\"", "z".repeat(2000));
    write!(
        s,
        "POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut got = [0u8; 25];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.ends_with(r#"{"delivered":1}"#), "{resp}");
    assert_eq!(recv(&mut ws)["topic"], "t");
}

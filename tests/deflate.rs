//! permessage-deflate (RFC 7692) over real sockets: real clients (Python
//! `websockets`, Node `ws`) negotiating and exchanging compressed messages,
//! hand-made offers and frames for the protocol rules (malformed offers,
//! RSV1 where it is not allowed, a decompression bomb), and compress-once
//! fan-out to 1,000 subscribers.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use wsgate::config::AppKind;
use wsgate::protocol::deflate::codec::TAIL;
use wsgate::protocol::deflate::{Deflater, Inflater};
use wsgate::protocol::frame::{FrameHeader, OpCode, Role};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn start(app: AppKind, workers: usize, deflate: bool) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = app;
    cfg.workers = Some(workers);
    cfg.permessage_deflate = deflate;
    cfg.drain_timeout = Duration::from_secs(2);
    wsgate::start(cfg).expect("server starts")
}

/// A raw client that can read compressed (RSV1) frames.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The response's Sec-WebSocket-Extensions value, if any.
    extensions: Option<String>,
}

impl Client {
    /// Upgrades with `offer` lines (full header lines, may be empty).
    fn upgrade(addr: SocketAddr, offer_lines: &str) -> Client {
        let mut tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(READ_WITHIN)).unwrap();
        let req = upgrade_request("/ws", SAMPLE_KEY)
            .replace("\r\n\r\n", &format!("\r\n{offer_lines}\r\n"));
        tcp.write_all(req.as_bytes()).unwrap();
        let mut c = Client {
            tcp,
            buf: Vec::new(),
            extensions: None,
        };
        let head = loop {
            if let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(c.buf[..end + 4].to_vec()).unwrap();
                c.buf.drain(..end + 4);
                break head;
            }
            c.fill();
        };
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        c.extensions = head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_string())
        });
        c
    }

    fn with_offer(addr: SocketAddr) -> Client {
        let c = Client::upgrade(addr, &format!("Sec-WebSocket-Extensions: {OFFER}\r\n"));
        assert_eq!(
            c.extensions.as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
        c
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.tcp.read(&mut chunk).expect("read from server");
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next frame: (RSV1 set, opcode, payload as sent).
    fn frame(&mut self) -> (bool, OpCode, Vec<u8>) {
        loop {
            if let Some((h, n)) = FrameHeader::decode(&self.buf, Role::Client, 0x4).unwrap() {
                let total = n + h.payload_len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[n..total].to_vec();
                    self.buf.drain(..total);
                    return (h.rsv & 0x4 != 0, h.opcode, payload);
                }
            }
            self.fill();
        }
    }

    /// The next data message, inflated if it was compressed.
    fn message(&mut self) -> (bool, Vec<u8>) {
        let (rsv1, op, payload) = self.frame();
        assert!(matches!(op, OpCode::Text | OpCode::Binary), "{op:?}");
        if rsv1 {
            let data = Inflater::new()
                .inflate(&payload, 64 << 20)
                .unwrap()
                .to_vec();
            (true, data)
        } else {
            (false, payload)
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).unwrap();
    }

    /// Sends one frame; `rsv1` marks it compressed.
    fn send_frame(&mut self, rsv1: bool, fin: bool, op: OpCode, payload: &[u8]) {
        let mut f = client_frame(fin, op, payload);
        if rsv1 {
            f[0] |= 0x40;
        }
        self.send(&f);
    }

    /// Expects a close frame with `code`.
    fn expect_close(&mut self, code: u16) {
        let (rsv1, op, payload) = self.frame();
        assert!(!rsv1, "a close frame is never compressed");
        assert_eq!(op, OpCode::Close);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
    }
}

fn compressed(payload: &[u8]) -> Vec<u8> {
    Deflater::default().compress(payload, 15).unwrap().to_vec()
}

/// Runs a client program and asserts it printed "ok".
fn run_client(program: &str, args: &[&str], install_hint: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} ({install_hint})"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{program} {args:?} failed ({install_hint}):\n{stdout}\n{stderr}"
    );
}

/// Both directions were compressed: the server inflated the client's
/// messages and compressed its replies and deliveries.
fn assert_compressed_both_ways(server: &wsgate::ServerHandle, clients: u64, messages: u64) {
    eventually(Duration::from_secs(3), "deflate counters", || {
        let s = server.total_stats();
        s.deflate_negotiated >= clients
            && s.deflate_compressions >= messages
            && s.deflate_inflations >= messages
    });
}

#[test]
fn python_websockets_negotiates_and_exchanges_compressed_messages() {
    let server = start(AppKind::PubSub, 2, true);
    let url = format!("ws://{}/ws", server.local_addr());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/deflate_client.py"
    );
    run_client(
        "python3",
        &[script, &url],
        "needs python3 -m pip install websockets (tests/run-all.sh does)",
    );
    // 5 publishes and 1 echo, each compressed by the client and the server.
    assert_compressed_both_ways(&server, 2, 6);
}

#[test]
fn node_ws_negotiates_and_exchanges_compressed_messages() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
    assert!(
        Path::new(dir).join("node_modules/ws").is_dir(),
        "tests/node has no node_modules: run `npm ci` there (tests/run-all.sh does)"
    );
    let server = start(AppKind::PubSub, 2, true);
    let url = format!("ws://{}/ws", server.local_addr());
    let script = format!("{dir}/deflate-client.js");
    run_client(
        "node",
        &[&script, &url],
        "needs node and `npm ci` in tests/node",
    );
    assert_compressed_both_ways(&server, 2, 6);
}

#[test]
fn echo_replies_are_compressed_per_message_and_small_ones_stay_plain() {
    let server = start(AppKind::Echo, 1, true);
    let mut c = Client::with_offer(server.local_addr());
    let text = "{\"price\":101.25,\"sym\":\"ABC\"} ".repeat(40);
    // Compressed in one frame, then compressed over three fragments.
    let z = compressed(text.as_bytes());
    c.send_frame(true, true, OpCode::Text, &z);
    assert_eq!(c.message(), (true, text.as_bytes().to_vec()));
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    c.send_frame(true, false, OpCode::Text, a);
    c.send_frame(false, false, OpCode::Continuation, b);
    c.send_frame(false, true, OpCode::Continuation, d);
    assert_eq!(c.message(), (true, text.as_bytes().to_vec()));
    // Uncompressed messages are still accepted; short replies go plain.
    c.send_frame(false, true, OpCode::Text, b"short");
    assert_eq!(c.message(), (false, b"short".to_vec()));
    // Pings are answered uncompressed.
    c.send_frame(false, true, OpCode::Ping, b"p");
    assert_eq!(c.frame(), (false, OpCode::Pong, b"p".to_vec()));
    // A peer that asked for an 8-bit window (zlib cannot make one) gets
    // plain messages; a 10-bit window is honoured.
    let mut small = Client::upgrade(
        server.local_addr(),
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n",
    );
    assert!(small
        .extensions
        .as_deref()
        .unwrap()
        .ends_with("; server_max_window_bits=8"));
    small.send_frame(true, true, OpCode::Text, &z);
    assert_eq!(small.message(), (false, text.as_bytes().to_vec()));
    let mut ten = Client::upgrade(
        server.local_addr(),
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
    );
    ten.send_frame(false, true, OpCode::Text, text.as_bytes());
    assert_eq!(ten.message(), (true, text.as_bytes().to_vec()));
}

#[test]
fn malformed_or_unknown_offers_upgrade_without_the_extension() {
    let server = start(AppKind::Echo, 1, true);
    for offer in [
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"12\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; no_such_param\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate;;\r\n",
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
        "Sec-WebSocket-Extensions: ,,\r\n",
        "Sec-WebSocket-Extensions: \r\n",
    ] {
        let mut c = Client::upgrade(server.local_addr(), offer);
        assert_eq!(c.extensions, None, "{offer:?}");
        // Without the extension, RSV1 is a protocol error.
        c.send_frame(true, true, OpCode::Text, &compressed(&[b'a'; 200]));
        c.expect_close(1002);
    }
    // A good offer after a bad one is taken.
    let c = Client::upgrade(
        server.local_addr(),
        "Sec-WebSocket-Extensions: permessage-deflate; bogus, permessage-deflate\r\n",
    );
    assert!(c.extensions.is_some());
    // A server without --permessage-deflate declines every offer.
    let plain = start(AppKind::Echo, 1, false);
    assert_eq!(
        Client::upgrade(
            plain.local_addr(),
            &format!("Sec-WebSocket-Extensions: {OFFER}\r\n")
        )
        .extensions,
        None
    );
}

#[test]
fn rsv1_on_control_or_continuation_frames_is_a_protocol_error() {
    let server = start(AppKind::Echo, 1, true);
    let mut c = Client::with_offer(server.local_addr());
    c.send_frame(true, true, OpCode::Ping, b"");
    c.expect_close(1002);
    let mut c = Client::with_offer(server.local_addr());
    let z = compressed(&[b'a'; 300]);
    c.send_frame(true, false, OpCode::Binary, &z[..2]);
    c.send_frame(true, true, OpCode::Continuation, &z[2..]);
    c.expect_close(1002);
    // Data that is not DEFLATE: 1007.
    let mut c = Client::with_offer(server.local_addr());
    c.send_frame(true, true, OpCode::Binary, &[0xff; 32]);
    c.expect_close(1007);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_decompression_bomb_is_stopped_at_the_size_limit() {
    // 1 MiB of zeros compresses to about 1 KiB; sync-flushed pieces can be
    // chained, so 1024 of them make a ~1 MiB message that inflates to 1 GiB.
    let piece = compressed(&vec![0u8; 1 << 20]);
    assert!(piece.len() < 2048, "{}", piece.len());
    let mut bomb = Vec::with_capacity(1024 * (piece.len() + 4));
    for _ in 0..1023 {
        bomb.extend_from_slice(&piece);
        bomb.extend_from_slice(&TAIL);
    }
    bomb.extend_from_slice(&piece);
    let limit = 8 << 20;
    let port = free_port();
    let server = Proc::wsgate(
        port,
        &[
            "--app",
            "echo",
            "--workers",
            "1",
            "--permessage-deflate",
            "--max-message-size",
            &limit.to_string(),
        ],
        &[],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = server.0.id();
    // Warm up (a real compressed echo) so the baseline includes the codecs.
    let mut c = Client::with_offer(addr);
    let text = "warm ".repeat(100);
    c.send_frame(true, true, OpCode::Text, &compressed(text.as_bytes()));
    assert_eq!(c.message(), (true, text.as_bytes().to_vec()));
    let before = peak_rss_kib(pid);
    let started = Instant::now();
    // Once as one frame, once in fragments.
    c.send_frame(true, true, OpCode::Binary, &bomb);
    c.expect_close(1009);
    let mut c = Client::with_offer(addr);
    let (a, b) = bomb.split_at(bomb.len() / 2);
    c.send_frame(true, false, OpCode::Binary, a);
    c.send_frame(false, true, OpCode::Continuation, b);
    c.expect_close(1009);
    let grew = peak_rss_kib(pid).saturating_sub(before);
    // The inflated output stops at the limit (8 MiB); the compressed
    // message (1 MiB) is held while it arrives. Nowhere near 1 GiB.
    assert!(
        grew < (limit as u64 + (4 << 20)) / 1024,
        "peak RSS grew by {grew} KiB for a bomb against an 8 MiB limit"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server still serves.
    let mut c = Client::with_offer(addr);
    c.send_frame(false, true, OpCode::Text, b"still here");
    assert_eq!(c.message(), (false, b"still here".to_vec()));
}

#[test]
fn a_publish_to_1000_deflate_subscribers_is_compressed_once() {
    let server = start(AppKind::PubSub, 2, true);
    let addr = server.local_addr();
    let admin = server.admin_addr().expect("admin listener");
    let subscribe = br#"{"type":"subscribe","topic":"fan"}"#;
    let mut subs: Vec<Client> = (0..1000)
        .map(|_| {
            let mut c = Client::with_offer(addr);
            c.send_frame(false, true, OpCode::Text, subscribe);
            c
        })
        .collect();
    for c in subs.iter_mut() {
        assert_eq!(
            c.message(),
            (false, br#"{"type":"subscribed","topic":"fan"}"#.to_vec())
        );
    }
    // And one subscriber without the extension.
    let mut plain = connect(addr);
    common::subscribe(&mut plain, "fan");
    let per_worker: Vec<u64> = server
        .stats()
        .iter()
        .map(|s| s.deflate_negotiated)
        .collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "subscribers on both workers: {per_worker:?}"
    );
    let before = server.total_stats();
    let payload = format!(
        "{{\"items\":[{}]}}",
        (0..20)
            .map(|i| format!("{{\"sym\":\"S{i}\",\"bid\":{}.5}}", 100 + i))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (status, body) = http(admin, "POST", "/publish?topic=fan", &payload);
    assert_eq!(status, 200, "{body}");
    let want = format!("{{\"type\":\"message\",\"topic\":\"fan\",\"payload\":{payload}}}");
    let mut wire = None;
    for c in subs.iter_mut() {
        let (rsv1, op, raw) = c.frame();
        assert!(rsv1, "a deflate subscriber got an uncompressed delivery");
        assert_eq!(op, OpCode::Text);
        let text = Inflater::new().inflate(&raw, 1 << 20).unwrap().to_vec();
        assert_eq!(String::from_utf8(text).unwrap(), want);
        // Every subscriber got the same bytes (one shared frame).
        assert_eq!(wire.get_or_insert_with(|| raw.clone()), &raw);
    }
    assert_eq!(recv_text(&mut plain), want);
    let wire_len = wire.unwrap().len();
    assert!(wire_len < want.len() / 2, "{wire_len} vs {}", want.len());
    eventually(Duration::from_secs(3), "deliveries counted", || {
        server.total_stats().deliveries - before.deliveries == 1001
    });
    let after = server.total_stats();
    assert_eq!(
        after.deflate_compressions - before.deflate_compressions,
        1,
        "the compressor ran more than once for one publish"
    );
    // The same count is in /metrics.
    let (_, metrics) = http(admin, "GET", "/metrics", "");
    let total: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_deflate_compressions_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total as u64, after.deflate_compressions);
}

//! Server CPU per echo and per broadcast delivery, TLS vs plain, side by
//! side in one run against the same `wsgate` binary. A measurement, not a
//! check: ignored by default; run against a release build with
//!
//! ```sh
//! cargo build --release --bin wsgate
//! WSGATE_BIN=target/release/wsgate cargo test --test tls_cpu -- --ignored --nocapture
//! ```
//!
//! Server CPU is the process's utime + stime from `/proc/PID/stat` across
//! the measured phase, so the (slower, debug-built) clients do not count.

mod common;
#[path = "support/tls.rs"]
mod tls;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use tls::Pki;
use tungstenite::{Message, WebSocket};

/// A client stream, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn connect(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> WebSocket<Stream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (stream, scheme) = match tls {
        Some(config) => {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(config.clone(), name).unwrap();
            (Stream::Tls(Box::new(StreamOwned::new(conn, tcp))), "wss")
        }
        None => (Stream::Plain(tcp), "ws"),
    };
    let url = format!("{scheme}://localhost:{}/ws", addr.port());
    tungstenite::client::client(url, stream).unwrap().0
}

/// utime + stime of `pid`, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn server(pki: &Pki, tls: bool) -> (common::Proc, SocketAddr) {
    let bin = std::env::var("WSGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wsgate").into());
    let port = common::free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        "off",
    ])
    .args([
        "--workers",
        "1",
        "--log-level",
        "warn",
        "--max-messages-per-sec",
        "0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if tls {
        cmd.arg("--tls-cert").arg(pki.cert_path());
        cmd.arg("--tls-key").arg(pki.key_path());
    }
    let mut p = common::Proc(cmd.spawn().unwrap());
    p.wait_listening(port, Duration::from_secs(10));
    (p, format!("127.0.0.1:{port}").parse().unwrap())
}

/// µs of server CPU per echo: `conns` clients each echo `n` messages.
fn echo_cpu(pki: &Pki, tls: bool, conns: usize, n: usize) -> f64 {
    let (proc, addr) = server(pki, tls);
    let config = pki.client_config(&[&TLS13]);
    let clients: Vec<_> = (0..conns)
        .map(|_| connect(addr, tls.then_some(&config)))
        .collect();
    let body = format!(r#"{{"type":"echo","payload":"{}"}}"#, "e".repeat(100));
    let before = cpu_ticks(proc.0.id());
    let t0 = Instant::now();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            let body = body.clone();
            std::thread::spawn(move || {
                for _ in 0..n {
                    ws.send(Message::text(body.clone())).unwrap();
                    ws.read().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ticks = cpu_ticks(proc.0.id()) - before;
    let echoes = (conns * n) as f64;
    eprintln!(
        "echo {}: {echoes} echoes in {:?}, server CPU {} ms",
        if tls { "TLS" } else { "plain" },
        t0.elapsed(),
        ticks * 10
    );
    ticks as f64 * 10_000.0 / echoes
}

/// µs of server CPU per delivery: `subs` subscribers, `n` publishes.
fn broadcast_cpu(pki: &Pki, tls: bool, subs: usize, n: usize) -> f64 {
    let (proc, addr) = server(pki, tls);
    let config = pki.client_config(&[&TLS13]);
    let mut readers = Vec::new();
    for _ in 0..subs {
        let mut ws = connect(addr, tls.then_some(&config));
        ws.send(Message::text(r#"{"type":"subscribe","topic":"b"}"#))
            .unwrap();
        ws.read().unwrap();
        readers.push(ws);
    }
    let mut publisher = connect(addr, tls.then_some(&config));
    let before = cpu_ticks(proc.0.id());
    let t0 = Instant::now();
    let threads: Vec<_> = readers
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                for _ in 0..n {
                    ws.read().unwrap();
                }
            })
        })
        .collect();
    let body = format!(
        r#"{{"type":"publish","topic":"b","payload":"{}"}}"#,
        "p".repeat(200)
    );
    for i in 0..n {
        publisher.send(Message::text(body.clone())).unwrap();
        if i % 50 == 49 {
            // Keep the subscribers within the slow-consumer limit.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let ticks = cpu_ticks(proc.0.id()) - before;
    let deliveries = (subs * n) as f64;
    eprintln!(
        "broadcast {}: {deliveries} deliveries in {:?}, server CPU {} ms",
        if tls { "TLS" } else { "plain" },
        t0.elapsed(),
        ticks * 10
    );
    ticks as f64 * 10_000.0 / deliveries
}

#[test]
#[ignore = "a measurement: run with --ignored against a release build"]
fn server_cpu_per_echo_and_per_delivery_tls_vs_plain() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let echo_plain = echo_cpu(&pki, false, 20, 5000);
    let echo_tls = echo_cpu(&pki, true, 20, 5000);
    let bc_plain = broadcast_cpu(&pki, false, 200, 3000);
    let bc_tls = broadcast_cpu(&pki, true, 200, 3000);
    println!("| measure | plain | TLS 1.3 (AES-128-GCM) | TLS / plain |");
    println!("|---|---|---|---|");
    println!(
        "| server CPU per echo (100 B payload) | {echo_plain:.2} µs | {echo_tls:.2} µs | {:.2}× |",
        echo_tls / echo_plain
    );
    println!(
        "| server CPU per broadcast delivery (200 B payload) | {bc_plain:.3} µs | {bc_tls:.3} µs | {:.2}× |",
        bc_tls / bc_plain
    );
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Bytes of server RSS per idle upgraded connection, `n` of them.
fn idle_bytes(pki: &Pki, tls: bool, n: usize) -> f64 {
    let (proc, addr) = server(pki, tls);
    let config = pki.client_config(&[&TLS13]);
    // Warm the worker's buffers first, so they are not counted per connection.
    let warm: Vec<_> = (0..10)
        .map(|_| connect(addr, tls.then_some(&config)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(proc.0.id());
    let held: Vec<_> = (0..n)
        .map(|_| connect(addr, tls.then_some(&config)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(proc.0.id());
    let per = (after - before) as f64 * 1024.0 / n as f64;
    eprintln!(
        "idle {}: {n} connections, RSS {before} KiB -> {after} KiB",
        if tls { "TLS" } else { "plain" }
    );
    drop((warm, held));
    per
}

#[test]
#[ignore = "a measurement: run with --ignored against a release build"]
fn server_memory_per_idle_connection_tls_vs_plain() {
    let n: usize = std::env::var("IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let pki = Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let plain = idle_bytes(&pki, false, n);
    let tls = idle_bytes(&pki, true, n);
    println!("| idle upgraded connections ({n}) | plain | TLS 1.3 |");
    println!("|---|---|---|");
    println!("| server RSS per connection | {plain:.0} B | {tls:.0} B |");
}

/// Server CPU per wss:// connection (TLS handshake, upgrade, close), `n`
/// connections one after another; `resume`: the client keeps its session
/// store, so all but the first resume.
fn connect_cpu(pki: &Pki, resume: bool, n: usize) -> (f64, f64) {
    let (proc, addr) = server(pki, true);
    let shared = pki.client_config(&[&TLS13]);
    let before = cpu_ticks(proc.0.id());
    let t0 = Instant::now();
    for _ in 0..n {
        let config = if resume {
            shared.clone()
        } else {
            pki.client_config(&[&TLS13])
        };
        let mut ws = connect(addr, Some(&config));
        // One round trip: TLS 1.3 tickets arrive after the handshake.
        ws.send(Message::text(r#"{"type":"echo","payload":1}"#))
            .unwrap();
        ws.read().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(proc.0.id()) - before;
    (ticks as f64 * 10_000.0 / n as f64, n as f64 / secs)
}

#[test]
#[ignore = "a measurement: run with --ignored against a release build"]
fn server_cpu_per_full_and_resumed_handshake() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let (full, full_rate) = connect_cpu(&pki, false, 2000);
    let (resumed, resumed_rate) = connect_cpu(&pki, true, 2000);
    println!("| wss:// connection (TLS 1.3, ECDSA P-256 leaf) | full handshake | resumed |");
    println!("|---|---|---|");
    println!("| server CPU per connection (handshake + upgrade + one echo) | {full:.0} µs | {resumed:.0} µs |");
    println!(
        "| server-side ceiling, one core (1 s / CPU per connection) | {:.0}/s | {:.0}/s |",
        1e6 / full,
        1e6 / resumed
    );
    println!("| achieved here, one debug-built client in series | {full_rate:.0}/s | {resumed_rate:.0}/s |");
}

//! Helpers shared by the integration tests: real clients over real sockets,
//! real child processes (wsgate, redis-server, nginx) that die with the test.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A WebSocket client (tungstenite) on `/ws`, with a 5 s read timeout.
pub fn connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/ws");
    let (ws, resp) = tungstenite::client::client(url, MaybeTlsStream::Plain(tcp)).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

pub fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send");
}

/// The next text message (control frames are skipped).
pub fn recv_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(_) => panic!("unexpected binary message"),
            _ => continue,
        }
    }
}

/// The next text message, parsed as JSON.
pub fn recv(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv_text(ws)).expect("server sent JSON")
}

/// Subscribes and checks the confirmation.
pub fn subscribe(ws: &mut Ws, topic: &str) {
    send(
        ws,
        &serde_json::json!({"type": "subscribe", "topic": topic}).to_string(),
    );
    let v = recv(ws);
    assert_eq!(v["type"], "subscribed");
    assert_eq!(v["topic"], topic);
}

pub fn publish(ws: &mut Ws, topic: &str, payload: &str) {
    send(
        ws,
        &format!(
            r#"{{"type":"publish","topic":{},"payload":{payload}}}"#,
            Value::from(topic)
        ),
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Minimal HTTP/1.1 request: returns (status, body).
pub fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A child process killed (and reaped) when the test ends, pass or fail.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.0.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `wsgate` on 127.0.0.1:`port` (admin off) and waits until it accepts.
    /// Logs go to the test's stderr when WSGATE_TEST_LOG is set (e.g. `debug`).
    pub fn wsgate(port: u16, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let level = std::env::var("WSGATE_TEST_LOG").ok();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
        ])
        .args(["--log-level", level.as_deref().unwrap_or("warn")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(if level.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let p = Proc(cmd.spawn().expect("spawn wsgate"));
        wait_for_port(port, Duration::from_secs(10));
        p
    }

    /// Runs a throwaway redis-server on `port` (no persistence).
    pub fn redis(port: u16) -> Proc {
        let p = Proc(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server from apt (apt-get install redis-server)"),
        );
        wait_for_port(port, Duration::from_secs(10));
        p
    }
}

/// Kills and reaps a process now.
pub fn kill(mut p: Proc) {
    let _ = p.0.kill();
    let _ = p.0.wait();
}

/// Asks a Redis server a command over RESP (for checks like NUMSUB).
pub fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
pub fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

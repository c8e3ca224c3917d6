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

/// Waits until something accepts TCP connections on `port`. A connect to a
/// port nobody listens on can still succeed on loopback: when the port is
/// in the ephemeral range the kernel may pick it as the client's own port
/// and connect the socket to itself (TCP simultaneous open). Such a
/// self-connection is not a listener, so it does not count.
///
/// Use [`Proc::wait_listening`] for a child process this test started: a
/// connection accepted on `port` may come from another process's listener
/// (see there).
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            if s.local_addr().ok() != s.peer_addr().ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Socket inodes of the TCP listeners on `port` in this network namespace
/// (any address, IPv4 or IPv6), from /proc/net/tcp{,6}.
fn listener_inodes(port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && *state == LISTEN {
                inodes.extend(inode.parse::<u64>().ok());
            }
        }
    }
    inodes
}

/// Whether process `pid` holds one of `inodes` as an open descriptor.
fn holds_any_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_str()?;
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
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

/// How long a process stopped by [`Proc`] gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A scratch directory (`/tmp/wsgate-TAG-XXXX`) removed when dropped.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("wsgate-{tag}-"))
        .tempdir()
        .expect("create a temp dir")
}

/// The `wsgate` binary on 127.0.0.1:`port` with the admin listener off;
/// callers add their own flags and decide where its output goes.
pub fn wsgate_command(port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        "off",
    ]);
    cmd
}

/// A child process stopped (and reaped) when the test ends, pass or fail:
/// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL. A child spawned as
/// its own process group leader (`process_group(0)`, as nginx is) is
/// signalled as a group, so its workers go with it.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// kill(2), ignoring "no such process".
fn send_signal(target: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers; callers pass a child of ours
    // (or the group it leads) that has not been reaped, so the id is ours.
    unsafe { libc::kill(target, sig) };
}

#[derive(PartialEq, Eq)]
enum State {
    Running,
    /// Exited but not reaped: its pid (and group id) are still ours.
    Exited,
    /// Already reaped: signalling its pid could hit an unrelated process.
    Reaped,
}

impl Proc {
    /// Whether the child runs, without reaping it (waitid WNOWAIT).
    fn state(&self) -> State {
        // SAFETY: an all-zero siginfo_t is valid; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child with a valid out pointer.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.0.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            return State::Reaped;
        }
        // SAFETY: a successful waitid set si_pid (0: nothing has exited).
        let exited_pid = unsafe { info.si_pid() };
        if exited_pid == 0 {
            State::Running
        } else {
            State::Exited
        }
    }

    /// Whether the child leads its own process group (spawned with
    /// `process_group(0)`): then it is signalled as a group.
    fn leads_group(&self) -> bool {
        let pid = self.0.id() as i32;
        // SAFETY: getpgid(2) only reads; the child is not reaped.
        unsafe { libc::getpgid(pid) == pid }
    }

    /// Stops the process: SIGTERM, `grace` to exit, then SIGKILL (for a
    /// group, SIGKILL to what is left of it, e.g. nginx workers whose master
    /// died), then reaps it.
    pub fn stop(&mut self, grace: Duration) {
        let mut state = self.state();
        if state == State::Reaped {
            return;
        }
        let group = self.leads_group();
        let pid = self.0.id() as i32;
        let target = if group { -pid } else { pid };
        if state == State::Running && !grace.is_zero() {
            send_signal(target, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while state == State::Running && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
                state = self.state();
            }
        }
        if group || state == State::Running {
            send_signal(target, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }

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
        // Without WSGATE_TEST_LOG the output goes to an unlinked file, read
        // back only to explain a start-up failure.
        let log = level.is_none().then(unlinked_log);
        let mut cmd = wsgate_command(port);
        cmd.args(["--log-level", level.as_deref().unwrap_or("warn")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(match &log {
                Some(f) => Stdio::from(f.try_clone().expect("dup the log file")),
                None => Stdio::inherit(),
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Proc(cmd.spawn().expect("spawn wsgate"));
        p.wait_listening_or_explain(port, Duration::from_secs(10), log.as_ref());
        p
    }

    /// Waits until this child itself listens on `port`. Probing the port
    /// is not enough: the tests' ports come from the kernel's free ports,
    /// and until the child binds, another process may take the same port
    /// (wsgate's SO_REUSEPORT listeners then share it), so a probe can be
    /// accepted by a listener that is gone a moment later.
    pub fn wait_listening(&mut self, port: u16, within: Duration) {
        self.wait_listening_or_explain(port, within, None);
    }

    fn wait_listening_or_explain(
        &mut self,
        port: u16,
        within: Duration,
        log: Option<&std::fs::File>,
    ) {
        wait_child_listening(&mut self.0, port, within, log);
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
        let mut p = p;
        p.wait_listening(port, Duration::from_secs(10));
        p
    }
}

/// Waits until `child` itself listens on `port` (see
/// [`Proc::wait_listening`]); a child that exits first, or does not listen
/// within `within`, fails the test with the end of `log`.
pub fn wait_child_listening(
    child: &mut Child,
    port: u16,
    within: Duration,
    log: Option<&std::fs::File>,
) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the child exited ({status}) before listening on port {port}{}",
                log_tail(log)
            );
        }
        if holds_any_socket(child.id(), &listener_inodes(port)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the child did not listen on port {port} within {within:?}{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary file already unlinked: a child writes to a duplicate of it
/// and nothing is left behind.
fn unlinked_log() -> std::fs::File {
    tempfile::tempfile().expect("create a temporary log file")
}

/// The last few KiB of a child's log, for a failure message.
fn log_tail(log: Option<&std::fs::File>) -> String {
    use std::os::unix::fs::FileExt;
    let Some(f) = log else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(4096);
    let mut buf = vec![0; (len - start) as usize];
    let n = f.read_at(&mut buf, start).unwrap_or(0);
    format!(
        "; its log ends with:\n{}",
        String::from_utf8_lossy(&buf[..n])
    )
}

/// Kills (SIGKILL, as a crash would) and reaps a process now.
pub fn kill(mut p: Proc) {
    p.stop(Duration::ZERO);
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

// ---------------------------------------------------------------------------
// Core-server helpers: an in-process echo server, raw upgrades, and a raw
// byte-level client that reads server frames with deadlines.
// ---------------------------------------------------------------------------

use wsgate::protocol::frame::{write_client_frame, FrameHeader, OpCode, Role};

/// How long any single expected event (a response, a frame, EOF) may take.
pub const READ_WITHIN: Duration = Duration::from_secs(3);

/// The masking key hand-made client frames use (not all zero, so an
/// unmasking bug shows).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The RFC 6455 §1.3 sample key and its accept value.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An in-process server running the echo app on 2 workers; `tweak` adjusts
/// the config before it starts.
pub fn start_echo(tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = wsgate::config::AppKind::Echo;
    cfg.workers = Some(2);
    cfg.admin_listen = None;
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

/// A valid upgrade request for `path` with `key`.
pub fn upgrade_request(path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A hand-made masked client frame.
pub fn client_frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_client_frame(&mut out, fin, op, MASK, payload);
    out
}

/// A close frame payload: code in network order, then the reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What a raw read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Frame(OpCode, Vec<u8>),
    Eof,
    Reset,
    TimedOut,
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A client on a raw TCP socket: writes arbitrary bytes, reads HTTP heads and
/// server frames, every read bounded by a deadline.
pub struct RawClient {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr).expect("tcp connect");
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(READ_WITHIN)).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient {
            tcp,
            buf: Vec::new(),
        }
    }

    /// A raw client on a socket connected elsewhere (e.g. from a chosen
    /// source address).
    pub fn from_stream(tcp: TcpStream) -> RawClient {
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(READ_WITHIN)).unwrap();
        RawClient {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Connects and completes the upgrade (asserting 101 and the accept key).
    pub fn upgraded(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect(addr);
        c.send(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
        let head = c.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head:?}");
        assert!(
            head.contains(&format!("\r\nSec-WebSocket-Accept: {SAMPLE_ACCEPT}\r\n")),
            "{head:?}"
        );
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).expect("write to server");
    }

    pub fn send_frame(&mut self, fin: bool, op: OpCode, payload: &[u8]) {
        self.send(&client_frame(fin, op, payload));
    }

    /// One read into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Option<Got> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(Got::TimedOut);
        }
        self.tcp.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.tcp.read(&mut chunk) {
            Ok(0) => Some(Got::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                None
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Some(Got::TimedOut)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                Some(Got::Reset)
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads an HTTP response head (through the blank line); bytes after it
    /// stay buffered for [`RawClient::next`].
    pub fn read_head(&mut self) -> String {
        let deadline = Instant::now() + READ_WITHIN;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).expect("response head is UTF-8");
            }
            if let Some(got) = self.fill(deadline) {
                panic!(
                    "no complete response head ({got:?}); got so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads a whole HTTP response: the head, then the body up to EOF
    /// (error responses close the connection). Asserts EOF comes.
    pub fn read_response(&mut self) -> HttpResponse {
        let head = self.read_head();
        let deadline = Instant::now() + READ_WITHIN;
        loop {
            match self.fill(deadline) {
                None => continue,
                Some(Got::Eof) => break,
                Some(other) => panic!(
                    "response not followed by EOF: {other:?}; head {head:?}, body so far {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
        let body = String::from_utf8(std::mem::take(&mut self.buf)).expect("body is UTF-8");
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        HttpResponse { status, head, body }
    }

    /// The next server frame (checked to be unmasked, final, without RSV
    /// bits), or what ended the wait.
    pub fn next_within(&mut self, within: Duration) -> Got {
        let deadline = Instant::now() + within;
        loop {
            match FrameHeader::decode(&self.buf, Role::Client, 0) {
                Ok(Some((h, n))) => {
                    assert!(h.fin, "server sent a non-final frame: {h:?}");
                    let total = n + h.payload_len as usize;
                    if self.buf.len() >= total {
                        let payload = self.buf[n..total].to_vec();
                        self.buf.drain(..total);
                        return Got::Frame(h.opcode, payload);
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("server sent an invalid frame header: {e}"),
            }
            if let Some(got) = self.fill(deadline) {
                assert!(
                    got == Got::TimedOut || self.buf.is_empty(),
                    "connection ended mid-frame ({got:?}) with {} bytes left",
                    self.buf.len()
                );
                return got;
            }
        }
    }

    pub fn next(&mut self) -> Got {
        self.next_within(READ_WITHIN)
    }

    /// The next server frame; panics on EOF or timeout.
    pub fn frame(&mut self) -> (OpCode, Vec<u8>) {
        match self.next() {
            Got::Frame(op, p) => (op, p),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Asserts that the server sends a close frame with `code` and then ends
    /// the TCP connection (clean EOF).
    pub fn expect_close(&mut self, code: u16) {
        let got = self.close_code();
        assert_eq!(got, code, "close code");
        self.expect_eof();
    }

    /// Reads the next frame, which must be a close frame; returns its code.
    pub fn close_code(&mut self) -> u16 {
        match self.next() {
            Got::Frame(OpCode::Close, p) => {
                assert!(p.len() >= 2, "close frame without a code: {p:?}");
                assert!(p.len() <= 125, "close frame too long");
                std::str::from_utf8(&p[2..]).expect("close reason is UTF-8");
                u16::from_be_bytes([p[0], p[1]])
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Asserts the server closes the TCP connection (FIN) with nothing else.
    pub fn expect_eof(&mut self) {
        match self.next() {
            Got::Eof => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }
}

/// A fresh, well-behaved tungstenite client still gets an exact echo (the
/// server keeps serving after whatever the test did).
pub fn assert_still_serves(addr: SocketAddr) {
    let mut ws = connect(addr);
    ws.send(Message::text("still there?")).expect("send");
    match ws.read().expect("echo") {
        Message::Text(t) => assert_eq!(t.as_str(), "still there?"),
        other => panic!("expected a text echo, got {other:?}"),
    }
    ws.close(None).expect("close");
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("clean close expected: {e}"),
        }
    }
}

/// Every worker thread still runs its event loop (none panicked): each
/// answers a watchdog probe.
pub fn assert_workers_alive(server: &wsgate::ServerHandle) {
    let before: Vec<u64> = server.stats().iter().map(|s| s.watchdog).collect();
    server.probe_workers();
    eventually(
        Duration::from_secs(2),
        "every worker answers a probe",
        || {
            server
                .stats()
                .iter()
                .zip(&before)
                .all(|(s, b)| s.watchdog > *b)
        },
    );
}

/// The server survived whatever the test did: all workers run and a fresh
/// client gets an exact echo.
pub fn assert_healthy(server: &wsgate::ServerHandle) {
    assert_workers_alive(server);
    assert_still_serves(server.local_addr());
}

//! Hostile-client soaks. The first: 200 connections from a few threads spend 20 s
//! doing everything a client should not (random bytes, stalled and dribbled
//! handshakes, random masked frames, impossible length claims, upgrading and
//! never reading), reconnecting whenever the server (or their own patience)
//! ends them. Afterwards every connection is released, every worker still
//! runs, a normal client gets an exact echo, and the process's RSS is back
//! near where it was before the soak.
//!
//! The server runs in this process, so RSS covers both sides; the baseline
//! is taken after a short warm-up of the same load, when the allocator and
//! the server's per-worker buffers have reached their steady state. All
//! randomness is seeded (xorshift), so the mix of behaviours is the same on
//! every run; only the timing varies, and the checks allow for it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::*;
use wsgate::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

/// Connections held open at any time (each is reconnected when it ends).
const CONNECTIONS: usize = 200;
/// Client threads sharing them (non-blocking sockets, round-robin).
const THREADS: usize = 4;
const SOAK: Duration = Duration::from_secs(20);
const WARMUP: Duration = Duration::from_secs(3);
/// The server's message limit in this test (small, so claims exceed it).
const MAX_MESSAGE: u64 = 64 * 1024;
/// How far above the baseline RSS may stay once the clients are gone.
const RSS_SLACK: u64 = 40 << 20;

/// xorshift64*: fixed seeds, reproducible behaviour mixes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        pseudo_random(self.next(), n)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// What a connection does this time round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    /// Random bytes instead of an upgrade request.
    Garbage,
    /// A strict prefix of a valid upgrade request, then silence.
    StalledHandshake,
    /// An endless request head, one byte at a time (slowloris).
    DribbledHandshake,
    /// A valid upgrade, then random bytes.
    GarbageAfterUpgrade,
    /// A valid upgrade, then a stream of random but plausible masked frames.
    RandomFrames,
    /// A valid upgrade, then a header claiming a huge payload.
    OversizedClaim,
    /// A valid upgrade, then a few echo requests, and it never reads.
    NeverReads,
    /// A valid upgrade, then echo requests without reading until the server
    /// stops reading too (its queue for the client is full). One slot per
    /// client thread does only this, so a few run at any time.
    Floods,
    /// Pub/sub: a stream of tiny broadcasts (amplification).
    BroadcastSpam,
    /// An unfinished message near the size limit, kept alive with pings.
    FragmentHoard,
    /// Pub/sub: refreshes with forged tokens, each different.
    RefreshSpam,
    /// Pub/sub: subscriptions to ever new long topics.
    TopicSpam,
    /// The admin port: a POST announcing a body that never comes.
    AdminSlowloris,
}

/// The behaviours every other slot draws from at random.
const BEHAVIORS: [Behavior; 7] = [
    Behavior::Garbage,
    Behavior::StalledHandshake,
    Behavior::DribbledHandshake,
    Behavior::GarbageAfterUpgrade,
    Behavior::RandomFrames,
    Behavior::OversizedClaim,
    Behavior::NeverReads,
];

/// What the pub/sub soak's slots draw from: every shape above plus the
/// attacks on budgets.
const PUBSUB_BEHAVIORS: [Behavior; 12] = [
    Behavior::Garbage,
    Behavior::StalledHandshake,
    Behavior::DribbledHandshake,
    Behavior::GarbageAfterUpgrade,
    Behavior::RandomFrames,
    Behavior::OversizedClaim,
    Behavior::NeverReads,
    Behavior::BroadcastSpam,
    Behavior::FragmentHoard,
    Behavior::RefreshSpam,
    Behavior::TopicSpam,
    Behavior::AdminSlowloris,
];

/// Where the hostile clients go and what they do.
#[derive(Clone, Copy)]
struct Target<'a> {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    /// The upgrade request's target (with a token in the query when the
    /// server requires one).
    path: &'a str,
    behaviors: &'a [Behavior],
}

/// Client-side counts, for the report and a sanity check.
#[derive(Debug, Default)]
struct Tally {
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// Connections the server ended (EOF, reset, broken pipe).
    server_ended: AtomicU64,
    /// Connections the client gave up on (its lifetime ran out).
    client_dropped: AtomicU64,
    bytes_sent: AtomicU64,
    /// Connections per behaviour: the target's behaviours, then `Floods`.
    per_behavior: [AtomicU64; 13],
}

/// One of the connections, reopened with a new behaviour whenever it ends.
struct Slot {
    tcp: Option<TcpStream>,
    behavior: Behavior,
    /// This slot always floods (else it draws a behaviour at random).
    flooder: bool,
    /// Bytes still to send; refilled from `frames_left` when empty.
    out: Vec<u8>,
    frames_left: u32,
    /// Send one byte per round instead of all that fits.
    dribble: bool,
    /// Drain (and discard) what the server sends.
    reads: bool,
    /// When the client gives up on this connection.
    give_up_at: Instant,
    /// When to reconnect (while `tcp` is None).
    reconnect_at: Instant,
}

impl Slot {
    fn idle(at: Instant, flooder: bool) -> Slot {
        Slot {
            tcp: None,
            behavior: Behavior::Garbage,
            flooder,
            out: Vec::new(),
            frames_left: 0,
            dribble: false,
            reads: true,
            give_up_at: at,
            reconnect_at: at,
        }
    }

    fn open(&mut self, target: &Target<'_>, rng: &mut Rng, tally: &Tally, now: Instant) {
        let i = if self.flooder {
            target.behaviors.len()
        } else {
            rng.below(target.behaviors.len() as u64) as usize
        };
        let behavior = target.behaviors.get(i).copied().unwrap_or(Behavior::Floods);
        let addr = match (behavior, target.admin) {
            (Behavior::AdminSlowloris, Some(admin)) => admin,
            _ => target.addr,
        };
        let tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(t) => t,
            Err(_) => {
                tally.connect_failures.fetch_add(1, Relaxed);
                self.reconnect_at = now + rng.millis(100, 300);
                return;
            }
        };
        tcp.set_nonblocking(true).unwrap();
        tcp.set_nodelay(true).unwrap();
        tally.connects.fetch_add(1, Relaxed);
        tally.per_behavior[i].fetch_add(1, Relaxed);
        self.behavior = behavior;
        self.tcp = Some(tcp);
        self.out.clear();
        self.frames_left = 0;
        self.dribble = false;
        self.reads = true;
        self.give_up_at = now + rng.millis(1500, 4000);
        let upgrade = upgrade_request(target.path, SAMPLE_KEY).into_bytes();
        match self.behavior {
            Behavior::Garbage => {
                let n = 1 + rng.below(3000) as usize;
                self.out = rng.bytes(n);
            }
            Behavior::StalledHandshake => {
                let cut = rng.below(upgrade.len() as u64 - 1) as usize;
                self.out = upgrade[..cut].to_vec();
            }
            Behavior::DribbledHandshake => {
                self.out = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
                self.out.resize(self.out.len() + 4000, b'a');
                self.dribble = true;
            }
            Behavior::GarbageAfterUpgrade => {
                self.out = upgrade;
                let n = 1 + rng.below(4096) as usize;
                self.out.extend(rng.bytes(n));
            }
            Behavior::RandomFrames => {
                self.out = upgrade;
                self.frames_left = 1 + rng.below(300) as u32;
            }
            Behavior::OversizedClaim => {
                self.out = upgrade;
                let claim = [
                    MAX_MESSAGE + 1,
                    1 << 20,
                    1 << 32,
                    1 << 40,
                    (1 << 63) - 1,
                    1 << 63,
                    u64::MAX,
                ][rng.below(7) as usize];
                let op = [0x1u8, 0x2, 0x0][rng.below(3) as usize];
                self.out.push(0x80 | op);
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&claim.to_be_bytes());
                self.out.extend_from_slice(&MASK);
                let n = rng.below(2000) as usize;
                self.out.extend(rng.bytes(n));
            }
            Behavior::NeverReads => {
                self.out = upgrade;
                self.frames_left = 1 + rng.below(8) as u32; // up to 128 KiB
                self.reads = false;
            }
            Behavior::BroadcastSpam | Behavior::RefreshSpam | Behavior::TopicSpam => {
                self.out = upgrade;
                self.frames_left = 100 + rng.below(400) as u32;
            }
            Behavior::FragmentHoard => {
                self.out = upgrade;
                let part = rng.bytes(MAX_MESSAGE as usize - 1024);
                frame_into(&mut self.out, false, 0, 0x2, rng, &part);
                self.frames_left = 1000;
            }
            Behavior::AdminSlowloris => {
                self.out = b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n{\"a\":"
                    .to_vec();
                self.dribble = rng.chance(50);
                // Long enough to meet the admin request timeout.
                self.give_up_at = now + rng.millis(4000, 12_000);
            }
            Behavior::Floods => {
                // 6 MiB of echo requests: more than the server's socket
                // buffer and its 128 KiB queue for this client hold, so it
                // pauses reading, and then times the connection out.
                self.out = upgrade;
                self.frames_left = 384;
                self.reads = false;
                self.give_up_at = now + Duration::from_secs(8);
                // Small socket buffers on this side, so the backlog builds up
                // in the server rather than here.
                if let Some(tcp) = &self.tcp {
                    let sock = socket2::SockRef::from(tcp);
                    let _ = sock.set_recv_buffer_size(4096);
                    let _ = sock.set_send_buffer_size(4096);
                }
            }
        }
    }

    /// Appends the next frame(s) of a streaming behaviour to `out`.
    fn refill(&mut self, rng: &mut Rng) {
        if self.frames_left == 0 {
            return;
        }
        self.frames_left -= 1;
        match self.behavior {
            Behavior::NeverReads | Behavior::Floods => {
                let payload = rng.bytes(16 * 1024);
                frame_into(&mut self.out, true, 0, 0x2, rng, &payload);
            }
            Behavior::BroadcastSpam => {
                let text = format!(r#"{{"type":"broadcast","payload":{}}}"#, rng.below(1000));
                frame_into(&mut self.out, true, 0, 0x1, rng, text.as_bytes());
            }
            Behavior::RefreshSpam => {
                let token = forged_token(rng);
                let text = format!(r#"{{"type":"refresh","token":"{token}"}}"#);
                frame_into(&mut self.out, true, 0, 0x1, rng, text.as_bytes());
            }
            Behavior::TopicSpam => {
                let topic: String = (0..200)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect();
                let text = format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#);
                frame_into(&mut self.out, true, 0, 0x1, rng, text.as_bytes());
            }
            Behavior::FragmentHoard => {
                // Pings between fragments keep the connection alive.
                frame_into(&mut self.out, true, 0, 0x9, rng, b"hold");
            }
            _ => random_frame(&mut self.out, rng),
        }
    }

    fn close(&mut self, rng: &mut Rng, now: Instant) {
        if let Some(tcp) = self.tcp.take() {
            if rng.chance(50) {
                // RST instead of FIN (and no TIME_WAIT on this side).
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            }
        }
        self.out.clear();
        self.frames_left = 0;
        self.reconnect_at = now + rng.millis(50, 200);
    }

    /// One round of this connection's life: send, read, reconnect, give up.
    fn step(
        &mut self,
        target: &Target<'_>,
        rng: &mut Rng,
        tally: &Tally,
        now: Instant,
        buf: &mut [u8],
    ) {
        if self.tcp.is_none() {
            if now >= self.reconnect_at {
                self.open(target, rng, tally, now);
            }
            return;
        }
        if self.out.is_empty() {
            self.refill(rng);
        }
        let tcp = self.tcp.as_mut().expect("connected");
        let mut ended = false;
        if !self.out.is_empty() {
            let n = if self.dribble { 1 } else { self.out.len() };
            match tcp.write(&self.out[..n]) {
                Ok(n) => {
                    self.out.drain(..n);
                    tally.bytes_sent.fetch_add(n as u64, Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => ended = true, // reset or broken pipe: the server closed
            }
        }
        if self.reads && !ended {
            for _ in 0..4 {
                match tcp.read(buf) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                }
            }
        }
        if ended {
            tally.server_ended.fetch_add(1, Relaxed);
            self.close(rng, now);
        } else if now >= self.give_up_at {
            tally.client_dropped.fetch_add(1, Relaxed);
            self.close(rng, now);
        }
    }
}

/// Appends a masked frame with the given first-byte fields.
fn frame_into(out: &mut Vec<u8>, fin: bool, rsv: u8, opcode: u8, rng: &mut Rng, payload: &[u8]) {
    let mask = (rng.next() as u32).to_ne_bytes();
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader {
        fin,
        rsv,
        opcode: OpCode::Binary,
        mask: Some(mask),
        payload_len: payload.len() as u64,
    }
    .encode(&mut hdr);
    hdr[0] = (hdr[0] & 0xF0) | (opcode & 0x0F);
    out.extend_from_slice(&hdr[..n]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A random but plausible frame: mostly valid opcodes, lengths and text,
/// sometimes fragmented, sometimes reserved bits or opcodes, oversized
/// control frames, invalid UTF-8 or bad close codes.
fn random_frame(out: &mut Vec<u8>, rng: &mut Rng) {
    let opcode = match rng.below(20) {
        0..=6 => 0x1,
        7..=11 => 0x2,
        12..=13 => 0x0,
        14..=15 => 0x9,
        16 => 0xA,
        17 => 0x8,
        _ => [0x3u8, 0x7, 0xB, 0xF][rng.below(4) as usize],
    };
    let len = match rng.below(10) {
        0..=5 => rng.below(126),
        6..=8 => 126 + rng.below(3000),
        _ => 65536 + rng.below(MAX_MESSAGE),
    } as usize;
    let len = if opcode & 0x8 != 0 && !rng.chance(10) {
        len.min(125)
    } else {
        len
    };
    let fin = rng.chance(80);
    let rsv = if rng.chance(3) { rng.below(8) as u8 } else { 0 };
    let payload = match opcode {
        0x1 | 0x0 if rng.chance(90) => {
            let text = "wsgate soak ☃ é 𝄞 ";
            text.bytes().cycle().take(len).collect()
        }
        0x8 if len >= 2 && rng.chance(80) => {
            let code = [1000u16, 1001, 1003, 4000, 1005, 999][rng.below(6) as usize];
            let mut p = code.to_be_bytes().to_vec();
            p.resize(len, b'r');
            p
        }
        _ => rng.bytes(len),
    };
    frame_into(out, fin, rsv, opcode, rng, &payload);
}

/// A JWT-shaped string with a random signature (refused on its signature).
fn forged_token(rng: &mut Rng) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut part = |n: usize| -> String {
        (0..n)
            .map(|_| alphabet[rng.below(64) as usize] as char)
            .collect()
    };
    // {"alg":"HS256","typ":"JWT"}
    format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        part(60),
        part(43)
    )
}

/// Runs `CONNECTIONS` hostile connections for `duration`, then drops them all.
fn hostile_load(target: Target<'_>, duration: Duration, seed: u64) -> Tally {
    let tally = Tally::default();
    let stop_at = Instant::now() + duration;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let tally = &tally;
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ ((t as u64 + 1) << 32));
                let start = Instant::now();
                // Staggered first connects, so they do not arrive as one burst.
                let mut slots: Vec<Slot> = (0..CONNECTIONS / THREADS)
                    .map(|i| Slot::idle(start + Duration::from_millis(i as u64 * 10), i == 0))
                    .collect();
                let mut buf = vec![0u8; 16 * 1024];
                while Instant::now() < stop_at {
                    let now = Instant::now();
                    for slot in &mut slots {
                        slot.step(&target, &mut rng, tally, now, &mut buf);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let now = Instant::now();
                for slot in &mut slots {
                    slot.close(&mut rng, now);
                }
            });
        }
    });
    tally
}

/// The soak tests measure this process's resident set, so they take turns:
/// a second server in the same process would move the figure.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This process's resident set, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Waits until the server holds no connection at all.
fn wait_all_released(server: &wsgate::ServerHandle, what: &str) {
    eventually(Duration::from_secs(20), what, || {
        server.total_stats().open == 0 && server.admitted() == 0
    });
}

#[test]
fn two_hundred_hostile_clients_for_20s_leave_the_server_healthy_and_rss_flat() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let server = start_echo(|c| {
        c.max_message_size = Some(MAX_MESSAGE);
        c.max_outbound_bytes = 128 * 1024;
        c.handshake_timeout = Duration::from_secs(1);
        c.ping_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
        c.close_timeout = Duration::from_secs(1);
    });
    let addr = server.local_addr();
    let target = Target {
        addr,
        admin: None,
        path: "/ws",
        behaviors: &BEHAVIORS,
    };

    // Warm-up: the same load, briefly; then the baseline.
    hostile_load(target, WARMUP, 0xC0FFEE);
    wait_all_released(&server, "warm-up connections released");
    assert_healthy(&server);
    let baseline = rss_bytes();

    // The soak, with RSS sampled from the side.
    let peak = AtomicU64::new(baseline);
    let peak_queued = AtomicU64::new(0);
    let peak_open = AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let tally = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Relaxed) {
                peak.fetch_max(rss_bytes(), Relaxed);
                let t = server.total_stats();
                peak_queued.fetch_max(t.queued_bytes, Relaxed);
                peak_open.fetch_max(t.open, Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let tally = hostile_load(target, SOAK, 0x5EED_50A4);
        done.store(true, Relaxed);
        tally
    });
    let soak_end = Instant::now();
    let during = server.total_stats();

    // Every connection is released: nothing leaks a slot or a buffer.
    wait_all_released(&server, "every hostile connection released");
    let released_in = soak_end.elapsed();
    // Nothing killed a worker, and a normal client is served exactly.
    assert_healthy(&server);
    for i in 0..3 {
        let mut ws = connect(addr);
        let text = format!("after the soak {i} ☃");
        send(&mut ws, &text);
        assert_eq!(recv_text(&mut ws), text);
    }
    // RSS comes back near the baseline.
    let mut after = rss_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    while after > baseline + RSS_SLACK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = rss_bytes();
    }

    let t = server.total_stats();
    let behaviors: Vec<String> = BEHAVIORS
        .iter()
        .chain(&[Behavior::Floods])
        .zip(&tally.per_behavior)
        .map(|(b, n)| format!("{b:?}={}", n.load(Relaxed)))
        .collect();
    eprintln!(
        "hostile soak: {} connects ({} failed), {} ended by the server, {} dropped by the client, \
         {:.1} MiB sent; [{}]\n\
         server: accepted {}, upgraded {}, protocol errors {}, bad requests {}, handshake \
         timeouts {}, idle timeouts {}, rate limited {}, abrupt closes {}; at most {} open at once; \
         released in {:?}\n\
         peak queued for clients {:.1} MiB; RSS: baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; total {:?}",
        tally.connects.load(Relaxed),
        tally.connect_failures.load(Relaxed),
        tally.server_ended.load(Relaxed),
        tally.client_dropped.load(Relaxed),
        mib(tally.bytes_sent.load(Relaxed)),
        behaviors.join(" "),
        t.accepted,
        t.upgraded,
        t.protocol_errors,
        t.rejected_bad_request,
        t.handshake_timeouts,
        t.idle_timeouts,
        t.rate_limited,
        t.abrupt_closes,
        peak_open.load(Relaxed),
        released_in,
        mib(peak_queued.load(Relaxed)),
        mib(baseline),
        mib(peak.load(Relaxed)),
        mib(after),
        t0.elapsed(),
    );

    assert!(
        after <= baseline + RSS_SLACK,
        "RSS did not come back: baseline {:.1} MiB, after {:.1} MiB (peak {:.1} MiB)",
        mib(baseline),
        mib(after),
        mib(peak.load(Relaxed))
    );
    // The load really was what it claims: many connections, every kind of
    // refusal exercised (seeded mixes; the bounds are far below typical).
    let connects = tally.connects.load(Relaxed);
    assert!(
        connects >= 2 * CONNECTIONS as u64,
        "only {connects} connects"
    );
    assert!(
        tally.connect_failures.load(Relaxed) * 100 <= connects,
        "the server stopped accepting"
    );
    assert!(tally.server_ended.load(Relaxed) > CONNECTIONS as u64);
    assert!(
        during.upgraded > 0 && during.protocol_errors > 0,
        "{during:?}"
    );
    assert!(during.rejected_bad_request > 0, "{during:?}");
    assert!(during.handshake_timeouts > 0, "{during:?}");
}

const SECRET: &str = "soak-secret-0123456789";

/// A tungstenite client upgrading on `path` (which carries its token).
fn connect_path(addr: SocketAddr, path: &str) -> Ws {
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tungstenite::client::client(url, tungstenite::stream::MaybeTlsStream::Plain(tcp))
        .expect("upgrade");
    ws
}

/// What well-behaved clients saw: round trips and anything that went wrong.
#[derive(Default)]
struct Observed {
    echo: Vec<Duration>,
    publish: Vec<Duration>,
    errors: Vec<String>,
}

impl Observed {
    fn merge(&mut self, o: Observed) {
        self.echo.extend(o.echo);
        self.publish.extend(o.publish);
        self.errors.extend(o.errors);
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The next message of `kind` (broadcasts from other clients are skipped);
/// an error reply or a failed read is an error.
fn next_of(ws: &mut Ws, kind: &str) -> Result<serde_json::Value, String> {
    // Heartbeat pings arrive every second: the read timeout alone would
    // never fire.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if Instant::now() > deadline {
            return Err(format!("no {kind} within 5 s"));
        }
        let text = match ws.read() {
            Ok(tungstenite::Message::Text(t)) => t.as_str().to_string(),
            Ok(tungstenite::Message::Close(c)) => return Err(format!("closed: {c:?}")),
            Ok(_) => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some(k) if k == kind => return Ok(v),
            Some("broadcast") => continue,
            _ => return Err(format!("unexpected reply {v}")),
        }
    }
}

/// One well-behaved client family for `duration`: an echo round trip and
/// a publish to its own subscriber every 10 ms, a health check every 500 ms.
/// Both connections read everything they are sent (broadcasts included): a
/// client that does not read is a slow consumer, not a well-behaved one.
fn behave(
    addr: SocketAddr,
    admin: SocketAddr,
    path: &str,
    id: usize,
    duration: Duration,
) -> Observed {
    let mut seen = Observed::default();
    let mut echo = connect_path(addr, path);
    let mut sub = connect_path(addr, path);
    let topic = format!("wb.{id}");
    send(
        &mut sub,
        &format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
    );
    if let Err(e) = next_of(&mut sub, "subscribed") {
        seen.errors.push(e);
        return seen;
    }
    let end = Instant::now() + duration;
    let mut next_health = Instant::now();
    let mut n = 0u64;
    while Instant::now() < end && seen.errors.len() < 10 {
        n += 1;
        let t = Instant::now();
        send(&mut echo, &format!(r#"{{"type":"echo","n":{n}}}"#));
        match next_of(&mut echo, "echo") {
            Ok(v) if v["n"] == n => seen.echo.push(t.elapsed()),
            Ok(v) => seen.errors.push(format!("echo {n} answered with {v}")),
            Err(e) => seen.errors.push(e),
        }
        let t = Instant::now();
        publish(&mut echo, &topic, &n.to_string());
        match next_of(&mut sub, "message") {
            Ok(v) if v["payload"] == n => seen.publish.push(t.elapsed()),
            Ok(v) => seen.errors.push(format!("publish {n} arrived as {v}")),
            Err(e) => seen.errors.push(e),
        }
        if Instant::now() >= next_health {
            next_health += Duration::from_millis(500);
            let t = Instant::now();
            let (status, _) = http(admin, "GET", "/healthz", "");
            if status != 200 || t.elapsed() > Duration::from_secs(2) {
                seen.errors
                    .push(format!("healthz {status} in {:?}", t.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// Well-behaved client families run side by side for `duration`.
fn well_behaved(addr: SocketAddr, admin: SocketAddr, path: &str, duration: Duration) -> Observed {
    let mut all = Observed::default();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|i| s.spawn(move || behave(addr, admin, path, i, duration)))
            .collect();
        for r in runs {
            all.merge(r.join().expect("well-behaved client thread"));
        }
    });
    all
}

/// Scrapes one unlabelled sample from /metrics.
fn scraped(admin: SocketAddr, name: &str) -> u64 {
    let (_, body) = http(admin, "GET", "/metrics", "");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// The pub/sub app with authentication on, 200 hostile connections mixing
/// every shape above with the budget attacks (broadcast spam, fragment
/// hoarding, refresh spam, topic spam, admin slowloris), against three
/// well-behaved client families: those see no error at all, their echo and
/// publish round trips stay within twice a quiet run's (medians, plus a
/// little slack for a shared machine), and the RSS comes back.
#[test]
fn well_behaved_clients_do_not_notice_two_hundred_attackers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const RUN: Duration = Duration::from_secs(15);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"exp": wsgate::security::unix_now() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let path = format!("/ws?token={token}");
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.jwt_secret = Some(SECRET.into());
    cfg.max_message_size = Some(MAX_MESSAGE);
    cfg.max_outbound_bytes = 128 * 1024;
    cfg.max_reassembly_bytes = 512 << 10;
    cfg.handshake_timeout = Duration::from_secs(1);
    cfg.ping_interval = Duration::from_secs(1);
    cfg.idle_timeout = Duration::from_secs(3);
    cfg.close_timeout = Duration::from_secs(1);
    cfg.drain_timeout = Duration::from_secs(1);
    let server = wsgate::start(cfg).expect("server starts");
    let addr = server.local_addr();
    let admin = server.admin_addr().expect("admin listener");
    let target = Target {
        addr,
        admin: Some(admin),
        path: &path,
        behaviors: &PUBSUB_BEHAVIORS,
    };

    hostile_load(target, WARMUP, 0xBAD5EED);
    wait_all_released(&server, "warm-up connections released");
    let quiet = well_behaved(addr, admin, &path, Duration::from_secs(3));
    eprintln!(
        "quiet run: {} samples, errors {:?}",
        quiet.echo.len(),
        quiet.errors
    );
    let baseline = rss_bytes();

    let (busy, tally) = std::thread::scope(|s| {
        let attack = s.spawn(|| hostile_load(target, RUN, 0xA77AC4));
        // Let the attack get going before measuring.
        std::thread::sleep(Duration::from_secs(1));
        let busy = well_behaved(addr, admin, &path, RUN - Duration::from_secs(2));
        eprintln!(
            "attacked run: {} samples, errors {:?}",
            busy.echo.len(),
            busy.errors
        );
        (busy, attack.join().expect("attack threads"))
    });
    let during = server.total_stats();
    // A slow admin request is either timed out or, once the connection cap
    // is reached, evicted to make room: both are the budget at work.
    let admin_timeouts = scraped(admin, "wsgate_admin_timeouts_total")
        + scraped(admin, "wsgate_admin_evicted_total");
    wait_all_released(&server, "every hostile connection released");
    assert_workers_alive(&server);
    let mut after = rss_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    while after > baseline + RSS_SLACK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = rss_bytes();
    }

    let (qe, qp, be, bp) = (
        median(&quiet.echo),
        median(&quiet.publish),
        median(&busy.echo),
        median(&busy.publish),
    );
    eprintln!(
        "pub/sub soak: {} hostile connects; well-behaved: {} + {} samples, echo median {qe:?} quiet vs \
         {be:?} attacked, publish median {qp:?} vs {bp:?}; refused broadcasts {}, refreshes {}, \
         subscribes {}, reassembly {}, admin timeouts {admin_timeouts}; RSS baseline {:.1} MiB, after {:.1} MiB",
        tally.connects.load(Relaxed),
        busy.echo.len(),
        busy.publish.len(),
        during.broadcasts_refused,
        during.refreshes_refused,
        during.subscribes_refused,
        during.reassembly_refused,
        mib(baseline),
        mib(after),
    );
    assert!(quiet.errors.is_empty(), "quiet run: {:?}", quiet.errors);
    assert!(
        busy.errors.is_empty(),
        "well-behaved clients saw: {:?}",
        busy.errors
    );
    assert!(busy.echo.len() > 100, "too few samples under attack");
    // Twice the quiet median, plus slack for a machine shared with others.
    let slack = Duration::from_millis(3);
    assert!(be <= qe * 2 + slack, "echo median {qe:?} → {be:?}");
    assert!(bp <= qp * 2 + slack, "publish median {qp:?} → {bp:?}");
    // Every attack shape met its budget.
    assert!(during.broadcasts_refused > 0, "{during:?}");
    assert!(during.refreshes_refused > 0, "{during:?}");
    assert!(during.subscribes_refused > 0, "{during:?}");
    assert!(during.reassembly_refused > 0, "{during:?}");
    assert!(
        admin_timeouts > 0,
        "no slow admin request was timed out or evicted"
    );
    assert!(
        after <= baseline + RSS_SLACK,
        "RSS did not come back: baseline {:.1} MiB, after {:.1} MiB",
        mib(baseline),
        mib(after)
    );
}

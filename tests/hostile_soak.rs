//! A hostile-client soak: 200 connections from a few threads spend 20 s
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
    /// Connections per behaviour: `BEHAVIORS` order, then `Floods`.
    per_behavior: [AtomicU64; 8],
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

    fn open(&mut self, addr: SocketAddr, rng: &mut Rng, tally: &Tally, now: Instant) {
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
        let i = if self.flooder {
            BEHAVIORS.len()
        } else {
            rng.below(BEHAVIORS.len() as u64) as usize
        };
        tally.per_behavior[i].fetch_add(1, Relaxed);
        self.behavior = BEHAVIORS.get(i).copied().unwrap_or(Behavior::Floods);
        self.tcp = Some(tcp);
        self.out.clear();
        self.frames_left = 0;
        self.dribble = false;
        self.reads = true;
        self.give_up_at = now + rng.millis(1500, 4000);
        let upgrade = upgrade_request("/ws", SAMPLE_KEY).into_bytes();
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
        addr: SocketAddr,
        rng: &mut Rng,
        tally: &Tally,
        now: Instant,
        buf: &mut [u8],
    ) {
        if self.tcp.is_none() {
            if now >= self.reconnect_at {
                self.open(addr, rng, tally, now);
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

/// Runs `CONNECTIONS` hostile connections for `duration`, then drops them all.
fn hostile_load(addr: SocketAddr, duration: Duration, seed: u64) -> Tally {
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
                        slot.step(addr, &mut rng, tally, now, &mut buf);
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

    // Warm-up: the same load, briefly; then the baseline.
    hostile_load(addr, WARMUP, 0xC0FFEE);
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
        let tally = hostile_load(addr, SOAK, 0x5EED_50A4);
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

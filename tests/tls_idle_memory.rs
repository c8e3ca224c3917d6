//! Heap bytes an idle, established TLS connection keeps on the server, at
//! 10,000 connections (`WSGATE_TLS_IDLE_CONNS` overrides the count).
//!
//! A counting global allocator attributes every allocation made inside the
//! server layer's calls (`TlsConn::new`, `read_tls`, `write_plaintext`) to
//! the server; the client's work is not counted. The worker-owned buffers
//! (scratch, plaintext, output) are allocated before counting starts, as a
//! worker would own them once. Each client is dropped after its handshake
//! and one message each way, which leaves the server connection idle.
//!
//! Run with `--nocapture` to see the figures:
//! `cargo test --release --test tls_idle_memory -- --nocapture`

#[path = "support/tls.rs"]
mod tls;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use rustls::version::{TLS12, TLS13};
use rustls::ClientConnection;
use tls::Pki;
use wsgate::tls::{TlsConn, TlsContext, TlsScratch};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

/// While set, live allocations are recorded (address, size) so one
/// connection's leftovers can be listed. Only one thread allocates then.
static TRACK: AtomicBool = AtomicBool::new(false);
const SLOTS: usize = 4096;
static SLOT_PTR: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SLOT_SIZE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

fn track_alloc(ptr: *mut u8, size: usize) {
    if TRACK.load(Relaxed) {
        if let Some(i) = (0..SLOTS).find(|&i| SLOT_PTR[i].load(Relaxed) == 0) {
            SLOT_PTR[i].store(ptr as usize, Relaxed);
            SLOT_SIZE[i].store(size, Relaxed);
        }
    }
}

fn track_free(ptr: *mut u8) {
    if TRACK.load(Relaxed) {
        if let Some(i) = (0..SLOTS).find(|&i| SLOT_PTR[i].load(Relaxed) == ptr as usize) {
            SLOT_PTR[i].store(0, Relaxed);
        }
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_ALLOCS.fetch_add(1, Relaxed);
            track_alloc(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Relaxed);
        track_free(ptr);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            track_free(ptr);
            track_alloc(new, new_size);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap change caused by `f`, in bytes and allocations.
fn counted<T>(total: &mut (isize, isize), f: impl FnOnce() -> T) -> T {
    let (b0, a0) = (LIVE_BYTES.load(Relaxed), LIVE_ALLOCS.load(Relaxed));
    let out = f();
    total.0 += LIVE_BYTES.load(Relaxed) - b0;
    total.1 += LIVE_ALLOCS.load(Relaxed) - a0;
    out
}

/// Worker-owned buffers, allocated once.
struct Worker {
    scratch: TlsScratch,
    plain: Vec<u8>,
    out: Vec<u8>,
}

/// Handshake, one message each way, then the client goes away.
fn establish(
    ctx: &TlsContext,
    client_config: &std::sync::Arc<rustls::ClientConfig>,
    w: &mut Worker,
    server_heap: &mut (isize, isize),
) -> TlsConn {
    let mut client =
        ClientConnection::new(client_config.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut server = counted(server_heap, || {
        TlsConn::new(ctx.server_config().clone()).unwrap()
    });
    let mut wire = Vec::with_capacity(16 * 1024);
    let mut sent_ping = false;
    let mut got_pong = false;
    for _ in 0..32 {
        if !client.is_handshaking() && !sent_ping {
            client.writer().write_all(b"ping").unwrap();
            sent_ping = true;
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        w.plain.clear();
        w.out.clear();
        let outcome = counted(server_heap, || {
            server
                .read_tls(&wire, &mut w.scratch, &mut w.plain, &mut w.out)
                .unwrap()
        });
        if w.plain == b"ping" {
            counted(server_heap, || {
                server.write_plaintext(b"pong", &mut w.out).unwrap()
            });
        }
        let _ = outcome;
        let mut rest = &w.out[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut buf = [0u8; 16];
        if let Ok(4) = client.reader().read(&mut buf) {
            assert_eq!(&buf[..4], b"pong");
            got_pong = true;
        }
        if got_pong && !client.wants_write() {
            break;
        }
    }
    assert!(got_pong, "the exchange completed");
    assert!(!server.is_handshaking());
    assert_eq!(server.buffered_capacity(), 0, "idle: no ciphertext buffer");
    server
}

/// A client provider offering only `suite`.
fn only(suite: rustls::SupportedCipherSuite) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    provider
}

fn measure(
    label: &str,
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
    n: usize,
) -> f64 {
    let pki = Pki::new();
    let (ctx, _) = pki.server();
    let client_config = pki.client_config_with(&[version], only(suite));
    let mut w = Worker {
        scratch: TlsScratch::new(Default::default()),
        plain: Vec::with_capacity(64 * 1024),
        out: Vec::with_capacity(64 * 1024),
    };
    // The worker's slab of connections, allocated up front.
    let mut conns: Vec<TlsConn> = Vec::with_capacity(n);
    // Warm-up connection: one-time allocations (ticket keys, lazily built
    // tables) are not per connection.
    let mut warm = (0, 0);
    drop(establish(&ctx, &client_config, &mut w, &mut warm));

    let mut heap = (0isize, 0isize);
    for _ in 0..n {
        conns.push(establish(&ctx, &client_config, &mut w, &mut heap));
    }
    let per_conn = heap.0 as f64 / n as f64;
    let inline = std::mem::size_of::<TlsConn>();
    println!(
        "{label}: {n} idle TLS connections: server heap {} bytes = {per_conn:.0} B/conn in \
         {:.1} allocations/conn, plus {inline} B inline per slab slot (TlsConn) => {:.0} B/conn",
        heap.0,
        heap.1 as f64 / n as f64,
        per_conn + inline as f64,
    );

    // What one connection keeps, allocation by allocation.
    for slot in &SLOT_PTR {
        slot.store(0, Relaxed);
    }
    TRACK.store(true, Relaxed);
    let mut one = (0, 0);
    let conn = establish(&ctx, &client_config, &mut w, &mut one);
    TRACK.store(false, Relaxed);
    let mut sizes: Vec<usize> = (0..SLOTS)
        .filter(|&i| SLOT_PTR[i].load(Relaxed) != 0)
        .map(|i| SLOT_SIZE[i].load(Relaxed))
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    println!(
        "{label}: one idle connection's live server allocations (bytes, largest first): {sizes:?} \
         (sum {}; the client's are in this list too: only the server figure above is attributed)",
        sizes.iter().sum::<usize>()
    );
    drop(conn);
    drop(conns);
    per_conn + inline as f64
}

#[test]
fn idle_tls_connection_heap_at_10k() {
    let n: usize = std::env::var("WSGATE_TLS_IDLE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    use rustls::crypto::ring::cipher_suite as cs;
    // The headline figure at `n`; the other suites (same sizes: ring sizes
    // every AEAD key for AES-256-GCM) at a tenth of it to keep the test short.
    let results = [
        (
            "TLS 1.3 AES-128-GCM",
            &TLS13,
            cs::TLS13_AES_128_GCM_SHA256,
            n,
        ),
        (
            "TLS 1.3 CHACHA20-POLY1305",
            &TLS13,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            n / 10,
        ),
        (
            "TLS 1.2 ECDHE-ECDSA-AES-128-GCM",
            &TLS12,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            n / 10,
        ),
    ]
    .map(|(label, version, suite, count)| (label, measure(label, version, suite, count.max(1))));
    // The bound the figures are held to: rustls' per-connection state (two
    // AEAD key schedules, the TLS 1.3 traffic secrets, the state machine).
    // See bench/results/tls-idle-memory.md for the breakdown.
    for (label, bytes) in results {
        assert!(bytes < 4096.0, "{label}: {bytes:.0} B per idle connection");
    }
}

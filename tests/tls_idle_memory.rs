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
//! glibc's `mallinfo2` adds what C code allocates (aws-lc's AEAD contexts)
//! and malloc's chunk overhead. Run with `--nocapture` to see the figures:
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0 cargo test --test tls_idle_memory -- --nocapture`

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

/// With `WSGATE_TLS_ALLOC_TRACE=1`: the tracked connection's server-side
/// allocations also record where they were made (a backtrace, trimmed to
/// the rustls / aws-lc-rs / wsgate frames), so the breakdown in
/// bench/results/tls-idle-memory.md names each allocation's owner.
static TRACE_SITES: AtomicBool = AtomicBool::new(false);
/// Set while a server-layer call runs (see [`counted`]).
static IN_SERVER: AtomicBool = AtomicBool::new(false);
static SITES: std::sync::Mutex<Vec<(usize, usize, String)>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    /// Set while the allocator records a site, so its own allocations are
    /// not recorded (and the lock is not taken twice).
    static IN_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The frames of a backtrace that say who allocated: the first few
/// rustls, aws-lc-rs and wsgate functions.
fn owner_frames(bt: &std::backtrace::Backtrace) -> String {
    let text = bt.to_string();
    let frames: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().split_once(": ").map(|(_, f)| f))
        .filter(|f| {
            (f.starts_with("rustls::")
                || f.starts_with("aws_lc_rs::")
                || f.starts_with("ring::")
                || f.starts_with("<rustls")
                || f.starts_with("<aws_lc_rs")
                || f.starts_with("wsgate::"))
                && !f.contains("alloc::")
        })
        .take(4)
        .collect();
    frames.join(" <- ")
}

fn record_site(ptr: *mut u8, size: usize) {
    if !(TRACE_SITES.load(Relaxed) && TRACK.load(Relaxed) && IN_SERVER.load(Relaxed)) {
        return;
    }
    IN_HOOK.with(|h| {
        if h.get() {
            return;
        }
        h.set(true);
        let bt = std::backtrace::Backtrace::force_capture();
        let owner = owner_frames(&bt);
        SITES.lock().unwrap().push((ptr as usize, size, owner));
        h.set(false);
    });
}

fn forget_site(ptr: *mut u8) {
    if !TRACE_SITES.load(Relaxed) {
        return;
    }
    IN_HOOK.with(|h| {
        if h.get() {
            return;
        }
        h.set(true);
        SITES.lock().unwrap().retain(|s| s.0 != ptr as usize);
        h.set(false);
    });
}

fn track_alloc(ptr: *mut u8, size: usize) {
    record_site(ptr, size);
    if TRACK.load(Relaxed) {
        if let Some(i) = (0..SLOTS).find(|&i| SLOT_PTR[i].load(Relaxed) == 0) {
            SLOT_PTR[i].store(ptr as usize, Relaxed);
            SLOT_SIZE[i].store(size, Relaxed);
        }
    }
}

fn track_free(ptr: *mut u8) {
    forget_site(ptr);
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

/// Bytes glibc malloc has handed out and not got back, all arenas. This
/// sees what C code allocates too (aws-lc allocates its AEAD contexts with
/// its own `malloc` calls, which a Rust global allocator never sees), and
/// malloc's per-chunk overhead and rounding.
///
/// glibc's per-thread cache keeps freed chunks counted as in use, so run
/// with `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` for an exact figure.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_in_use() -> isize {
    // SAFETY: mallinfo2 only reads allocator statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as isize
}

/// Other C libraries: no figure (the Rust-side count still applies).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_in_use() -> isize {
    0
}

/// Heap change caused by `f`: (Rust-requested bytes, allocations, malloc
/// bytes in use including C allocations and chunk overhead).
fn counted<T>(total: &mut (isize, isize, isize), f: impl FnOnce() -> T) -> T {
    let (b0, a0, m0) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_ALLOCS.load(Relaxed),
        malloc_in_use(),
    );
    IN_SERVER.store(true, Relaxed);
    let out = f();
    IN_SERVER.store(false, Relaxed);
    total.0 += LIVE_BYTES.load(Relaxed) - b0;
    total.1 += LIVE_ALLOCS.load(Relaxed) - a0;
    total.2 += malloc_in_use() - m0;
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
    server_heap: &mut (isize, isize, isize),
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

fn measure_with(
    label: &str,
    pki: &Pki,
    ctx: &TlsContext,
    version: &'static rustls::SupportedProtocolVersion,
    suite: rustls::SupportedCipherSuite,
    n: usize,
) -> f64 {
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
    let mut warm = (0, 0, 0);
    drop(establish(ctx, &client_config, &mut w, &mut warm));

    let mut heap = (0isize, 0isize, 0isize);
    for _ in 0..n {
        conns.push(establish(ctx, &client_config, &mut w, &mut heap));
    }
    let per_conn = heap.0 as f64 / n as f64;
    let malloc_per_conn = heap.2 as f64 / n as f64;
    let inline = std::mem::size_of::<TlsConn>();
    println!(
        "{label}: {n} idle TLS connections: Rust heap {per_conn:.0} B/conn in {:.1} \
         allocations; malloc in use (incl. C allocations, chunk overhead) {malloc_per_conn:.0} \
         B/conn; plus {inline} B inline per slab slot (TlsConn) => {:.0} B/conn",
        heap.1 as f64 / n as f64,
        malloc_per_conn + inline as f64,
    );

    // What one connection keeps, allocation by allocation.
    for slot in &SLOT_PTR {
        slot.store(0, Relaxed);
    }
    TRACK.store(true, Relaxed);
    let mut one = (0, 0, 0);
    let conn = establish(ctx, &client_config, &mut w, &mut one);
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
    if TRACE_SITES.load(Relaxed) {
        let sites = std::mem::take(&mut *SITES.lock().unwrap());
        println!("{label}: the idle server connection's allocations, by owner:");
        for (_, size, owner) in &sites {
            println!("  {size:>5} B  {owner}");
        }
    }
    drop(conn);
    drop(conns);
    malloc_per_conn.max(per_conn) + inline as f64
}

/// One figure: label, bytes per idle connection.
type Figure = (String, f64);

/// Idle cost per suite with the server on `provider` (the headline suite at
/// `n` connections, the others at a tenth: their sizes differ by a few bytes).
/// The server's TLS context under test: what `TlsContext::new` builds (the
/// server's own), or an explicit provider for the comparison.
enum Server {
    Default,
    With(
        rustls::crypto::CryptoProvider,
        std::sync::Arc<dyn rustls::server::ProducesTickets>,
    ),
}

fn suites(name: &str, server: Server, n: usize) -> Vec<Figure> {
    use rustls::crypto::ring::cipher_suite as cs;
    let pki = Pki::new();
    let leaf = pki.leaf();
    pki.install(&leaf);
    let settings = wsgate::tls::TlsSettings::new(pki.cert_path(), pki.key_path());
    let ctx = match server {
        Server::Default => TlsContext::new(settings),
        Server::With(provider, ticketer) => {
            TlsContext::with_provider(settings, std::sync::Arc::new(provider), ticketer)
        }
    }
    .unwrap();
    [
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
    .into_iter()
    .map(|(suite_name, version, suite, count)| {
        let label = format!("{name} {suite_name}");
        let bytes = measure_with(&label, &pki, &ctx, version, suite, count.max(1));
        (label, bytes)
    })
    .collect()
}

#[test]
fn idle_tls_connection_heap_at_10k() {
    let n: usize = std::env::var("WSGATE_TLS_IDLE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    TRACE_SITES.store(
        std::env::var_os("WSGATE_TLS_ALLOC_TRACE").is_some(),
        Relaxed,
    );
    // The server's own context first (aws-lc-rs with compact TLS 1.3
    // record keys and, after the handshake, its own TLS 1.3 record layer),
    // then stock aws-lc-rs and ring on rustls' record layer for the
    // comparison.
    let mut figures = suites("server (aws-lc-rs compact)", Server::Default, n);
    figures.extend(suites(
        "aws-lc-rs stock",
        Server::With(
            rustls::crypto::aws_lc_rs::default_provider(),
            rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        ),
        n / 10,
    ));
    figures.extend(suites(
        "ring",
        Server::With(
            rustls::crypto::ring::default_provider(),
            rustls::crypto::ring::Ticketer::new().unwrap(),
        ),
        n / 100,
    ));
    // The bounds the figures are held to (see
    // bench/results/tls-idle-memory.md for the breakdown). The server's
    // TLS 1.3 connections leave rustls after the handshake: raw record keys
    // (~64 B each way) and the two traffic secrets in our own record layer
    // (~400 B in all; 2 KiB is the target, and a connection left on rustls
    // would cost ~2.4 KiB). Everything else is rustls' connection with
    // expanded keys.
    for (label, bytes) in figures {
        let bound = if label.starts_with("server") && label.contains("TLS 1.3") {
            1024.0
        } else {
            4096.0
        };
        assert!(
            bytes < bound,
            "{label}: {bytes:.0} B per idle connection (bound {bound} B)"
        );
    }
}

//! `--max-handshakes-per-sec auto` (the default) against real sockets: a
//! storm of upgrades faster than the worker can serve gets fast 503s with a
//! jittered Retry-After while an established connection keeps being
//! served; a modest rate is never shed; the measured limit shows on
//! /metrics.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The storm takes every core it can get: the other tests of this file wait
/// for it rather than measure a machine it saturates.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sums the samples of one metric family on /metrics.
fn metric(server: &wsgate::ServerHandle, name: &str) -> f64 {
    let (_, body) = http(server.admin_addr().unwrap(), "GET", "/metrics", "");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// What one upgrade attempt of the storm got.
#[derive(Debug, Default)]
struct Tally {
    upgraded: usize,
    /// 503s, each with its Retry-After.
    shed: usize,
    retry_after: std::collections::BTreeSet<u32>,
    /// Reset or closed before an answer could be read (a shed connection
    /// whose request arrived after the server had answered and closed).
    reset: usize,
    other: Vec<String>,
}

/// Reads one response head (up to the blank line), or what came before the
/// connection ended.
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn classify(head: &str, tally: &mut Tally) {
    match head.get(9..12) {
        Some("101") => tally.upgraded += 1,
        Some("503") => {
            let retry = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("retry-after")
                    .then(|| v.trim().parse::<u32>().expect("Retry-After is seconds"))
            });
            let secs = retry.unwrap_or_else(|| panic!("503 without Retry-After: {head:?}"));
            assert!((1..=5).contains(&secs), "Retry-After {secs}");
            tally.retry_after.insert(secs);
            tally.shed += 1;
        }
        None if head.is_empty() => tally.reset += 1,
        _ => tally
            .other
            .push(head.lines().next().unwrap_or("").to_string()),
    }
}

/// One storm thread: batches of upgrade requests sent back to back (each
/// connection writes its request at once), then their answers read, until
/// `stop`. A batch keeps the listener's backlog full without overflowing
/// it (an overflow would stall `connect` for a SYN retransmit).
fn storm(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    attempts: Arc<AtomicUsize>,
) {
    let request = upgrade_request("/ws", SAMPLE_KEY);
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::with_capacity(32);
        for _ in 0..32 {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(request.as_bytes());
            batch.push(s);
        }
        attempts.fetch_add(batch.len(), Ordering::Relaxed);
        let mut local = Tally::default();
        for mut s in batch {
            classify(&read_head(&mut s), &mut local);
        }
        let mut t = tally.lock().unwrap();
        t.upgraded += local.upgraded;
        t.shed += local.shed;
        t.reset += local.reset;
        t.retry_after.extend(local.retry_after);
        t.other.extend(local.other);
    }
}

/// Round trips of a ping on an established connection.
fn ping_rtt(ws: &mut Ws) -> Duration {
    let t = Instant::now();
    send(ws, r#"{"type":"ping"}"#);
    assert_eq!(recv(ws)["type"], "pong");
    t.elapsed()
}

#[test]
fn by_default_a_handshake_storm_is_shed_with_503_and_open_connections_are_served() {
    let _serial = serial();
    let mut cfg = wsgate::Config::for_tests();
    // One worker takes the whole storm. The limit is left at its default.
    cfg.workers = Some(1);
    assert_eq!(
        cfg.max_handshakes_per_sec,
        wsgate::config::HandshakeLimit::Auto
    );
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    assert_eq!(
        metric(&server, "wsgate_handshake_rate_limit"),
        0.0,
        "no limit before a measurement"
    );
    let mut established = connect(addr);
    ping_rtt(&mut established);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (stop, tally, attempts) = (stop.clone(), tally.clone(), attempts.clone());
            std::thread::spawn(move || storm(addr, stop, tally, attempts))
        })
        .collect();
    // Storm until a good number of upgrades were shed (or give up after a
    // while, and fail below), pinging the established connection meanwhile.
    let t0 = Instant::now();
    let mut rtts = Vec::new();
    while t0.elapsed() < Duration::from_secs(40) && tally.lock().unwrap().shed < 200 {
        rtts.push(ping_rtt(&mut established));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The storm goes on for a while after the first 503s: open clients are
    // still served then.
    let storm_on = Instant::now();
    while storm_on.elapsed() < Duration::from_secs(1) {
        rtts.push(ping_rtt(&mut established));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let limit = metric(&server, "wsgate_handshake_rate_limit");
    let cost = metric(&server, "wsgate_handshake_cost_nanoseconds");
    let counted = metric(&server, "wsgate_handshakes_shed_total");
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    let max = *rtts.last().unwrap();
    eprintln!(
        "storm: {} attempts in {elapsed:?}: {tally:?}; limit {limit}/s, cost {cost} ns; \
         shed counted {counted}; ping p50 {p50:?} max {max:?} over {}",
        attempts.load(Ordering::Relaxed),
        rtts.len()
    );
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert!(
        tally.shed >= 200,
        "the storm was not shed: {tally:?} in {elapsed:?}"
    );
    assert!(tally.retry_after.len() > 1, "Retry-After is not jittered");
    // Most of the storm was still served: shedding takes the excess only.
    assert!(tally.upgraded >= 100, "{tally:?}");
    // Every 503 the clients saw (and those they could not read) is counted.
    assert!(counted as usize >= tally.shed, "{counted} < {}", tally.shed);
    assert!(
        counted as usize <= tally.shed + tally.reset,
        "{counted} > {tally:?}"
    );
    // The limit was measured, within the floor and ceiling.
    assert!((50.0..=100_000.0).contains(&limit), "{limit}");
    assert!(cost > 0.0);
    // The established connection was served all along, promptly.
    assert!(p50 < Duration::from_millis(250), "ping p50 {p50:?}");
    assert!(max < Duration::from_secs(2), "ping max {max:?}");
    assert!(ping_rtt(&mut established) < Duration::from_millis(500));
}

#[test]
fn by_default_a_modest_rate_of_handshakes_is_never_shed() {
    let _serial = serial();
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(1);
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    // 200 upgrades a second for 3 s, each one read to its 101.
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for i in 0..600u32 {
        let due = t0 + Duration::from_millis(5) * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade_request("/ws", SAMPLE_KEY).as_bytes())
            .unwrap();
        classify(&read_head(&mut s), &mut tally);
    }
    assert_eq!(tally.upgraded, 600, "{tally:?}");
    assert_eq!(metric(&server, "wsgate_handshakes_shed_total"), 0.0);
    // And auto did measure (this is not "no limit").
    let limit = metric(&server, "wsgate_handshake_rate_limit");
    assert!((50.0..=100_000.0).contains(&limit), "{limit}");
    assert!(metric(&server, "wsgate_handshake_cost_nanoseconds") > 0.0);
}

#[test]
fn a_fixed_limit_shows_from_the_start_and_off_shows_zero() {
    let _serial = serial();
    for (setting, shown) in [
        (wsgate::config::HandshakeLimit::PerSec(123), 123.0),
        (wsgate::config::HandshakeLimit::Off, 0.0),
    ] {
        let mut cfg = wsgate::Config::for_tests();
        cfg.workers = Some(2);
        cfg.max_handshakes_per_sec = setting;
        let server = wsgate::start(cfg).unwrap();
        // Per worker, so summed over the two.
        assert_eq!(metric(&server, "wsgate_handshake_rate_limit"), 2.0 * shown);
        // Off measures nothing.
        for _ in 0..40 {
            RawClient::upgraded(server.local_addr());
        }
        assert_eq!(metric(&server, "wsgate_handshake_cost_nanoseconds"), 0.0);
    }
}

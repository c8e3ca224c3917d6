//! Zero-loss reconnects over real sockets: topic history and resume (no gap,
//! no duplicate across the replay/live seam while several workers and the
//! admin API publish), `recovered:false` after a restart and after eviction,
//! drains spread over `--drain-spread` with a reconnect hint, and the fast
//! 503 + Retry-After of `--max-handshakes-per-sec`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

fn history_server(tweak: impl FnOnce(&mut wsgate::Config)) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(4);
    cfg.history_size = 100_000;
    tweak(&mut cfg);
    wsgate::start(cfg).expect("server starts")
}

/// Sends a subscribe (resuming after `since` = (offset, epoch) if given)
/// and returns the `subscribed` answer.
fn subscribe_since(ws: &mut Ws, topic: &str, since: Option<(u64, &str)>) -> Value {
    let mut cmd = json!({"type": "subscribe", "topic": topic});
    if let Some((offset, epoch)) = since {
        cmd["since"] = json!({"offset": offset, "epoch": epoch});
    }
    send(ws, &cmd.to_string());
    let v = recv(ws);
    assert_eq!(v["type"], "subscribed", "{v}");
    v
}

/// The next `message` of `topic`: (offset, epoch, payload).
fn next_message(ws: &mut Ws, topic: &str) -> (u64, String, Value) {
    let v = recv(ws);
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["topic"], topic, "{v}");
    let offset = v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset: {v}"));
    let epoch = v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch: {v}"));
    (offset, epoch.to_string(), v["payload"].clone())
}

/// Checks that `seen` is exactly offsets 1..=total in order, and that each
/// publishing connection's messages arrived in the order it sent them.
fn assert_complete(who: &str, seen: &[(u64, Value)], total: u64) {
    for (i, (offset, _)) in seen.iter().enumerate() {
        assert_eq!(
            *offset,
            i as u64 + 1,
            "{who}: message #{i} has offset {offset} (gap or duplicate; {} seen of {total})",
            seen.len()
        );
    }
    assert_eq!(seen.len() as u64, total, "{who}: messages seen");
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (offset, p) in seen {
        let from = p["p"].to_string();
        let i = p["i"].as_i64().unwrap();
        let prev = last.insert(from.clone(), i).unwrap_or(-1);
        assert!(
            i > prev,
            "{who}: publisher {from} out of order at offset {offset}"
        );
    }
}

#[test]
fn resume_has_no_gap_and_no_duplicate_at_the_seam_while_others_publish() {
    let server = history_server(|_| {});
    let addr = server.local_addr();
    let admin = server.admin_addr().unwrap();
    const PER_PUBLISHER: u64 = 1500;
    const HTTP_PUBLISHES: u64 = 100;
    let total = 2 * PER_PUBLISHER + HTTP_PUBLISHES;
    // Subscribers that stay: every one must see the same order.
    let mut steady: Vec<Ws> = (0..3).map(|_| connect(addr)).collect();
    for s in &mut steady {
        let v = subscribe_since(s, "h", None);
        assert_eq!(v["offset"], 0, "{v}");
        assert!(
            v["epoch"].is_string() && v.get("recovered").is_none(),
            "{v}"
        );
    }
    // The resuming client's first connection subscribes before anything is
    // published (a plain subscribe starts live).
    let mut first = connect(addr);
    let v = subscribe_since(&mut first, "h", None);
    let first_epoch = v["epoch"].as_str().unwrap().to_string();
    let publishing = Arc::new(AtomicBool::new(true));
    // Two publishers with several connections each, so publishes come from
    // several workers at once (SO_REUSEPORT spreads the connections), plus
    // the admin API.
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            std::thread::spawn(move || {
                let mut conns: Vec<Ws> = (0..4).map(|_| connect(addr)).collect();
                for i in 0..PER_PUBLISHER {
                    let c = i as usize % 4;
                    let payload = json!({"p": format!("{p}/{c}"), "i": i}).to_string();
                    publish(&mut conns[c], "h", &payload);
                    if i % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // A ping round trip on each: everything sent before it was read.
                for c in &mut conns {
                    send(c, r#"{"type":"ping"}"#);
                    assert_eq!(recv(c)["type"], "pong");
                }
            })
        })
        .collect();
    let http_publisher = std::thread::spawn(move || {
        for i in 0..HTTP_PUBLISHES {
            let body = json!({"p": "http", "i": i}).to_string();
            let (status, _) = http(admin, "POST", "/publish?topic=h", &body);
            assert_eq!(status, 200);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // The resuming client: reads a few messages, drops the connection, and
    // resumes from the last offset it saw, again and again while the others
    // publish.
    let done = publishing.clone();
    let resumer = std::thread::spawn(move || {
        let mut seen: Vec<(u64, Value)> = Vec::new();
        let epoch = Some(first_epoch);
        let mut resumes_while_publishing = 0;
        let mut round = 0u64;
        let mut next = Some(first);
        while seen.len() < total as usize {
            let mut ws = match next.take() {
                Some(ws) => ws,
                None => {
                    let mut ws = connect(addr);
                    let last = seen.last().map_or(0, |(o, _)| *o);
                    if done.load(Ordering::Acquire) {
                        resumes_while_publishing += 1;
                    }
                    let e = epoch.as_deref().unwrap();
                    let v = subscribe_since(&mut ws, "h", Some((last, e)));
                    assert_eq!(v["recovered"], true, "{v}");
                    assert_eq!(v["epoch"], e, "{v}");
                    assert!(v["offset"].as_u64().unwrap() >= last, "{v} after {last}");
                    ws
                }
            };
            // A different number each round, so seams fall anywhere.
            round += 1;
            let want = 5 + (round * 37) % 90;
            for _ in 0..want {
                if seen.len() >= total as usize {
                    break;
                }
                let (offset, e, payload) = next_message(&mut ws, "h");
                assert_eq!(Some(&e), epoch.as_ref());
                seen.push((offset, payload));
            }
        }
        (seen, resumes_while_publishing)
    });
    for p in publishers {
        p.join().unwrap();
    }
    http_publisher.join().unwrap();
    publishing.store(false, Ordering::Release);
    for (i, s) in steady.iter_mut().enumerate() {
        let got: Vec<(u64, Value)> = (0..total)
            .map(|_| {
                let (o, _, p) = next_message(s, "h");
                (o, p)
            })
            .collect();
        assert_complete(&format!("steady subscriber {i}"), &got, total);
    }
    let (seen, resumes) = resumer.join().unwrap();
    assert_complete("resuming client", &seen, total);
    assert!(resumes >= 5, "only {resumes} resumes while publishing");
    assert_eq!(server.inbox_full_drops(), 0);
}

#[test]
fn a_plain_subscribe_starts_live_after_the_offset_it_was_told() {
    let server = history_server(|c| c.history_size = 3);
    let addr = server.local_addr();
    let mut publisher = connect(addr);
    let mut first = connect(addr);
    subscribe_since(&mut first, "t", None);
    for i in 0..5 {
        publish(&mut publisher, "t", &i.to_string());
    }
    for i in 0..5 {
        assert_eq!(next_message(&mut first, "t").0, i + 1);
    }
    let mut late = connect(addr);
    let v = subscribe_since(&mut late, "t", None);
    assert_eq!(v["offset"], 5);
    publish(&mut publisher, "t", "5");
    assert_eq!(next_message(&mut late, "t").0, 6, "no replay without since");
    // Offset 1 fell out of a 3-message history (3, 4, 5, 6 kept: 4..6).
    let epoch = v["epoch"].as_str().unwrap();
    let mut gone = connect(addr);
    let v = subscribe_since(&mut gone, "t", Some((1, epoch)));
    assert_eq!(v["recovered"], false, "{v}");
    assert_eq!(v["offset"], 6);
    // ... and no replay: the next message is live.
    publish(&mut publisher, "t", "6");
    assert_eq!(next_message(&mut gone, "t").0, 7);
    let mut kept = connect(addr);
    let v = subscribe_since(&mut kept, "t", Some((4, epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(next_message(&mut kept, "t").0, 5);
    assert_eq!(next_message(&mut kept, "t").0, 6);
    assert_eq!(next_message(&mut kept, "t").0, 7);
}

#[test]
fn topics_without_history_carry_no_position_and_resume_is_unrecovered() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    let server = wsgate::start(cfg).unwrap();
    let mut sub = connect(server.local_addr());
    let v = subscribe_since(&mut sub, "plain", Some((3, "x")));
    assert_eq!(
        v,
        json!({"type":"subscribed","topic":"plain","recovered":false})
    );
    let mut publisher = connect(server.local_addr());
    publish(&mut publisher, "plain", "1");
    assert_eq!(
        recv(&mut sub),
        json!({"type":"message","topic":"plain","payload":1})
    );
}

#[test]
fn a_restart_changes_the_epoch_so_resume_is_unrecovered() {
    let port = free_port();
    let args = ["--history-size", "10", "--workers", "2"];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let first = Proc::wsgate(port, &args, &[]);
    let mut sub = connect(addr);
    subscribe_since(&mut sub, "r", None);
    let mut publisher = connect(addr);
    publish(&mut publisher, "r", "1");
    let (offset, epoch, _) = next_message(&mut sub, "r");
    assert_eq!(offset, 1);
    drop(first);
    let _second = Proc::wsgate(port, &args, &[]);
    let mut again = connect(addr);
    let v = subscribe_since(&mut again, "r", Some((offset, &epoch)));
    assert_eq!(v["recovered"], false, "{v}");
    assert_ne!(v["epoch"], epoch.as_str());
    assert_eq!(v["offset"], 0);
}

#[test]
fn eviction_under_the_process_cap_changes_the_epoch() {
    let server = history_server(|c| c.history_max_bytes = 16 * 1024);
    let addr = server.local_addr();
    let admin = server.admin_addr().unwrap();
    let mut sub = connect(addr);
    subscribe_since(&mut sub, "old", None);
    let mut publisher = connect(addr);
    publish(&mut publisher, "old", "1");
    let (offset, epoch, _) = next_message(&mut sub, "old");
    // Fill the cap with other topics' history: "old" is the least recently
    // used and loses its whole log.
    let filler = format!("\"{}\"", "x".repeat(400));
    for i in 0..100 {
        publish(&mut publisher, &format!("other{i}"), &filler);
    }
    send(&mut publisher, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut publisher)["type"], "pong");
    let mut resumer = connect(addr);
    let v = subscribe_since(&mut resumer, "old", Some((offset, &epoch)));
    assert_eq!(v["recovered"], false, "{v}");
    assert_ne!(v["epoch"], epoch.as_str());
    // The live subscriber carries on in the new epoch, from offset 1.
    publish(&mut publisher, "old", "2");
    let (o, e, _) = next_message(&mut sub, "old");
    assert_eq!((o, e.as_str()), (1, v["epoch"].as_str().unwrap()));
    let (_, body) = http(admin, "GET", "/metrics", "");
    let evictions: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_history_evictions_total "))
        .expect("eviction counter")
        .parse()
        .unwrap();
    assert!(evictions >= 1.0, "{evictions}");
    let bytes: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_history_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes <= 16.0 * 1024.0, "history over its cap: {bytes}");
}

/// Waits for each client's close frame on its own thread; returns (when it
/// arrived since `t0`, code, reason).
fn close_times(clients: Vec<RawClient>, t0: Instant) -> Vec<(Duration, u16, String)> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let got = got.clone();
            std::thread::spawn(move || match c.next_within(Duration::from_secs(8)) {
                Got::Frame(wsgate::protocol::OpCode::Close, p) => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    let reason = String::from_utf8(p[2..].to_vec()).unwrap();
                    got.lock().unwrap().push((t0.elapsed(), code, reason));
                }
                other => panic!("expected a close frame, got {other:?}"),
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(got).unwrap().into_inner().unwrap()
}

fn assert_spread(closes: &[(Duration, u16, String)], spread: Duration) {
    for (_, code, reason) in closes {
        assert_eq!(*code, 1001);
        let v: Value = serde_json::from_str(reason).expect("reason is JSON");
        let ms = v["reconnect_in_ms"].as_u64().expect("reconnect_in_ms");
        assert!(ms <= spread.as_millis() as u64, "{ms}");
    }
    let first = closes.iter().map(|c| c.0).min().unwrap();
    let last = closes.iter().map(|c| c.0).max().unwrap();
    // Spread over the window, not all at once (and not far past it).
    assert!(
        last - first >= spread / 2,
        "closes within {:?}",
        last - first
    );
    assert!(
        last <= spread + Duration::from_millis(800),
        "last close at {last:?}"
    );
    let in_first_half = closes.iter().filter(|c| c.0 < first + spread / 2).count();
    assert!(
        in_first_half < closes.len(),
        "every close came in the first half"
    );
}

#[test]
fn admin_drain_is_unready_at_once_and_spreads_the_closes() {
    let spread = Duration::from_secs(1);
    let server = history_server(|c| c.drain_spread = spread);
    let admin = server.admin_addr().unwrap();
    let clients: Vec<RawClient> = (0..30)
        .map(|_| RawClient::upgraded(server.local_addr()))
        .collect();
    assert_eq!(http(admin, "GET", "/readyz", "").0, 200);
    let t0 = Instant::now();
    let (status, body) = http(admin, "POST", "/drain", "");
    assert_eq!((status, body.as_str()), (202, r#"{"status":"draining"}"#));
    assert_eq!(http(admin, "GET", "/readyz", "").0, 503);
    let closes = close_times(clients, t0);
    assert_eq!(closes.len(), 30);
    assert_spread(&closes, spread);
}

#[test]
fn sigterm_spreads_the_closes_and_the_process_exits() {
    let port = free_port();
    let mut p = Proc::wsgate(port, &["--drain-spread", "1s", "--workers", "2"], &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let clients: Vec<RawClient> = (0..20).map(|_| RawClient::upgraded(addr)).collect();
    let t0 = Instant::now();
    p.signal(libc::SIGTERM);
    let closes = close_times(clients, t0);
    assert_spread(&closes, Duration::from_secs(1));
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

/// One upgrade attempt: the status and the Retry-After header, or None when
/// the connection was reset before an answer could be read.
fn try_upgrade(addr: SocketAddr) -> Option<(u16, Option<String>)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(upgrade_request("/ws", SAMPLE_KEY).as_bytes());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head.get(9..12)?.parse().ok()?;
    let retry = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_string())
    });
    Some((status, retry))
}

#[test]
fn a_handshake_storm_gets_fast_503s_with_retry_after_and_open_clients_carry_on() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(1);
    cfg.max_handshakes_per_sec = wsgate::config::HandshakeLimit::PerSec(10);
    let server = wsgate::start(cfg).unwrap();
    let addr = server.local_addr();
    let mut established = connect(addr);
    let t0 = Instant::now();
    let mut upgraded = Vec::new();
    let (mut shed, mut reset) = (0, 0);
    let mut retry_values = std::collections::BTreeSet::new();
    for _ in 0..150 {
        match try_upgrade(addr) {
            Some((101, _)) => upgraded.push(()),
            Some((503, retry)) => {
                shed += 1;
                let secs: u32 = retry.expect("503 has Retry-After").parse().unwrap();
                assert!((1..=5).contains(&secs), "{secs}");
                retry_values.insert(secs);
            }
            Some((other, _)) => panic!("unexpected status {other}"),
            None => reset += 1,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // A burst of 2 × 10 (one taken by `established`), then 10 a second.
    let allowed = 20.0 + 10.0 * elapsed + 1.0;
    assert!(
        (upgraded.len() as f64) <= allowed,
        "{} upgraded in {elapsed:.2}s",
        upgraded.len()
    );
    assert!(shed >= 100, "only {shed} answered 503 ({reset} reset)");
    assert!(
        retry_values.len() > 1,
        "Retry-After is not jittered: {retry_values:?}"
    );
    // The established connection is served as before.
    let t = Instant::now();
    send(&mut established, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut established)["type"], "pong");
    assert!(t.elapsed() < Duration::from_millis(500));
    let (_, body) = http(server.admin_addr().unwrap(), "GET", "/metrics", "");
    let counted: f64 = body
        .lines()
        .filter_map(|l| l.strip_prefix("wsgate_handshakes_shed_total"))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(counted as usize, shed + reset);
}

#[test]
fn post_drain_stops_the_binary_like_sigterm() {
    let port = free_port();
    let admin_port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .args([
            "--workers",
            "2",
            "--drain-spread",
            "300ms",
            "--log-level",
            "warn",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut p = Proc(cmd.spawn().expect("spawn wsgate"));
    p.wait_listening(port, Duration::from_secs(10));
    p.wait_listening(admin_port, Duration::from_secs(10));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut c = RawClient::upgraded(addr);
    assert_eq!(http(admin, "POST", "/drain", "").0, 202);
    assert_eq!(http(admin, "GET", "/readyz", "").0, 503);
    assert_eq!(c.close_code(), 1001);
    drop(c);
    assert!(p.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn history_ttl_drops_old_messages_from_the_replay() {
    let server = history_server(|c| c.history_ttl = Some(Duration::from_millis(300)));
    let addr = server.local_addr();
    let mut publisher = connect(addr);
    let mut sub = connect(addr);
    let epoch = subscribe_since(&mut sub, "ttl", None)["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    publish(&mut publisher, "ttl", "1");
    publish(&mut publisher, "ttl", "2");
    assert_eq!(next_message(&mut sub, "ttl").0, 1);
    assert_eq!(next_message(&mut sub, "ttl").0, 2);
    std::thread::sleep(Duration::from_millis(500));
    publish(&mut publisher, "ttl", "3");
    assert_eq!(next_message(&mut sub, "ttl").0, 3);
    // 1 and 2 are past the TTL: resuming after 0 cannot be served...
    let mut late = connect(addr);
    let v = subscribe_since(&mut late, "ttl", Some((0, &epoch)));
    assert_eq!(
        (v["recovered"].clone(), v["offset"].clone()),
        (json!(false), json!(3))
    );
    // ... resuming after 2 can.
    let mut resumer = connect(addr);
    let v = subscribe_since(&mut resumer, "ttl", Some((2, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(next_message(&mut resumer, "ttl").0, 3);
}

#[test]
fn history_topic_rules_bound_matching_topics_over_sockets() {
    use wsgate::pubsub::history::TopicRule;
    let server = history_server(|c| {
        c.history_size = 100;
        c.history_topics = vec![
            TopicRule {
                pattern: "chat.*".into(),
                size: 2,
                ttl: None,
            },
            TopicRule {
                pattern: "quiet".into(),
                size: 0,
                ttl: None,
            },
        ];
    });
    let addr = server.local_addr();
    let mut watcher = connect(addr);
    let epochs: Vec<String> = ["chat.a", "other"]
        .iter()
        .map(|t| {
            subscribe_since(&mut watcher, t, None)["epoch"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut p = connect(addr);
    for t in ["chat.a", "other"] {
        for i in 1..=5 {
            publish(&mut p, t, &format!(r#"{{"n":{i}}}"#));
        }
    }
    for _ in 0..10 {
        next_any(&mut watcher);
    }
    // chat.* keeps 2: offsets 4 and 5.
    let mut c = connect(addr);
    let v = subscribe_since(&mut c, "chat.a", Some((2, &epochs[0])));
    assert_eq!(v["recovered"], false, "{v}");
    let v = subscribe_since(&mut connect(addr), "chat.a", Some((3, &epochs[0])));
    assert_eq!(v["recovered"], true, "{v}");
    // Other topics keep the default.
    let mut o = connect(addr);
    let v = subscribe_since(&mut o, "other", Some((2, &epochs[1])));
    assert_eq!(v["recovered"], true, "{v}");
    for i in 3..=5 {
        assert_eq!(next_message(&mut o, "other").0, i);
    }
    // A size-0 rule: no history, no positions.
    let mut q = connect(addr);
    let v = subscribe_since(&mut q, "quiet", None);
    assert!(v.get("epoch").is_none(), "{v}");
    publish(&mut p, "quiet", r#"{"n":1}"#);
    let v = recv(&mut q);
    assert!(v.get("offset").is_none(), "{v}");
}

fn next_any(ws: &mut Ws) -> Value {
    let v = recv(ws);
    assert_eq!(v["type"], "message", "{v}");
    v
}

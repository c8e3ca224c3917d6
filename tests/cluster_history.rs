//! Cluster history over real sockets and a real redis-server: positions
//! assigned in Redis, so a client that left one node resumes on another
//! with exactly what it missed; `recovered:false` with a new epoch after the
//! stream was lost; no gap or duplicate at the replay/live seam while
//! messages keep coming.

mod common;
#[path = "support/redis_cluster.rs"]
mod rc;

use std::time::Duration;

use serde_json::{json, Value};

use common::*;
use wsgate::config::AppKind;

fn node(redis_port: u16, prefix: &str) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = AppKind::PubSub;
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg.redis = Some(format!("redis://127.0.0.1:{redis_port}/"));
    cfg.cluster_prefix = prefix.to_string();
    cfg.history_size = 10_000;
    wsgate::start(cfg).expect("node starts")
}

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

/// The next message: (offset, epoch, payload).
fn next_message(ws: &mut Ws) -> (u64, String, Value) {
    let v = recv(ws);
    assert_eq!(v["type"], "message", "{v}");
    let offset = v["offset"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let epoch = v["epoch"].as_str().unwrap_or_else(|| panic!("{v}"));
    (offset, epoch.to_string(), v["payload"].clone())
}

/// The newest offset Redis assigned to `topic`.
fn redis_last(port: u16, prefix: &str, topic: &str) -> u64 {
    let (_, meta) = wsgate::cluster::history_stream::keys(prefix, topic);
    let r = redis_cmd(port, &["HGET", &meta, "l"]);
    r.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0)
}

#[test]
fn a_client_that_left_node_a_resumes_on_node_b_with_exactly_what_it_missed() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let (a, b) = (node(rport, "ch1"), node(rport, "ch1"));
    let mut sub = connect(a.local_addr());
    let first = subscribe_since(&mut sub, "room", None);
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(first["offset"], 0);
    let mut publisher = connect(a.local_addr());
    for i in 1..=5 {
        publish(&mut publisher, "room", &format!(r#"{{"n":{i}}}"#));
    }
    for i in 1..=5 {
        let (offset, e, payload) = next_message(&mut sub);
        assert_eq!(
            (offset, e.as_str(), payload["n"].as_u64()),
            (i, &*epoch, Some(i))
        );
    }
    drop(sub);
    for i in 6..=9 {
        publish(&mut publisher, "room", &format!(r#"{{"n":{i}}}"#));
    }
    eventually(Duration::from_secs(5), "publishes in Redis", || {
        redis_last(rport, "ch1", "room") == 9
    });
    let mut back = connect(b.local_addr());
    let v = subscribe_since(&mut back, "room", Some((5, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    assert_eq!(
        (v["epoch"].as_str(), v["offset"].as_u64()),
        (Some(&*epoch), Some(9))
    );
    for i in 6..=9 {
        let (offset, e, payload) = next_message(&mut back);
        assert_eq!(
            (offset, e.as_str(), payload["n"].as_u64()),
            (i, &*epoch, Some(i))
        );
    }
    // Then live, from either node, in the same numbering.
    let mut publisher_b = connect(b.local_addr());
    publish(&mut publisher_b, "room", r#"{"n":10}"#);
    publish(&mut publisher, "room", r#"{"n":11}"#);
    let mut got: Vec<u64> = (0..2).map(|_| next_message(&mut back).0).collect();
    got.sort_unstable();
    assert_eq!(got, [10, 11]);
    // The admin API's publishes take the same numbering (answered 202:
    // delivered when they come back from Redis).
    let admin = a.admin_addr().expect("admin listener");
    let (status, body) = http(admin, "POST", "/publish?topic=room", r#"{"n":12}"#);
    assert_eq!((status, body.as_str()), (202, r#"{"queued":true}"#));
    let (offset, e, payload) = next_message(&mut back);
    assert_eq!(
        (offset, e.as_str(), payload["n"].as_u64()),
        (12, &*epoch, Some(12))
    );
}

#[test]
fn losing_the_stream_gives_a_new_epoch_and_recovered_false() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let (a, b) = (node(rport, "ch2"), node(rport, "ch2"));
    let mut publisher = connect(a.local_addr());
    for i in 1..=3 {
        publish(&mut publisher, "lost", &format!(r#"{{"n":{i}}}"#));
    }
    eventually(Duration::from_secs(5), "publishes in Redis", || {
        redis_last(rport, "ch2", "lost") == 3
    });
    let mut sub = connect(b.local_addr());
    let v = subscribe_since(&mut sub, "lost", Some((1, "nonsense")));
    assert_eq!(v["recovered"], false, "{v}");
    let epoch = v["epoch"].as_str().unwrap().to_string();
    let v = subscribe_since(&mut connect(b.local_addr()), "lost", Some((1, &epoch)));
    assert_eq!(
        (v["recovered"].as_bool(), v["offset"].as_u64()),
        (Some(true), Some(3))
    );
    let (stream, _) = wsgate::cluster::history_stream::keys("ch2", "lost");
    assert!(redis_cmd(rport, &["DEL", &stream]).starts_with(":1"));
    // The next message starts a new history.
    publish(&mut publisher, "lost", r#"{"n":4}"#);
    let (offset, new_epoch, _) = next_message(&mut sub);
    assert_eq!(offset, 1);
    assert_ne!(new_epoch, epoch);
    let mut late = connect(a.local_addr());
    let v = subscribe_since(&mut late, "lost", Some((3, &epoch)));
    assert_eq!(v["recovered"], false, "{v}");
    assert_eq!(
        (v["epoch"].as_str(), v["offset"].as_u64()),
        (Some(&*new_epoch), Some(1))
    );
}

#[test]
fn resuming_on_another_node_while_publishing_goes_on_has_no_gap_or_duplicate() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let (a, b) = (node(rport, "ch3"), node(rport, "ch3"));
    const TOTAL: u64 = 3000;
    let mut sub = connect(a.local_addr());
    let epoch = subscribe_since(&mut sub, "busy", None)["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let addrs = [a.local_addr(), b.local_addr()];
    let publishers: Vec<_> = addrs
        .iter()
        .map(|addr| {
            let addr = *addr;
            std::thread::spawn(move || {
                let mut p = connect(addr);
                for i in 0..TOTAL / 2 {
                    publish(&mut p, "busy", &format!(r#"{{"n":{i}}}"#));
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            })
        })
        .collect();
    // Leave node A after some messages, come back on B while they flow.
    let mut last = 0;
    for _ in 0..200 {
        let (offset, _, _) = next_message(&mut sub);
        assert_eq!(offset, last + 1);
        last = offset;
    }
    drop(sub);
    std::thread::sleep(Duration::from_millis(20));
    let mut back = connect(b.local_addr());
    let v = subscribe_since(&mut back, "busy", Some((last, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    while last < TOTAL {
        let (offset, e, _) = next_message(&mut back);
        assert_eq!(e, epoch);
        assert_eq!(offset, last + 1, "gap or duplicate after {last}");
        last = offset;
    }
    for p in publishers {
        p.join().unwrap();
    }
    assert_eq!(redis_last(rport, "ch3", "busy"), TOTAL);
}

/// The same over a Redis Cluster (sharded pub/sub, 3 masters): each
/// topic's stream, position and channel live on the shard of its slot, so
/// the publish script can `SPUBLISH`; topics spread over every master.
#[test]
fn over_a_redis_cluster_a_client_resumes_on_another_node_for_topics_on_every_shard() {
    let cluster = rc::RedisCluster::start(3, 0);
    let node_rc = || {
        let mut cfg = wsgate::Config::for_tests();
        cfg.app = AppKind::PubSub;
        cfg.workers = Some(2);
        cfg.drain_timeout = Duration::from_secs(1);
        cfg.redis_cluster = Some(cluster.seeds());
        cfg.cluster_prefix = "chc".into();
        cfg.history_size = 1000;
        wsgate::start(cfg).expect("node starts")
    };
    let (a, b) = (node_rc(), node_rc());
    let topics: Vec<String> = (0..6).map(|i| format!("shard-topic-{i}")).collect();
    let owners: std::collections::HashSet<u16> = topics
        .iter()
        .map(|t| cluster.owner_of(&format!("chc:t:{t}")))
        .collect();
    assert!(owners.len() >= 2, "topics on one shard only: {owners:?}");
    let mut sub = connect(a.local_addr());
    let epochs: Vec<String> = topics
        .iter()
        .map(|t| {
            subscribe_since(&mut sub, t, None)["epoch"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut publisher = connect(a.local_addr());
    for t in &topics {
        for i in 1..=3 {
            publish(&mut publisher, t, &format!(r#"{{"n":{i}}}"#));
        }
    }
    let mut seen = std::collections::HashMap::<String, u64>::new();
    for _ in 0..topics.len() * 3 {
        let v = recv(&mut sub);
        assert_eq!(v["type"], "message", "{v}");
        let last = seen
            .entry(v["topic"].as_str().unwrap().to_string())
            .or_default();
        assert_eq!(v["offset"].as_u64(), Some(*last + 1), "{v}");
        *last += 1;
    }
    drop(sub);
    let mut publisher_b = connect(b.local_addr());
    for t in &topics {
        for i in 4..=6 {
            publish(&mut publisher_b, t, &format!(r#"{{"n":{i}}}"#));
        }
    }
    let mut back = connect(b.local_addr());
    for (t, epoch) in topics.iter().zip(&epochs) {
        // Wait until all of them are in Redis (the publisher runs apart).
        eventually(Duration::from_secs(10), "publishes in Redis", || {
            let (_, meta) = wsgate::cluster::history_stream::keys("chc", t);
            let port = cluster.owner_of(&format!("chc:t:{t}"));
            redis_cmd(port, &["HGET", &meta, "l"]).contains("\r\n6\r\n")
        });
        let v = subscribe_since(&mut back, t, Some((3, epoch)));
        assert_eq!(
            (v["recovered"].as_bool(), v["offset"].as_u64()),
            (Some(true), Some(6)),
            "{v}"
        );
        for i in 4..=6 {
            let (offset, e, payload) = next_message(&mut back);
            assert_eq!((offset, &e, payload["n"].as_u64()), (i, epoch, Some(i)));
        }
    }
}

/// Redis down: a resume is answered at once without a position
/// (`recovered:false`), a publish to a history topic is dropped (not even
/// delivered on its own node: it has no position); once Redis is back,
/// both work again.
#[test]
fn with_redis_down_resumes_answer_unrecovered_and_publishes_are_dropped() {
    let rport = free_port();
    let a = node(rport, "ch4");
    let mut sub = connect(a.local_addr());
    let v = subscribe_since(&mut sub, "down", Some((3, "old")));
    assert_eq!(v["recovered"], false, "{v}");
    assert!(v.get("epoch").is_none(), "{v}");
    let mut p = connect(a.local_addr());
    publish(&mut p, "down", r#"{"n":1}"#);
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = sub.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    assert!(
        sub.read().is_err(),
        "a message without a position was delivered"
    );
    let _redis = Proc::redis(rport);
    let mut fresh = connect(a.local_addr());
    let epoch = loop {
        let v = subscribe_since(&mut fresh, "up", None);
        if let Some(e) = v["epoch"].as_str() {
            break e.to_string();
        }
        // Reconnecting: answered without a position meanwhile.
        send(&mut fresh, r#"{"type":"unsubscribe","topic":"up"}"#);
        recv(&mut fresh);
        std::thread::sleep(Duration::from_millis(100));
    };
    eventually(Duration::from_secs(10), "publishes accepted again", || {
        publish(&mut p, "up", r#"{"n":2}"#);
        redis_last(rport, "ch4", "up") > 0
    });
    let (offset, e, _) = next_message(&mut fresh);
    assert_eq!((offset, e), (1, epoch));
}

/// Measurement, not a check (`cargo test --test cluster_history
/// measure -- --ignored --nocapture`): publishes/s from one client on node
/// A to one subscriber on node B, cluster history on vs off, same run; and
/// Redis memory per stored message.
#[test]
#[ignore]
fn measure_publish_rate_with_cluster_history_on_and_off() {
    const N: u64 = 20_000;
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let payload = format!(r#"{{"data":"{}"}}"#, "x".repeat(90));
    for (prefix, size) in [("off", 0), ("on", 10_000), ("off2", 0), ("on2", 10_000)] {
        let make = || {
            let mut cfg = wsgate::Config::for_tests();
            cfg.app = AppKind::PubSub;
            cfg.workers = Some(2);
            cfg.redis = Some(format!("redis://127.0.0.1:{rport}/"));
            cfg.cluster_prefix = prefix.into();
            cfg.history_size = size;
            wsgate::start(cfg).expect("node starts")
        };
        let (a, b) = (make(), make());
        let mut sub = connect(b.local_addr());
        subscribe_since(&mut sub, "m", None);
        let channel = format!("{prefix}:t:m");
        eventually(Duration::from_secs(5), "subscribed", || {
            redis_cmd(rport, &["PUBSUB", "NUMSUB", &channel]).ends_with(":1\r\n")
        });
        let mut p = connect(a.local_addr());
        let start = std::time::Instant::now();
        let reader = std::thread::spawn(move || {
            for _ in 0..N {
                let v = recv(&mut sub);
                assert_eq!(v["type"], "message");
            }
        });
        for _ in 0..N {
            publish(&mut p, "m", &payload);
        }
        reader.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        let (stream, _) = wsgate::cluster::history_stream::keys(prefix, "m");
        let mem = redis_cmd(rport, &["MEMORY", "USAGE", &stream]);
        println!(
            "history {}: {N} publishes of {} B in {secs:.2} s = {:.0}/s; stream key: {}",
            if size > 0 { "on " } else { "off" },
            payload.len(),
            N as f64 / secs,
            mem.trim()
        );
    }
}

/// A node whose clients all left a topic (so it unsubscribed in Redis) and
/// then gets a resume for it must not trust what it knew of its old
/// subscription: messages published while it subscribes again are
/// replayed or delivered, none skipped.
#[test]
fn resuming_on_a_node_that_had_left_the_topic_misses_nothing() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let (a, b) = (node(rport, "ch5"), node(rport, "ch5"));
    const TOTAL: u64 = 3000;
    let mut early = connect(b.local_addr());
    let epoch = subscribe_since(&mut early, "again", None)["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    wait_numsub(rport, "ch5:t:again", 1);
    let mut p = connect(a.local_addr());
    publish(&mut p, "again", r#"{"n":0}"#);
    assert_eq!(next_message(&mut early).0, 1);
    drop(early);
    wait_numsub(rport, "ch5:t:again", 0);
    let addr = a.local_addr();
    let publisher = std::thread::spawn(move || {
        let mut p = connect(addr);
        for i in 1..TOTAL {
            publish(&mut p, "again", &format!(r#"{{"n":{i}}}"#));
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    eventually(Duration::from_secs(5), "publishing under way", || {
        redis_last(rport, "ch5", "again") > 100
    });
    let mut back = connect(b.local_addr());
    let v = subscribe_since(&mut back, "again", Some((1, &epoch)));
    assert_eq!(v["recovered"], true, "{v}");
    let mut last = 1;
    while last < TOTAL {
        let (offset, _, _) = next_message(&mut back);
        assert_eq!(offset, last + 1, "gap or duplicate after {last}");
        last = offset;
    }
    publisher.join().unwrap();
}

fn wait_numsub(port: u16, channel: &str, n: usize) {
    let want = format!(":{n}\r\n");
    eventually(Duration::from_secs(5), "Redis subscriptions", || {
        redis_cmd(port, &["PUBSUB", "NUMSUB", channel]).ends_with(&want)
    });
}

//! Cluster over real processes: wsgate nodes sharing topics and broadcasts
//! through a real redis-server, and nginx in front of them.

mod common;

use std::os::unix::process::CommandExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use wsgate::config::AppKind;

fn node(redis_port: u16, prefix: &str) -> wsgate::ServerHandle {
    let mut cfg = wsgate::Config::for_tests();
    cfg.app = AppKind::PubSub;
    cfg.workers = Some(2);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg.redis = Some(format!("redis://127.0.0.1:{redis_port}/"));
    cfg.cluster_prefix = prefix.to_string();
    wsgate::start(cfg).expect("node starts")
}

/// Waits until `nodes` Redis subscribers hold the topic's channel.
fn wait_numsub(redis_port: u16, channel: &str, nodes: usize) {
    let want = format!(":{nodes}\r\n");
    eventually(Duration::from_secs(5), "Redis subscriptions", || {
        redis_cmd(redis_port, &["PUBSUB", "NUMSUB", channel]).ends_with(&want)
    });
}

fn seq_of(v: &serde_json::Value) -> u64 {
    v["payload"]["seq"].as_u64().expect("seq payload")
}

#[test]
fn publishes_reach_every_node_exactly_once_in_order() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let nodes: Vec<_> = (0..3).map(|_| node(rport, "c1")).collect();
    let mut subs: Vec<Ws> = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut s = connect(n.local_addr());
            subscribe(&mut s, "seq");
            subs.push(s);
        }
    }
    wait_numsub(rport, "c1:t:seq", 3);
    let mut publisher = connect(nodes[0].local_addr());
    const N: u64 = 300;
    for i in 0..N {
        publish(&mut publisher, "seq", &format!(r#"{{"seq":{i}}}"#));
    }
    publish(&mut publisher, "seq", r#"{"seq":"end"}"#);
    for s in subs.iter_mut() {
        for i in 0..N {
            let v = recv(s);
            assert_eq!(v["topic"], "seq");
            assert_eq!(seq_of(&v), i, "lost, duplicated or reordered");
        }
        // Nothing extra (a duplicate) before the end marker.
        assert_eq!(recv(s)["payload"]["seq"], "end");
    }
    let stats = nodes[0].cluster_stats().unwrap();
    assert_eq!(stats.dropped_out.load(Ordering::Relaxed), 0);
    assert_eq!(stats.published.load(Ordering::Relaxed), N + 1);
}

#[test]
fn broadcasts_and_http_publishes_cross_nodes() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let a = node(rport, "c2");
    let b = node(rport, "c2");
    let mut on_a = connect(a.local_addr());
    let mut on_b: Vec<Ws> = (0..3).map(|_| connect(b.local_addr())).collect();
    wait_numsub(rport, "c2:b", 2);
    send(&mut on_a, r#"{"type":"broadcast","payload":"hello"}"#);
    for c in on_b.iter_mut() {
        assert_eq!(recv_text(c), r#"{"type":"broadcast","payload":"hello"}"#);
    }
    assert_eq!(recv(&mut on_a)["type"], "broadcast");
    let result = recv(&mut on_a);
    assert_eq!(result["type"], "broadcastResult");
    // listenCount counts this node's connections (README: cluster semantics).
    assert_eq!(result["listenCount"], 1);

    // A backend publishes through node B's HTTP API; a subscriber on A gets it.
    subscribe(&mut on_a, "orders");
    wait_numsub(rport, "c2:t:orders", 1);
    let (status, body) = http(
        b.admin_addr().unwrap(),
        "POST",
        "/publish?topic=orders",
        r#"{"id":7}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        recv_text(&mut on_a),
        r#"{"type":"message","topic":"orders","payload":{"id":7}}"#
    );
    // The last local subscriber leaving unsubscribes the node in Redis.
    send(&mut on_a, r#"{"type":"unsubscribe","topic":"orders"}"#);
    recv(&mut on_a);
    wait_numsub(rport, "c2:t:orders", 0);
}

#[test]
fn redis_restart_loses_only_what_was_published_while_down() {
    let rport = free_port();
    let redis = Proc::redis(rport);
    let a = node(rport, "c3");
    let b = node(rport, "c3");
    let mut local = connect(a.local_addr());
    subscribe(&mut local, "s");
    let mut remote = connect(b.local_addr());
    subscribe(&mut remote, "s");
    wait_numsub(rport, "c3:t:s", 2);
    let mut publisher = connect(a.local_addr());
    let stats = a.cluster_stats().unwrap();
    let mut next = 0u64;
    let mut burst = |publisher: &mut Ws, local: &mut Ws, n: u64| {
        for _ in 0..n {
            publish(publisher, "s", &format!(r#"{{"seq":{next}}}"#));
            // Local delivery never depends on Redis.
            assert_eq!(seq_of(&recv(local)), next);
            next += 1;
        }
    };
    // Phase 1: Redis up. Node B gets all of it.
    burst(&mut publisher, &mut local, 100);
    for want in 0..100 {
        assert_eq!(seq_of(&recv(&mut remote)), want);
    }
    // Phase 2: Redis down. Local subscribers still get everything; what was
    // meant for node B is counted as dropped.
    kill(redis);
    burst(&mut publisher, &mut local, 100);
    assert_eq!(stats.dropped_out.load(Ordering::Relaxed), 100);
    // Phase 3: Redis back on the same port; both bridges reconnect and the
    // subscription is restored.
    let _redis = Proc::redis(rport);
    let b_stats = b.cluster_stats().unwrap();
    eventually(Duration::from_secs(10), "bridges reconnected", || {
        stats.publisher_connected.load(Ordering::Acquire)
            && b_stats.subscriber_connected.load(Ordering::Acquire)
    });
    wait_numsub(rport, "c3:t:s", 2);
    burst(&mut publisher, &mut local, 100);
    // Node B got phase 3, in order, and nothing of phase 2.
    for want in 200..300 {
        assert_eq!(seq_of(&recv(&mut remote)), want);
    }
    assert_eq!(stats.dropped_out.load(Ordering::Relaxed), 100);
    assert!(b_stats.reconnects.load(Ordering::Relaxed) >= 1);
}

/// The test copy of tuning/nginx.conf: same directives, test ports, small
/// limits, files in a scratch directory.
fn nginx_conf(listen: u16, upstreams: &[u16]) -> String {
    let prod = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/nginx.conf"))
        .expect("tuning/nginx.conf");
    let servers: String = upstreams
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    let mut out = String::new();
    let mut in_upstream = false;
    for line in prod.lines() {
        let t = line.trim_start();
        if t.starts_with("upstream wsgate") {
            in_upstream = true;
            out.push_str(line);
            out.push('\n');
            out.push_str(&servers);
            continue;
        }
        if in_upstream && t.starts_with("server ") {
            continue; // replaced by the test's nodes
        }
        if in_upstream && t.starts_with('}') {
            in_upstream = false;
        }
        let line = if t.starts_with("listen ") {
            format!("        listen 127.0.0.1:{listen};")
        } else if t.starts_with("worker_connections ") {
            "    worker_connections 4096;".to_string()
        } else if t.starts_with("worker_rlimit_nofile ") {
            "worker_rlimit_nofile 8192;".to_string()
        } else if t.starts_with("worker_processes ") {
            "worker_processes 1;".to_string()
        } else if t.starts_with("user ") {
            continue;
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Runs nginx in the foreground with `conf`, its files under `dir`, and
/// waits until it accepts on `port`.
fn nginx(dir: &std::path::Path, conf: &std::path::Path, port: u16) -> Proc {
    let mut p = Proc(
        std::process::Command::new("nginx")
            // Its own process group, so stopping it stops its workers too.
            .process_group(0)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .args([
                "-g",
                "daemon off; pid nginx.pid; error_log logs/error.log warn;",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx from apt (apt-get install nginx)"),
    );
    p.wait_listening(port, Duration::from_secs(10));
    p
}

/// Pids of live (not zombie) processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn stopping_nginx_leaves_no_worker_behind() {
    let tmp = temp_dir("nginx");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let port = free_port();
    let upstream = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(port, &[upstream])).unwrap();
    let master = nginx(dir, &conf, port);
    let master_pid = master.0.id();
    let mut workers = Vec::new();
    eventually(Duration::from_secs(5), "nginx workers started", || {
        workers = children_of(master_pid);
        !workers.is_empty()
    });
    drop(master);
    // A worker whose master was SIGKILLed lives on, reparented; one stopped
    // properly is gone within the grace period.
    eventually(Duration::from_secs(3), "nginx workers gone", || {
        workers.iter().all(|&w| !alive(w))
    });
}

#[test]
fn clients_through_nginx_land_on_both_nodes_and_publishes_reach_all() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let a = node(rport, "c4");
    let b = node(rport, "c4");
    let tmp = temp_dir("nginx");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(port, &[a.local_addr().port(), b.local_addr().port()]),
    )
    .unwrap();
    let _nginx = nginx(dir, &conf, port);
    // hash $remote_addr: spread clients over several loopback source
    // addresses so both nodes get some.
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for i in 0..24u8 {
        let src: std::net::SocketAddr = format!("127.0.0.{}:0", 2 + i).parse().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&src.into()).unwrap();
        sock.connect(&front.into()).unwrap();
        let tcp: std::net::TcpStream = sock.into();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (mut ws, _) = tungstenite::client::client(
            format!("ws://{front}/ws"),
            tungstenite::stream::MaybeTlsStream::Plain(tcp),
        )
        .expect("upgrade through nginx");
        subscribe(&mut ws, "news");
        clients.push(ws);
    }
    let on_a: u64 = a.stats().iter().map(|s| s.upgraded).sum();
    let on_b: u64 = b.stats().iter().map(|s| s.upgraded).sum();
    assert_eq!(on_a + on_b, 24);
    assert!(
        on_a > 0 && on_b > 0,
        "nginx sent all clients to one node: {on_a}/{on_b}"
    );
    wait_numsub(rport, "c4:t:news", 2);
    let (status, _) = http(
        a.admin_addr().unwrap(),
        "POST",
        "/publish?topic=news",
        "\"flash\"",
    );
    assert_eq!(status, 200);
    for c in clients.iter_mut() {
        assert_eq!(
            recv_text(c),
            r#"{"type":"message","topic":"news","payload":"flash"}"#
        );
    }
}

/// Tiny HTTP upstreams that answer with their index, to see where nginx
/// sends each client. They stop when the returned flag is set.
fn tag_servers(n: usize) -> (Vec<u16>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ports = Vec::new();
    for i in 0..n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        ports.push(l.local_addr().unwrap().port());
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf);
                        let body = i.to_string();
                        let _ = s.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
    }
    (ports, stop)
}

/// Starts nginx on the test copy of tuning/nginx.conf (hash line replaced by
/// `balance` when given) and asks it once from each source address; returns
/// the upstream index each client landed on.
fn landing(upstreams: &[u16], balance: Option<&str>, clients: &[std::net::Ipv4Addr]) -> Vec<u8> {
    use std::io::{Read, Write};
    let tmp = temp_dir("nginx-hash");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let port = free_port();
    let mut conf = nginx_conf(port, upstreams);
    if let Some(b) = balance {
        conf = conf.replace("hash $remote_addr consistent;", b);
    }
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let nginx = nginx(dir, &conf_path, port);
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let out = clients
        .iter()
        .map(|ip| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&std::net::SocketAddr::new((*ip).into(), 0).into())
                .unwrap();
            sock.connect(&front.into()).unwrap();
            let mut tcp: std::net::TcpStream = sock.into();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut resp = String::new();
            tcp.read_to_string(&mut resp).unwrap();
            let body = resp.rsplit("\r\n\r\n").next().unwrap();
            body.trim()
                .parse::<u8>()
                .unwrap_or_else(|_| panic!("{resp}"))
        })
        .collect();
    drop(nginx);
    out
}

#[test]
fn adding_a_third_node_behind_nginx_moves_about_a_third_of_clients() {
    let (ports, stop) = tag_servers(3);
    // 600 client addresses over 3 /24 blocks.
    let clients: Vec<std::net::Ipv4Addr> = (1..=3u8)
        .flat_map(|c| (1..=200u8).map(move |d| std::net::Ipv4Addr::new(127, 0, c, d)))
        .collect();
    let two = landing(&ports[..2], None, &clients);
    let three = landing(&ports, None, &clients);
    let moved = two.iter().zip(&three).filter(|(a, b)| a != b).count();
    // Consistent hashing: only clients the new node takes move, about 1/3.
    assert!(
        two.iter().zip(&three).all(|(a, b)| a == b || *b == 2),
        "a client moved between the old nodes"
    );
    let share = moved as f64 / clients.len() as f64;
    eprintln!(
        "hash consistent: {moved} of {} clients moved ({share:.2})",
        clients.len()
    );
    assert!((0.2..=0.45).contains(&share), "moved {share:.2}");
    // A plain modulo hash moves most of them (about 2/3).
    let two_mod = landing(&ports[..2], Some("hash $remote_addr;"), &clients);
    let three_mod = landing(&ports, Some("hash $remote_addr;"), &clients);
    let moved_mod = two_mod
        .iter()
        .zip(&three_mod)
        .filter(|(a, b)| a != b)
        .count();
    let share_mod = moved_mod as f64 / clients.len() as f64;
    eprintln!("hash (modulo): {moved_mod} moved ({share_mod:.2})");
    assert!(share_mod > 0.5, "modulo moved only {share_mod:.2}");
    // ip_hash keys on the first three octets: each /24 is one node.
    let ip = landing(&ports, Some("ip_hash;"), &clients);
    let per_block: std::collections::HashSet<(u8, u8)> = clients
        .iter()
        .zip(&ip)
        .map(|(c, n)| (c.octets()[2], *n))
        .collect();
    assert_eq!(
        per_block.len(),
        3,
        "ip_hash sends each /24 block to one node"
    );
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn presence_over_a_single_redis_sums_the_nodes() {
    let rport = free_port();
    let _redis = Proc::redis(rport);
    let a = node(rport, "c5");
    let b = node(rport, "c5");
    let mut subs = Vec::new();
    for (n, count) in [(&a, 2), (&b, 3)] {
        for _ in 0..count {
            let mut s = connect(n.local_addr());
            subscribe(&mut s, "lobby");
            subs.push(s);
        }
    }
    for n in [&a, &b] {
        let admin = n.admin_addr().unwrap();
        eventually(Duration::from_secs(5), "5 in the lobby", || {
            http(admin, "GET", "/presence?topic=lobby", "").1
                == r#"{"subscriptions":5,"topic":"lobby"}"#
        });
    }
    // A client's question is answered from Redis too (off the event loop,
    // back through its worker): the whole cluster's count.
    let mut asker = connect(a.local_addr());
    send(&mut asker, r#"{"type":"presence","topic":"lobby"}"#);
    let v = recv(&mut asker);
    assert_eq!(
        (v["type"].as_str(), v["subscriptions"].as_u64()),
        (Some("presence"), Some(5)),
        "{v}"
    );
    // Its connection stays usable, in order, afterwards.
    send(&mut asker, r#"{"type":"ping"}"#);
    assert_eq!(recv(&mut asker)["type"], "pong");
}

//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes`
//! processes on free 127.0.0.1 ports in a scratch directory, joined with
//! `redis-cli --cluster create`. Dropping it stops every process it started
//! (TERM, a grace period, then KILL) and removes the directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

/// Failover is quick in tests: a master silent this long is failed over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    dir: PathBuf,
    /// (port, process); None once killed by the test.
    pub nodes: Vec<(u16, Option<Child>)>,
    /// One cluster at a time per test binary: six redis-servers per test
    /// running side by side starve a small box (failover timing included).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        require_redis_7();
        let dir = std::env::temp_dir().join(format!(
            "wsgate-rcluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let mut cluster = RedisCluster {
            dir,
            nodes: Vec::new(),
            _turn: turn,
        };
        let total = masters * (1 + replicas);
        for _ in 0..total {
            cluster.spawn_ready_node();
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli from apt (redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(total, Duration::from_secs(60));
        cluster
    }

    /// Starts a node and waits until it answers PING. A free port can be
    /// taken between choosing and binding it (the ephemeral range is shared
    /// with every client socket of the test), and a bare connect can even
    /// succeed against nobody (a TCP self-connect): then the node is
    /// replaced on other ports rather than the cluster failing to form.
    fn spawn_ready_node(&mut self) {
        for _ in 0..5 {
            self.spawn_node();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let Some((port, Some(child))) = self.nodes.last_mut() else {
                    unreachable!("a node was just spawned")
                };
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break; // exited: its port was taken
                }
                if query(*port, &["PING"]).is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some((_, Some(mut child))) = self.nodes.pop() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        panic!("no redis-server came up after 5 tries (see the logs in the scratch dir)");
    }

    fn spawn_node(&mut self) {
        let port = free_port();
        // The bus port is set explicitly: port + 10000 may be out of range
        // for an ephemeral port.
        let bus = free_port();
        let child = Command::new("redis-server")
            .current_dir(&self.dir)
            .args(["--port", &port.to_string()])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // Let any replica take over, however recently it synced.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--logfile", &format!("redis-{port}.log")])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server from apt");
        self.nodes.push((port, Some(child)));
    }

    /// `redis://127.0.0.1:p,...` for every node.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn alive_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Waits until every live node reports cluster_state:ok, knows `known`
    /// nodes and agrees on a slot map where every slot's master is alive.
    pub fn wait_ok(&self, known: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.alive_ports().iter().all(|p| {
                query(*p, &["CLUSTER", "INFO"]).is_some_and(|v| {
                    let info = text(&v);
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{known}"))
                })
            }) && self
                .slot_owners()
                .is_some_and(|owners| owners.iter().all(|o| self.alive_ports().contains(o)));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "Redis Cluster not ok in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The master port of every slot, as the first live node sees it.
    pub fn slot_owners(&self) -> Option<Vec<u16>> {
        let port = *self.alive_ports().first()?;
        let Value::Array(ranges) = query(port, &["CLUSTER", "SLOTS"])? else {
            return None;
        };
        let mut owners = vec![0u16; 16_384];
        let mut covered = 0;
        for r in ranges {
            let Value::Array(items) = r else { return None };
            let (Value::Int(a), Value::Int(b), Value::Array(m)) = (&items[0], &items[1], &items[2])
            else {
                return None;
            };
            let Value::Int(p) = m[1] else { return None };
            for s in *a..=*b {
                owners[s as usize] = p as u16;
                covered += 1;
            }
        }
        (covered == 16_384).then_some(owners)
    }

    /// The master port owning `channel`'s slot.
    pub fn owner_of(&self, channel: &str) -> u16 {
        let slot = wsgate::cluster::slots::key_slot(channel.as_bytes());
        self.slot_owners().expect("complete slot map")[slot as usize]
    }

    /// Distinct master ports.
    pub fn masters(&self) -> Vec<u16> {
        let mut m = self.slot_owners().expect("complete slot map");
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Subscribers of shard channel `channel` at its owner.
    pub fn shard_numsub(&self, channel: &str) -> i64 {
        let port = self.owner_of(channel);
        match query(port, &["PUBSUB", "SHARDNUMSUB", channel]) {
            Some(Value::Array(v)) if v.len() == 2 => match v[1] {
                Value::Int(n) => n,
                _ => -1,
            },
            _ => -1,
        }
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        text(&query(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID"))
    }

    /// SIGKILLs the node on `port` (a crash, no goodbye).
    pub fn kill(&mut self, port: u16) {
        for (p, c) in &mut self.nodes {
            if *p == port {
                if let Some(mut child) = c.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Moves one slot from its master to the master on `to`, the way
    /// `redis-cli --cluster reshard` does for a slot without keys.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.slot_owners().expect("slot map")[slot as usize];
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        must(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        must(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        must(from, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        must(to, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        for p in self.alive_ports() {
            if p != from && p != to {
                let _ = query(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            }
        }
    }
}

/// How many `SPUBLISH` commands the node on `port` ran.
pub fn spublish_calls(port: u16) -> u64 {
    command_calls(port, "spublish")
}

/// How many times the node on `port` ran `command` (lowercase).
pub fn command_calls(port: u16, command: &str) -> u64 {
    let info = query(port, &["INFO", "commandstats"]).map_or_else(String::new, |v| text(&v));
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sharded pub/sub needs Redis 7: say so plainly rather than fail later.
fn require_redis_7() {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .expect("redis-server from apt");
    let text = String::from_utf8_lossy(&out.stdout);
    let major = text
        .split("v=")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        major >= 7,
        "these tests need redis-server 7 or later (sharded pub/sub); found: {text}"
    );
}

fn must(port: u16, args: &[&str]) {
    let v = query(port, args);
    assert!(
        matches!(v, Some(Value::Okay) | Some(Value::SimpleString(_))),
        "{args:?} on {port}: {v:?}"
    );
}

/// One command to one node; None if it cannot be reached or errs.
pub fn query(port: u16, args: &[&str]) -> Option<Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    con.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(&mut con).ok()? {
        Value::ServerError(_) => None,
        v => Some(v),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        _ => String::new(),
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|(_, c)| c.take())
            .collect();
        for c in &children {
            // SAFETY: kill(2) on children we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The bridge to a Redis Cluster, with sharded pub/sub (`SPUBLISH`,
//! `SSUBSCRIBE`; Redis ≥ 7): a publish reaches only the shard that owns its
//! channel's slot, and this node subscribes, shard by shard, to exactly the
//! channels it has local interest in.
//!
//! This module holds what the threads share (settings, the slot map, the
//! duplicate check) and starts them. Threads:
//! - the **publisher** (`publisher.rs`) numbers each message per channel (see
//!   [`crate::cluster::dedup`]), groups a batch by owning master and pipelines
//!   `SPUBLISH` to each. A command refused with `MOVED`/`TRYAGAIN`/
//!   `CLUSTERDOWN` or lost with its connection is parked and retried against
//!   a fresh slot map for up to `--cluster-publish-hold`, while other
//!   shards' traffic goes on; later messages for a parked slot wait behind
//!   it, so each channel keeps its order. Receivers drop the duplicates a
//!   retry can cause. What still fails is counted as dropped.
//! - the **supervisor** (`subscriber.rs`) owns the set of wanted channels
//!   (the broadcast channels, plus one per topic and per user with local
//!   subscribers), one
//!   subscriber connection per master, and where each channel is
//!   subscribed. It re-reads the slot map every [`TOPOLOGY_EVERY`] and at
//!   once on any sign of change, and moves subscriptions whose slot moved.
//! - one **reader** per shard connection (`subscriber.rs`) parses what Redis pushes, drops
//!   this node's own messages and duplicates, counts gaps as lost, and
//!   hands the rest to the workers. A server-side `sunsubscribe` (the slot
//!   migrated away) or a lost connection goes back to the supervisor, which
//!   subscribes those channels again where they now live.
//!
//! Workers never wait on any of this: they use the same non-blocking
//! [`crate::cluster::ClusterLink`] as with a single Redis.

mod publisher;
mod subscriber;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use super::bridge::{self, spawn, Bridge, BridgeParts};
use super::dedup::{Dedup, Verdict};
use super::presence;
use super::slots::{key_slot, Topology};
use super::wire::{self, Target};
use super::ClusterStats;
use crate::pubsub::{users, Hub};
use publisher::Publisher;
use subscriber::Supervisor;

/// How often the supervisor re-reads the slot map when nothing is wrong.
pub const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// Least time between two slot map reads (failures ask for one each).
const TOPOLOGY_MIN_GAP: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the sharded bridge.
#[derive(Debug, Clone)]
pub struct ShardedConfig {
    /// Seed nodes, `host:port`.
    pub seeds: Vec<String>,
    pub prefix: String,
    pub node_id: u64,
    /// How many channels broadcasts are spread over.
    pub broadcast_channels: usize,
    /// How long a publish its shard refuses (failing over, slot moving) is
    /// held and retried before it is dropped and counted.
    pub publish_hold: Duration,
}

/// What the threads share.
pub(super) struct Shared {
    cfg: ShardedConfig,
    broadcast: Vec<String>,
    topology: RwLock<Arc<Topology>>,
    last_refresh: Mutex<Option<Instant>>,
    hub: Arc<Hub>,
    stats: Arc<ClusterStats>,
    dedup: Mutex<Dedup>,
    stop: Arc<AtomicBool>,
}

/// Starts the sharded bridge's threads. An unreachable cluster is retried
/// in the background.
pub(crate) fn start(
    cfg: ShardedConfig,
    parts: BridgeParts,
    hub: Arc<Hub>,
) -> (Bridge, Arc<dyn presence::Router>) {
    let stop = Arc::new(AtomicBool::new(false));
    let broadcast = wire::broadcast_channels(&cfg.prefix, cfg.broadcast_channels);
    let shared = Arc::new(Shared {
        cfg,
        broadcast,
        topology: RwLock::new(Arc::new(Topology::default())),
        last_refresh: Mutex::new(None),
        hub,
        stats: parts.stats.clone(),
        dedup: Mutex::new(Dedup::default()),
        stop: stop.clone(),
    });
    let router: Arc<dyn presence::Router> = shared.clone();
    let mut threads = Vec::new();
    {
        let shared = shared.clone();
        let rx = parts.out_rx;
        threads.push(spawn("wsgate-cluster-pub", move || {
            Publisher::new(shared).run(&rx)
        }));
    }
    {
        let sup = Supervisor::new(shared, parts.changes_rx, parts.resync);
        threads.push(spawn("wsgate-cluster-sub", move || sup.run()));
    }
    (Bridge::from_threads(stop, threads), router)
}

/// Presence keys go to the master owning their slot.
impl presence::Router for Shared {
    fn addr_for(&self, key: &[u8]) -> Option<String> {
        self.topology().owner(key_slot(key)).map(str::to_string)
    }
    fn connect(&self, addr: &str) -> redis::RedisResult<redis::Connection> {
        connect(addr)
    }
    fn stale(&self) {
        self.refresh();
    }
}

impl Shared {
    fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the slot map from the first node that answers (known masters
    /// first, then the seeds). Returns true if it changed.
    fn refresh(&self) -> bool {
        {
            let mut last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < TOPOLOGY_MIN_GAP) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let current = self.topology();
        let mut tried = HashSet::new();
        let candidates = current.masters().iter().chain(self.cfg.seeds.iter());
        let mut partial = None;
        for addr in candidates {
            if !tried.insert(addr.clone()) {
                continue;
            }
            let Some(t) = read_slots(addr) else { continue };
            if t.is_complete() {
                return self.install(t);
            }
            partial.get_or_insert(t);
        }
        // A cluster mid-failover may serve only part of the slots: better
        // than nothing for the slots it does serve.
        partial.is_some_and(|t| self.install(t))
    }

    fn install(&self, t: Topology) -> bool {
        let mut cur = self.topology.write().unwrap_or_else(|e| e.into_inner());
        if **cur == t {
            return false;
        }
        tracing::info!(masters = t.masters().len(), "cluster: slot map changed");
        *cur = Arc::new(t);
        // Publishes are taken from now on, whichever thread read the map.
        self.stats
            .publisher_connected
            .store(true, Ordering::Release);
        true
    }

    /// The channel a topic (or a user's reserved topic) travels on.
    fn channel_of(&self, topic: &str) -> String {
        match users::user_of(topic) {
            Some(u) => wire::user_channel(&self.cfg.prefix, u),
            None => wire::topic_channel(&self.cfg.prefix, topic),
        }
    }

    /// A message pushed by Redis on `channel`.
    fn relay(&self, channel: &str, bytes: &[u8]) {
        let (prefix, node) = (&self.cfg.prefix, self.cfg.node_id);
        if super::history_stream::relay(&self.hub, prefix, node, channel, bytes) {
            return;
        }
        let Some((id, payload)) = wire::decode_sharded(bytes) else {
            return;
        };
        if id.node == self.cfg.node_id {
            return; // Delivered locally when it was published here.
        }
        let verdict = self
            .dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(channel, id.node, id.epoch, id.seq);
        match verdict {
            Verdict::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Deliver { lost } if lost > 0 => {
                self.stats.lost.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(lost, "cluster: messages lost (sequence gap)");
            }
            Verdict::Deliver { .. } => {}
        }
        let user_topic;
        let topic = match wire::parse_channel(&self.cfg.prefix, channel) {
            Some(Target::Topic(t)) => Some(t),
            Some(Target::User(u)) => {
                user_topic = users::user_topic(u);
                Some(user_topic.as_str())
            }
            Some(Target::Broadcast) => None,
            None => return,
        };
        if bridge::deliver(&self.hub, topic, payload) {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn read_slots(addr: &str) -> Option<Topology> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT).ok()?;
    con.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).ok()?;
    Topology::from_cluster_slots(&reply, addr)
}

pub(super) fn connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

pub(super) fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

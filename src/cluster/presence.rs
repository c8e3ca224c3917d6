//! Presence across nodes: `GET /presence?topic=T` answers the cluster-wide
//! subscription count (and with `&users=1` the distinct users) from Redis.
//!
//! Each node keeps one field per topic it holds in the hash
//! `{prefix}:p:{topic}`: its id → `{"n":count,"exp":ms,"u":[users]}`. A
//! writer thread sends, in pipelines grouped by shard, the topics whose
//! local count changed every [`FLUSH_EVERY`] (so a subscribe never costs a
//! Redis round trip: a second's changes to one topic are one `HSET`), and
//! re-sends every topic it holds every third of `--cluster-presence-ttl`
//! to renew the field's expiry. Readers ignore fields past their `exp` and
//! delete them, so a node that died without cleaning up drops out of the
//! counts within the TTL (15 s by default); a node that stops cleanly
//! deletes its fields at once. The hash itself expires after the TTL when
//! no node writes it any more.
//!
//! Users are listed up to [`MAX_USERS_LISTED`] per topic and node; past it
//! the answer says the list is incomplete (the count stays exact).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::pubsub::presence::{Presence, TopicPresence, MAX_USERS_LISTED};
use crate::pubsub::uplink::{PresenceUnavailable, RemotePresence};
use crate::pubsub::Hub;

/// How often changed topics are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a presence question waits per step for an unknown slot owner
/// (20 steps: about the slot map's refresh period and then some).
const ROUTE_WAIT_STEP: Duration = Duration::from_millis(100);

/// How keys reach Redis: one Redis, or the shard owning the key's slot.
pub(crate) trait Router: Send + Sync {
    /// Which server holds `key` (a name used to group and to connect).
    fn addr_for(&self, key: &[u8]) -> Option<String>;
    fn connect(&self, addr: &str) -> redis::RedisResult<redis::Connection>;
    /// A command failed: the key map may be stale.
    fn stale(&self);
}

/// One Redis holds every key.
pub(crate) struct SingleRouter(pub redis::Client);

impl Router for SingleRouter {
    fn addr_for(&self, _key: &[u8]) -> Option<String> {
        Some(String::new())
    }
    fn connect(&self, _addr: &str) -> redis::RedisResult<redis::Connection> {
        let con = self.0.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }
    fn stale(&self) {}
}

/// Why a presence question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("no Redis server for the presence key (cluster not reachable)")]
    NoRoute,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Serialize, Deserialize)]
struct Field {
    n: u64,
    exp: u64,
    #[serde(default)]
    u: Vec<String>,
    /// More users than listed.
    #[serde(default)]
    more: bool,
}

/// The presence side of a cluster bridge.
pub struct PresenceStore {
    prefix: String,
    node_id: u64,
    ttl: Duration,
    router: Arc<dyn Router>,
}

impl std::fmt::Debug for PresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceStore")
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn presence_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}:p:{topic}")
}

impl PresenceStore {
    pub(crate) fn new(
        prefix: String,
        node_id: u64,
        ttl: Duration,
        router: Arc<dyn Router>,
    ) -> PresenceStore {
        PresenceStore {
            prefix,
            node_id,
            ttl,
            router,
        }
    }

    /// The topic's presence over all live nodes; this node's own part is
    /// taken from `local` (fresher than what it last wrote).
    pub fn query(&self, topic: &str, local: &TopicPresence) -> Result<Presence, PresenceError> {
        let key = presence_key(&self.prefix, topic);
        // Right after start (or a failover) the slot map may not be known
        // yet; it is refreshed once a second, and this runs on a thread of
        // its own, so wait for it briefly rather than answer 503.
        let mut addr = self.router.addr_for(key.as_bytes());
        for _ in 0..20 {
            if addr.is_some() {
                break;
            }
            self.router.stale();
            std::thread::sleep(ROUTE_WAIT_STEP);
            addr = self.router.addr_for(key.as_bytes());
        }
        let addr = addr.ok_or(PresenceError::NoRoute)?;
        let mut con = self
            .router
            .connect(&addr)
            .inspect_err(|_| self.router.stale())?;
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut con)
            .inspect_err(|_| self.router.stale())?;
        let mut out = Presence {
            subscriptions: local.subscriptions,
            users: local.users.keys().map(|u| u.to_string()).collect(),
            users_complete: true,
        };
        let now = now_ms();
        let me = self.node_id.to_string();
        let mut expired = Vec::new();
        for (node, value) in fields {
            if node == me {
                continue;
            }
            let Ok(f) = serde_json::from_str::<Field>(&value) else {
                continue;
            };
            if f.exp <= now {
                expired.push(node);
                continue;
            }
            out.subscriptions += f.n;
            out.users.extend(f.u);
            out.users_complete &= !f.more;
        }
        if !expired.is_empty() {
            // Dead nodes' leftovers; best effort.
            let _: redis::RedisResult<()> =
                redis::cmd("HDEL").arg(&key).arg(expired).query(&mut con);
        }
        Ok(out)
    }

    fn field(&self, p: &TopicPresence) -> String {
        let mut users: Vec<String> = p.users.keys().map(|u| u.to_string()).collect();
        let more = users.len() > MAX_USERS_LISTED;
        users.truncate(MAX_USERS_LISTED);
        let f = Field {
            n: p.subscriptions,
            exp: now_ms() + self.ttl.as_millis() as u64,
            u: users,
            more,
        };
        serde_json::to_string(&f).unwrap_or_default()
    }
}

/// Starts the writer thread; it stops with `stop` and then deletes this
/// node's fields.
pub(crate) fn start_writer(
    store: Arc<PresenceStore>,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    super::bridge::spawn("wsgate-presence", move || {
        let mut w = Writer {
            store,
            hub,
            conns: HashMap::new(),
            written: Default::default(),
        };
        w.run(&stop)
    })
}

/// A topic and this node's new field for it (None: delete it).
type Pending = (Arc<str>, Option<String>);

struct Writer {
    store: Arc<PresenceStore>,
    hub: Arc<Hub>,
    conns: HashMap<String, redis::Connection>,
    /// Topics this node has a field for.
    written: std::collections::HashSet<Arc<str>>,
}

impl Writer {
    fn run(&mut self, stop: &AtomicBool) {
        let refresh_every = self.store.ttl / 3;
        let mut last_full = Instant::now();
        let mut retry: Vec<Arc<str>> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let until = Instant::now() + FLUSH_EVERY;
            while Instant::now() < until && !stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut topics = self.hub.presence.take_dirty();
            topics.append(&mut retry);
            if last_full.elapsed() >= refresh_every {
                topics.extend(self.hub.presence.topics());
                last_full = Instant::now();
            }
            topics.sort_unstable();
            topics.dedup();
            retry = self.write(topics);
        }
        // Leaving: remove this node's fields now rather than at expiry.
        let gone: Vec<Arc<str>> = self.written.iter().cloned().collect();
        self.remove(gone);
    }

    /// Writes (or deletes) this node's field for each topic, pipelined per
    /// server. Returns the topics to try again.
    fn write(&mut self, topics: Vec<Arc<str>>) -> Vec<Arc<str>> {
        let mut by_addr: HashMap<String, Vec<Pending>> = HashMap::new();
        let mut retry = Vec::new();
        for t in topics {
            let p = self.hub.presence.get(&t);
            let value = (p.subscriptions > 0).then(|| self.store.field(&p));
            let key = presence_key(&self.store.prefix, &t);
            match self.store.router.addr_for(key.as_bytes()) {
                Some(a) => by_addr.entry(a).or_default().push((t, value)),
                None => retry.push(t),
            }
        }
        let me = self.store.node_id.to_string();
        let ttl_ms = self.store.ttl.as_millis() as u64;
        for (addr, items) in by_addr {
            let mut pipe = redis::pipe();
            for (t, value) in &items {
                let key = presence_key(&self.store.prefix, t);
                match value {
                    Some(v) => {
                        pipe.cmd("HSET").arg(&key).arg(&me).arg(v).ignore();
                        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
                    }
                    None => {
                        pipe.cmd("HDEL").arg(&key).arg(&me).ignore();
                    }
                }
            }
            if self.exec(&addr, &pipe) {
                for (t, value) in items {
                    if value.is_some() {
                        self.written.insert(t);
                    } else {
                        self.written.remove(&t);
                    }
                }
            } else {
                retry.extend(items.into_iter().map(|(t, _)| t));
            }
        }
        retry
    }

    fn remove(&mut self, topics: Vec<Arc<str>>) {
        let me = self.store.node_id.to_string();
        let mut by_addr: HashMap<String, redis::Pipeline> = HashMap::new();
        for t in topics {
            let key = presence_key(&self.store.prefix, &t);
            if let Some(a) = self.store.router.addr_for(key.as_bytes()) {
                by_addr
                    .entry(a)
                    .or_insert_with(redis::pipe)
                    .cmd("HDEL")
                    .arg(key)
                    .arg(&me)
                    .ignore();
            }
        }
        for (addr, pipe) in by_addr {
            self.exec(&addr, &pipe);
        }
    }

    fn exec(&mut self, addr: &str, pipe: &redis::Pipeline) -> bool {
        if !self.conns.contains_key(addr) {
            match self.store.router.connect(addr) {
                Ok(c) => {
                    self.conns.insert(addr.to_string(), c);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "presence: Redis unreachable");
                    self.store.router.stale();
                    return false;
                }
            }
        }
        let Some(con) = self.conns.get_mut(addr) else {
            return false;
        };
        match pipe.exec(con) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "presence: write failed; retrying");
                self.conns.remove(addr);
                self.store.router.stale();
                false
            }
        }
    }
}

impl RemotePresence for PresenceStore {
    fn query(&self, topic: &str, local: &TopicPresence) -> Result<Presence, PresenceUnavailable> {
        PresenceStore::query(self, topic, local).map_err(|e| PresenceUnavailable(Box::new(e)))
    }
}

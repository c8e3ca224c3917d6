//! The bridge to a Redis Cluster, with sharded pub/sub (`SPUBLISH`,
//! `SSUBSCRIBE`; Redis ≥ 7): a publish reaches only the shard that owns its
//! channel's slot, and this node subscribes, shard by shard, to exactly the
//! channels it has local interest in.
//!
//! Threads:
//! - the **publisher** numbers each message per channel (see
//!   [`super::dedup`]), groups a batch by owning master and pipelines
//!   `SPUBLISH` to each. A command refused with `MOVED`/`TRYAGAIN`/
//!   `CLUSTERDOWN` or lost with its connection is parked and retried against
//!   a fresh slot map for up to `--cluster-publish-hold`, while other
//!   shards' traffic goes on; later messages for a parked slot wait behind
//!   it, so each channel keeps its order. Receivers drop the duplicates a
//!   retry can cause. What still fails is counted as dropped.
//! - the **supervisor** owns the set of wanted channels (the broadcast
//!   channels, plus one per topic and per user with local subscribers), one
//!   subscriber connection per master, and where each channel is
//!   subscribed. It re-reads the slot map every [`TOPOLOGY_EVERY`] and at
//!   once on any sign of change, and moves subscriptions whose slot moved.
//! - one **reader** per shard connection parses what Redis pushes, drops
//!   this node's own messages and duplicates, counts gaps as lost, and
//!   hands the rest to the workers. A server-side `sunsubscribe` (the slot
//!   migrated away) or a lost connection goes back to the supervisor, which
//!   subscribes those channels again where they now live.
//!
//! Workers never wait on any of this: they use the same non-blocking
//! [`super::ClusterLink`] as with a single Redis.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::Value;

use super::bridge::{self, spawn, Bridge, BridgeParts, Outbound};
use super::dedup::{Dedup, Verdict};
use super::presence;
use super::slots::{key_slot, Topology};
use super::wire::{self, MessageId, Target};
use super::ClusterStats;
use crate::pubsub::{users, Hub};

/// Publishes sent to Redis in one batch (split per master).
const BATCH: usize = 256;
/// How often messages a shard refused are tried again (fresh slot map).
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// Messages waiting for their shard at most; past it new ones are dropped.
const MAX_PARKED: usize = 65_536;
/// How long retried publishes wait after the slot map changed, so other
/// nodes have re-subscribed at the new owner when they arrive.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_millis(300);
/// How often the supervisor re-reads the slot map when nothing is wrong.
pub const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// Least time between two slot map reads (failures ask for one each).
const TOPOLOGY_MIN_GAP: Duration = Duration::from_millis(50);
/// Supervisor tick: how quickly topic changes reach Redis.
const TICK: Duration = Duration::from_millis(20);
/// How long a master that refused a connection is left alone.
const RETRY_CONNECT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Publisher-side streams numbered at once; past it the numbering restarts
/// under a new epoch (receivers take a new baseline, nothing is counted).
const MAX_PUB_STREAMS: usize = 1 << 20;

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
struct Shared {
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
        let sup = Supervisor {
            shared,
            changes: parts.changes_rx,
            resync: parts.resync,
            wanted: HashSet::new(),
            placed: HashMap::new(),
            conns: HashMap::new(),
            next_gen: 0,
            events: crossbeam_channel::unbounded(),
            need_refresh: true,
            retry_at: HashMap::new(),
        };
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

/// One message ready for Redis.
struct Ready {
    channel: String,
    slot: u16,
    bytes: Vec<u8>,
    /// Past this, a message its shard would not take is dropped.
    deadline: Instant,
}

struct Publisher {
    shared: Arc<Shared>,
    conns: HashMap<String, redis::Connection>,
    seqs: HashMap<String, u64>,
    epoch: u32,
    next_broadcast: usize,
    /// Messages their shard did not take yet, oldest first.
    parked: Vec<Ready>,
    /// Slots with parked messages: later messages for them wait behind, so
    /// each channel's order holds (the receivers' duplicate check needs it).
    parked_slots: HashSet<u16>,
    next_retry: Instant,
    /// The slot map of the last retry.
    retried_with: Option<Arc<Topology>>,
}

impl Publisher {
    fn new(shared: Arc<Shared>) -> Publisher {
        Publisher {
            shared,
            conns: HashMap::new(),
            seqs: HashMap::new(),
            // Random per process, so a restarted node with a fixed
            // --node-id is not mistaken for replaying old numbers.
            epoch: rand_u32(),
            next_broadcast: 0,
            parked: Vec::new(),
            parked_slots: HashSet::new(),
            next_retry: Instant::now(),
            retried_with: None,
        }
    }

    fn run(mut self, rx: &Receiver<Outbound>) {
        let stats = self.shared.stats.clone();
        let mut backoff = bridge::Backoff::new();
        while !self.shared.stop.load(Ordering::Acquire) {
            if self.shared.topology().masters().is_empty() {
                self.shared.refresh();
                if self.shared.topology().masters().is_empty() {
                    // Nothing can be sent: count what queued as dropped.
                    let stale = rx.try_iter().count() as u64;
                    stats.dropped_out.fetch_add(stale, Ordering::Relaxed);
                    tracing::warn!("cluster: no Redis Cluster node reachable; retrying");
                    backoff.wait(&self.shared.stop);
                    continue;
                }
                backoff.reset();
            }
            let wait = if self.parked.is_empty() {
                Duration::from_millis(100)
            } else {
                RETRY_EVERY
            };
            let mut batch = Vec::with_capacity(BATCH);
            match rx.recv_timeout(wait) {
                Ok(m) => batch.push(self.ready(m)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(self.ready(m)),
                    Err(_) => break,
                }
            }
            if !self.parked.is_empty() && Instant::now() >= self.next_retry {
                self.retry();
            }
            if !batch.is_empty() {
                self.send(batch);
            }
        }
    }

    /// Picks the channel and numbers the message in its stream.
    fn ready(&mut self, m: Outbound) -> Ready {
        let channel = match &m.topic {
            Some(t) => self.shared.channel_of(t),
            None => {
                // Round-robin over the broadcast channels: each shard takes
                // its share of broadcasts.
                let b = &self.shared.broadcast;
                self.next_broadcast = (self.next_broadcast + 1) % b.len();
                b[self.next_broadcast].clone()
            }
        };
        if self.seqs.len() >= MAX_PUB_STREAMS && !self.seqs.contains_key(&channel) {
            self.seqs.clear();
            self.epoch = self.epoch.wrapping_add(1);
        }
        let seq = self.seqs.entry(channel.clone()).or_insert(0);
        *seq += 1;
        let id = MessageId {
            node: self.shared.cfg.node_id,
            epoch: self.epoch,
            seq: *seq,
        };
        Ready {
            slot: key_slot(channel.as_bytes()),
            bytes: wire::encode_sharded(id, &m.payload),
            channel,
            deadline: Instant::now() + self.shared.cfg.publish_hold,
        }
    }

    /// Sends new messages; those for a slot with parked messages, or that
    /// their shard refuses, are parked.
    fn send(&mut self, batch: Vec<Ready>) {
        let (held, fresh): (Vec<Ready>, Vec<Ready>) = batch
            .into_iter()
            .partition(|r| self.parked_slots.contains(&r.slot));
        self.park(held);
        let failed = self.send_now(fresh);
        if !failed.is_empty() {
            // First sign of trouble: look again at the map soon.
            self.next_retry = Instant::now() + RETRY_EVERY;
        }
        self.park(failed);
    }

    /// Retries the parked messages against a fresh slot map.
    fn retry(&mut self) {
        self.shared.refresh();
        let topology = self.shared.topology();
        let moved = self
            .retried_with
            .as_ref()
            .is_some_and(|t| !Arc::ptr_eq(t, &topology));
        self.retried_with = Some(topology);
        if moved {
            // The slot map changed (a failover, a reshard): give the other
            // nodes' subscribers a moment to follow it, or the held-back
            // messages reach the new master before they do.
            self.next_retry = Instant::now() + RESUBSCRIBE_GRACE;
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        self.parked_slots.clear();
        let now = Instant::now();
        let (live, expired): (Vec<Ready>, Vec<Ready>) =
            parked.into_iter().partition(|r| r.deadline > now);
        if !expired.is_empty() {
            self.shared
                .stats
                .dropped_out
                .fetch_add(expired.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                dropped = expired.len(),
                "cluster: publishes dropped (their shard did not take them in time)"
            );
        }
        let failed = self.send_now(live);
        self.park(failed);
        self.next_retry = Instant::now() + RETRY_EVERY;
    }

    fn park(&mut self, msgs: Vec<Ready>) {
        for r in msgs {
            if self.parked.len() >= MAX_PARKED {
                self.shared
                    .stats
                    .dropped_out
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.parked_slots.insert(r.slot);
            self.parked.push(r);
        }
        if self.parked.is_empty() {
            self.retried_with = None;
        } else if self.retried_with.is_none() {
            self.retried_with = Some(self.shared.topology());
        }
    }

    /// One attempt: groups by owning master and pipelines to each. Returns
    /// what was not taken, in order.
    fn send_now(&mut self, msgs: Vec<Ready>) -> Vec<Ready> {
        let topology = self.shared.topology();
        let mut by_master: HashMap<String, Vec<Ready>> = HashMap::new();
        let mut failed = Vec::new();
        for r in msgs {
            match topology.owner(r.slot) {
                Some(addr) => by_master.entry(addr.to_string()).or_default().push(r),
                None => failed.push(r),
            }
        }
        for (addr, msgs) in by_master {
            let (sent, mut left) = self.send_to(&addr, msgs);
            self.shared
                .stats
                .published
                .fetch_add(sent, Ordering::Relaxed);
            failed.append(&mut left);
        }
        failed
    }

    /// Pipelines `SPUBLISH` for `msgs` to `addr`. Returns how many Redis
    /// took and the ones to retry.
    fn send_to(&mut self, addr: &str, msgs: Vec<Ready>) -> (u64, Vec<Ready>) {
        if !self.conns.contains_key(addr) {
            match connect(addr) {
                Ok(c) => {
                    self.conns.insert(addr.to_string(), c);
                }
                Err(e) => {
                    tracing::debug!(addr, error = %e, "cluster: cannot reach shard (publisher)");
                    return (0, msgs);
                }
            }
        }
        let Some(con) = self.conns.get_mut(addr) else {
            return (0, msgs);
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in &msgs {
            pipe.cmd("SPUBLISH").arg(&m.channel).arg(&m.bytes);
        }
        let results: Vec<redis::RedisResult<Value>> = match pipe.query(con) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(addr, error = %e, "cluster: shard connection lost (publisher)");
                self.conns.remove(addr);
                self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                return (0, msgs);
            }
        };
        let mut sent = 0;
        let mut left = Vec::new();
        for (m, r) in msgs.into_iter().zip(results.iter()) {
            match r {
                Ok(_) => sent += 1,
                Err(_) => left.push(m),
            }
        }
        (sent, left)
    }
}

fn connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// What a reader tells the supervisor.
enum Event {
    /// The connection ended.
    Down { addr: String, generation: u64 },
    /// Redis dropped (or confirmed dropping) a subscription.
    Unsubscribed {
        addr: String,
        generation: u64,
        channel: String,
    },
    /// A subscription was refused: the slot map is stale.
    Moved,
}

struct SubConn {
    writer: TcpStream,
    generation: u64,
    reader: JoinHandle<()>,
}

struct Supervisor {
    shared: Arc<Shared>,
    changes: Receiver<Arc<str>>,
    resync: Arc<AtomicBool>,
    /// Channels this node needs.
    wanted: HashSet<String>,
    /// Wanted channels subscribed, and at which master.
    placed: HashMap<String, String>,
    conns: HashMap<String, SubConn>,
    next_gen: u64,
    events: (Sender<Event>, Receiver<Event>),
    need_refresh: bool,
    /// Masters that refused a connection, and when to try again.
    retry_at: HashMap<String, Instant>,
}

impl Supervisor {
    fn run(mut self) {
        self.wanted.extend(self.shared.broadcast.iter().cloned());
        let mut last_refresh = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let events: Vec<Event> = self.events.1.try_iter().collect();
            for e in events {
                self.on_event(e);
            }
            self.reconcile_topics();
            if self.need_refresh || last_refresh.elapsed() >= TOPOLOGY_EVERY {
                self.shared.refresh();
                last_refresh = Instant::now();
                self.need_refresh = false;
                self.follow_topology();
            }
            self.place();
            let complete = self.placed.len() == self.wanted.len();
            self.shared
                .stats
                .subscriber_connected
                .store(complete, Ordering::Release);
            std::thread::sleep(TICK);
        }
        for (_, c) in self.conns.drain() {
            let _ = c.writer.shutdown(Shutdown::Both);
            let _ = c.reader.join();
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Down { addr, generation } => {
                if self
                    .conns
                    .get(&addr)
                    .is_some_and(|c| c.generation == generation)
                {
                    self.drop_conn(&addr);
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(addr = %addr, "cluster: shard subscription lost; resubscribing");
                }
                self.need_refresh = true;
            }
            Event::Unsubscribed {
                addr,
                generation,
                channel,
            } => {
                let ours = self
                    .conns
                    .get(&addr)
                    .is_some_and(|c| c.generation == generation);
                if ours && self.placed.get(&channel) == Some(&addr) {
                    // Not asked for by us: its slot moved away.
                    self.placed.remove(&channel);
                    self.shared
                        .stats
                        .resubscribes
                        .fetch_add(1, Ordering::Relaxed);
                    self.need_refresh = true;
                }
            }
            Event::Moved => self.need_refresh = true,
        }
    }

    fn drop_conn(&mut self, addr: &str) {
        if let Some(c) = self.conns.remove(addr) {
            let _ = c.writer.shutdown(Shutdown::Both);
            // The reader ends on the shutdown; it never blocks on us.
            let _ = c.reader.join();
            self.shared
                .stats
                .shard_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.placed.retain(|_, a| a != addr);
    }

    /// Brings the wanted set in line with the topic directory, for the
    /// hinted topics (or all after a lost hint).
    fn reconcile_topics(&mut self) {
        let mut check: HashSet<Arc<str>> = self.changes.try_iter().collect();
        if self.resync.swap(false, Ordering::AcqRel) {
            check.extend(self.shared.hub.directory.topics());
            // Topics wanted before but perhaps gone now.
            let prefix = &self.shared.cfg.prefix;
            for c in &self.wanted {
                match wire::parse_channel(prefix, c) {
                    Some(Target::Topic(t)) => {
                        check.insert(Arc::from(t));
                    }
                    Some(Target::User(u)) => {
                        check.insert(Arc::from(users::user_topic(u)));
                    }
                    _ => {}
                }
            }
        }
        let mut leave: HashMap<String, Vec<String>> = HashMap::new();
        for t in check {
            let channel = self.shared.channel_of(&t);
            let wanted = !self.shared.hub.directory.workers_for(&t).is_empty();
            if wanted {
                self.wanted.insert(channel);
            } else if self.wanted.remove(&channel) {
                self.shared
                    .dedup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(&channel);
                if let Some(addr) = self.placed.remove(&channel) {
                    leave.entry(addr).or_default().push(channel);
                }
            }
        }
        for (addr, channels) in leave {
            self.command(&addr, "SUNSUBSCRIBE", channels);
        }
    }

    /// After a slot map change: channels subscribed at a master that no
    /// longer owns their slot move, and connections to former masters close.
    fn follow_topology(&mut self) {
        let topology = self.shared.topology();
        let mut moved: HashMap<String, Vec<String>> = HashMap::new();
        for (channel, addr) in &self.placed {
            let owner = topology.owner(key_slot(channel.as_bytes()));
            if owner != Some(addr.as_str()) {
                moved.entry(addr.clone()).or_default().push(channel.clone());
            }
        }
        for (addr, channels) in moved {
            for c in &channels {
                self.placed.remove(c);
            }
            self.shared
                .stats
                .resubscribes
                .fetch_add(channels.len() as u64, Ordering::Relaxed);
            self.command(&addr, "SUNSUBSCRIBE", channels);
        }
        let gone: Vec<String> = self
            .conns
            .keys()
            .filter(|a| !topology.masters().contains(a))
            .cloned()
            .collect();
        for addr in gone {
            self.drop_conn(&addr);
        }
    }

    /// Subscribes every wanted channel not yet subscribed, at its slot's
    /// master, one `SSUBSCRIBE` per slot (Redis requires one slot per call).
    fn place(&mut self) {
        if self.placed.len() == self.wanted.len() {
            return;
        }
        let topology = self.shared.topology();
        let mut by_master: HashMap<String, HashMap<u16, Vec<String>>> = HashMap::new();
        for c in &self.wanted {
            if self.placed.contains_key(c) {
                continue;
            }
            let slot = key_slot(c.as_bytes());
            match topology.owner(slot) {
                Some(addr) => by_master
                    .entry(addr.to_string())
                    .or_default()
                    .entry(slot)
                    .or_default()
                    .push(c.clone()),
                None => self.need_refresh = true,
            }
        }
        for (addr, slots) in by_master {
            if !self.conns.contains_key(&addr) && !self.open(&addr) {
                self.need_refresh = true;
                continue;
            }
            for (_, channels) in slots {
                if !self.command(&addr, "SSUBSCRIBE", channels.clone()) {
                    break;
                }
                for c in channels {
                    self.placed.insert(c, addr.clone());
                }
            }
        }
    }

    /// Opens a subscriber connection to `addr` and starts its reader. A
    /// master that refused is tried again after [`RETRY_CONNECT`] (and
    /// logged once per outage), not every tick.
    fn open(&mut self, addr: &str) -> bool {
        let failing = self.retry_at.get(addr).copied();
        if failing.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let stream = match dial(addr) {
            Ok(s) => s,
            Err(e) => {
                if failing.is_none() {
                    tracing::warn!(addr, error = %e, "cluster: cannot reach shard (subscriber)");
                }
                self.retry_at
                    .insert(addr.to_string(), Instant::now() + RETRY_CONNECT);
                return false;
            }
        };
        self.retry_at.remove(addr);
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(_) => return false,
        };
        self.next_gen += 1;
        let generation = self.next_gen;
        let (shared, events, a) = (self.shared.clone(), self.events.0.clone(), addr.to_string());
        let handle = spawn("wsgate-cluster-shard", move || {
            read_shard(reader, &a, generation, &shared, &events)
        });
        self.conns.insert(
            addr.to_string(),
            SubConn {
                writer: stream,
                generation,
                reader: handle,
            },
        );
        self.shared
            .stats
            .shard_connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(addr, "cluster: shard subscriber connected");
        true
    }

    /// Writes one (un)subscribe command; on failure the connection is
    /// dropped (its channels are placed again later). Returns success.
    fn command(&mut self, addr: &str, cmd: &str, channels: Vec<String>) -> bool {
        let Some(c) = self.conns.get_mut(addr) else {
            return false;
        };
        let mut packed = redis::cmd(cmd);
        for ch in &channels {
            packed.arg(ch);
        }
        if c.writer.write_all(&packed.get_packed_command()).is_err() {
            self.drop_conn(addr);
            self.need_refresh = true;
            return false;
        }
        true
    }
}

fn dial(addr: &str) -> std::io::Result<TcpStream> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("address does not resolve"))?;
    let s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A shard connection's reader: relays messages until the connection ends.
fn read_shard(
    stream: TcpStream,
    addr: &str,
    generation: u64,
    shared: &Shared,
    events: &Sender<Event>,
) {
    let mut parser = redis::Parser::new();
    let mut reader = BufReader::new(stream);
    // Channels Redis says this connection holds (its replies carry it).
    let mut confirmed = 0u64;
    let subscriptions = &shared.stats.shard_subscriptions;
    loop {
        let value = match parser.parse_value(&mut reader) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::Acquire) {
                    tracing::debug!(addr, error = %e, "cluster: shard connection ended");
                }
                subscriptions.fetch_sub(confirmed, Ordering::Relaxed);
                let _ = events.send(Event::Down {
                    addr: addr.to_string(),
                    generation,
                });
                return;
            }
        };
        let items = match value {
            Value::Array(items) => items,
            Value::Push { kind, mut data } => {
                data.insert(0, Value::BulkString(kind.to_string().into_bytes()));
                data
            }
            Value::ServerError(e) => {
                tracing::debug!(addr, error = %e.code(), "cluster: subscription refused");
                let _ = events.send(Event::Moved);
                continue;
            }
            _ => continue,
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let Some(kind) = text(items.first()) else {
            continue;
        };
        let is_ack = kind == "ssubscribe" || kind == "sunsubscribe";
        if let (true, Some(Value::Int(n))) = (is_ack, items.get(2)) {
            let n = u64::try_from(*n).unwrap_or(0);
            if n >= confirmed {
                subscriptions.fetch_add(n - confirmed, Ordering::Relaxed);
            } else {
                subscriptions.fetch_sub(confirmed - n, Ordering::Relaxed);
            }
            confirmed = n;
        }
        match kind.as_str() {
            "smessage" => {
                if let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (items.get(1), items.get(2))
                {
                    if let Ok(channel) = std::str::from_utf8(ch) {
                        shared.relay(channel, payload);
                    }
                }
            }
            "sunsubscribe" => {
                if let Some(channel) = text(items.get(1)) {
                    let _ = events.send(Event::Unsubscribed {
                        addr: addr.to_string(),
                        generation,
                        channel,
                    });
                }
            }
            _ => {}
        }
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

//! The bridge threads between this node's workers and Redis.
//!
//! - The **publisher** takes publishes from a bounded channel and sends them
//!   to Redis in pipelined batches. While Redis is unreachable it counts what
//!   it drops and reconnects with capped exponential back-off.
//! - The **subscriber** holds a pub/sub connection subscribed to the
//!   broadcast channel and to exactly the topics that have local subscribers.
//!   Workers only hint "topic T changed"; the subscriber reconciles with the
//!   topic directory (the truth), in batches. Messages from other nodes are
//!   encoded into a frame once and handed to the workers that need them.
//!
//! Neither thread ever blocks a worker: workers use `try_send`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::wire::{self, Target};
use crate::pubsub::publish::{self, Origin, Publish};
use crate::pubsub::uplink::{RemotePresence, Uplink};
use crate::pubsub::Hub;

/// Publishes waiting for the publisher thread; past this they are dropped.
const OUTBOUND_DEPTH: usize = 65_536;
/// Topic-change hints; past this the subscriber reconciles everything.
const CHANGES_DEPTH: usize = 65_536;
/// Publishes sent to Redis in one pipeline.
const BATCH: usize = 256;
/// How often the subscriber looks at topic changes while Redis is quiet.
const POLL: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the subscriber waits for room in a worker inbox.
const DELIVER_WAIT: Duration = Duration::from_millis(100);

/// Counters and state of the bridge, read by /metrics and tests.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub publisher_connected: AtomicBool,
    pub subscriber_connected: AtomicBool,
    /// Publishes sent to Redis.
    pub published: AtomicU64,
    /// Publishes meant for other nodes that were dropped (Redis down or the
    /// outbound queue full).
    pub dropped_out: AtomicU64,
    /// Messages from other nodes handed to workers.
    pub received: AtomicU64,
    /// Reconnections (both connections; on a Redis Cluster, each shard
    /// connection lost).
    pub reconnects: AtomicU64,
    /// Redis Cluster: messages from other nodes that never arrived, seen as
    /// gaps in their publisher's per-channel sequence.
    pub lost: AtomicU64,
    /// Redis Cluster: messages that arrived twice and were dropped.
    pub duplicates: AtomicU64,
    /// Redis Cluster: channels subscribed again elsewhere after their slot
    /// moved or their shard failed over.
    pub resubscribes: AtomicU64,
    /// Redis Cluster: shard subscriber connections open now.
    pub shard_connections: AtomicU64,
    /// Redis Cluster: shard channels Redis confirmed this node subscribed
    /// to, over all shard connections (from the counts in its replies).
    pub shard_subscriptions: AtomicU64,
}

/// One publish for other nodes.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub topic: Option<Arc<str>>,
    pub payload: Box<[u8]>,
}

/// The hub's [`Uplink`] to the other nodes: the bridge threads' inbound ends.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    out: Sender<Outbound>,
    changes: Sender<Arc<str>>,
    /// Set when a topic hint was dropped: the subscriber reconciles all.
    resync: Arc<AtomicBool>,
    pub stats: Arc<ClusterStats>,
    /// Cluster-wide presence, once the bridge runs.
    pub presence: Arc<std::sync::OnceLock<Arc<super::presence::PresenceStore>>>,
}

impl Uplink for ClusterLink {
    /// Hands a publish to the bridge without waiting.
    fn publish(&self, topic: Option<&str>, payload: &[u8]) {
        let msg = Outbound {
            topic: topic.map(Arc::from),
            payload: payload.into(),
        };
        if !self.stats.publisher_connected.load(Ordering::Acquire) {
            // Redis is down: other nodes cannot get it; say so.
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.out.try_send(msg) {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the subscriber that `topic` gained its first or lost its last
    /// local subscriber.
    fn topic_changed(&self, topic: &str) {
        if self.changes.try_send(Arc::from(topic)).is_err() {
            self.resync.store(true, Ordering::Release);
        }
    }

    fn presence(&self) -> Option<Arc<dyn RemotePresence>> {
        let store = self.presence.get()?.clone();
        Some(store)
    }
}

/// The channels behind a [`ClusterLink`], before the threads start.
pub struct BridgeParts {
    pub(crate) out_rx: Receiver<Outbound>,
    pub(crate) changes_rx: Receiver<Arc<str>>,
    pub(crate) resync: Arc<AtomicBool>,
    pub(crate) stats: Arc<ClusterStats>,
}

/// Creates the link the hub holds and the parts the threads take.
pub fn channels() -> (ClusterLink, BridgeParts) {
    let (out, out_rx) = crossbeam_channel::bounded(OUTBOUND_DEPTH);
    let (changes, changes_rx) = crossbeam_channel::bounded(CHANGES_DEPTH);
    let resync = Arc::new(AtomicBool::new(true));
    let stats = Arc::new(ClusterStats::default());
    (
        ClusterLink {
            out,
            changes,
            resync: resync.clone(),
            stats: stats.clone(),
            presence: Arc::default(),
        },
        BridgeParts {
            out_rx,
            changes_rx,
            resync,
            stats,
        },
    )
}

/// Settings of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub redis_url: String,
    pub prefix: String,
    pub node_id: u64,
}

/// The running bridge threads.
pub struct Bridge {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Bridge {
    /// Starts both threads. Fails only on an invalid Redis URL; an
    /// unreachable Redis is retried in the background.
    pub fn start(
        cfg: BridgeConfig,
        parts: BridgeParts,
        hub: Arc<Hub>,
    ) -> redis::RedisResult<Bridge> {
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (client, cfg, stop) = (client.clone(), cfg.clone(), stop.clone());
            let (rx, stats) = (parts.out_rx, parts.stats.clone());
            threads.push(spawn("wsgate-cluster-pub", move || {
                run_publisher(&client, &cfg, &rx, &stats, &stop)
            }));
        }
        {
            let stop = stop.clone();
            let sub = Subscriber {
                client,
                cfg,
                hub,
                changes: parts.changes_rx,
                resync: parts.resync,
                stats: parts.stats,
                subscribed: HashSet::new(),
            };
            threads.push(spawn("wsgate-cluster-sub", move || sub.run(&stop)));
        }
        Ok(Bridge { stop, threads })
    }

    /// A bridge made of other threads sharing `stop` (the sharded one).
    pub(crate) fn from_threads(stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>) -> Bridge {
        Bridge { stop, threads }
    }

    /// Adds a thread that stops with the bridge (it watches [`Self::stop_flag`]).
    pub(crate) fn add_thread(&mut self, t: JoinHandle<()>) {
        self.threads.push(t);
    }

    pub(crate) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops the threads and waits for them.
    pub fn stop(self) {
        drop(self);
    }
}

/// Dropping the bridge stops it, so a node whose start fails after the
/// bridge started leaves no threads behind.
impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Capped exponential back-off that sleeps in small steps so `stop` is seen.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    pub(crate) fn wait(&mut self, stop: &AtomicBool) {
        let until = Instant::now() + self.0;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }

    pub(crate) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

fn run_publisher(
    client: &redis::Client,
    cfg: &BridgeConfig,
    rx: &Receiver<Outbound>,
    stats: &ClusterStats,
    stop: &AtomicBool,
) {
    let mut backoff = Backoff::new();
    let broadcast = wire::broadcast_channel(&cfg.prefix);
    while !stop.load(Ordering::Acquire) {
        let mut con = match connect(client) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: Redis unreachable (publisher); retrying");
                backoff.wait(stop);
                continue;
            }
        };
        backoff.reset();
        // Publishes that raced with the last failure were meant for a Redis
        // that is gone: count them dropped rather than send them late.
        let stale = rx.try_iter().count() as u64;
        stats.dropped_out.fetch_add(stale, Ordering::Relaxed);
        stats.publisher_connected.store(true, Ordering::Release);
        tracing::info!("cluster: publisher connected to Redis");
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => batch.push(m),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for m in &batch {
                let channel = match &m.topic {
                    Some(t) => wire::topic_channel(&cfg.prefix, t),
                    None => broadcast.clone(),
                };
                pipe.cmd("PUBLISH")
                    .arg(channel)
                    .arg(wire::encode_message(cfg.node_id, &m.payload))
                    .ignore();
            }
            let n = batch.len() as u64;
            batch.clear();
            if let Err(e) = pipe.exec(&mut con) {
                stats.dropped_out.fetch_add(n, Ordering::Relaxed);
                stats.publisher_connected.store(false, Ordering::Release);
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, dropped = n, "cluster: Redis publish failed; reconnecting");
                // Whatever queued while we were connected is now undeliverable.
                let stale = rx.try_iter().count() as u64;
                stats.dropped_out.fetch_add(stale, Ordering::Relaxed);
                break;
            }
            stats.published.fetch_add(n, Ordering::Relaxed);
        }
    }
}

struct Subscriber {
    client: redis::Client,
    cfg: BridgeConfig,
    hub: Arc<Hub>,
    changes: Receiver<Arc<str>>,
    resync: Arc<AtomicBool>,
    stats: Arc<ClusterStats>,
    /// Topics subscribed on the current Redis connection.
    subscribed: HashSet<Arc<str>>,
}

impl Subscriber {
    fn run(mut self, stop: &AtomicBool) {
        let mut backoff = Backoff::new();
        while !stop.load(Ordering::Acquire) {
            match self.session(stop) {
                Ok(()) => return,
                Err(e) => {
                    if self
                        .stats
                        .subscriber_connected
                        .swap(false, Ordering::AcqRel)
                    {
                        // It was up: start the back-off from the bottom.
                        backoff.reset();
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, "cluster: Redis subscription lost; retrying");
                    backoff.wait(stop);
                }
            }
        }
    }

    /// One connection's life: subscribe to everything needed, then relay.
    fn session(&mut self, stop: &AtomicBool) -> redis::RedisResult<()> {
        let mut con = connect(&self.client)?;
        let mut ps = con.as_pubsub();
        ps.set_read_timeout(Some(POLL))?;
        self.subscribed.clear();
        ps.subscribe(wire::broadcast_channel(&self.cfg.prefix))?;
        // Everything local subscribers hold, restored after a reconnect.
        self.resync.store(true, Ordering::Release);
        self.reconcile(&mut ps)?;
        self.stats
            .subscriber_connected
            .store(true, Ordering::Release);
        tracing::info!(
            topics = self.subscribed.len(),
            "cluster: subscriber connected to Redis"
        );
        while !stop.load(Ordering::Acquire) {
            match ps.get_message() {
                Ok(msg) => self.relay(&msg),
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
            if !self.changes.is_empty() || self.resync.load(Ordering::Acquire) {
                self.reconcile(&mut ps)?;
            }
        }
        Ok(())
    }

    /// Brings the Redis subscriptions in line with the topic directory, for
    /// the hinted topics (or all, after a reconnect or a lost hint).
    fn reconcile(&mut self, ps: &mut redis::PubSub<'_>) -> redis::RedisResult<()> {
        let mut check: HashSet<Arc<str>> = self.changes.try_iter().collect();
        if self.resync.swap(false, Ordering::AcqRel) {
            check.extend(self.hub.directory.topics());
            check.extend(self.subscribed.iter().cloned());
        }
        let (mut join, mut leave) = (Vec::new(), Vec::new());
        for t in check {
            let wanted = !self.hub.directory.workers_for(&t).is_empty();
            let have = self.subscribed.contains(&t);
            if wanted && !have {
                join.push(t);
            } else if !wanted && have {
                leave.push(t);
            }
        }
        let prefix = &self.cfg.prefix;
        if !join.is_empty() {
            let names: Vec<String> = join
                .iter()
                .map(|t| wire::topic_channel(prefix, t))
                .collect();
            ps.subscribe(names)?;
            self.subscribed.extend(join);
        }
        if !leave.is_empty() {
            let names: Vec<String> = leave
                .iter()
                .map(|t| wire::topic_channel(prefix, t))
                .collect();
            ps.unsubscribe(names)?;
            for t in leave {
                self.subscribed.remove(&t);
            }
        }
        Ok(())
    }

    /// A message from Redis: unless we sent it, hand it to the workers.
    fn relay(&self, msg: &redis::Msg) {
        let (prefix, node) = (&self.cfg.prefix, self.cfg.node_id);
        let (channel, bytes) = (msg.get_channel_name(), msg.get_payload_bytes());
        if super::history_stream::relay(&self.hub, prefix, node, channel, bytes) {
            return;
        }
        let Some((node, payload)) = wire::decode_message(msg.get_payload_bytes()) else {
            return;
        };
        if node == self.cfg.node_id {
            return; // Delivered locally when it was published here.
        }
        let topic = match wire::parse_channel(&self.cfg.prefix, msg.get_channel_name()) {
            Some(Target::Topic(t)) => Some(t),
            Some(Target::Broadcast) => None,
            // The single-Redis bridge carries users as reserved topics.
            Some(Target::User(_)) | None => return,
        };
        if deliver(&self.hub, topic, payload) {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Delivers a message from another node to this node's workers: to the
/// local subscribers of `topic` (a user's reserved topic included), or to
/// every connection when `topic` is None. Encodes the frame once. Returns
/// false when no worker needed it.
pub(crate) fn deliver(hub: &Hub, topic: Option<&str>, payload: &[u8]) -> bool {
    // With topic history on, this node numbers what it relays like its own
    // publishes (history is per node: a client resuming on another node
    // gets `recovered:false`).
    let msg = Publish {
        topic,
        payload,
        origin: Origin::Cluster { wait: DELIVER_WAIT },
    };
    publish::publish(hub, msg, |_| None).parts > 0
}

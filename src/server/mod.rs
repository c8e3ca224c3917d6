//! The IO side: starts one worker per core, each with its own listener and
//! event loop, and hands back a [`ServerHandle`] to observe and stop them.
//!
//! Owns thread start-up, core pinning, and the inboxes/wakers other threads
//! use to reach workers. Sockets belong to the workers; protocol rules belong
//! to [`crate::protocol`].

mod admission;
mod conn;
pub(crate) mod listener;
mod no_sigpipe;
mod panic_guard;
mod stats;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use mio::{Poll, Waker};

use crate::admin::AdminServer;
use crate::cluster::bridge::{self, Bridge, BridgeConfig};
use crate::cluster::presence;
use crate::cluster::sharded::{self, ShardedConfig};
use crate::config::Config;
use crate::metrics::MetricsSource;
use crate::protocol::message::ReassemblyBudget;
use crate::pubsub::budget::TopicBudget;
use crate::pubsub::history::{History, HistoryConfig};
use crate::pubsub::{directory::MAX_WORKERS, Hub, WorkerMsg};
use crate::security::{Authenticator, HandshakeRate, OriginPolicy, Security};
pub use admission::Admission;
pub use stats::{StatsSnapshot, WorkerStats};
use worker::{Shared, Worker, WAKER};

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

/// A running server. Dropping it shuts the server down and waits for it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    admin: Option<AdminServer>,
    bridge: Option<Bridge>,
    hub: Arc<Hub>,
    admission: Arc<Admission>,
    workers: Vec<WorkerHandle>,
    drain_rx: crossbeam_channel::Receiver<()>,
    /// Held so `drain_rx` never reads as disconnected (without an admin
    /// listener nobody else holds a sender).
    _drain_tx: crossbeam_channel::Sender<()>,
}

/// Starts a server: binds every worker's listener, then spawns the workers.
/// Returns once all listeners are bound (connections are accepted from then on).
pub fn start(config: Config) -> io::Result<ServerHandle> {
    let config = Arc::new(config);
    let n = config.worker_count();
    if n > MAX_WORKERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--workers {n} is over the maximum of {MAX_WORKERS}"),
        ));
    }
    let listeners = listener::bind_all(config.listen, n)?;
    let local_addr = listeners[0].local_addr()?;
    let cores = if config.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    // Every worker's poll, waker and inbox exist before any worker starts,
    // so the hub can reach all of them from the first message on.
    let mut parts = Vec::with_capacity(n);
    let mut links: Vec<(Sender<WorkerMsg>, Arc<Waker>)> = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // `--inbox-depth`: each entry is a few words (the frame is shared);
        // past it deliveries are dropped and counted rather than letting
        // memory grow (see `Hub`).
        let (tx, rx) = crossbeam_channel::bounded(config.inbox_depth as usize);
        links.push((tx, waker));
        parts.push((poll, rx));
    }
    let (link, bridge_parts) = match (&config.redis, &config.redis_cluster) {
        (Some(_), _) | (_, Some(_)) => {
            let (link, parts) = bridge::channels();
            (Some(link), Some(parts))
        }
        (None, None) => (None, None),
    };
    let topic_budget = TopicBudget::new(config.max_total_subscriptions, config.max_topics);
    let history = (config.history_size > 0).then(|| {
        History::new(HistoryConfig {
            size: config.history_size,
            ttl: config.history_ttl,
            max_bytes: usize::try_from(config.history_max_bytes).unwrap_or(usize::MAX),
        })
    });
    let hub = Arc::new(Hub::new(links, link, topic_budget).with_history(history));
    let reassembly = Arc::new(ReassemblyBudget::new(config.max_reassembly_bytes));
    let node_id = config.node_id.unwrap_or_else(random_node_id);
    let bridge = match (&config.redis, &config.redis_cluster, bridge_parts) {
        (_, Some(seeds), Some(parts)) => {
            let seeds = crate::cluster::slots::parse_seeds(seeds).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("--redis-cluster: {e}"))
            })?;
            let cfg = ShardedConfig {
                seeds,
                prefix: config.cluster_prefix.clone(),
                node_id,
                broadcast_channels: usize::from(config.cluster_broadcast_channels),
                publish_hold: config.cluster_publish_hold,
            };
            let (b, router) = sharded::start(cfg, parts, hub.clone());
            Some((b, router))
        }
        (Some(url), None, Some(parts)) => {
            let cfg = BridgeConfig {
                redis_url: url.clone(),
                prefix: config.cluster_prefix.clone(),
                node_id,
            };
            let bad = |e: redis::RedisError| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("--redis {url}: {e}"))
            };
            let b = Bridge::start(cfg, parts, hub.clone()).map_err(bad)?;
            let client = redis::Client::open(url.as_str()).map_err(bad)?;
            let router: Arc<dyn presence::Router> = Arc::new(presence::SingleRouter(client));
            Some((b, router))
        }
        _ => None,
    };
    // Presence rides on whichever bridge runs.
    let bridge = match (bridge, &hub.cluster) {
        (Some((mut b, router)), Some(link)) => {
            let store = Arc::new(presence::PresenceStore::new(
                config.cluster_prefix.clone(),
                node_id,
                config.cluster_presence_ttl,
                router,
            ));
            let _ = link.presence.set(store.clone());
            b.add_thread(presence::start_writer(store, hub.clone(), b.stop_flag()));
            Some(b)
        }
        (b, _) => b.map(|(b, _)| b),
    };
    let admission = Arc::new(
        Admission::new(config.max_connections, config.max_connections_per_ip)
            .with_handshake_caps(config.max_handshaking, config.max_handshaking_per_ip),
    );
    let stats: Vec<Arc<WorkerStats>> = (0..n).map(|_| Arc::default()).collect();
    let metrics = MetricsSource {
        workers: stats.clone(),
        hub: hub.clone(),
        admission: admission.clone(),
        reassembly: reassembly.clone(),
        admin: Arc::default(),
    };
    let (drain_tx, drain_rx) = crossbeam_channel::bounded(1);
    let admin = match config.admin_listen {
        Some(addr) => Some(AdminServer::start(
            addr,
            hub.clone(),
            config.clone(),
            metrics,
            drain_tx.clone(),
        )?),
        None => None,
    };
    let shared = Shared {
        config: config.clone(),
        hub: hub.clone(),
        admission: admission.clone(),
        security: Arc::new(security_from(&config)?),
        reassembly,
    };
    panic_guard::install_hook();
    let mut workers = Vec::with_capacity(n);
    for (id, ((l, (poll, rx)), stats)) in listeners.into_iter().zip(parts).zip(stats).enumerate() {
        let worker = Worker::new(id, poll, l, rx, stats.clone(), &shared)?;
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        // Alive from before `start` returns until the thread ends, however
        // it ends (the guard is dropped with the closure).
        let alive = panic_guard::AliveGuard::new(stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("wsgate-worker-{id}"))
            .spawn(move || {
                let alive = alive;
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, "could not pin to core {}", core.id);
                    }
                }
                if worker.run() {
                    alive.drained();
                }
            })?;
        workers.push(WorkerHandle {
            thread: Some(thread),
            stats,
        });
    }
    Ok(ServerHandle {
        local_addr,
        admin,
        bridge,
        hub,
        admission,
        workers,
        drain_rx,
        _drain_tx: drain_tx,
    })
}

impl ServerHandle {
    /// The address the listeners are bound to (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin HTTP listener's address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// Receives once when the admin API was asked to drain (`POST /drain`):
    /// the workers are already closing; call [`ServerHandle::shutdown`] and
    /// [`ServerHandle::join`] as on SIGTERM.
    pub fn drain_requested(&self) -> crossbeam_channel::Receiver<()> {
        self.drain_rx.clone()
    }

    /// Deliveries dropped because a worker's inbox was full.
    pub fn inbox_full_drops(&self) -> u64 {
        self.hub
            .inbox_full_drops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cluster bridge's counters, when `--redis` or `--redis-cluster` is set.
    pub fn cluster_stats(&self) -> Option<Arc<crate::cluster::ClusterStats>> {
        self.hub.cluster.as_ref().map(|c| c.stats.clone())
    }

    /// Upgraded connections held right now, across workers.
    pub fn admitted(&self) -> usize {
        self.admission.admitted()
    }

    /// Whether every worker thread still runs (see [`MetricsSource::workers_alive`]).
    pub fn workers_alive(&self) -> bool {
        self.workers.iter().all(|w| w.stats.alive.get() == 1)
    }

    /// Debug builds: makes worker `w` panic outside any connection's
    /// processing, as a bug in the event loop itself would (tests of the
    /// health reporting).
    #[cfg(debug_assertions)]
    pub fn debug_kill_worker(&self, w: usize) {
        let _ = self.hub.try_send(w, WorkerMsg::DebugPanic);
    }

    /// Sends a watchdog probe to every worker; a worker whose `watchdog`
    /// counter advances afterwards is alive.
    pub fn probe_workers(&self) {
        for w in 0..self.hub.worker_count() {
            let _ = self.hub.try_send(w, WorkerMsg::Probe);
        }
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// A copy of every worker's counters, in worker order.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.workers.iter().map(|w| w.stats.snapshot()).collect()
    }

    /// Counters summed over workers.
    pub fn total_stats(&self) -> StatsSnapshot {
        let mut t = StatsSnapshot::default();
        for s in self.stats() {
            t += s;
        }
        t
    }

    /// Starts a graceful shutdown: listeners close, connections get 1001.
    pub fn shutdown(&self) {
        if let Some(a) = &self.admin {
            a.begin_drain();
        }
        for w in 0..self.hub.worker_count() {
            // Waits for room: a worker drains its inbox every iteration.
            if self
                .hub
                .send_timeout(w, WorkerMsg::Shutdown, std::time::Duration::from_secs(5))
                .is_err()
            {
                tracing::error!(worker = w, "could not deliver shutdown to a worker");
            }
        }
    }

    /// Waits for every worker to finish.
    pub fn join(mut self) {
        self.join_workers();
    }

    fn join_workers(&mut self) {
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        if let Some(b) = self.bridge.take() {
            b.stop();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.workers.iter().any(|w| w.thread.is_some()) {
            self.shutdown();
            self.join_workers();
        }
    }
}

/// A node id unlikely to collide with another process's: std's randomly
/// keyed hasher over the pid and the time.
fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Builds the security policy from the settings; a bad key file is an error.
fn security_from(config: &Config) -> io::Result<Security> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let auth = match (
        &config.jwt_secret,
        &config.jwt_secret_file,
        &config.jwt_public_key_file,
    ) {
        (None, None, None) => None,
        (Some(s), None, None) => Some(Authenticator::hs256(s.as_bytes())),
        (None, Some(path), None) => {
            let secret = std::fs::read(path)
                .map_err(|e| invalid(format!("--jwt-secret-file {path}: {e}")))?;
            let trimmed = secret.trim_ascii_end();
            Some(Authenticator::hs256(trimmed))
        }
        (None, None, Some(path)) => Some(Authenticator::from_public_key_file(path)),
        _ => {
            return Err(invalid(
                "use one of --jwt-secret, --jwt-secret-file, --jwt-public-key-file".into(),
            ))
        }
    };
    let auth = auth.transpose().map_err(|e| invalid(e.to_string()))?;
    let rate = config.max_handshakes_per_ip;
    Ok(Security {
        auth,
        origins: OriginPolicy::new(&config.allowed_origins, !config.require_origin),
        handshake_rate: (rate > 0.0).then(|| HandshakeRate::new(rate, 2.0 * rate)),
    })
}

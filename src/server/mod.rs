//! The IO side: one worker per core, each with its own `SO_REUSEPORT`
//! listener and mio event loop; connections live in the workers' slabs.
//!
//! Owns worker threads (start-up, core pinning, the panic guard around
//! them) and the inboxes/wakers other threads use to reach workers. Which
//! hub, cluster and admin API the workers are wired to is
//! [`crate::node`]'s business; protocol rules belong to [`crate::protocol`].

mod admission;
mod conn;
pub(crate) mod listener;
mod no_sigpipe;
mod panic_guard;
mod tls_io;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

use crate::config::Config;
use crate::protocol::message::ReassemblyBudget;
use crate::pubsub::{Hub, WorkerMsg};
use crate::security::Security;
use crate::stats::{StatsSnapshot, WorkerStats};
pub use admission::Admission;
use worker::{Shared, Worker, WAKER};

/// Every worker's listener, poll and inbox, made before any worker runs so
/// the hub can reach all of them from the first message on.
pub(crate) struct Bound {
    local_addr: SocketAddr,
    workers: Vec<(std::net::TcpListener, Poll, Receiver<WorkerMsg>)>,
}

impl Bound {
    /// The address the listeners are bound to (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The sending ends of the workers' inboxes, with the wakers that go with
/// them, in worker order (what [`Hub::new`] takes).
pub(crate) type Links = Vec<(Sender<WorkerMsg>, Arc<Waker>)>;

/// Binds one listener per worker (`--workers`) on `--listen` and makes each
/// worker's poll, waker and inbox.
pub(crate) fn bind(config: &Config) -> io::Result<(Bound, Links)> {
    let n = config.worker_count();
    let options = listener::ListenOptions::for_clients(config.idle_timeout);
    let listeners = listener::bind_all(config.listen, n, &options)?;
    let local_addr = listeners[0].local_addr()?;
    let mut workers = Vec::with_capacity(n);
    let mut links: Links = Vec::with_capacity(n);
    for l in listeners {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // `--inbox-depth`: each entry is a few words (the frame is shared);
        // past it deliveries are dropped and counted rather than letting
        // memory grow (see `Hub`).
        let (tx, rx) = crossbeam_channel::bounded(config.inbox_depth as usize);
        links.push((tx, waker));
        workers.push((l, poll, rx));
    }
    Ok((
        Bound {
            local_addr,
            workers,
        },
        links,
    ))
}

/// What every worker shares, read-only once they run.
pub(crate) struct WorkerShared {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub security: Arc<Security>,
    /// `--max-reassembly-bytes`, shared by every worker's pool.
    pub reassembly: Arc<ReassemblyBudget>,
    /// With `--tls-cert`: the TLS context every new connection starts from.
    pub tls: Option<crate::tls::TlsContext>,
}

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    stats: Arc<WorkerStats>,
}

/// The running worker threads.
pub(crate) struct Workers {
    handles: Vec<WorkerHandle>,
}

/// Starts one thread per bound worker, each counting into its `stats`
/// (pinned to a core each with `--pin-cores`).
pub(crate) fn spawn(
    bound: Bound,
    shared: WorkerShared,
    stats: &[Arc<WorkerStats>],
) -> io::Result<Workers> {
    let cores = if shared.config.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let shared = Shared {
        config: shared.config,
        hub: shared.hub,
        admission: shared.admission,
        security: shared.security,
        reassembly: shared.reassembly,
        tls: shared.tls,
    };
    panic_guard::install_hook();
    let mut handles = Vec::with_capacity(bound.workers.len());
    for (id, ((l, poll, rx), stats)) in bound.workers.into_iter().zip(stats).enumerate() {
        let worker = Worker::new(id, poll, l, rx, stats.clone(), &shared)?;
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        // Alive from before `spawn` returns until the thread ends, however
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
        handles.push(WorkerHandle {
            thread: Some(thread),
            stats: stats.clone(),
        });
    }
    Ok(Workers { handles })
}

impl Workers {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether every worker thread still runs.
    pub fn all_alive(&self) -> bool {
        self.handles.iter().all(|w| w.stats.alive.get() == 1)
    }

    /// A copy of every worker's counters, in worker order.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.handles.iter().map(|w| w.stats.snapshot()).collect()
    }

    /// Whether some thread has not been joined yet.
    pub fn running(&self) -> bool {
        self.handles.iter().any(|w| w.thread.is_some())
    }

    /// Waits for every worker thread to end.
    pub fn join(&mut self) {
        for w in &mut self.handles {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        }
    }
}

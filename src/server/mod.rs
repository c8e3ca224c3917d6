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
mod loop_io;
mod no_sigpipe;
mod panic_guard;
mod tls_io;
mod uring;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

use crate::config::{Config, IoBackend};
use crate::protocol::message::ReassemblyBudget;
use crate::pubsub::{Hub, Wake, WorkerMsg};
use crate::security::Security;
use crate::stats::{StatsSnapshot, WorkerStats};
pub use admission::Admission;
use worker::epoll::Epoll;
use worker::{Shared, Worker, WAKER};

/// Every worker's listener, poll and inbox, made before any worker runs so
/// the hub can reach all of them from the first message on.
pub(crate) struct Bound {
    local_addr: SocketAddr,
    workers: Vec<(std::net::TcpListener, LoopSeed, Receiver<WorkerMsg>)>,
}

/// What a worker's event loop is made from, before its thread runs.
enum LoopSeed {
    Epoll(Poll),
    /// The read end of the wake-up socket; the ring itself is made on the
    /// worker's thread (a ring is not `Send`).
    IoUring(UnixStream),
}

impl Bound {
    /// The address the listeners are bound to (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// The sending ends of the workers' inboxes, with the wakers that go with
/// them, in worker order (what [`Hub::new`] takes).
pub(crate) type Links = Vec<(Sender<WorkerMsg>, Arc<dyn Wake>)>;

/// Binds one listener per worker (`--workers`) on `--listen` and makes each
/// worker's poll, waker and inbox.
pub(crate) fn bind(config: &Config) -> io::Result<(Bound, Links)> {
    let n = config.worker_count();
    let options = listener::ListenOptions::for_clients(config.idle_timeout, config.defer_accept);
    let listeners = listener::bind_all(config.listen, n, &options)?;
    let local_addr = listeners[0].local_addr()?;
    let mut workers = Vec::with_capacity(n);
    let mut links: Links = Vec::with_capacity(n);
    for l in listeners {
        let (seed, waker): (LoopSeed, Arc<dyn Wake>) = match config.io_backend {
            IoBackend::Epoll => {
                let poll = Poll::new()?;
                let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
                (LoopSeed::Epoll(poll), waker)
            }
            IoBackend::IoUring => {
                let (waker, rx) = uring::waker::pair()?;
                (LoopSeed::IoUring(rx), Arc::new(waker))
            }
        };
        // `--inbox-depth`: each entry is a few words (the frame is shared);
        // past it deliveries are dropped and counted rather than letting
        // memory grow (see `Hub`).
        let (tx, rx) = crossbeam_channel::bounded(config.inbox_depth as usize);
        links.push((tx, waker));
        workers.push((l, seed, rx));
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
    let shared = Arc::new(shared);
    for (id, ((l, seed, rx), stats)) in bound.workers.into_iter().zip(stats).enumerate() {
        let run = worker_main(id, l, seed, rx, stats.clone(), shared.clone())?;
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
                if run() {
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

/// What a worker thread runs: its loop, set up; true once it drained. An
/// io_uring worker makes its ring on its own thread (a ring is not `Send`);
/// the kernel's support was probed before any worker started
/// ([`probe_io_uring`]), so what can fail there is only a resource (memory,
/// the memlock limit), and the worker then ends with an error logged.
fn worker_main(
    id: usize,
    listener: std::net::TcpListener,
    seed: LoopSeed,
    inbox: Receiver<WorkerMsg>,
    stats: Arc<WorkerStats>,
    shared: Arc<Shared>,
) -> io::Result<Box<dyn FnOnce() -> bool + Send>> {
    match seed {
        LoopSeed::Epoll(poll) => {
            let epoll = Epoll::new(poll, listener, &shared)?;
            let worker = Worker::new(id, epoll, inbox, stats, &shared);
            Ok(Box::new(move || worker.run()))
        }
        LoopSeed::IoUring(wake_rx) => Ok(Box::new(move || {
            let options = listener::ListenOptions::for_clients(
                shared.config.idle_timeout,
                shared.config.defer_accept,
            );
            match uring::Uring::new(listener, options, wake_rx) {
                Ok(io) => Worker::new(id, io, inbox, stats, &shared).run(),
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "cannot set up the worker's io_uring; worker stops");
                    false
                }
            }
        })),
    }
}

/// Checks, before anything starts, that this kernel's io_uring has every
/// feature the io_uring loop uses (a ring is made and dropped).
///
/// On a thread of its own: tearing a ring down leaves task work for its
/// thread, which interrupts that thread's next blocking socket call (a read
/// with a timeout then fails with EINTR); the caller of `start` must not
/// get that.
pub(crate) fn probe_io_uring() -> Result<(), wsgate_uring::Error> {
    std::thread::scope(|s| {
        s.spawn(|| wsgate_uring::Ring::new(uring::ring_config()).map(drop))
            .join()
            .unwrap_or(Err(wsgate_uring::Error::Config(
                "the io_uring probe panicked",
            )))
    })
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

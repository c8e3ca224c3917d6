//! The IO side: starts one worker per core, each with its own listener and
//! event loop, and hands back a [`ServerHandle`] to observe and stop them.
//!
//! Owns thread start-up, core pinning, and the inboxes/wakers other threads
//! use to reach workers. Sockets belong to the workers; protocol rules belong
//! to [`crate::protocol`].

mod conn;
mod deadline;
mod listener;
mod stats;
mod worker;
mod write_queue;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use mio::{Poll, Waker};

use crate::config::Config;
pub use stats::{StatsSnapshot, WorkerStats};
use worker::{Command, Worker, WAKER};

/// Depth of each worker's inbox (commands from other threads).
const INBOX_DEPTH: usize = 1024;

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    inbox: Sender<Command>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
}

/// A running server. Dropping it shuts the server down and waits for it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    workers: Vec<WorkerHandle>,
}

/// Starts a server: binds every worker's listener, then spawns the workers.
/// Returns once all listeners are bound (connections are accepted from then on).
pub fn start(config: Config) -> io::Result<ServerHandle> {
    let config = Arc::new(config);
    let n = config.worker_count();
    let listeners = listener::bind_all(config.listen, n)?;
    let local_addr = listeners[0].local_addr()?;
    let cores = if config.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut workers = Vec::with_capacity(n);
    for (id, l) in listeners.into_iter().enumerate() {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::bounded(INBOX_DEPTH);
        let stats = Arc::new(WorkerStats::default());
        let worker = Worker::new(id, poll, l, config.clone(), stats.clone(), rx)?;
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("wsgate-worker-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, "could not pin to core {}", core.id);
                    }
                }
                worker.run();
            })?;
        workers.push(WorkerHandle {
            thread: Some(thread),
            inbox: tx,
            waker,
            stats,
        });
    }
    Ok(ServerHandle {
        local_addr,
        workers,
    })
}

impl ServerHandle {
    /// The address the listeners are bound to (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
            t.accepted += s.accepted;
            t.open += s.open;
            t.upgraded += s.upgraded;
            t.handshake_failures += s.handshake_failures;
            t.handshake_timeouts += s.handshake_timeouts;
            t.protocol_errors += s.protocol_errors;
            t.messages_in += s.messages_in;
            t.messages_out += s.messages_out;
            t.bytes_in += s.bytes_in;
            t.bytes_out += s.bytes_out;
            t.accept_backoffs += s.accept_backoffs;
            t.closed += s.closed;
        }
        t
    }

    fn send_all(&self, make: impl Fn() -> Command) {
        for w in &self.workers {
            // A full inbox means the worker is alive and busy; shutdown is
            // retried by the caller's next signal, so dropping it is safe.
            if w.inbox.try_send(make()).is_ok() {
                if let Err(e) = w.waker.wake() {
                    tracing::warn!(error = %e, "waking a worker failed");
                }
            }
        }
    }

    /// Starts a graceful shutdown: listeners close, connections get 1001.
    pub fn shutdown(&self) {
        self.send_all(|| Command::Shutdown);
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

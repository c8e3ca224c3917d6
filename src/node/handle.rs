//! The running node: its addresses, counters and health, and the way to
//! stop it (dropping the handle drains and waits too).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::AdminServer;
use crate::cluster::bridge::Bridge;
use crate::cluster::ClusterStats;
use crate::pubsub::{Hub, WorkerMsg};
use crate::server::{Admission, Workers};
use crate::stats::StatsSnapshot;

/// A running server. Dropping it shuts the server down and waits for it.
pub struct ServerHandle {
    pub(super) local_addr: SocketAddr,
    pub(super) admin: Option<AdminServer>,
    pub(super) bridge: Option<Bridge>,
    pub(super) cluster_stats: Option<Arc<ClusterStats>>,
    pub(super) hub: Arc<Hub>,
    pub(super) admission: Arc<Admission>,
    pub(super) workers: Workers,
    pub(super) drain_rx: crossbeam_channel::Receiver<()>,
    /// Held so `drain_rx` never reads as disconnected (without an admin
    /// listener nobody else holds a sender).
    pub(super) _drain_tx: crossbeam_channel::Sender<()>,
    /// The TLS context, when the client listener speaks TLS.
    pub(super) tls: Option<crate::tls::TlsContext>,
    /// The admin listener's TLS context (`--admin-tls-cert`).
    pub(super) admin_tls: Option<crate::tls::TlsContext>,
}

impl ServerHandle {
    /// The address the listeners are bound to (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Re-reads the TLS certificates and keys of the client and admin
    /// listeners (SIGHUP): new handshakes use
    /// them, open connections carry on; a bad file keeps the old pair.
    /// `None` when TLS is off.
    pub fn reload_tls(&self) -> Option<Result<(), crate::tls::CertError>> {
        crate::tls::TlsContext::reload_all(
            [self.tls.as_ref(), self.admin_tls.as_ref()]
                .into_iter()
                .flatten(),
        )
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
    pub fn cluster_stats(&self) -> Option<Arc<ClusterStats>> {
        self.cluster_stats.clone()
    }

    /// Upgraded connections held right now, across workers.
    pub fn admitted(&self) -> usize {
        self.admission.admitted()
    }

    /// Whether every worker thread still runs (see
    /// [`crate::metrics::MetricsSource::workers_alive`]).
    pub fn workers_alive(&self) -> bool {
        self.workers.all_alive()
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
        self.workers.stats()
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
        self.workers.join();
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
        if self.workers.running() {
            self.shutdown();
            self.join_workers();
        }
    }
}

//! One wsgate node, wired together: [`start`] checks the settings, binds
//! the workers' listeners, builds the hub every thread shares, joins the
//! cluster, opens the admin API and starts the workers; the
//! [`ServerHandle`] it returns observes and stops them.
//!
//! The top of the module graph: this is the only module that knows every
//! part (server, pubsub, cluster, admin, metrics); none of them knows it.
//!
//! - [`error`]: why a node cannot start ([`StartError`]).
//! - [`handle`]: the running node.
//! - [`security`]: the security policy from the settings.
//! - `cluster`: the Redis bridge and cluster-wide presence.

mod cluster;
pub mod error;
pub mod handle;
pub mod security;

use std::path::PathBuf;
use std::sync::Arc;

use crate::admin::AdminServer;
use crate::config::{Config, IoBackend, TlsMinVersion};
use crate::metrics::MetricsSource;
use crate::protocol::message::ReassemblyBudget;
use crate::pubsub::budget::TopicBudget;
use crate::pubsub::history::{History, HistoryConfig};
use crate::pubsub::uplink::Uplink;
use crate::pubsub::{directory::MAX_WORKERS, Hub};
use crate::server::{self, Admission, WorkerShared};
use crate::stats::WorkerStats;
pub use error::StartError;
pub use handle::ServerHandle;

/// Starts a node: binds every worker's listener, then spawns the workers.
/// Returns once all listeners are bound (connections are accepted from
/// then on). Settings are checked before anything starts.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    let config = Arc::new(config);
    let n = config.worker_count();
    if n > MAX_WORKERS {
        return Err(StartError::TooManyWorkers {
            given: n,
            max: MAX_WORKERS,
        });
    }
    if config.io_backend == IoBackend::IoUring {
        server::probe_io_uring().map_err(StartError::IoUring)?;
    }
    let security = Arc::new(security::from_config(&config)?);
    let tls = tls_context(
        (&config.tls_cert, "--tls-cert"),
        (&config.tls_key, "--tls-key"),
        config.tls_session_cache,
        config.tls_ticket_keys.as_ref(),
        config.tls_min_version == TlsMinVersion::Tls12,
    )
    .map_err(|e| e.for_client())?;
    let admin_tls = tls_context(
        (&config.admin_tls_cert, "--admin-tls-cert"),
        (&config.admin_tls_key, "--admin-tls-key"),
        config.tls_session_cache,
        // Admin clients are few: per-process ticket keys are enough.
        None,
        // And few enough that TLS 1.2's larger state does not matter.
        true,
    )
    .map_err(|e| e.for_admin())?;
    if admin_tls.is_some() && config.admin_listen.is_none() {
        return Err(StartError::AdminTlsWithoutAdmin);
    }
    let cluster_plan = cluster::plan(&config)?;
    let (bound, links) = server::bind(&config).map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let local_addr = bound.local_addr();
    let cluster_link = cluster_plan.as_ref().map(|_| cluster::channels());
    let uplink = cluster_link
        .as_ref()
        .map(|(link, _)| Arc::new(link.clone()) as Arc<dyn Uplink>);
    let topic_budget = TopicBudget::new(config.max_total_subscriptions, config.max_topics);
    let history_cfg = HistoryConfig {
        size: config.history_size,
        ttl: config.history_ttl,
        max_bytes: usize::try_from(config.history_max_bytes).unwrap_or(usize::MAX),
        topics: config.history_topics.clone(),
    };
    let history = history_cfg.any().then(|| History::new(history_cfg));
    let hub = Arc::new(Hub::new(links, uplink, topic_budget).with_history(history));
    let node_id = config.node_id.unwrap_or_else(random_node_id);
    if node_id == u64::MAX {
        // Reserved: it marks the messages of cluster history on the wire.
        return Err(StartError::ReservedNodeId);
    }
    let (bridge, cluster_stats, cluster_history) = match (cluster_plan, cluster_link) {
        (Some(plan), Some((link, parts))) => {
            let stats = link.stats.clone();
            let (bridge, history) = cluster::start(plan, &config, node_id, &link, parts, &hub)?;
            (Some(bridge), Some(stats), history)
        }
        _ => (None, None, None),
    };
    let admission = Arc::new(
        Admission::new(config.max_connections, config.max_connections_per_ip)
            .with_handshake_caps(config.max_handshaking, config.max_handshaking_per_ip),
    );
    let reassembly = Arc::new(ReassemblyBudget::new(config.max_reassembly_bytes));
    let stats: Vec<Arc<WorkerStats>> = (0..n).map(|_| Arc::default()).collect();
    let metrics = MetricsSource {
        workers: stats.clone(),
        hub: hub.clone(),
        admission: admission.clone(),
        reassembly: reassembly.clone(),
        admin: Arc::default(),
        cluster: cluster_stats.clone(),
        cluster_history,
        tls: tls.clone(),
    };
    let (drain_tx, drain_rx) = crossbeam_channel::bounded(1);
    let admin = match config.admin_listen {
        Some(addr) => Some(AdminServer::start(
            addr,
            hub.clone(),
            config.clone(),
            metrics,
            drain_tx.clone(),
            admin_tls.clone(),
        )?),
        None => None,
    };
    let shared = WorkerShared {
        config: config.clone(),
        hub: hub.clone(),
        admission: admission.clone(),
        security,
        reassembly,
        tls: tls.clone(),
    };
    let workers = server::spawn(bound, shared, &stats).map_err(StartError::Workers)?;
    Ok(ServerHandle {
        local_addr,
        admin,
        bridge,
        cluster_stats,
        hub,
        admission,
        workers,
        drain_rx,
        _drain_tx: drain_tx,
        tls,
        admin_tls,
    })
}

/// Why a TLS context could not be made, before we know which listener's.
enum ContextError {
    Half {
        given: &'static str,
        missing: &'static str,
    },
    Files(crate::tls::TlsConfigError),
    TicketKeys(crate::tls::ticket_keys::TicketKeyError),
}

impl ContextError {
    fn for_client(self) -> StartError {
        match self {
            ContextError::Half { given, missing } => StartError::TlsHalf { given, missing },
            ContextError::Files(e) => StartError::Tls(e),
            ContextError::TicketKeys(e) => StartError::TlsTicketKeys(e),
        }
    }

    fn for_admin(self) -> StartError {
        match self {
            ContextError::Half { given, missing } => StartError::TlsHalf { given, missing },
            ContextError::Files(e) => StartError::AdminTls(e),
            ContextError::TicketKeys(e) => StartError::TlsTicketKeys(e),
        }
    }
}

/// A listener's TLS context when both its certificate and key flags are
/// set: the files are read now, so a bad one stops the start with the flag
/// named.
fn tls_context(
    (cert, cert_flag): (&Option<PathBuf>, &'static str),
    (key, key_flag): (&Option<PathBuf>, &'static str),
    session_cache: usize,
    ticket_keys: Option<&PathBuf>,
    tls12: bool,
) -> Result<Option<crate::tls::TlsContext>, ContextError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ContextError::Half {
                given: cert_flag,
                missing: key_flag,
            })
        }
        (None, Some(_)) => {
            return Err(ContextError::Half {
                given: key_flag,
                missing: cert_flag,
            })
        }
    };
    let mut settings = crate::tls::TlsSettings::new(cert, key);
    settings.session_cache_entries = session_cache;
    settings.ticket_keys = ticket_keys.cloned();
    settings.tls12 = tls12;
    crate::tls::TlsContext::new(settings)
        .map(Some)
        .map_err(|e| match e {
            crate::tls::TlsConfigError::TicketKeys(e) => ContextError::TicketKeys(e),
            e => ContextError::Files(e),
        })
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

//! Prometheus exposition of what the workers, the hub and the admission
//! control count, gathered at scrape time.
//!
//! Owns metric names, help texts and labels. The hot path never touches this
//! module: workers bump their own single-writer counters
//! ([`crate::stats::WorkerStats`]) and a scrape reads and aggregates them.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::cluster::history_stream::ClusterHistory;
use crate::cluster::ClusterStats;
use crate::protocol::message::ReassemblyBudget;
use crate::pubsub::Hub;
use crate::server::Admission;
use crate::stats::{AdminStats, StatsSnapshot, WorkerStats};

/// Everything a scrape reads.
#[derive(Clone)]
pub struct MetricsSource {
    pub workers: Vec<Arc<WorkerStats>>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub reassembly: Arc<ReassemblyBudget>,
    pub admin: Arc<AdminStats>,
    /// The cluster bridge's counters, when this node is part of a cluster.
    pub cluster: Option<Arc<ClusterStats>>,
    /// The cluster side of topic history, when the cluster holds it.
    pub cluster_history: Option<Arc<ClusterHistory>>,
    /// The TLS context (reload counts), when the client listener speaks TLS.
    pub tls: Option<crate::tls::TlsContext>,
}

impl MetricsSource {
    /// Whether every worker thread still runs. A worker that died (a panic
    /// outside a connection's guarded processing) took its connections and
    /// its listener with it and never comes back: `/readyz` and the systemd
    /// watchdog report the process unhealthy so it gets restarted.
    pub fn workers_alive(&self) -> bool {
        self.workers.iter().all(|w| w.alive.get() == 1)
    }
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("workers", &self.workers.len())
            .finish()
    }
}

type Labels = Vec<(&'static str, String)>;
/// Reads one field of a snapshot.
type Field = fn(&StatsSnapshot) -> u64;

/// One metric family: a name, help, type, and its labelled values.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    fn put(e: MetricEncoder<'_>, kind: MetricType, v: u64) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(e),
            _ => ConstGauge::new(v as i64).encode(e),
        }
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    if let [(labels, v)] = values {
        if labels.is_empty() {
            // No `{}`: an unlabelled sample is written bare.
            return put(m, kind, *v);
        }
    }
    for (labels, v) in values {
        put(m.encode_family(labels)?, kind, *v)?;
    }
    Ok(())
}

fn worker_label(w: usize) -> Labels {
    vec![("worker", w.to_string())]
}

/// Per-worker values of one field.
fn per_worker(snaps: &[StatsSnapshot], f: impl Fn(&StatsSnapshot) -> u64) -> Vec<(Labels, u64)> {
    snaps
        .iter()
        .enumerate()
        .map(|(w, s)| (worker_label(w), f(s)))
        .collect()
}

/// Per-worker values of several fields, each under one value of `label`.
fn per_worker_by(
    snaps: &[StatsSnapshot],
    label: &'static str,
    fields: &[(&str, Field)],
) -> Vec<(Labels, u64)> {
    let mut out = Vec::new();
    for (w, s) in snaps.iter().enumerate() {
        for (value, f) in fields {
            let mut l = worker_label(w);
            l.push((label, (*value).to_string()));
            out.push((l, f(s)));
        }
    }
    out
}

impl Collector for MetricsSource {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let snaps: Vec<StatsSnapshot> = self.workers.iter().map(|w| w.snapshot()).collect();
        let s = &snaps;
        let simple: [(&str, &str, MetricType, Field); 30] = [
            (
                "wsgate_reassembly_refused",
                "Connections closed (1009) because --max-reassembly-bytes was spent",
                Counter,
                |s| s.reassembly_refused,
            ),
            (
                "wsgate_broadcasts_refused",
                "Client broadcasts refused (not allowed, or over --max-broadcasts-per-sec)",
                Counter,
                |s| s.broadcasts_refused,
            ),
            (
                "wsgate_refresh_checks",
                "Token refreshes whose signature was checked",
                Counter,
                |s| s.refresh_checks,
            ),
            (
                "wsgate_refreshes_refused",
                "Token refreshes refused unchecked (too frequent, or a token already refused)",
                Counter,
                |s| s.refreshes_refused,
            ),
            (
                "wsgate_subscribes_refused",
                "Subscribes refused by a topic budget",
                Counter,
                |s| s.subscribes_refused,
            ),
            (
                "wsgate_subscriptions_revoked",
                "Subscriptions removed because a refreshed token no longer allows them",
                Counter,
                |s| s.subscriptions_revoked,
            ),
            (
                "wsgate_outbox_early_flushes",
                "Fan-out batches written within a loop turn because they grew past their bound",
                Counter,
                |s| s.outbox_early_flushes,
            ),
            (
                "wsgate_authenticated_upgrades",
                "Upgrades that presented a valid token",
                Counter,
                |s| s.authenticated,
            ),
            (
                "wsgate_connections_open",
                "Connections held (any phase)",
                Gauge,
                |s| s.open,
            ),
            (
                "wsgate_connections_accepted",
                "TCP connections accepted",
                Counter,
                |s| s.accepted,
            ),
            (
                "wsgate_upgrades",
                "Successful WebSocket upgrades",
                Counter,
                |s| s.upgraded,
            ),
            (
                "wsgate_messages_in",
                "Data messages received (text and binary; control frames are not counted)",
                Counter,
                |s| s.messages_in,
            ),
            (
                "wsgate_messages_out",
                "Messages written: replies (echo, pub/sub command answers) and fan-out deliveries",
                Counter,
                |s| s.messages_out,
            ),
            ("wsgate_bytes_in", "Bytes read from clients", Counter, |s| {
                s.bytes_in
            }),
            (
                "wsgate_bytes_out",
                "Bytes written to clients",
                Counter,
                |s| s.bytes_out,
            ),
            (
                "wsgate_deliveries",
                "Fan-out frames written (publish and broadcast)",
                Counter,
                |s| s.deliveries,
            ),
            (
                "wsgate_deflate_negotiated",
                "Connections that negotiated permessage-deflate",
                Counter,
                |s| s.deflate_negotiated,
            ),
            (
                "wsgate_deflate_compressions",
                "Messages compressed (replies, and each fan-out frame once for all its subscribers)",
                Counter,
                |s| s.deflate_compressions,
            ),
            (
                "wsgate_deflate_inflations",
                "Compressed client messages inflated",
                Counter,
                |s| s.deflate_inflations,
            ),
            ("wsgate_pings_sent", "Heartbeat pings sent", Counter, |s| {
                s.pings_sent
            }),
            (
                "wsgate_uring_enters",
                "io_uring backend: io_uring_enter calls (one per loop turn submits every queued send and waits)",
                Counter,
                |s| s.uring_enters,
            ),
            (
                "wsgate_uring_sqes",
                "io_uring backend: submission queue entries pushed",
                Counter,
                |s| s.uring_sqes,
            ),
            (
                "wsgate_uring_cqes",
                "io_uring backend: completion queue entries reaped",
                Counter,
                |s| s.uring_cqes,
            ),
            (
                "wsgate_uring_cq_overflows",
                "io_uring backend: times the completion queue overflowed into the kernel's list",
                Counter,
                |s| s.uring_cq_overflows,
            ),
            (
                "wsgate_uring_enobufs",
                "io_uring backend: receives paused by an empty buffer ring (re-armed, no data lost)",
                Counter,
                |s| s.uring_enobufs,
            ),
            (
                "wsgate_uring_short_sends",
                "io_uring backend: sends the socket took only part of (the rest went out in order)",
                Counter,
                |s| s.uring_short_sends,
            ),
            (
                "wsgate_uring_buffers_lent",
                "io_uring backend: receive buffers lent out of the workers' buffer rings",
                Gauge,
                |s| s.uring_buffers_lent,
            ),
            (
                "wsgate_accept_backoffs",
                "Times a worker ran out of file descriptors and left the port's listener group",
                Counter,
                |s| s.accept_backoffs,
            ),
            (
                "wsgate_outbound_queued_bytes",
                "Bytes queued for backed-up clients",
                Gauge,
                |s| s.queued_bytes,
            ),
            (
                "wsgate_timers",
                "Timers in the worker's timing wheel",
                Gauge,
                |s| s.timers,
            ),
        ];
        for (name, help, kind, f) in simple {
            family(&mut enc, name, help, kind, &per_worker(s, f))?;
        }
        family(
            &mut enc,
            "wsgate_connections_closed",
            "Connections closed, by reason",
            Counter,
            &per_worker_by(
                s,
                "reason",
                &[
                    ("peer_close", |s| s.peer_closes),
                    ("abrupt", |s| s.abrupt_closes),
                    ("protocol_error", |s| s.protocol_errors),
                    ("idle_timeout", |s| s.idle_timeouts),
                    ("slow_consumer", |s| s.slow_consumers),
                    ("rate_limited", |s| s.rate_limited),
                    ("shutdown", |s| s.shutdown_closes),
                    ("handshake_timeout", |s| s.handshake_timeouts),
                    ("token_expired", |s| s.token_expiries),
                ],
            ),
        )?;
        family(
            &mut enc,
            "wsgate_handshake_failures",
            "Upgrade requests refused, by HTTP status",
            Counter,
            &per_worker_by(
                s,
                "status",
                &[
                    ("400", |s| s.rejected_bad_request),
                    ("404", |s| s.rejected_not_found),
                    ("405", |s| s.rejected_method),
                    ("426", |s| s.rejected_version),
                    ("431", |s| s.rejected_too_large),
                    ("503", |s| s.rejected_unavailable),
                    ("401", |s| s.rejected_unauthorized),
                    ("403", |s| s.rejected_forbidden),
                    ("429", |s| s.rejected_rate),
                ],
            ),
        )?;
        family(
            &mut enc,
            "wsgate_tls_handshakes",
            "TLS handshakes completed, by kind (full key exchange or resumed)",
            Counter,
            &per_worker_by(
                s,
                "kind",
                &[
                    ("full", |s| s.tls_handshakes_full),
                    ("resumed", |s| s.tls_handshakes_resumed),
                ],
            ),
        )?;
        family(
            &mut enc,
            "wsgate_tls_handshake_failures",
            "TLS connections closed by a TLS error, by reason",
            Counter,
            &per_worker_by(
                s,
                "reason",
                &[
                    ("tls_handshake_failed", |s| s.tls_failed_handshake),
                    ("tls_handshake_too_large", |s| s.tls_failed_too_large),
                    ("tls_bad_record", |s| s.tls_failed_bad_record),
                    ("tls_server_close", |s| s.tls_failed_server_close),
                ],
            ),
        )?;
        let (reload_ok, reload_failed) = self.tls.as_ref().map_or((0, 0), |t| t.reload_counts());
        family(
            &mut enc,
            "wsgate_tls_reloads",
            "Certificate reloads (SIGHUP, admin POST /reload-tls), by result",
            Counter,
            &[
                (vec![("result", "ok".to_string())], reload_ok),
                (vec![("result", "failed".to_string())], reload_failed),
            ],
        )?;
        family(
            &mut enc,
            "wsgate_handshakes_shed",
            "New connections answered 503 + Retry-After because the worker was over --max-handshakes-per-sec",
            Counter,
            &per_worker(s, |s| s.handshakes_shed),
        )?;
        family(
            &mut enc,
            "wsgate_handshake_rate_limit",
            "Upgrades per second the worker takes before shedding (--max-handshakes-per-sec, fixed or measured by auto); 0 while no limit applies",
            Gauge,
            &per_worker(s, |s| s.handshake_rate_limit),
        )?;
        family(
            &mut enc,
            "wsgate_handshake_cost_nanoseconds",
            "Measured wall time one handshake costs the worker, smoothed (--max-handshakes-per-sec auto); 0 until measured",
            Gauge,
            &per_worker(s, |s| s.handshake_cost_ns),
        )?;
        family(
            &mut enc,
            "wsgate_panics",
            "Panics caught while handling one connection (that connection was closed)",
            Counter,
            &per_worker(s, |s| s.panics),
        )?;
        family(
            &mut enc,
            "wsgate_worker_up",
            "1 while the worker thread runs; 0 means it died and the process is unhealthy",
            Gauge,
            &per_worker(s, |s| s.alive),
        )?;
        let inbox: Vec<(Labels, u64)> = (0..self.hub.worker_count())
            .map(|w| (worker_label(w), self.hub.inbox_depth(w) as u64))
            .collect();
        family(
            &mut enc,
            "wsgate_inbox_depth",
            "Messages waiting in a worker's inbox",
            Gauge,
            &inbox,
        )?;
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let budget = &self.hub.topic_budget;
        let globals: [(&str, &str, MetricType, u64); 13] = [
            (
                "wsgate_admin_evicted",
                "Admin connections closed to stay within the admin connection cap",
                Counter,
                self.admin.evicted.load(relaxed),
            ),
            (
                "wsgate_admin_timeouts",
                "Admin requests not received within the admin request timeout",
                Counter,
                self.admin.timeouts.load(relaxed),
            ),
            (
                "wsgate_admin_unauthorized",
                "Admin requests refused for a missing or wrong bearer token",
                Counter,
                self.admin.unauthorized.load(relaxed),
            ),
            (
                "wsgate_reassembly_bytes",
                "Bytes of partly received messages held (budget: --max-reassembly-bytes)",
                Gauge,
                self.reassembly.held(),
            ),
            (
                "wsgate_subscriptions",
                "Subscriptions held (budget: --max-total-subscriptions)",
                Gauge,
                budget.subscriptions.used(),
            ),
            (
                "wsgate_topic_entries",
                "Topic entries held, one per topic and worker (budget: --max-topics)",
                Gauge,
                budget.topics.used(),
            ),
            (
                "wsgate_topic_budget_refused",
                "Subscribes refused because a process-wide topic budget was spent",
                Counter,
                budget.subscriptions.refused() + budget.topics.refused(),
            ),
            (
                "wsgate_connections_admitted",
                "Upgraded connections counted against --max-connections",
                Gauge,
                self.admission.admitted() as u64,
            ),
            (
                "wsgate_inbox_full_drops",
                "Deliveries dropped because a worker inbox was full",
                Counter,
                self.hub.inbox_full_drops.load(relaxed),
            ),
            (
                "wsgate_publishes",
                "Publishes and broadcasts accepted (clients and HTTP)",
                Counter,
                self.hub.publishes.load(relaxed),
            ),
            (
                "wsgate_topics",
                "Topics with at least one subscriber",
                Gauge,
                self.hub.directory.topic_count() as u64,
            ),
            (
                "wsgate_process_resident_memory_bytes",
                "Resident set size of the process",
                Gauge,
                process_rss_bytes(),
            ),
            (
                "wsgate_process_open_fds",
                "Open file descriptors",
                Gauge,
                process_open_fds(),
            ),
        ];
        for (name, help, kind, v) in globals {
            family(&mut enc, name, help, kind, &[(Vec::new(), v)])?;
        }
        if let Some(h) = &self.hub.history {
            let history: [(&str, &str, MetricType, u64); 4] = [
                (
                    "wsgate_history_bytes",
                    "Bytes of topic history held (budget: --history-max-bytes)",
                    Gauge,
                    h.bytes() as u64,
                ),
                (
                    "wsgate_history_topics",
                    "Topics with a history log",
                    Gauge,
                    h.topics() as u64,
                ),
                (
                    "wsgate_history_evictions",
                    "Topics whose whole history was dropped to stay under --history-max-bytes (their epoch changed)",
                    Counter,
                    h.evictions.load(relaxed),
                ),
                (
                    "wsgate_history_resumes_unrecovered",
                    "Resuming subscribes answered recovered:false (epoch changed or offset no longer held)",
                    Counter,
                    h.not_resumed.load(relaxed),
                ),
            ];
            for (name, help, kind, v) in history {
                family(&mut enc, name, help, kind, &[(Vec::new(), v)])?;
            }
            family(
                &mut enc,
                "wsgate_history_resumes",
                "Resuming subscribes answered recovered:true (the missed messages were replayed)",
                Counter,
                &[(Vec::new(), h.resumed.load(relaxed))],
            )?;
            if let Some(c) = &self.cluster_history {
                let st = &c.stats;
                let cluster: [(&str, &str, u64); 5] = [
                    (
                        "wsgate_cluster_history_published",
                        "Publishes to history topics numbered and stored in Redis",
                        st.published.load(relaxed),
                    ),
                    (
                        "wsgate_cluster_history_publish_dropped",
                        "Publishes to history topics dropped (Redis unreachable or refused, or the queue full); not delivered anywhere",
                        st.publish_dropped.load(relaxed),
                    ),
                    (
                        "wsgate_cluster_history_resumes_refused",
                        "Subscribes to history topics refused because the resume queue was full",
                        st.resumes_refused.load(relaxed),
                    ),
                    (
                        "wsgate_cluster_history_resumes_failed",
                        "Subscribes to history topics answered without a position (Redis unreachable)",
                        st.resumes_failed.load(relaxed),
                    ),
                    (
                        "wsgate_cluster_history_markers",
                        "Markers published to learn that this node's subscription to a topic is live",
                        st.markers.load(relaxed),
                    ),
                ];
                for (name, help, v) in cluster {
                    family(&mut enc, name, help, Counter, &[(Vec::new(), v)])?;
                }
            }
        }
        if let Some(st) = &self.cluster {
            let up = |b: &std::sync::atomic::AtomicBool| u64::from(b.load(relaxed));
            family(
                &mut enc,
                "wsgate_cluster_connected",
                "1 while the Redis bridge connection is up",
                Gauge,
                &[
                    (
                        vec![("connection", "publisher".into())],
                        up(&st.publisher_connected),
                    ),
                    (
                        vec![("connection", "subscriber".into())],
                        up(&st.subscriber_connected),
                    ),
                ],
            )?;
            let counters: [(&str, &str, u64); 7] = [
                (
                    "wsgate_cluster_published",
                    "Publishes sent to Redis for other nodes",
                    st.published.load(relaxed),
                ),
                (
                    "wsgate_cluster_dropped",
                    "Publishes for other nodes dropped (Redis down or queue full)",
                    st.dropped_out.load(relaxed),
                ),
                (
                    "wsgate_cluster_received",
                    "Messages from other nodes delivered to workers",
                    st.received.load(relaxed),
                ),
                (
                    "wsgate_cluster_reconnects",
                    "Redis connections lost and re-established",
                    st.reconnects.load(relaxed),
                ),
                (
                    "wsgate_cluster_messages_lost",
                    "Redis Cluster: messages from other nodes that never arrived (sequence gaps)",
                    st.lost.load(relaxed),
                ),
                (
                    "wsgate_cluster_duplicates_dropped",
                    "Redis Cluster: messages from other nodes that arrived twice, dropped",
                    st.duplicates.load(relaxed),
                ),
                (
                    "wsgate_cluster_resubscribes",
                    "Redis Cluster: channels subscribed again after their slot moved or failed over",
                    st.resubscribes.load(relaxed),
                ),
            ];
            for (name, help, v) in counters {
                family(&mut enc, name, help, Counter, &[(Vec::new(), v)])?;
            }
            let gauges: [(&str, &str, u64); 2] = [
                (
                    "wsgate_cluster_shard_connections",
                    "Redis Cluster: shard subscriber connections open",
                    st.shard_connections.load(relaxed),
                ),
                (
                    "wsgate_cluster_shard_subscriptions",
                    "Redis Cluster: shard channels Redis confirmed this node holds",
                    st.shard_subscriptions.load(relaxed),
                ),
            ];
            for (name, help, v) in gauges {
                family(&mut enc, name, help, Gauge, &[(Vec::new(), v)])?;
            }
        }
        family(
            &mut enc,
            "wsgate_connections_refused",
            "Upgrades refused by a connection limit",
            Counter,
            &[
                (
                    vec![("limit", "total".into())],
                    self.admission.refused_full.load(relaxed),
                ),
                (
                    vec![("limit", "per_ip".into())],
                    self.admission.refused_per_ip.load(relaxed),
                ),
                (
                    vec![("limit", "handshaking".into())],
                    self.admission.refused_handshaking.load(relaxed),
                ),
                (
                    vec![("limit", "handshaking_per_ip".into())],
                    self.admission.refused_handshaking_per_ip.load(relaxed),
                ),
            ],
        )?;
        family(
            &mut enc,
            "wsgate_connections_handshaking",
            "Connections accepted whose upgrade request is not answered yet",
            Gauge,
            &[(Vec::new(), self.admission.handshaking() as u64)],
        )?;
        Ok(())
    }
}

/// VmRSS of this process in bytes (0 if /proc is unavailable).
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Number of open descriptors of this process.
pub fn process_open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Renders the text exposition format.
pub fn render(source: &MetricsSource) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(source.clone()));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        let _ = writeln!(out, "# encoding metrics failed");
    }
    out
}

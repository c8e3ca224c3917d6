//! Joining a node to its cluster: which Redis (`--redis` or
//! `--redis-cluster`), the bridge threads, and cluster-wide presence riding
//! on whichever bridge runs.

use std::sync::Arc;

use super::StartError;
use crate::cluster::bridge::{self, Bridge, BridgeConfig, BridgeParts, ClusterLink};
use crate::cluster::history_stream::ClusterHistory;
use crate::cluster::presence::{self, PresenceStore, Router, SingleRouter};
use crate::cluster::sharded::{self, ShardedConfig};
use crate::cluster::slots;
use crate::config::Config;
use crate::pubsub::Hub;

/// The Redis settings, checked before anything starts.
pub(super) enum Plan {
    Single { url: String, client: redis::Client },
    Sharded { seeds: Vec<String> },
}

/// Reads `--redis-cluster` (which wins) or `--redis`; None without either.
pub(super) fn plan(config: &Config) -> Result<Option<Plan>, StartError> {
    if let Some(seeds) = &config.redis_cluster {
        let seeds = slots::parse_seeds(seeds)?;
        return Ok(Some(Plan::Sharded { seeds }));
    }
    let Some(url) = &config.redis else {
        return Ok(None);
    };
    let client = redis::Client::open(url.as_str()).map_err(|source| StartError::RedisUrl {
        url: url.clone(),
        source,
    })?;
    Ok(Some(Plan::Single {
        url: url.clone(),
        client,
    }))
}

/// The channels between the hub and the bridge, made before the hub (which
/// holds the link as its uplink).
pub(super) fn channels() -> (ClusterLink, BridgeParts) {
    bridge::channels()
}

/// Starts the bridge threads, the presence writer and, when topics keep
/// history, the cluster side of history (positions and messages in Redis).
/// An unreachable Redis is no error: the bridge retries in the background.
pub(super) fn start(
    plan: Plan,
    config: &Config,
    node_id: u64,
    link: &ClusterLink,
    parts: BridgeParts,
    hub: &Arc<Hub>,
) -> Result<(Bridge, Option<Arc<ClusterHistory>>), StartError> {
    let sharded = matches!(plan, Plan::Sharded { .. });
    let (mut bridge, router): (Bridge, Arc<dyn Router>) = match plan {
        Plan::Sharded { seeds } => {
            let cfg = ShardedConfig {
                seeds,
                prefix: config.cluster_prefix.clone(),
                node_id,
                broadcast_channels: usize::from(config.cluster_broadcast_channels),
                publish_hold: config.cluster_publish_hold,
            };
            sharded::start(cfg, parts, hub.clone())
        }
        Plan::Single { url, client } => {
            let cfg = BridgeConfig {
                redis_url: url.clone(),
                prefix: config.cluster_prefix.clone(),
                node_id,
            };
            let b = Bridge::start(cfg, parts, hub.clone())
                .map_err(|source| StartError::RedisUrl { url, source })?;
            (b, Arc::new(SingleRouter(client)))
        }
    };
    let store = Arc::new(PresenceStore::new(
        config.cluster_prefix.clone(),
        node_id,
        config.cluster_presence_ttl,
        router.clone(),
    ));
    let _ = link.presence.set(store.clone());
    bridge.add_thread(presence::start_writer(
        store,
        hub.clone(),
        bridge.stop_flag(),
    ));
    let history = hub.history.as_ref().map(|h| {
        let (c, threads) = ClusterHistory::start(
            hub,
            config.cluster_prefix.clone(),
            node_id,
            sharded,
            router,
            bridge.stop_flag(),
        );
        h.set_cluster(c.clone());
        for t in threads {
            bridge.add_thread(t);
        }
        c
    });
    Ok((bridge, history))
}

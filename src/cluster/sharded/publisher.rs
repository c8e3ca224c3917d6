//! The sharded bridge's publisher thread: numbers each message in its
//! channel's stream, pipelines `SPUBLISH` to each slot's master, and parks
//! what a shard refuses (failing over, slot moving) — per slot, in order —
//! to retry it against a fresh slot map while other shards' traffic flows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::Value;

use super::{connect, rand_u32, Shared};
use crate::cluster::bridge::{self, Outbound};
use crate::cluster::slots::{key_slot, Topology};
use crate::cluster::wire::{self, MessageId};

/// Publishes sent to Redis in one batch (split per master).
const BATCH: usize = 256;
/// How often messages a shard refused are tried again (fresh slot map).
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// Messages waiting for their shard at most; past it new ones are dropped.
const MAX_PARKED: usize = 65_536;
/// How long retried publishes wait after the slot map changed, so other
/// nodes have re-subscribed at the new owner when they arrive.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_millis(300);
/// Publisher-side streams numbered at once; past it the numbering restarts
/// under a new epoch (receivers take a new baseline, nothing is counted).
const MAX_PUB_STREAMS: usize = 1 << 20;

/// One message ready for Redis.
struct Ready {
    channel: String,
    slot: u16,
    bytes: Vec<u8>,
    /// Past this, a message its shard would not take is dropped.
    deadline: Instant,
}

pub(super) struct Publisher {
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
    pub(super) fn new(shared: Arc<Shared>) -> Publisher {
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

    pub(super) fn run(mut self, rx: &Receiver<Outbound>) {
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

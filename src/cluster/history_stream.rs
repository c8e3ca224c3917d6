//! Topic history shared by every node of a cluster, kept in Redis, so a
//! client can resume on any node (cluster mode with history on).
//!
//! Owns the Redis side of history: the keys, the two scripts, the
//! history publisher thread and the resume threads.
//!
//! **Layout.** Per topic T, two keys in one hash slot — the slot of T's
//! pub/sub channel `{prefix}:t:T`, so the publish script can also
//! `SPUBLISH` on a Redis Cluster — named `{tag}{prefix}:h:T` (a stream:
//! one entry per message, fields `o` offset and `p` payload, trimmed with
//! `MAXLEN ~ size` and, with a TTL, `MINID ~ now-ttl`) and
//! `{tag}{prefix}:hm:T` (a hash: `e` epoch, `l` newest offset), where `tag`
//! is a short string hashing to the channel's slot.
//!
//! **Publishing.** A publish to a topic with history is not delivered
//! locally: it goes to the history publisher thread (bounded queue), which
//! runs [`PUBLISH_LUA`] — take the next offset, `XADD`, and `PUBLISH` (or
//! `SPUBLISH`) the message *with its offset and epoch* on the channel, all
//! atomically — so there is one order per topic across nodes, and every
//! node, the publishing one included, delivers each message once, when it
//! comes back from Redis, at the position Redis gave it. The epoch changes
//! whenever the history was lost (the stream key gone, or the hash).
//!
//! **Resuming.** A subscribe to such a topic holds the connection (a
//! [`Seq::hold`] fence: it receives nothing) and queues a resume job
//! (bounded; past it the subscribe is refused with a 429-like error). The
//! job first makes sure this node's subscription to the channel is live (a
//! message or a marker of ours came back on it; else it publishes a marker
//! and waits for it), then reads the position and the messages after
//! `since` with [`READ_LUA`]. Everything published after the marker comes
//! in live and is kept in this node's mirror ([`History::append_at`]);
//! everything before the read is in what was read; so the two together
//! miss nothing, and [`History::resume_with`] merges them and queues the
//! answer for the worker under the topic's lock, in the same inbox order
//! as the live messages: no gap and no duplicate at the seam.
//!
//! **Redis down.** Publishes to history topics are dropped and counted
//! (`wsgate_cluster_history_publish_dropped_total`), for this node's
//! subscribers too: a message that has no position is not delivered. A
//! resume that cannot reach Redis releases the connection to live delivery
//! and answers `recovered:false` (no position).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use redis::Value;

use super::bridge::{spawn, Backoff};
use super::presence::Router;
use super::slots::{key_slot, SLOTS};
use super::wire::{self, Target};
use crate::app::commands;
use crate::pubsub::history::{Fetched, FetchedEntry, History, Resumed, Seq};
use crate::pubsub::uplink::{HistoryHolder, ResumeRefused};
use crate::pubsub::{Delivery, Hub, OutFrame, WorkerMsg};

/// Publishes waiting for the history publisher; past it they are dropped.
pub const PUBLISH_QUEUE: usize = 65_536;
/// Resumes waiting for a resume thread; past it subscribes are refused.
pub const RESUME_QUEUE: usize = 4096;
const RESUME_THREADS: usize = 2;
/// Publishes sent in one pipeline.
const BATCH: usize = 256;
/// How long a resume waits for its marker to come back, per try.
const MARKER_WAIT: Duration = Duration::from_millis(500);
const MARKER_TRIES: u32 = 4;
/// How long the answer of a resume may wait for room in its worker's inbox.
const ANSWER_WAIT: Duration = Duration::from_millis(50);
/// Messages one resume reads at most beyond the topic's size bound.
const READ_SLACK: u64 = 256;

/// The first 8 bytes of every message the scripts publish: a node id no
/// node uses (`--node-id` refuses it), so the bridges tell them apart.
pub const MAGIC: [u8; 8] = [0xff; 8];

/// KEYS: stream, meta. ARGV: channel, payload, maxlen, ttl ms (0: none),
/// epoch nonce, publish command, magic.
pub const PUBLISH_LUA: &str = r#"
local s, m = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', m, 'e')
local last = tonumber(redis.call('HGET', m, 'l') or '0')
if (not epoch) or (last > 0 and redis.call('EXISTS', s) == 0) then
  local t = redis.call('TIME')
  epoch = ARGV[5] .. t[1] .. t[2]
  redis.call('DEL', s)
  redis.call('HSET', m, 'e', epoch, 'l', 1)
  last = 1
else
  last = redis.call('HINCRBY', m, 'l', 1)
end
redis.call('XADD', s, 'MAXLEN', '~', ARGV[3], '*', 'o', last, 'p', ARGV[2])
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', s, 'MINID', '~', now - ttl)
  redis.call('PEXPIRE', s, ttl)
  redis.call('PEXPIRE', m, ttl)
end
redis.call(ARGV[6], ARGV[1], ARGV[7] .. 'm' .. last .. ' ' .. epoch .. '\n' .. ARGV[2])
return last
"#;

/// KEYS: stream, meta. ARGV: since offset (-1: none), since epoch, most
/// entries to read, epoch nonce, ttl ms. Returns {epoch, last, now ms,
/// entries newest first}.
pub const READ_LUA: &str = r#"
local s, m = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', m, 'e')
local last = tonumber(redis.call('HGET', m, 'l') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if (not epoch) or (last > 0 and redis.call('EXISTS', s) == 0) then
  epoch = ARGV[4] .. t[1] .. t[2]
  redis.call('DEL', s)
  redis.call('HSET', m, 'e', epoch, 'l', 0)
  last = 0
  if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', m, ARGV[5]) end
end
local since = tonumber(ARGV[1])
local entries = {}
if since >= 0 and epoch == ARGV[2] and since < last then
  local n = math.min(last - since, tonumber(ARGV[3]))
  entries = redis.call('XREVRANGE', s, '+', '-', 'COUNT', n)
end
return {epoch, last, now, entries}
"#;

/// Counters (/metrics).
#[derive(Debug, Default)]
pub struct ClusterHistoryStats {
    pub published: AtomicU64,
    pub publish_dropped: AtomicU64,
    pub resumes: AtomicU64,
    pub resumes_refused: AtomicU64,
    pub resumes_failed: AtomicU64,
    pub markers: AtomicU64,
    pub connected: AtomicBool,
}

struct Publish {
    topic: Arc<str>,
    payload: Box<[u8]>,
}

/// A subscribe waiting for its position from Redis.
struct Resume {
    worker: usize,
    conn: u32,
    serial: u32,
    token: u64,
    topic: Arc<str>,
    since: Option<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("no Redis server for the topic's keys")]
    NoRoute,
    #[error("this node's subscription to the topic did not come up")]
    NotLive,
    #[error("unexpected reply from Redis")]
    Reply,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The cluster side of topic history (one per process).
pub struct ClusterHistory {
    prefix: String,
    node_id: u64,
    /// `SPUBLISH` on a Redis Cluster, `PUBLISH` on one Redis.
    sharded: bool,
    /// Start of every epoch this node makes (random per process).
    nonce: String,
    router: Arc<dyn Router>,
    publishes: Sender<Publish>,
    resumes: Sender<Resume>,
    next_token: AtomicU64,
    pub stats: ClusterHistoryStats,
}

impl std::fmt::Debug for ClusterHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHistory")
            .field("prefix", &self.prefix)
            .field("sharded", &self.sharded)
            .finish_non_exhaustive()
    }
}

/// A string whose slot is `slot` (one per slot, found once).
fn tag_for_slot(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut left = SLOTS;
        let mut j = 0u64;
        while left > 0 {
            let s = format!("{j:x}");
            let t = &mut tags[usize::from(key_slot(s.as_bytes()))];
            if t.is_empty() {
                *t = s;
                left -= 1;
            }
            j += 1;
        }
        tags
    });
    &tags[usize::from(slot) % SLOTS]
}

/// The stream and meta keys of `topic`: in the slot of its channel.
pub fn keys(prefix: &str, topic: &str) -> (String, String) {
    let channel = wire::topic_channel(prefix, topic);
    let tag = tag_for_slot(key_slot(channel.as_bytes()));
    (
        format!("{{{tag}}}{prefix}:h:{topic}"),
        format!("{{{tag}}}{prefix}:hm:{topic}"),
    )
}

impl ClusterHistory {
    /// Starts the publisher and resume threads; they stop with `stop`.
    pub(crate) fn start(
        hub: &Arc<Hub>,
        prefix: String,
        node_id: u64,
        sharded: bool,
        router: Arc<dyn Router>,
        stop: Arc<AtomicBool>,
    ) -> (Arc<ClusterHistory>, Vec<std::thread::JoinHandle<()>>) {
        let (ptx, prx) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        let (rtx, rrx) = crossbeam_channel::bounded(RESUME_QUEUE);
        let me = Arc::new(ClusterHistory {
            prefix,
            node_id,
            sharded,
            nonce: format!("{:08x}-", super::sharded::rand_u32()),
            router,
            publishes: ptx,
            resumes: rtx,
            next_token: AtomicU64::new(1),
            stats: ClusterHistoryStats::default(),
        });
        let mut threads = Vec::new();
        {
            let (me, hub, stop) = (me.clone(), hub.clone(), stop.clone());
            threads.push(spawn("wsgate-history-pub", move || {
                me.run_publisher(&hub, &prx, &stop)
            }));
        }
        for _ in 0..RESUME_THREADS {
            let (me, hub, stop, rx) = (me.clone(), hub.clone(), stop.clone(), rrx.clone());
            threads.push(spawn("wsgate-history-resume", move || {
                me.run_resumes(&hub, &rx, &stop)
            }));
        }
        (me, threads)
    }

    fn command(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn run_publisher(&self, hub: &Hub, rx: &Receiver<Publish>, stop: &AtomicBool) {
        let Some(history) = &hub.history else { return };
        let mut conns: HashMap<String, (redis::Connection, String)> = HashMap::new();
        let mut backoff = Backoff::new();
        while !stop.load(Ordering::Acquire) {
            let first = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(p) => p,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(BATCH - 1));
            // Grouped by server, in order within each (one topic's
            // publishes keep their order: one thread, one connection).
            let mut by_addr: Vec<(String, Vec<Publish>)> = Vec::new();
            for p in batch {
                let (stream, _) = keys(&self.prefix, &p.topic);
                let Some(addr) = self.router.addr_for(stream.as_bytes()) else {
                    self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                    self.router.stale();
                    continue;
                };
                match by_addr.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, v)) => v.push(p),
                    None => by_addr.push((addr, vec![p])),
                }
            }
            let mut failed = false;
            for (addr, msgs) in by_addr {
                let n = msgs.len() as u64;
                match self.send(history, &mut conns, &addr, &msgs) {
                    Ok(ok) => {
                        self.stats.published.fetch_add(ok, Ordering::Relaxed);
                        self.stats
                            .publish_dropped
                            .fetch_add(n - ok, Ordering::Relaxed);
                        if ok < n {
                            self.router.stale();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dropped = n, "cluster history: publish failed");
                        self.stats.publish_dropped.fetch_add(n, Ordering::Relaxed);
                        conns.remove(&addr);
                        self.router.stale();
                        failed = true;
                    }
                }
            }
            self.stats.connected.store(!failed, Ordering::Release);
            if failed {
                // What queued meanwhile was meant for a Redis that is gone.
                let stale = rx.try_iter().count() as u64;
                self.stats
                    .publish_dropped
                    .fetch_add(stale, Ordering::Relaxed);
                backoff.wait(stop);
            } else {
                backoff.reset();
            }
        }
    }

    /// Pipelines the publish script for `msgs` to `addr`. Returns how many
    /// Redis took.
    fn send(
        &self,
        history: &History,
        conns: &mut HashMap<String, (redis::Connection, String)>,
        addr: &str,
        msgs: &[Publish],
    ) -> redis::RedisResult<u64> {
        if !conns.contains_key(addr) {
            let mut con = self.router.connect(addr)?;
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(PUBLISH_LUA)
                .query(&mut con)?;
            conns.insert(addr.to_string(), (con, sha));
        }
        let Some((con, sha)) = conns.get_mut(addr) else {
            return Ok(0);
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in msgs {
            let (stream, meta) = keys(&self.prefix, &m.topic);
            let limits = history.config().limits(&m.topic);
            let ttl = limits.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
            pipe.cmd("EVALSHA")
                .arg(&*sha)
                .arg(2)
                .arg(stream)
                .arg(meta)
                .arg(wire::topic_channel(&self.prefix, &m.topic))
                .arg(&*m.payload)
                .arg(limits.size.max(1))
                .arg(ttl)
                .arg(&self.nonce)
                .arg(self.command())
                .arg(&MAGIC[..]);
        }
        let results: Vec<redis::RedisResult<Value>> = pipe.query(con)?;
        let mut ok = 0;
        for r in results {
            match r {
                Ok(_) => ok += 1,
                Err(e) => tracing::warn!(error = %e, "cluster history: publish refused"),
            }
        }
        Ok(ok)
    }

    fn run_resumes(&self, hub: &Hub, rx: &Receiver<Resume>, stop: &AtomicBool) {
        let Some(history) = &hub.history else { return };
        let mut conns: HashMap<String, (redis::Connection, String)> = HashMap::new();
        while !stop.load(Ordering::Acquire) {
            let r = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            self.stats.resumes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.resume_one(hub, history, &mut conns, &r) {
                self.stats.resumes_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster history: resume failed");
                // Released to live delivery, without a position.
                let text = match r.since {
                    Some(_) => commands::subscribed_unrecovered_text(&r.topic),
                    None => commands::subscription_text(true, &r.topic),
                };
                let msg = Resumed {
                    conn: r.conn,
                    serial: r.serial,
                    token: r.token,
                    topic: r.topic.clone(),
                    fence: None,
                    frames: vec![OutFrame::text(&text)],
                };
                let _ = hub.send_timeout(
                    r.worker,
                    WorkerMsg::Resumed(Box::new(msg)),
                    Duration::from_secs(1),
                );
            }
        }
    }

    fn resume_one(
        &self,
        hub: &Hub,
        history: &History,
        conns: &mut HashMap<String, (redis::Connection, String)>,
        r: &Resume,
    ) -> Result<(), ReadError> {
        self.wait_live(history, conns, &r.topic)?;
        let (_, _, arrivals_before) = history.mirror_state(&r.topic, 0);
        let since = r.since.as_ref().map(|(o, e)| (*o, e.as_str()));
        let fetched = self.read(history, conns, &r.topic, since)?;
        let sent = history.resume_with(&r.topic, since, fetched, arrivals_before, |snap| {
            let reply = commands::subscribed_text_at(
                &r.topic,
                snap.recovered,
                &snap.epoch,
                snap.last.offset,
            );
            let mut frames = Vec::with_capacity(1 + snap.replay.len());
            frames.push(OutFrame::text(&reply));
            frames.extend(snap.replay.iter().cloned());
            let msg = Resumed {
                conn: r.conn,
                serial: r.serial,
                token: r.token,
                topic: r.topic.clone(),
                fence: Some(snap.last),
                frames,
            };
            // Under the topic's lock: waits a little for room (never a
            // worker waiting here), or the resume fails below.
            hub.send_timeout(r.worker, WorkerMsg::Resumed(Box::new(msg)), ANSWER_WAIT)
                .is_ok()
        });
        if !sent {
            hub.inbox_full_drops.fetch_add(1, Ordering::Relaxed);
            return Err(ReadError::Reply);
        }
        Ok(())
    }

    /// Returns once this node's subscription to `topic`'s channel is known
    /// to be live (so every message published from now on reaches the
    /// mirror): at once if one already came in on it, else after a marker
    /// of ours came back.
    fn wait_live(
        &self,
        history: &History,
        conns: &mut HashMap<String, (redis::Connection, String)>,
        topic: &str,
    ) -> Result<(), ReadError> {
        if history.mirror_state(topic, 0).0 {
            return Ok(());
        }
        let channel = wire::topic_channel(&self.prefix, topic);
        for _ in 0..MARKER_TRIES {
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let mut marker = MAGIC.to_vec();
            marker.extend_from_slice(format!("k{} {token}", self.node_id).as_bytes());
            let (stream, _) = keys(&self.prefix, topic);
            let addr = self
                .router
                .addr_for(stream.as_bytes())
                .ok_or(ReadError::NoRoute)?;
            let con = self.conn(conns, &addr)?;
            let sent: redis::RedisResult<i64> = redis::cmd(self.command())
                .arg(&channel)
                .arg(&marker)
                .query(con);
            if let Err(e) = sent {
                conns.remove(&addr);
                self.router.stale();
                return Err(e.into());
            }
            self.stats.markers.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + MARKER_WAIT;
            while Instant::now() < until {
                let (live, seen, _) = history.mirror_state(topic, token);
                if seen || live {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Err(ReadError::NotLive)
    }

    fn conn<'a>(
        &self,
        conns: &'a mut HashMap<String, (redis::Connection, String)>,
        addr: &str,
    ) -> Result<&'a mut redis::Connection, ReadError> {
        if !conns.contains_key(addr) {
            let mut con = self.router.connect(addr)?;
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(READ_LUA)
                .query(&mut con)?;
            conns.insert(addr.to_string(), (con, sha));
        }
        conns
            .get_mut(addr)
            .map(|(c, _)| c)
            .ok_or(ReadError::NoRoute)
    }

    /// Reads `topic`'s position and the messages after `since`.
    fn read(
        &self,
        history: &History,
        conns: &mut HashMap<String, (redis::Connection, String)>,
        topic: &str,
        since: Option<(u64, &str)>,
    ) -> Result<Fetched, ReadError> {
        let (stream, meta) = keys(&self.prefix, topic);
        let addr = self
            .router
            .addr_for(stream.as_bytes())
            .ok_or(ReadError::NoRoute)?;
        self.conn(conns, &addr)?;
        let Some((con, sha)) = conns.get_mut(&addr) else {
            return Err(ReadError::NoRoute);
        };
        let limits = history.config().limits(topic);
        let ttl = limits.ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let reply: redis::RedisResult<Value> = redis::cmd("EVALSHA")
            .arg(&*sha)
            .arg(2)
            .arg(stream)
            .arg(meta)
            .arg(since.map_or(-1, |(o, _)| i64::try_from(o).unwrap_or(i64::MAX)))
            .arg(since.map_or("", |(_, e)| e))
            .arg(limits.size as u64 + READ_SLACK)
            .arg(&self.nonce)
            .arg(ttl)
            .query(con);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                conns.remove(&addr);
                self.router.stale();
                return Err(e.into());
            }
        };
        parse_read(topic, &reply).ok_or(ReadError::Reply)
    }
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

/// `{epoch, last, now ms, entries newest first}` from [`READ_LUA`].
fn parse_read(topic: &str, v: &Value) -> Option<Fetched> {
    let Value::Array(parts) = v else { return None };
    let [epoch, last, now, entries] = parts.as_slice() else {
        return None;
    };
    let epoch: Arc<str> = std::str::from_utf8(as_bytes(epoch)?).ok()?.into();
    let (last, now) = (as_u64(last)?, as_u64(now)?);
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries.iter().rev() {
        let Value::Array(pair) = e else { return None };
        let [id, fields] = pair.as_slice() else {
            return None;
        };
        let id = std::str::from_utf8(as_bytes(id)?).ok()?;
        let ms: u64 = id.split('-').next()?.parse().ok()?;
        let Value::Array(fields) = fields else {
            return None;
        };
        let (mut offset, mut payload) = (None, None);
        for kv in fields.chunks(2) {
            match (kv.first().and_then(as_bytes), kv.get(1)) {
                (Some(b"o"), Some(v)) => offset = as_u64(v),
                (Some(b"p"), Some(v)) => payload = as_bytes(v),
                _ => {}
            }
        }
        let (offset, payload) = (offset?, payload?);
        let text = commands::message_text_at(topic, payload, offset, &epoch);
        out.push(FetchedEntry {
            offset,
            age: Duration::from_millis(now.saturating_sub(ms)),
            frame: OutFrame::text(&text),
        });
    }
    Some(Fetched {
        epoch,
        last,
        entries: out,
    })
}

/// What a history message carries after [`MAGIC`].
#[derive(Debug, PartialEq, Eq)]
enum Wire<'a> {
    Message {
        offset: u64,
        epoch: &'a str,
        payload: &'a [u8],
    },
    Marker {
        node: u64,
        token: u64,
    },
}

fn decode(bytes: &[u8]) -> Option<Wire<'_>> {
    let rest = bytes.strip_prefix(&MAGIC[..])?;
    let (kind, rest) = rest.split_first()?;
    match kind {
        b'm' => {
            let nl = rest.iter().position(|b| *b == b'\n')?;
            let head = std::str::from_utf8(&rest[..nl]).ok()?;
            let (offset, epoch) = head.split_once(' ')?;
            Some(Wire::Message {
                offset: offset.parse().ok()?,
                epoch,
                payload: &rest[nl + 1..],
            })
        }
        b'k' => {
            let (node, token) = std::str::from_utf8(rest).ok()?.split_once(' ')?;
            Some(Wire::Marker {
                node: node.parse().ok()?,
                token: token.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// A message pushed by Redis on `channel`: if it is a history message (or
/// marker), handles it and returns true; the bridges call this first.
pub(crate) fn relay(hub: &Hub, prefix: &str, node_id: u64, channel: &str, bytes: &[u8]) -> bool {
    if !bytes.starts_with(&MAGIC) {
        return false;
    }
    let Some(history) = &hub.history else {
        return true;
    };
    let Some(Target::Topic(topic)) = wire::parse_channel(prefix, channel) else {
        return true;
    };
    match decode(bytes) {
        Some(Wire::Marker { node, token }) => {
            // Anyone's marker shows this node's subscription is live.
            let token = if node == node_id { token } else { 0 };
            history.marker_seen(topic, token);
        }
        Some(Wire::Message {
            offset,
            epoch,
            payload,
        }) => {
            let encode =
                || OutFrame::text(&commands::message_text_at(topic, payload, offset, epoch));
            history.append_at(topic, epoch, offset, encode, |seq, frame| {
                dispatch(hub, topic, frame, seq)
            });
        }
        None => tracing::debug!("cluster history: malformed message dropped"),
    }
    true
}

/// Queues a message for every worker with subscribers (under the topic's
/// lock: never waits; a full inbox drops it and counts it).
fn dispatch(hub: &Hub, topic: &str, frame: &Arc<OutFrame>, seq: Seq) {
    let targets = hub.directory.workers_for(topic);
    if targets.is_empty() {
        return;
    }
    let name: Arc<str> = Arc::from(topic);
    for w in targets.iter() {
        let d = Delivery {
            topic: Some(name.clone()),
            frame: frame.clone(),
            ticket: None,
        };
        if hub
            .try_send(w, WorkerMsg::DeliverAt(Box::new(d), seq))
            .is_err()
        {
            hub.inbox_full_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl HistoryHolder for ClusterHistory {
    /// Hands a publish to the history publisher without waiting.
    fn publish(&self, topic: &str, payload: &[u8]) {
        let p = Publish {
            topic: Arc::from(topic),
            payload: payload.into(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.publishes.try_send(p)
        {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a subscribe's resume (the connection is held meanwhile);
    /// returns the token its hold and its answer carry.
    fn resume(
        &self,
        worker: usize,
        conn: u32,
        serial: u32,
        topic: &str,
        since: Option<(u64, &str)>,
    ) -> Result<u64, ResumeRefused> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let r = Resume {
            worker,
            conn,
            serial,
            token,
            topic: Arc::from(topic),
            since: since.map(|(o, e)| (o, e.to_string())),
        };
        self.resumes.try_send(r).map_err(|_| {
            self.stats.resumes_refused.fetch_add(1, Ordering::Relaxed);
            ResumeRefused
        })?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_slot() {
        for topic in ["news", "a{b}c", "{x}", "a}b{", "chat.room:1", ""] {
            let (s, m) = keys("wsgate", topic);
            let c = wire::topic_channel("wsgate", topic);
            assert_eq!(key_slot(s.as_bytes()), key_slot(c.as_bytes()), "{topic}");
            assert_eq!(key_slot(m.as_bytes()), key_slot(c.as_bytes()), "{topic}");
        }
    }

    #[test]
    fn wire_round_trip() {
        let mut m = MAGIC.to_vec();
        m.extend_from_slice(b"m42 ab12-99\n{\"x\":1}");
        assert_eq!(
            decode(&m),
            Some(Wire::Message {
                offset: 42,
                epoch: "ab12-99",
                payload: b"{\"x\":1}"
            })
        );
        let mut k = MAGIC.to_vec();
        k.extend_from_slice(b"k7 9");
        assert_eq!(decode(&k), Some(Wire::Marker { node: 7, token: 9 }));
        assert_eq!(decode(b"plain"), None);
    }
}

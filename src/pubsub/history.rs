//! Topic history on this node: the last `--history-size` messages of each
//! topic (and, with `--history-ttl`, only those younger than it), each with
//! its position — an offset that grows by one per message and an epoch that
//! changes whenever the topic's history was lost — so a client can resume
//! from the last message it saw.
//!
//! Owns positions and stored frames. The offset of a topic's message is
//! assigned here and nowhere else, under that topic's lock, and the caller
//! queues the frame for the workers *while the lock is held* (see
//! [`crate::pubsub::Hub::publish_with_history`]): every worker's inbox
//! therefore receives a topic's messages in offset order, whichever thread
//! published them. Subscribing takes the same lock (see
//! [`History::subscribe`]), which is what makes replay-then-live seamless.
//!
//! Memory is bounded twice: `--history-size` entries per topic, and
//! `--history-max-bytes` for the whole process. Past the process cap, the
//! topics used least recently lose their whole history (their log is
//! dropped; the next message starts a new log with a new epoch, so clients
//! that resume with the old epoch learn `recovered:false`). Stored frames
//! are the `Arc` frames fan-out writes: storing one costs a reference.
//!
//! Per-topic-pattern rules ([`TopicRule`], `[[history.topic]]` in the
//! configuration file) give matching topics their own size and age bound
//! (size 0: that topic keeps no history).
//!
//! In a cluster, positions are assigned in Redis
//! by the cluster's [`super::uplink::HistoryHolder`] and this type is the node's
//! *mirror* of each topic's stream: [`History::append_at`] stores and
//! delivers a message at the position Redis gave it, and
//! [`History::resume_with`] merges what a resume read from Redis with what
//! arrived live, under the same lock, for the same seamless hand-over.

use super::frame::OutFrame;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Bytes counted for a log besides its entries (the map slot, the lock,
/// the epoch string) and for one entry besides its frame. Estimates: they
/// only have to keep `--history-max-bytes` honest for many tiny topics.
const LOG_OVERHEAD: usize = 192;
const ENTRY_OVERHEAD: usize = 48;

/// After the process cap is passed, logs are dropped until history is back
/// under this fraction of the cap, so eviction scans are rare.
const EVICT_TO_PERCENT: usize = 90;

/// History settings (`--history-size`, `--history-ttl`, `--history-max-bytes`,
/// and the file's `[[history.topic]]` rules).
#[derive(Debug, Clone, Default)]
pub struct HistoryConfig {
    /// Messages kept per topic (> 0: history is on).
    pub size: usize,
    /// Messages older than this are not replayed (and are dropped).
    pub ttl: Option<Duration>,
    /// Process-wide cap on stored history, bytes.
    pub max_bytes: usize,
    /// Per-topic-pattern overrides, first match wins.
    pub topics: Vec<TopicRule>,
}

/// `[[history.topic]]`: topics matching `pattern` keep `size` messages
/// (0: none) for at most `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// An exact topic name, or a prefix followed by `*` (`chat.*` matches
    /// `chat.room1`, not `chat` itself).
    pub pattern: String,
    pub size: usize,
    pub ttl: Option<Duration>,
}

impl TopicRule {
    pub fn matches(&self, topic: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => topic.len() > prefix.len() && topic.starts_with(prefix),
            None => self.pattern == topic,
        }
    }
}

/// The bounds that apply to one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub size: usize,
    pub ttl: Option<Duration>,
}

impl HistoryConfig {
    /// The bounds for `topic`: its first matching rule, else the defaults.
    pub fn limits(&self, topic: &str) -> Limits {
        match self.topics.iter().find(|r| r.matches(topic)) {
            Some(r) => Limits {
                size: r.size,
                ttl: r.ttl,
            },
            None => Limits {
                size: self.size,
                ttl: self.ttl,
            },
        }
    }

    /// Whether any topic can keep history (the default or some rule).
    pub fn any(&self) -> bool {
        self.size > 0 || self.topics.iter().any(|r| r.size > 0)
    }
}

/// A message's position: the log it belongs to (`gen`, unique within the
/// process; the epoch string names it for clients) and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    pub gen: u64,
    pub offset: u64,
}

impl Seq {
    /// A fence that holds back every message for a subscriber whose
    /// cluster resume `token` is still being read from Redis; its answer
    /// (carrying the same token) replaces it with the real position.
    pub const fn hold(token: u64) -> Seq {
        Seq {
            gen: HOLD_GEN,
            offset: token,
        }
    }

    pub fn is_hold(&self) -> bool {
        self.gen == HOLD_GEN
    }
}

/// The `gen` of hold fences (real logs count up from 1).
const HOLD_GEN: u64 = u64::MAX;

/// The answer to a cluster resume, for the subscriber's worker: replace
/// the connection's hold `token` on `topic` with `fence` (None: no fence) and send
/// it `frames` (the `subscribed` reply, then the replay).
#[derive(Debug)]
pub struct Resumed {
    pub conn: u32,
    pub serial: u32,
    /// The hold this answers (a later subscribe's hold is not released
    /// by an earlier one's answer).
    pub token: u64,
    pub topic: Arc<str>,
    pub fence: Option<Seq>,
    pub frames: Vec<Arc<OutFrame>>,
}

/// What a subscribe saw, taken atomically with joining the topic.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: Arc<str>,
    /// The log and the offset of its newest message (0: none yet). Live
    /// delivery to the new subscriber starts after it.
    pub last: Seq,
    /// With `since`: whether every message after it is replayed.
    pub recovered: Option<bool>,
    /// Frames to replay, oldest first (empty unless recovered).
    pub replay: Vec<Arc<OutFrame>>,
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: Arc<OutFrame>,
}

fn entry_bytes(e: &Entry) -> usize {
    e.frame.plain().len() + ENTRY_OVERHEAD
}

/// What a cluster resume read from Redis: the topic's epoch and newest
/// offset, and the messages after the resume point that are still there.
#[derive(Debug)]
pub struct Fetched {
    pub epoch: Arc<str>,
    pub last: u64,
    pub entries: Vec<FetchedEntry>,
}

#[derive(Debug)]
pub struct FetchedEntry {
    pub offset: u64,
    /// How old the message was when read.
    pub age: Duration,
    pub frame: Arc<OutFrame>,
}

struct Log {
    gen: u64,
    epoch: Arc<str>,
    limits: Limits,
    /// Cluster mirror: a message (or this node's marker) arrived through
    /// this node's subscription to the topic's channel, so everything
    /// published from then on arrives here too.
    live: bool,
    /// The last marker of this node seen on the topic's channel.
    marker: u64,
    /// Messages stored since the log was made (a resume compares it before
    /// and after its Redis read).
    arrivals: u64,
    /// Offset of the newest message (0: none yet).
    last: u64,
    entries: VecDeque<Entry>,
    /// Bytes this log counts against the process cap.
    bytes: usize,
    last_used: Instant,
    /// Dropped by eviction: whoever finds this under the lock looks the
    /// topic up again.
    dead: bool,
}

impl Log {
    /// Where the log stands, and for a resume from `since` (the client's
    /// last offset and epoch) whether everything after it is still here —
    /// then the replay is those messages, in order.
    fn snapshot(&self, since: Option<(u64, &str)>) -> Snapshot {
        let last = Seq {
            gen: self.gen,
            offset: self.last,
        };
        let mut replay = Vec::new();
        let recovered = since.map(|(offset, epoch)| {
            // Everything after `offset` must still be here: the oldest
            // entry kept is at most offset + 1 (or nothing came since).
            let oldest = self.entries.front().map_or(self.last + 1, |e| e.offset);
            let ok = epoch == &*self.epoch && offset <= self.last && oldest <= offset + 1;
            if ok {
                replay.extend(
                    self.entries
                        .iter()
                        .filter(|e| e.offset > offset)
                        .map(|e| e.frame.clone()),
                );
            }
            ok
        });
        Snapshot {
            epoch: self.epoch.clone(),
            last,
            recovered,
            replay,
        }
    }
}

type Shared = Arc<Mutex<Log>>;

/// Every topic's history (one per process).
pub struct History {
    cfg: HistoryConfig,
    /// Random per process start: a restart changes every epoch.
    epoch_base: String,
    next_gen: AtomicU64,
    logs: DashMap<Arc<str>, Shared>,
    bytes: AtomicUsize,
    /// One evictor at a time (the others carry on over the cap briefly).
    evicting: Mutex<()>,
    /// Topic logs dropped to stay under the process cap.
    pub evictions: AtomicU64,
    cluster: std::sync::OnceLock<Arc<dyn super::uplink::HistoryHolder>>,
    /// Resumes answered `recovered:true` / `recovered:false`.
    pub resumed: AtomicU64,
    pub not_resumed: AtomicU64,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("cfg", &self.cfg)
            .field("topics", &self.logs.len())
            .finish()
    }
}

fn lock(log: &Shared) -> MutexGuard<'_, Log> {
    // A panic under the lock leaves a consistent log (every mutation is a
    // push or pop); keep serving it.
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl History {
    pub fn new(cfg: HistoryConfig) -> History {
        History {
            cfg,
            epoch_base: random_hex(),
            next_gen: AtomicU64::new(1),
            logs: DashMap::new(),
            bytes: AtomicUsize::new(0),
            evicting: Mutex::new(()),
            evictions: AtomicU64::new(0),
            cluster: std::sync::OnceLock::new(),
            resumed: AtomicU64::new(0),
            not_resumed: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.cfg
    }

    /// Whether `topic` keeps history (users' reserved topics never do).
    pub fn keeps(&self, topic: &str) -> bool {
        !super::users::is_reserved(topic) && self.cfg.limits(topic).size > 0
    }

    /// The cluster side, once started (positions kept in Redis).
    pub fn cluster(&self) -> Option<&Arc<dyn super::uplink::HistoryHolder>> {
        self.cluster.get()
    }

    /// Makes Redis the holder of positions (cluster mode; set once).
    pub fn set_cluster(&self, c: Arc<dyn super::uplink::HistoryHolder>) {
        let _ = self.cluster.set(c);
    }

    /// Bytes of history held (gauge).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Topics with a log (gauge).
    pub fn topics(&self) -> usize {
        self.logs.len()
    }

    fn new_log(&self, topic: &str) -> Log {
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        let bytes = LOG_OVERHEAD + topic.len();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Log {
            gen,
            epoch: format!("{}-{gen}", self.epoch_base).into(),
            limits: self.cfg.limits(topic),
            live: false,
            marker: 0,
            arrivals: 0,
            last: 0,
            entries: VecDeque::new(),
            bytes,
            last_used: Instant::now(),
            dead: false,
        }
    }

    /// Runs `f` on `topic`'s log (created if missing) under its lock.
    fn with_log<R>(&self, topic: &str, f: impl FnOnce(&mut Log) -> R) -> R {
        let mut f = Some(f);
        loop {
            // Clone the Arc and let go of the map's shard before locking
            // the log: eviction locks a log and then the shard.
            let found = self.logs.get(topic).map(|l| l.value().clone());
            let log = match found {
                Some(l) => l,
                None => self
                    .logs
                    .entry(Arc::from(topic))
                    .or_insert_with(|| Arc::new(Mutex::new(self.new_log(topic))))
                    .value()
                    .clone(),
            };
            let mut g = lock(&log);
            if g.dead {
                continue;
            }
            g.last_used = Instant::now();
            if let Some(f) = f.take() {
                return f(&mut g);
            }
        }
    }

    /// Drops what fell out of the size or the time bound.
    fn trim(&self, log: &mut Log, now: Instant) {
        let mut freed = 0;
        while log.entries.len() > log.limits.size
            || log
                .entries
                .front()
                .zip(log.limits.ttl)
                .is_some_and(|(e, ttl)| now.duration_since(e.at) > ttl)
        {
            if let Some(e) = log.entries.pop_front() {
                freed += e.frame.plain().len() + ENTRY_OVERHEAD;
            }
        }
        log.bytes -= freed;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Appends a message to `topic`: `encode` builds its frame from its
    /// position and epoch, then `deliver` runs with the stored frame *under
    /// the topic's lock* — it must queue the frame for every worker that has
    /// subscribers (and must not take another topic's lock). Returns what
    /// `deliver` returned.
    pub fn append<R>(
        &self,
        topic: &str,
        encode: impl FnOnce(u64, &str) -> Arc<OutFrame>,
        deliver: impl FnOnce(Seq, &Arc<OutFrame>) -> R,
    ) -> R {
        let out = self.with_log(topic, |log| {
            log.last += 1;
            let frame = encode(log.last, &log.epoch);
            let now = Instant::now();
            let size = frame.plain().len() + ENTRY_OVERHEAD;
            log.entries.push_back(Entry {
                offset: log.last,
                at: now,
                frame: frame.clone(),
            });
            log.bytes += size;
            self.bytes.fetch_add(size, Ordering::Relaxed);
            self.trim(log, now);
            deliver(
                Seq {
                    gen: log.gen,
                    offset: log.last,
                },
                &frame,
            )
        });
        if self.bytes() > self.cfg.max_bytes {
            self.evict();
        }
        out
    }

    /// Subscribes to `topic`, optionally resuming after `since` (offset,
    /// epoch). `join` runs under the topic's lock: it must make the
    /// connection a subscriber *and* put its worker in the topic directory.
    ///
    /// Why this is seamless: a message's offset is assigned and its frame
    /// queued for the workers in the directory under the same lock (see
    /// [`History::append`]). So every message with an offset up to
    /// `last` was either already queued or not sent to this worker at all —
    /// the replay covers it, and the worker must skip it for this
    /// connection if it arrives (the caller fences the connection at
    /// `last`); every message after `last` is appended after `join`, finds
    /// this worker in the directory, and arrives in the worker's inbox in
    /// offset order after the replay was queued.
    pub fn subscribe(
        &self,
        topic: &str,
        since: Option<(u64, &str)>,
        join: impl FnOnce(Seq),
    ) -> Snapshot {
        let snap = self.with_log(topic, |log| {
            self.trim(log, Instant::now());
            join(Seq {
                gen: log.gen,
                offset: log.last,
            });
            log.snapshot(since)
        });
        match snap.recovered {
            Some(true) => self.resumed.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.not_resumed.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        if self.bytes() > self.cfg.max_bytes {
            self.evict();
        }
        snap
    }

    /// Cluster mirror: stores and delivers a message at the position Redis
    /// gave it (`epoch`, `offset`). A new epoch restarts the log; an offset
    /// already stored is a duplicate (None: nothing delivered); a jump
    /// forward (messages this node never received) empties the log, since
    /// a replay must be contiguous. `deliver` runs under the topic's lock,
    /// as in [`History::append`].
    pub fn append_at<R>(
        &self,
        topic: &str,
        epoch: &str,
        offset: u64,
        encode: impl FnOnce() -> Arc<OutFrame>,
        deliver: impl FnOnce(Seq, &Arc<OutFrame>) -> R,
    ) -> Option<R> {
        let out = self.with_log(topic, |log| {
            if &*log.epoch != epoch {
                self.restart(log, epoch, offset.saturating_sub(1));
            }
            log.live = true;
            if offset <= log.last {
                return None;
            }
            if offset > log.last + 1 {
                self.clear(log);
            }
            log.last = offset;
            log.arrivals += 1;
            let frame = encode();
            self.push(log, offset, Instant::now(), frame.clone());
            Some(deliver(
                Seq {
                    gen: log.gen,
                    offset,
                },
                &frame,
            ))
        });
        if self.bytes() > self.cfg.max_bytes {
            self.evict();
        }
        out
    }

    /// Cluster mirror: this node's marker `token` came back on `topic`'s
    /// channel (its subscription is live).
    pub fn marker_seen(&self, topic: &str, token: u64) {
        self.with_log(topic, |log| {
            log.live = true;
            log.marker = token;
        });
    }

    /// Cluster mirror: this node is about to subscribe to `topic`'s channel
    /// afresh (no worker of it had subscribers): what the log knew of the
    /// old subscription says nothing of the new one.
    pub fn not_live(&self, topic: &str) {
        if let Some(log) = self.logs.get(topic).map(|l| l.value().clone()) {
            lock(&log).live = false;
        }
    }

    /// Cluster mirror: whether the subscription to `topic`'s channel is
    /// known live (`token`: a marker of ours came back), and how many
    /// messages arrived so far.
    pub fn mirror_state(&self, topic: &str, token: u64) -> (bool, bool, u64) {
        self.with_log(topic, |log| (log.live, log.marker == token, log.arrivals))
    }

    /// Cluster resume: merges what a Redis read found (`fetched`, read
    /// after this node's subscription was known live, `arrivals_before`
    /// taken before the read) with what arrived live, answers the resume
    /// after `since`, and runs `then` with the answer *under the topic's
    /// lock* — it must queue the answer for the subscriber's worker, so
    /// that every live message after `Snapshot::last` follows it in that
    /// worker's inbox and every one up to it precedes it.
    pub fn resume_with<R>(
        &self,
        topic: &str,
        since: Option<(u64, &str)>,
        fetched: Fetched,
        arrivals_before: u64,
        then: impl FnOnce(&Snapshot) -> R,
    ) -> R {
        let now = Instant::now();
        let (snap, out) = self.with_log(topic, |log| {
            if *log.epoch != *fetched.epoch {
                // Redis changed epoch after the read and a message of the
                // new one already came in (the log is newer): keep the log.
                let log_newer = log.arrivals != arrivals_before;
                if !log_newer {
                    self.restart(log, &fetched.epoch, 0);
                }
            }
            if *log.epoch == *fetched.epoch {
                self.backfill(log, &fetched, now);
            }
            self.trim(log, now);
            let snap = log.snapshot(since);
            let out = then(&snap);
            (snap, out)
        });
        match snap.recovered {
            Some(true) => self.resumed.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.not_resumed.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        if self.bytes() > self.cfg.max_bytes {
            self.evict();
        }
        out
    }

    /// Puts the fetched entries (offsets after some point, ascending) and
    /// the live ones together; keeps the newest contiguous run.
    fn backfill(&self, log: &mut Log, fetched: &Fetched, now: Instant) {
        let mut merged: Vec<Entry> = Vec::new();
        let live: Vec<Entry> = log.entries.drain(..).collect();
        let freed: usize = live.iter().map(entry_bytes).sum();
        log.bytes -= freed;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        let mut live = live.into_iter().peekable();
        for f in &fetched.entries {
            while live.peek().is_some_and(|e| e.offset < f.offset) {
                merged.extend(live.next());
            }
            if live.peek().is_some_and(|e| e.offset == f.offset) {
                merged.extend(live.next());
            } else {
                merged.push(Entry {
                    offset: f.offset,
                    at: now.checked_sub(f.age).unwrap_or(now),
                    frame: f.frame.clone(),
                });
            }
        }
        merged.extend(live);
        log.last = log.last.max(fetched.last);
        // Only the run that ends at `last` without a hole can be replayed.
        let mut start = merged.len();
        let mut expect = log.last;
        while start > 0 && merged[start - 1].offset == expect {
            start -= 1;
            expect = expect.saturating_sub(1);
        }
        for e in merged.drain(start..) {
            self.push(log, e.offset, e.at, e.frame);
        }
    }

    fn push(&self, log: &mut Log, offset: u64, at: Instant, frame: Arc<OutFrame>) {
        let e = Entry { offset, at, frame };
        let size = entry_bytes(&e);
        log.entries.push_back(e);
        log.bytes += size;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.trim(log, Instant::now());
    }

    fn clear(&self, log: &mut Log) {
        let freed: usize = log.entries.drain(..).map(|e| entry_bytes(&e)).sum();
        log.bytes -= freed;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
    }

    /// A new log under `epoch` (from Redis) whose newest offset is `last`.
    fn restart(&self, log: &mut Log, epoch: &str, last: u64) {
        self.clear(log);
        log.gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
        log.epoch = epoch.into();
        log.last = last;
    }

    /// The epoch of `topic`'s log, if it has one (tests, diagnostics).
    pub fn epoch_of(&self, topic: &str) -> Option<Arc<str>> {
        let log = self.logs.get(topic).map(|l| l.value().clone())?;
        let g = lock(&log);
        Some(g.epoch.clone())
    }

    /// Drops the least recently used logs until history is back under
    /// `EVICT_TO_PERCENT` of the cap.
    fn evict(&self) {
        let Ok(_one) = self.evicting.try_lock() else {
            return;
        };
        let target = self.cfg.max_bytes / 100 * EVICT_TO_PERCENT;
        let mut by_age: Vec<(Instant, Arc<str>, Shared)> = self
            .logs
            .iter()
            .map(|e| {
                let used = e
                    .value()
                    .try_lock()
                    .map_or_else(|_| Instant::now(), |g| g.last_used);
                (used, e.key().clone(), e.value().clone())
            })
            .collect();
        by_age.sort_by_key(|(used, ..)| *used);
        for (_, name, log) in by_age {
            if self.bytes() <= target {
                break;
            }
            let mut g = lock(&log);
            if g.dead {
                continue;
            }
            g.dead = true;
            g.entries.clear();
            self.bytes.fetch_sub(g.bytes, Ordering::Relaxed);
            g.bytes = 0;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            self.logs.remove_if(&name, |_, v| Arc::ptr_eq(v, &log));
        }
    }
}

/// 16 hex digits from std's randomly keyed hasher, the pid and the time.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(size: usize, max_bytes: usize) -> History {
        History::new(HistoryConfig {
            size,
            ttl: None,
            max_bytes,
            topics: Vec::new(),
        })
    }

    #[test]
    fn topic_rules_first_match_wins_and_size_zero_keeps_none() {
        let rule = |pattern: &str, size| TopicRule {
            pattern: pattern.into(),
            size,
            ttl: None,
        };
        let cfg = HistoryConfig {
            size: 10,
            ttl: None,
            max_bytes: 1 << 20,
            topics: vec![rule("chat.*", 2), rule("chat.big", 50), rule("quiet", 0)],
        };
        assert_eq!(cfg.limits("chat.big").size, 2);
        assert_eq!(cfg.limits("chat").size, 10);
        assert_eq!(cfg.limits("other").size, 10);
        let h = History::new(cfg);
        assert!(!h.keeps("quiet") && h.keeps("chat.x"));
        for _ in 0..5 {
            put(&h, "chat.x", "m");
        }
        let epoch = h.epoch_of("chat.x").unwrap();
        let s = h.subscribe("chat.x", Some((3, &epoch)), |_| {});
        assert_eq!((s.recovered, s.replay.len()), (Some(true), 2));
        let s = h.subscribe("chat.x", Some((2, &epoch)), |_| {});
        assert_eq!(s.recovered, Some(false));
    }

    #[test]
    fn the_mirror_drops_duplicates_restarts_on_a_new_epoch_and_merges_a_read() {
        let h = h(100, 1 << 20);
        let at = |h: &History, epoch: &str, o: u64| {
            h.append_at("t", epoch, o, || OutFrame::text(b"x"), |seq, _| seq.offset)
        };
        assert_eq!(at(&h, "e1", 5), Some(5));
        assert_eq!(at(&h, "e1", 5), None, "duplicate");
        assert_eq!(at(&h, "e1", 6), Some(6));
        // Offsets 1..=4 came from Redis: merged, the resume after 2 replays 3..=6.
        let fetched = Fetched {
            epoch: "e1".into(),
            last: 6,
            entries: (3..=6)
                .map(|offset| FetchedEntry {
                    offset,
                    age: Duration::ZERO,
                    frame: OutFrame::text(b"y"),
                })
                .collect(),
        };
        let arrivals = h.mirror_state("t", 0).2;
        let (recovered, n, last) = h.resume_with("t", Some((2, "e1")), fetched, arrivals, |s| {
            (s.recovered, s.replay.len(), s.last.offset)
        });
        assert_eq!((recovered, n, last), (Some(true), 4, 6));
        // A new epoch starts over.
        assert_eq!(at(&h, "e2", 1), Some(1));
        assert_eq!(&*h.epoch_of("t").unwrap(), "e2");
    }

    fn put(h: &History, topic: &str, body: &str) -> Seq {
        h.append(topic, |_, _| OutFrame::text(body.as_bytes()), |seq, _| seq)
    }

    #[test]
    fn offsets_grow_by_one_and_resume_replays_after_the_offset() {
        let h = h(3, 1 << 20);
        for i in 1..=5 {
            assert_eq!(put(&h, "t", "x").offset, i);
        }
        let epoch = h.epoch_of("t").unwrap();
        let s = h.subscribe("t", Some((3, &epoch)), |_| {});
        assert_eq!(
            (s.recovered, s.last.offset, s.replay.len()),
            (Some(true), 5, 2)
        );
        // 1 fell out (3 kept: 3, 4, 5): resuming after 1 needs 2.
        let s = h.subscribe("t", Some((1, &epoch)), |_| {});
        assert_eq!((s.recovered, s.replay.len()), (Some(false), 0));
        let s = h.subscribe("t", Some((2, &epoch)), |_| {});
        assert_eq!((s.recovered, s.replay.len()), (Some(true), 3));
        let s = h.subscribe("t", Some((5, "other")), |_| {});
        assert_eq!(s.recovered, Some(false));
        let s = h.subscribe("t", Some((5, &epoch)), |_| {});
        assert_eq!((s.recovered, s.replay.len()), (Some(true), 0));
    }

    #[test]
    fn the_process_cap_drops_whole_old_topics_and_changes_their_epoch() {
        let h = h(100, 4096);
        put(&h, "old", &"a".repeat(500));
        let old_epoch = h.epoch_of("old").unwrap();
        for i in 0..20 {
            put(&h, &format!("new{i}"), &"b".repeat(100));
        }
        assert!(h.bytes() <= 4096, "{}", h.bytes());
        assert!(h.evictions.load(Ordering::Relaxed) > 0);
        let s = h.subscribe("old", Some((1, &old_epoch)), |_| {});
        assert_eq!(s.recovered, Some(false));
        assert_ne!(s.epoch, old_epoch);
        assert_eq!(s.last.offset, 0);
    }
}

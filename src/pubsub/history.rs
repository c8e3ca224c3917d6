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
//! Single node only. Keeping positions in a shared store (so any node can
//! serve a resume) would replace this type behind the same three calls:
//! [`History::append`], [`History::subscribe`] and [`History::epoch_of`].

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

/// History settings (`--history-size`, `--history-ttl`, `--history-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Messages kept per topic (> 0: history is on).
    pub size: usize,
    /// Messages older than this are not replayed (and are dropped).
    pub ttl: Option<Duration>,
    /// Process-wide cap on stored history, bytes.
    pub max_bytes: usize,
}

/// A message's position: the log it belongs to (`gen`, unique within the
/// process; the epoch string names it for clients) and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq {
    pub gen: u64,
    pub offset: u64,
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

struct Log {
    gen: u64,
    epoch: Arc<str>,
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
            resumed: AtomicU64::new(0),
            not_resumed: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> HistoryConfig {
        self.cfg
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
        while log.entries.len() > self.cfg.size
            || log
                .entries
                .front()
                .zip(self.cfg.ttl)
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
            let last = Seq {
                gen: log.gen,
                offset: log.last,
            };
            join(last);
            let mut replay = Vec::new();
            let recovered = since.map(|(offset, epoch)| {
                // Everything after `offset` must still be here: the oldest
                // entry kept is at most offset + 1 (or nothing came since).
                let oldest = log.entries.front().map_or(log.last + 1, |e| e.offset);
                let ok = epoch == &*log.epoch && offset <= log.last && oldest <= offset + 1;
                if ok {
                    replay.extend(
                        log.entries
                            .iter()
                            .filter(|e| e.offset > offset)
                            .map(|e| e.frame.clone()),
                    );
                }
                ok
            });
            Snapshot {
                epoch: log.epoch.clone(),
                last,
                recovered,
                replay,
            }
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
        })
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

//! The sharded bridge's subscriber side: the supervisor thread (which
//! channels this node wants, which master each is subscribed at, one
//! connection per master, following the slot map) and one reader thread
//! per shard connection (relays what Redis pushes to the workers).

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::Value;

use super::{Shared, CONNECT_TIMEOUT, IO_TIMEOUT, TOPOLOGY_EVERY};
use crate::cluster::bridge::spawn;
use crate::cluster::slots::key_slot;
use crate::cluster::wire::{self, Target};
use crate::pubsub::users;

/// Supervisor tick: how quickly topic changes reach Redis.
const TICK: Duration = Duration::from_millis(20);
/// How long a master that refused a connection is left alone.
const RETRY_CONNECT: Duration = Duration::from_millis(100);

/// What a reader tells the supervisor.
enum Event {
    /// The connection ended.
    Down { addr: String, generation: u64 },
    /// Redis dropped (or confirmed dropping) a subscription.
    Unsubscribed {
        addr: String,
        generation: u64,
        channel: String,
    },
    /// A subscription was refused: the slot map is stale.
    Moved,
}

struct SubConn {
    writer: TcpStream,
    generation: u64,
    reader: JoinHandle<()>,
}

pub(super) struct Supervisor {
    shared: Arc<Shared>,
    changes: Receiver<Arc<str>>,
    resync: Arc<AtomicBool>,
    /// Channels this node needs.
    wanted: HashSet<String>,
    /// Wanted channels subscribed, and at which master.
    placed: HashMap<String, String>,
    conns: HashMap<String, SubConn>,
    next_gen: u64,
    events: (Sender<Event>, Receiver<Event>),
    need_refresh: bool,
    /// Masters that refused a connection, and when to try again.
    retry_at: HashMap<String, Instant>,
}

impl Supervisor {
    pub(super) fn new(
        shared: Arc<Shared>,
        changes: Receiver<Arc<str>>,
        resync: Arc<AtomicBool>,
    ) -> Supervisor {
        Supervisor {
            shared,
            changes,
            resync,
            wanted: HashSet::new(),
            placed: HashMap::new(),
            conns: HashMap::new(),
            next_gen: 0,
            events: crossbeam_channel::unbounded(),
            need_refresh: true,
            retry_at: HashMap::new(),
        }
    }

    pub(super) fn run(mut self) {
        self.wanted.extend(self.shared.broadcast.iter().cloned());
        let mut last_refresh = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let events: Vec<Event> = self.events.1.try_iter().collect();
            for e in events {
                self.on_event(e);
            }
            self.reconcile_topics();
            if self.need_refresh || last_refresh.elapsed() >= TOPOLOGY_EVERY {
                self.shared.refresh();
                last_refresh = Instant::now();
                self.need_refresh = false;
                self.follow_topology();
            }
            self.place();
            let complete = self.placed.len() == self.wanted.len();
            self.shared
                .stats
                .subscriber_connected
                .store(complete, Ordering::Release);
            std::thread::sleep(TICK);
        }
        for (_, c) in self.conns.drain() {
            let _ = c.writer.shutdown(Shutdown::Both);
            let _ = c.reader.join();
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Down { addr, generation } => {
                if self
                    .conns
                    .get(&addr)
                    .is_some_and(|c| c.generation == generation)
                {
                    self.drop_conn(&addr);
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(addr = %addr, "cluster: shard subscription lost; resubscribing");
                }
                self.need_refresh = true;
            }
            Event::Unsubscribed {
                addr,
                generation,
                channel,
            } => {
                let ours = self
                    .conns
                    .get(&addr)
                    .is_some_and(|c| c.generation == generation);
                if ours && self.placed.get(&channel) == Some(&addr) {
                    // Not asked for by us: its slot moved away.
                    self.placed.remove(&channel);
                    self.shared
                        .stats
                        .resubscribes
                        .fetch_add(1, Ordering::Relaxed);
                    self.need_refresh = true;
                }
            }
            Event::Moved => self.need_refresh = true,
        }
    }

    fn drop_conn(&mut self, addr: &str) {
        if let Some(c) = self.conns.remove(addr) {
            let _ = c.writer.shutdown(Shutdown::Both);
            // The reader ends on the shutdown; it never blocks on us.
            let _ = c.reader.join();
            self.shared
                .stats
                .shard_connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.placed.retain(|_, a| a != addr);
    }

    /// Brings the wanted set in line with the topic directory, for the
    /// hinted topics (or all after a lost hint).
    fn reconcile_topics(&mut self) {
        let mut check: HashSet<Arc<str>> = self.changes.try_iter().collect();
        if self.resync.swap(false, Ordering::AcqRel) {
            check.extend(self.shared.hub.directory.topics());
            // Topics wanted before but perhaps gone now.
            let prefix = &self.shared.cfg.prefix;
            for c in &self.wanted {
                match wire::parse_channel(prefix, c) {
                    Some(Target::Topic(t)) => {
                        check.insert(Arc::from(t));
                    }
                    Some(Target::User(u)) => {
                        check.insert(Arc::from(users::user_topic(u)));
                    }
                    _ => {}
                }
            }
        }
        let mut leave: HashMap<String, Vec<String>> = HashMap::new();
        for t in check {
            let channel = self.shared.channel_of(&t);
            let wanted = !self.shared.hub.directory.workers_for(&t).is_empty();
            if wanted {
                self.wanted.insert(channel);
            } else if self.wanted.remove(&channel) {
                self.shared
                    .dedup
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(&channel);
                if let Some(addr) = self.placed.remove(&channel) {
                    leave.entry(addr).or_default().push(channel);
                }
            }
        }
        for (addr, channels) in leave {
            self.command(&addr, "SUNSUBSCRIBE", channels);
        }
    }

    /// After a slot map change: channels subscribed at a master that no
    /// longer owns their slot move, and connections to former masters close.
    fn follow_topology(&mut self) {
        let topology = self.shared.topology();
        let mut moved: HashMap<String, Vec<String>> = HashMap::new();
        for (channel, addr) in &self.placed {
            let owner = topology.owner(key_slot(channel.as_bytes()));
            if owner != Some(addr.as_str()) {
                moved.entry(addr.clone()).or_default().push(channel.clone());
            }
        }
        for (addr, channels) in moved {
            for c in &channels {
                self.placed.remove(c);
            }
            self.shared
                .stats
                .resubscribes
                .fetch_add(channels.len() as u64, Ordering::Relaxed);
            self.command(&addr, "SUNSUBSCRIBE", channels);
        }
        let gone: Vec<String> = self
            .conns
            .keys()
            .filter(|a| !topology.masters().contains(a))
            .cloned()
            .collect();
        for addr in gone {
            self.drop_conn(&addr);
        }
    }

    /// Subscribes every wanted channel not yet subscribed, at its slot's
    /// master, one `SSUBSCRIBE` per slot (Redis requires one slot per call).
    fn place(&mut self) {
        if self.placed.len() == self.wanted.len() {
            return;
        }
        let topology = self.shared.topology();
        let mut by_master: HashMap<String, HashMap<u16, Vec<String>>> = HashMap::new();
        for c in &self.wanted {
            if self.placed.contains_key(c) {
                continue;
            }
            let slot = key_slot(c.as_bytes());
            match topology.owner(slot) {
                Some(addr) => by_master
                    .entry(addr.to_string())
                    .or_default()
                    .entry(slot)
                    .or_default()
                    .push(c.clone()),
                None => self.need_refresh = true,
            }
        }
        for (addr, slots) in by_master {
            if !self.conns.contains_key(&addr) && !self.open(&addr) {
                self.need_refresh = true;
                continue;
            }
            for (_, channels) in slots {
                if !self.command(&addr, "SSUBSCRIBE", channels.clone()) {
                    break;
                }
                for c in channels {
                    self.placed.insert(c, addr.clone());
                }
            }
        }
    }

    /// Opens a subscriber connection to `addr` and starts its reader. A
    /// master that refused is tried again after [`RETRY_CONNECT`] (and
    /// logged once per outage), not every tick.
    fn open(&mut self, addr: &str) -> bool {
        let failing = self.retry_at.get(addr).copied();
        if failing.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let stream = match dial(addr) {
            Ok(s) => s,
            Err(e) => {
                if failing.is_none() {
                    tracing::warn!(addr, error = %e, "cluster: cannot reach shard (subscriber)");
                }
                self.retry_at
                    .insert(addr.to_string(), Instant::now() + RETRY_CONNECT);
                return false;
            }
        };
        self.retry_at.remove(addr);
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(_) => return false,
        };
        self.next_gen += 1;
        let generation = self.next_gen;
        let (shared, events, a) = (self.shared.clone(), self.events.0.clone(), addr.to_string());
        let handle = spawn("wsgate-cluster-shard", move || {
            read_shard(reader, &a, generation, &shared, &events)
        });
        self.conns.insert(
            addr.to_string(),
            SubConn {
                writer: stream,
                generation,
                reader: handle,
            },
        );
        self.shared
            .stats
            .shard_connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(addr, "cluster: shard subscriber connected");
        true
    }

    /// Writes one (un)subscribe command; on failure the connection is
    /// dropped (its channels are placed again later). Returns success.
    fn command(&mut self, addr: &str, cmd: &str, channels: Vec<String>) -> bool {
        let Some(c) = self.conns.get_mut(addr) else {
            return false;
        };
        let mut packed = redis::cmd(cmd);
        for ch in &channels {
            packed.arg(ch);
        }
        if c.writer.write_all(&packed.get_packed_command()).is_err() {
            self.drop_conn(addr);
            self.need_refresh = true;
            return false;
        }
        true
    }
}

fn dial(addr: &str) -> std::io::Result<TcpStream> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("address does not resolve"))?;
    let s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A shard connection's reader: relays messages until the connection ends.
fn read_shard(
    stream: TcpStream,
    addr: &str,
    generation: u64,
    shared: &Shared,
    events: &Sender<Event>,
) {
    let mut parser = redis::Parser::new();
    let mut reader = BufReader::new(stream);
    // Channels Redis says this connection holds (its replies carry it).
    let mut confirmed = 0u64;
    let subscriptions = &shared.stats.shard_subscriptions;
    loop {
        let value = match parser.parse_value(&mut reader) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::Acquire) {
                    tracing::debug!(addr, error = %e, "cluster: shard connection ended");
                }
                subscriptions.fetch_sub(confirmed, Ordering::Relaxed);
                let _ = events.send(Event::Down {
                    addr: addr.to_string(),
                    generation,
                });
                return;
            }
        };
        let items = match value {
            Value::Array(items) => items,
            Value::Push { kind, mut data } => {
                data.insert(0, Value::BulkString(kind.to_string().into_bytes()));
                data
            }
            Value::ServerError(e) => {
                tracing::debug!(addr, error = %e.code(), "cluster: subscription refused");
                let _ = events.send(Event::Moved);
                continue;
            }
            _ => continue,
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        };
        let Some(kind) = text(items.first()) else {
            continue;
        };
        let is_ack = kind == "ssubscribe" || kind == "sunsubscribe";
        if let (true, Some(Value::Int(n))) = (is_ack, items.get(2)) {
            let n = u64::try_from(*n).unwrap_or(0);
            if n >= confirmed {
                subscriptions.fetch_add(n - confirmed, Ordering::Relaxed);
            } else {
                subscriptions.fetch_sub(confirmed - n, Ordering::Relaxed);
            }
            confirmed = n;
        }
        match kind.as_str() {
            "smessage" => {
                if let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (items.get(1), items.get(2))
                {
                    if let Ok(channel) = std::str::from_utf8(ch) {
                        shared.relay(channel, payload);
                    }
                }
            }
            "sunsubscribe" => {
                if let Some(channel) = text(items.get(1)) {
                    let _ = events.send(Event::Unsubscribed {
                        addr: addr.to_string(),
                        generation,
                        channel,
                    });
                }
            }
            _ => {}
        }
    }
}

//! The `restart` scenario: N clients subscribed to K history topics of a
//! server started with `--history-size`, a publisher at a steady rate, and
//! mid-run either every client's connection dropped at once (a network blip
//! or a load-balancer reset) or a restart command run (`--restart-cmd`). Every
//! client reconnects after a random delay and resumes with `since`; from the
//! offsets it sees, each client counts messages lost, duplicated and out of
//! order, and the time from losing its connection to being subscribed again.
//! Beside them, probe clients that were never disconnected open a fresh
//! connection at a steady rate (`--probe-rate`), so the run shows what the
//! reconnection storm costs a newcomer's handshake; and the number of
//! clients connected is sampled every 100 ms for a chart.
//!
//! Owns the client-side bookkeeping of that run only; sockets are the
//! engine's ([`crate::client`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{Engine, Epoch, Ev, MsgKind, Pos};
use crate::procfs;
use crate::results::{failures, new_histogram, per, Failures, Latency, Results, Sample};
use crate::Common;

#[derive(Args, Debug)]
pub struct RestartArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribing clients.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// History topics the clients spread over.
    #[arg(long, default_value_t = 10)]
    pub topics: u64,
    /// Publishes per second (over all topics, round robin).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Second of the run at which the clients lose their connections.
    #[arg(long, default_value_t = 4.0)]
    pub at: f64,
    /// Run this shell command at `--at` (e.g. a script that starts a new
    /// node on the port and stops the old one) instead of dropping every
    /// connection from the client side.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Clients reconnect after a random delay up to this many ms.
    #[arg(long, default_value_t = 1000)]
    pub reconnect_jitter_ms: u64,
    /// Handshakes per second of probe clients that were never disconnected
    /// (each opens a connection and closes it once upgraded), from the start
    /// of publishing to the end (0 = none).
    #[arg(long, default_value_t = 20.0)]
    pub probe_rate: f64,
}

/// `restart`: what resuming clients saw across the disruption.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Restart {
    pub clients: u64,
    pub topics: u64,
    pub published: u64,
    pub delivered: u64,
    /// Resumes answered `recovered:true` / `recovered:false`.
    pub resumed: u64,
    pub unrecovered: u64,
    /// Messages a client never got (gaps in its offsets, and what it was
    /// still missing at the end), counting only clients whose resumes all
    /// recovered.
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Clients that saw a new epoch (their history was lost).
    pub epoch_changes: u64,
    pub failed_connects: u64,
    #[serde(default)]
    pub failures: Failures,
    /// From losing the connection to `subscribed` again.
    pub reconnection: Latency,
    /// Handshake latency of every (re)connection.
    pub handshake_latency: Latency,
    /// Probe handshakes (clients the disruption did not touch) outside the
    /// storm: before the disruption and after every client is back.
    #[serde(default)]
    pub unaffected_handshake_calm: Latency,
    /// Probe handshakes started between the disruption and the moment every
    /// client was subscribed again.
    #[serde(default)]
    pub unaffected_handshake_storm: Latency,
    /// Clients connected and subscribed, every 100 ms from the first
    /// connect (`open`), with the server's RSS when `--server-pid` is given.
    #[serde(default)]
    pub timeseries: Vec<Sample>,
    pub publishes_per_sec: Option<f64>,
    /// wss:// only: the clients' handshakes (probes not counted).
    #[serde(flatten)]
    pub tls: Option<crate::results::TlsHandshakes>,
}

struct Client {
    topic: u64,
    key: Option<usize>,
    last: u64,
    epoch: Option<Epoch>,
    down_since: Option<Instant>,
    /// Any resume of this client came back `recovered:false`.
    unrecovered: bool,
}

const PUBLISHER: usize = usize::MAX;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

// The probe thread's phase, set by the main loop: before publishing, calm,
// inside the storm (disruption until every client is back), done.
const PROBE_WAIT: u8 = 0;
const PROBE_CALM: u8 = 1;
const PROBE_STORM: u8 = 2;
const PROBE_STOP: u8 = 3;

/// Opens `rate` connections a second while the phase is calm or storm, each
/// closed once upgraded; returns the handshake latencies of those started
/// calm and those started in the storm.
fn probe(
    mut engine: Engine,
    rate: f64,
    phase: &AtomicU8,
) -> Result<(Histogram<u64>, Histogram<u64>), String> {
    let (mut calm, mut storm) = (new_histogram(), new_histogram());
    let mut started_in_storm: HashMap<usize, bool> = HashMap::new();
    let mut events = Vec::new();
    let mut next = Instant::now();
    let every = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == PROBE_STOP {
            break;
        }
        let now = Instant::now();
        if let Some(every) = every.filter(|_| p != PROBE_WAIT && now >= next) {
            next = now + every;
            if let Some(key) = engine.connect(&mut events) {
                started_in_storm.insert(key, p == PROBE_STORM);
            }
        }
        engine
            .poll(Duration::from_millis(2), &mut events)
            .map_err(|e| e.to_string())?;
        for ev in events.drain(..) {
            if let Ev::Opened { key, handshake } = ev {
                let h = match started_in_storm.remove(&key) {
                    Some(true) => &mut storm,
                    _ => &mut calm,
                };
                let _ = h.record(handshake.as_micros() as u64);
                engine.drop_conn(key);
            }
        }
    }
    engine.close_all();
    Ok((calm, storm))
}

pub fn restart(a: RestartArgs) -> Result<(), String> {
    let mut engine =
        Engine::new(a.common.target()?, a.common.src_ips()?).map_err(|e| e.to_string())?;
    engine.positions = true;
    // Probes run on a thread and engine of their own, so a probe's handshake
    // is never confused with a reconnecting client's and is not timed by
    // this loop's work.
    let probe_phase = Arc::new(AtomicU8::new(PROBE_WAIT));
    let probes = {
        let engine =
            Engine::new(a.common.target()?, a.common.src_ips()?).map_err(|e| e.to_string())?;
        let phase = Arc::clone(&probe_phase);
        let rate = a.probe_rate;
        std::thread::spawn(move || probe(engine, rate, &phase))
    };
    let mut storm = false;
    let began = Instant::now();
    let mut timeseries = vec![Sample {
        t: 0.0,
        open: 0,
        server_rss: procfs::rss(&a.common.server_pids),
    }];
    let mut next_sample = began + SAMPLE_EVERY;
    let mut connected = 0u64;
    let hard_deadline = Instant::now() + Duration::from_secs(a.common.timeout);
    let n = a.connections as usize;
    let mut clients: Vec<Client> = (0..n)
        .map(|i| Client {
            topic: i as u64 % a.topics.max(1),
            key: None,
            last: 0,
            epoch: None,
            down_since: None,
            unrecovered: false,
        })
        .collect();
    let mut by_key: HashMap<usize, usize> = HashMap::new();
    // Logical clients waiting for a connection, in the order they asked.
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut due: Vec<(Instant, usize)> = Vec::new();
    let mut events = Vec::new();
    let mut reconnect = new_histogram();
    let mut handshakes = new_histogram();
    let (mut resumed, mut unrecovered, mut lost, mut duplicated, mut out_of_order) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut delivered, mut epoch_changes, mut failed) = (0u64, 0u64, 0u64);
    let mut publisher: Option<usize> = None;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut jitter = |max_ms: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_millis(rng % (max_ms + 1))
    };

    // Connect everyone (and the publisher) and subscribe before publishing.
    waiting.push_back(PUBLISHER);
    engine.connect(&mut events);
    for i in 0..n {
        waiting.push_back(i);
        engine.connect(&mut events);
    }
    let topic_name = |t: u64| format!("restart-{t}");
    let mut subscribed = 0usize;
    let mut start: Option<Instant> = None;
    let mut published = 0u64;
    let mut disrupted = false;
    let mut quiet_since = Instant::now();
    loop {
        let now = Instant::now();
        if now > hard_deadline {
            return Err("the run passed --timeout".into());
        }
        if start.is_none() && subscribed == n && publisher.is_some() {
            start = Some(now);
            eprintln!("restart: {n} clients subscribed; publishing");
        }
        if let Some(t0) = start {
            let elapsed = now.duration_since(t0).as_secs_f64();
            let publishing = elapsed < a.duration as f64;
            if publishing {
                let want = (elapsed * a.rate) as u64;
                while published < want {
                    let Some(pk) = publisher else { break };
                    let topic = topic_name(published % a.topics.max(1));
                    let text = format!(
                        r#"{{"type":"publish","topic":"{topic}","payload":{{"seq":{published}}}}}"#
                    );
                    if !engine.send_text(pk, text.as_bytes()) {
                        break;
                    }
                    published += 1;
                }
            }
            if !disrupted && elapsed >= a.at {
                disrupted = true;
                storm = true;
                match &a.restart_cmd {
                    Some(cmd) => {
                        eprintln!("restart: running {cmd:?}");
                        std::process::Command::new("sh")
                            .args(["-c", cmd])
                            .spawn()
                            .map_err(|e| format!("--restart-cmd: {e}"))?;
                    }
                    None => {
                        eprintln!("restart: dropping every client connection");
                        for (i, c) in clients.iter_mut().enumerate() {
                            if let Some(k) = c.key.take() {
                                if c.down_since.is_none() {
                                    connected = connected.saturating_sub(1);
                                }
                                engine.drop_conn(k);
                                by_key.remove(&k);
                                c.down_since = Some(now);
                                due.push((now + jitter(a.reconnect_jitter_ms), i));
                            }
                        }
                    }
                }
            }
            // Done once publishing stopped, everyone is back, and nothing
            // arrived for a second.
            let all_back = clients
                .iter()
                .all(|c| c.key.is_some() && c.down_since.is_none());
            if storm && all_back {
                storm = false;
            }
            probe_phase.store(
                match (publishing, storm) {
                    (false, _) => PROBE_STOP,
                    (true, true) => PROBE_STORM,
                    (true, false) => PROBE_CALM,
                },
                Ordering::Relaxed,
            );
            if !publishing && all_back && now.duration_since(quiet_since) > Duration::from_secs(1) {
                break;
            }
        }
        // Reconnects whose delay is up.
        let mut i = 0;
        while i < due.len() {
            if due[i].0 <= now {
                let (_, id) = due.swap_remove(i);
                waiting.push_back(id);
                engine.connect(&mut events);
            } else {
                i += 1;
            }
        }
        if now >= next_sample {
            next_sample = now + SAMPLE_EVERY;
            timeseries.push(Sample {
                t: now.duration_since(began).as_secs_f64(),
                open: connected,
                server_rss: procfs::rss(&a.common.server_pids),
            });
        }
        engine
            .poll(Duration::from_millis(5), &mut events)
            .map_err(|e| e.to_string())?;

        for ev in events.drain(..) {
            match ev {
                Ev::Opened { key, handshake } => {
                    let _ = handshakes.record(handshake.as_micros() as u64);
                    let Some(id) = waiting.pop_front() else {
                        engine.drop_conn(key);
                        continue;
                    };
                    if id == PUBLISHER {
                        publisher = Some(key);
                        by_key.insert(key, PUBLISHER);
                        continue;
                    }
                    let c = &mut clients[id];
                    c.key = Some(key);
                    by_key.insert(key, id);
                    let topic = topic_name(c.topic);
                    let text = match &c.epoch {
                        None => format!(r#"{{"type":"subscribe","topic":"{topic}"}}"#),
                        Some(e) => format!(
                            r#"{{"type":"subscribe","topic":"{topic}","since":{{"offset":{},"epoch":"{}"}}}}"#,
                            c.last,
                            e.as_str()
                        ),
                    };
                    engine.send_text(key, text.as_bytes());
                }
                Ev::Failed { .. } => {
                    failed += 1;
                    if let Some(id) = waiting.pop_front() {
                        due.push((now + Duration::from_millis(100) + jitter(200), id));
                    }
                }
                Ev::Closed { key, .. } => match by_key.remove(&key) {
                    Some(PUBLISHER) => {
                        publisher = None;
                        due.push((now + jitter(a.reconnect_jitter_ms), PUBLISHER));
                    }
                    Some(id) => {
                        let c = &mut clients[id];
                        if c.down_since.is_none() && c.epoch.is_some() {
                            connected = connected.saturating_sub(1);
                        }
                        c.key = None;
                        c.down_since.get_or_insert(now);
                        due.push((now + jitter(a.reconnect_jitter_ms), id));
                    }
                    None => {}
                },
                Ev::Text {
                    key,
                    kind,
                    pos:
                        Some(Pos {
                            offset,
                            epoch,
                            recovered,
                        }),
                    ..
                } => {
                    let Some(&id) = by_key.get(&key) else {
                        continue;
                    };
                    if id == PUBLISHER {
                        continue;
                    }
                    let c = &mut clients[id];
                    match kind {
                        MsgKind::Subscribed => {
                            if c.epoch.is_none() {
                                subscribed += 1;
                                connected += 1;
                            } else if c.down_since.is_some() {
                                connected += 1;
                            }
                            match recovered {
                                Some(true) => resumed += 1,
                                Some(false) => {
                                    unrecovered += 1;
                                    c.unrecovered = true;
                                }
                                None => {}
                            }
                            if recovered != Some(true) {
                                // Live starts after `offset`: nothing before
                                // it will come.
                                c.last = offset;
                            }
                            c.epoch = Some(epoch);
                            if let Some(t) = c.down_since.take() {
                                let _ = reconnect.record(now.duration_since(t).as_micros() as u64);
                            }
                        }
                        MsgKind::Message => {
                            delivered += 1;
                            quiet_since = now;
                            if Some(epoch) != c.epoch {
                                epoch_changes += 1;
                                c.epoch = Some(epoch);
                                c.last = offset;
                                continue;
                            }
                            if offset == c.last + 1 {
                            } else if offset > c.last + 1 {
                                if !c.unrecovered {
                                    lost += offset - c.last - 1;
                                }
                            } else if offset == c.last {
                                duplicated += 1;
                            } else {
                                out_of_order += 1;
                            }
                            c.last = c.last.max(offset);
                        }
                        _ => {}
                    }
                }
                Ev::Text { .. } => {}
            }
        }
    }
    // What a client still misses at the end: the newest offset any client
    // of its topic (in its epoch) saw, less its own.
    let mut newest: HashMap<(u64, Option<Epoch>), u64> = HashMap::new();
    for c in &clients {
        let e = newest.entry((c.topic, c.epoch)).or_default();
        *e = (*e).max(c.last);
    }
    for c in clients.iter().filter(|c| !c.unrecovered) {
        lost += newest[&(c.topic, c.epoch)] - c.last;
    }
    let window = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    engine.close_all();
    probe_phase.store(PROBE_STOP, Ordering::Relaxed);
    let (probe_calm, probe_storm) = probes.join().map_err(|_| "the probe thread panicked")??;
    timeseries.push(Sample {
        t: began.elapsed().as_secs_f64(),
        open: connected,
        server_rss: procfs::rss(&a.common.server_pids),
    });
    let result = Results::Restart(Restart {
        clients: a.connections,
        topics: a.topics,
        published,
        delivered,
        resumed,
        unrecovered,
        lost,
        duplicated,
        out_of_order,
        epoch_changes,
        failed_connects: failed,
        failures: failures(&engine.failures),
        reconnection: Latency::of(&reconnect),
        handshake_latency: Latency::of(&handshakes),
        unaffected_handshake_calm: Latency::of(&probe_calm),
        unaffected_handshake_storm: Latency::of(&probe_storm),
        timeseries,
        publishes_per_sec: per(published as f64, window.min(a.duration as f64)),
        tls: engine.tls_handshakes(),
    });
    crate::scenarios::finish("wsbench restart", &a.common, result)
}

//! The results of a run as typed documents: built by the scenarios, written
//! as JSON (`--out`, and by child processes to their parent), read back by
//! the parent and by `wsbench report`. One definition of every figure, so a
//! renamed or retyped field is a compile error rather than a chart that
//! quietly finds nothing.
//!
//! Every field that a scenario may leave out is optional or defaulted, so
//! result files written by earlier versions still load.

use std::collections::{BTreeMap, HashMap};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One run's results, tagged by `"scenario"`. (`hold` writes a `connect`
/// document: it is the connect scenario with its hold as the point.)
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Results {
    /// Boxed: by far the largest document.
    Connect(Box<Connect>),
    Broadcast(Broadcast),
    Echo(Echo),
    Churn(Churn),
    Restart(crate::restart::Restart),
}

impl Results {
    pub fn scenario(&self) -> &'static str {
        match self {
            Results::Connect(_) => "connect",
            Results::Broadcast(_) => "broadcast",
            Results::Echo(_) => "echo",
            Results::Churn(_) => "churn",
            Results::Restart(_) => "restart",
        }
    }

    /// How many connections the run was about.
    pub fn scale(&self) -> u64 {
        match self {
            Results::Connect(c) => c.target,
            Results::Broadcast(b) => b.listeners,
            Results::Echo(e) => e.connections,
            Results::Churn(c) => c.held,
            Results::Restart(r) => r.clients,
        }
    }

    /// The latency distributions with samples, by field name.
    pub fn latencies(&self) -> Vec<(&'static str, &Latency)> {
        let all: Vec<(&'static str, Option<&Latency>)> = match self {
            Results::Connect(c) => vec![
                (
                    "broadcast_fanout_completion",
                    c.broadcast.as_ref().map(|b| &b.broadcast_fanout_completion),
                ),
                ("handshake_latency", c.handshake_latency.as_ref()),
            ],
            Results::Broadcast(b) => vec![("fanout_completion", Some(&b.fanout_completion))],
            Results::Echo(e) => vec![("latency", Some(&e.latency))],
            Results::Churn(_) => vec![],
            Results::Restart(r) => vec![
                ("reconnection", Some(&r.reconnection)),
                ("handshake_latency", Some(&r.handshake_latency)),
                (
                    "unaffected_handshake_calm",
                    Some(&r.unaffected_handshake_calm),
                ),
                (
                    "unaffected_handshake_storm",
                    Some(&r.unaffected_handshake_storm),
                ),
            ],
        };
        all.into_iter()
            .filter_map(|(name, l)| Some((name, l?)))
            .filter(|(_, l)| l.percentiles.is_some())
            .collect()
    }

    /// The ramp's samples and the server's RSS before it, if the run
    /// recorded a ramp (for `restart`: connected clients through the
    /// disruption).
    pub fn ramp(&self) -> Option<(&[Sample], Option<u64>)> {
        match self {
            Results::Connect(c) => Some((
                &c.timeseries,
                c.server.as_ref().map(|s| s.server_rss_before),
            )),
            Results::Restart(r) => Some((&r.timeseries, None)),
            _ => None,
        }
    }
}

/// A figure divided by another, to two decimals; `None` when the divisor is
/// zero (written as `null`, shown as `–`).
pub fn per(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| (n / d * 100.0).round() / 100.0)
}

/// A latency distribution in µs: `count`, and the percentiles when there
/// were samples.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    #[serde(flatten)]
    pub percentiles: Option<Percentiles>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Percentiles {
    /// p50, p90, p99, p99.9 and max, in that order.
    pub fn values_us(&self) -> [f64; 5] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
        ]
        .map(|v| v as f64)
    }
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            percentiles: (!h.is_empty()).then(|| Percentiles {
                p50_us: h.value_at_quantile(0.50),
                p90_us: h.value_at_quantile(0.90),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: (h.mean() * 10.0).round() / 10.0,
            }),
        }
    }
}

/// A histogram for latencies in µs: 1 µs .. 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

/// Connection failures by reason.
pub type Failures = BTreeMap<String, u64>;

pub fn failures(by_reason: &HashMap<&'static str, u64>) -> Failures {
    by_reason.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// One point of the ramp.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the ramp began.
    pub t: f64,
    pub open: u64,
    /// Server RSS in bytes (0 without `--server-pid`).
    #[serde(default)]
    pub server_rss: u64,
}

/// Per broadcast: (seq, connections that got it, last arrival in epoch µs).
pub type Arrival = (u64, u64, u64);

/// `connect` (and `hold`): ramp, memory per connection, hold, broadcasts.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Connect {
    /// Connections asked for.
    #[serde(default)]
    pub target: u64,
    pub opened: u64,
    pub failed: u64,
    #[serde(default)]
    pub failures: Failures,
    pub ramp_secs: f64,
    #[serde(default)]
    pub handshakes_per_sec: Option<f64>,
    /// Only from a single process (children's are not merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_latency: Option<Latency>,
    pub drops_during_hold: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<u64>,
    #[serde(default)]
    pub client_cpu_secs: f64,
    #[serde(default)]
    pub timeseries: Vec<Sample>,
    /// With `--server-pid`.
    #[serde(flatten)]
    pub server: Option<ServerFigures>,
    /// With `--broadcasts`.
    #[serde(flatten)]
    pub broadcast: Option<BroadcastFigures>,
    /// Over several load-generator processes.
    #[serde(flatten)]
    pub multi: Option<MultiFigures>,
    /// wss:// only.
    #[serde(flatten)]
    pub tls: Option<TlsHandshakes>,
    /// A child's raw arrivals, for its parent to merge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub broadcast_arrivals: Vec<Arrival>,
}

/// wss:// runs: how the connections that opened did their TLS handshake.
/// Absent for ws:// (and in results written before wss://).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsHandshakes {
    /// Full handshakes (certificate, key exchange, signature).
    pub tls_full: u64,
    /// Resumed handshakes (a ticket or session from an earlier connection).
    pub tls_resumed: u64,
}

impl TlsHandshakes {
    fn add(a: Option<TlsHandshakes>, b: Option<TlsHandshakes>) -> Option<TlsHandshakes> {
        match (a, b) {
            (Some(a), Some(b)) => Some(TlsHandshakes {
                tls_full: a.tls_full + b.tls_full,
                tls_resumed: a.tls_resumed + b.tls_resumed,
            }),
            (a, b) => a.or(b),
        }
    }
}

/// Server and kernel memory per connection and CPU per handshake.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ServerFigures {
    pub server_rss_before: u64,
    pub server_rss_after: u64,
    pub server_bytes_per_conn: f64,
    pub kernel_tcp_buffer_bytes_per_conn: f64,
    pub kernel_socket_slab_bytes_per_conn: f64,
    pub server_cpu_us_per_handshake: Option<f64>,
}

/// Broadcasts through the admin API to every connection, one in flight.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct BroadcastFigures {
    pub broadcasts: u64,
    /// From sending until the last connection had it.
    pub broadcast_fanout_completion: Latency,
    pub broadcast_missing_deliveries: u64,
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The figures of a run split over child processes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct MultiFigures {
    pub processes: u64,
    pub box_mem_used_before: u64,
    pub box_mem_used_after: u64,
    pub client_rss_after: u64,
    pub client_bytes_per_conn: f64,
}

/// What `broadcast` sends through: a topic or everyone.
#[derive(ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// To a topic the listeners subscribe to.
    Publish,
    /// To every connection.
    Broadcast,
}

/// How fast `broadcast` sent: messages per second, or the next one when
/// every listener had the previous (written as "one in flight").
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(untagged)]
pub enum Rate {
    PerSec(f64),
    Paced(Paced),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paced {
    #[serde(rename = "one in flight")]
    OneInFlight,
}

/// `broadcast`: N listeners, one sender.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub mode: Mode,
    pub listeners: u64,
    pub messages: u64,
    pub rate: Rate,
    pub payload_bytes: usize,
    pub fanout_completion: Latency,
    pub deliveries: u64,
    pub missing_deliveries: u64,
    pub window_secs: f64,
    pub deliveries_per_sec: Option<f64>,
    pub server_cpu_secs: f64,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub client_cpu_secs: f64,
    pub client_cpu_us_per_delivery: Option<f64>,
    /// Whether the listeners offered permessage-deflate.
    #[serde(default)]
    pub deflate: bool,
    /// Bytes the listeners read during the measured window, per delivery
    /// (frame headers included).
    #[serde(default)]
    pub wire_bytes_per_delivery: Option<f64>,
    /// Deliveries that arrived compressed.
    #[serde(default)]
    pub compressed_deliveries: u64,
    /// wss:// only.
    #[serde(flatten)]
    pub tls: Option<TlsHandshakes>,
}

/// `echo`: closed-loop round trips.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Echo {
    pub connections: u64,
    pub failed_to_open: u64,
    #[serde(default)]
    pub closed_by_server: u64,
    pub round_trips: u64,
    pub round_trips_per_sec: Option<f64>,
    pub latency: Latency,
    pub server_cpu_us_per_round_trip: Option<f64>,
    pub client_cpu_us_per_round_trip: Option<f64>,
    /// wss:// only.
    #[serde(flatten)]
    pub tls: Option<TlsHandshakes>,
}

/// `churn`: connections replaced per second while holding N.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Churn {
    pub held: u64,
    pub replaced: u64,
    pub reconnected: u64,
    pub failed: u64,
    #[serde(default)]
    pub failures: Failures,
    pub unexpected_drops: u64,
    pub churn_per_sec: Option<f64>,
    pub server_cpu_us_per_reconnect: Option<f64>,
    /// The load generator's own CPU per reconnect (with wss://, what a
    /// client pays per TLS handshake, full or resumed, plus the upgrade).
    #[serde(default)]
    pub client_cpu_us_per_reconnect: Option<f64>,
    /// wss:// only: the ramp's handshakes and the reconnects'.
    #[serde(flatten)]
    pub tls: Option<TlsHandshakes>,
}

/// Sums the additive figures of child results (connect scenario); the
/// parent fills in what it measured itself.
pub fn aggregate_children(children: &[Connect]) -> Connect {
    let mut failures = Failures::new();
    let tls = children
        .iter()
        .fold(None, |sum, c| TlsHandshakes::add(sum, c.tls));
    for c in children {
        for (reason, n) in &c.failures {
            *failures.entry(reason.clone()).or_default() += n;
        }
    }
    Connect {
        opened: children.iter().map(|c| c.opened).sum(),
        failed: children.iter().map(|c| c.failed).sum(),
        drops_during_hold: children.iter().map(|c| c.drops_during_hold).sum(),
        failures,
        ramp_secs: children.iter().map(|c| c.ramp_secs).fold(0.0, f64::max),
        client_cpu_secs: children.iter().map(|c| c.client_cpu_secs).sum(),
        multi: Some(MultiFigures {
            processes: children.len() as u64,
            ..MultiFigures::default()
        }),
        tls,
        ..Connect::default()
    }
}

/// Merges broadcast arrivals (of one or more processes): per message, the
/// time until the last connection anywhere had it; and how many deliveries
/// never came.
pub fn merge_arrivals<'a>(
    arrivals: impl IntoIterator<Item = &'a Arrival>,
    sent_us: &[u64],
    connections: u64,
) -> (Latency, u64) {
    let mut per_seq: HashMap<u64, (u64, u64)> = HashMap::new();
    for &(s, n, t) in arrivals {
        let e = per_seq.entry(s).or_insert((0, 0));
        e.0 += n;
        e.1 = e.1.max(t);
    }
    let mut h = new_histogram();
    let mut missing = 0;
    for (seq, sent) in sent_us.iter().enumerate() {
        let (n, last) = per_seq.get(&(seq as u64)).copied().unwrap_or((0, 0));
        missing += connections.saturating_sub(n);
        if n > 0 && last >= *sent {
            let _ = h.record((last - sent).max(1));
        }
    }
    (Latency::of(&h), missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_aggregate() {
        let child = |opened, failed, drops, failures: &[(&str, u64)], ramp, cpu| Connect {
            opened,
            failed,
            drops_during_hold: drops,
            failures: failures.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ramp_secs: ramp,
            client_cpu_secs: cpu,
            ..Connect::default()
        };
        let a = child(10, 1, 0, &[("refused", 1)], 2.0, 0.5);
        let mut b = child(20, 2, 1, &[("refused", 1), ("reset", 1)], 3.5, 0.25);
        assert_eq!(aggregate_children(&[a.clone(), b.clone()]).tls, None);
        b.tls = Some(TlsHandshakes {
            tls_full: 3,
            tls_resumed: 17,
        });
        let mut a2 = a.clone();
        a2.tls = Some(TlsHandshakes {
            tls_full: 10,
            tls_resumed: 0,
        });
        let t = aggregate_children(&[a2, b.clone()]).tls.unwrap();
        assert_eq!((t.tls_full, t.tls_resumed), (13, 17));
        let t = aggregate_children(&[a, b]);
        assert_eq!((t.opened, t.failed, t.drops_during_hold), (30, 3, 1));
        assert_eq!(t.failures["refused"], 2);
        assert_eq!(t.failures["reset"], 1);
        assert_eq!(t.ramp_secs, 3.5);
        assert_eq!(t.client_cpu_secs, 0.75);
        assert_eq!(t.multi.unwrap().processes, 2);
    }

    #[test]
    fn arrivals_merge_across_children() {
        let a = [(0, 10, 1_000_500), (1, 10, 2_000_900)];
        let b = [(0, 5, 1_001_000), (1, 4, 2_000_100)];
        let (fanout, missing) = merge_arrivals(a.iter().chain(&b), &[1_000_000, 2_000_000], 15);
        assert_eq!(fanout.count, 2);
        assert_eq!(missing, 1, "seq 1 reached 14 of 15");
        assert!(fanout.percentiles.unwrap().max_us >= 999);
    }

    #[test]
    fn latency_of_a_histogram() {
        let mut h = new_histogram();
        assert_eq!(Latency::of(&h), Latency::default());
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        let p = l.percentiles.unwrap();
        assert!(p.p99_us >= 985 && p.p50_us <= p.p90_us && p.p999_us <= p.max_us);
    }

    #[test]
    fn documents_round_trip_with_the_optional_parts_absent_or_present() {
        let mut c = Connect {
            target: 5,
            opened: 5,
            timeseries: vec![Sample {
                t: 0.5,
                open: 5,
                server_rss: 1,
            }],
            ..Connect::default()
        };
        for _ in 0..2 {
            let doc = Results::Connect(Box::new(c.clone()));
            let text = serde_json::to_string(&doc).unwrap();
            assert!(text.starts_with(r#"{"scenario":"connect","#), "{text}");
            assert_eq!(serde_json::from_str::<Results>(&text).unwrap(), doc);
            c.server = Some(ServerFigures::default());
            c.broadcast = Some(BroadcastFigures::default());
            c.multi = Some(MultiFigures::default());
            c.handshake_latency = Some(Latency::default());
            c.tls = Some(TlsHandshakes {
                tls_full: 1,
                tls_resumed: 4,
            });
        }
        // wss:// figures are top-level fields, absent for ws://.
        let text = serde_json::to_string(&Results::Connect(Box::new(c))).unwrap();
        assert!(text.contains(r#""tls_full":1,"tls_resumed":4"#), "{text}");
        let old = r#"{"scenario":"churn","held":1,"replaced":0,"reconnected":0,"failed":0,
            "unexpected_drops":0,"churn_per_sec":null,"server_cpu_us_per_reconnect":null}"#;
        let Results::Churn(ch) = serde_json::from_str(old).unwrap() else {
            panic!("a churn document")
        };
        assert_eq!(ch.tls, None);
        let empty = serde_json::to_value(Latency::default()).unwrap();
        assert_eq!(empty, serde_json::json!({"count": 0}));
        let rate = serde_json::to_value(Rate::Paced(Paced::OneInFlight)).unwrap();
        assert_eq!(rate, "one in flight");
    }

    #[test]
    fn the_committed_result_files_load() {
        // Results written by earlier runs (bench/results) still chart.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../results");
        let mut files = vec![];
        let mut dirs = vec![std::path::PathBuf::from(dir)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    files.push(p);
                }
            }
        }
        assert!(!files.is_empty());
        for p in files {
            let text = std::fs::read_to_string(&p).unwrap();
            let doc: Results =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let again = serde_json::to_string(&doc).unwrap();
            assert_eq!(serde_json::from_str::<Results>(&again).unwrap(), doc);
        }
    }
}

//! The scenarios: each drives an [`Engine`] and measures the server from
//! /proc. All are bounded in time and end by themselves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::{Engine, Ev, MsgKind};
use crate::procfs;
use crate::report::markdown;
use crate::results::{
    aggregate_children, failures, merge_arrivals, new_histogram, per, Arrival, Broadcast,
    BroadcastFigures, Churn, Connect, Echo, Latency, Mode, MultiFigures, Paced, Rate, Results,
    Sample, ServerFigures,
};
use crate::Common;

/// Snapshot of the server processes and the kernel, for before/after deltas.
struct Probe {
    rss: u64,
    cpu: Duration,
    tcp_mem: u64,
    slab: u64,
    self_cpu: Duration,
    box_mem: u64,
}

impl Probe {
    fn take(pids: &[u32]) -> Probe {
        Probe {
            rss: procfs::rss(pids),
            cpu: procfs::cpu(pids),
            tcp_mem: procfs::tcp_mem().0,
            slab: procfs::socket_slab_bytes(),
            self_cpu: procfs::self_cpu(),
            box_mem: procfs::box_mem_used(),
        }
    }
}

pub fn finish(title: &str, common: &Common, result: Results) -> Result<(), String> {
    println!("{}", markdown(title, &result));
    if let Some(path) = &common.out {
        let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
        eprintln!("wsbench: results written to {path}");
    }
    Ok(())
}

/// Connections one process can hold: the descriptor limit less a margin.
fn per_process_capacity() -> u64 {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |l| l.0);
    soft.saturating_sub(256).max(1)
}

#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// New connections per second (0 = as fast as the concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Seconds to hold every connection open after the ramp.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Seconds to let the server settle before measuring memory.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Load-generator processes at least (more if the descriptor limit needs
    /// them): spreads the client's receive work over cores so that fan-out
    /// completion measures the server rather than one client thread.
    #[arg(long, default_value_t = 1)]
    pub processes: u64,
    /// Internal: run as a child of a multi-process run.
    #[arg(long, hide = true)]
    pub child: bool,
    /// After the ramp, POST this many broadcasts to the admin API at
    /// --broadcast-admin and measure when every connection has each.
    #[arg(long, default_value_t = 0)]
    pub broadcasts: u64,
    /// Admin address (HOST:PORT) of a server node to POST /broadcast to.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub broadcast_admin: String,
}

/// `hold`: open N, keep them for T seconds answering the server's pings,
/// count the ones lost. The `connect` scenario with its hold as the point.
#[derive(Args, Clone, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Seconds to hold them (make it longer than the server's ping interval
    /// to see pings answered).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Handshakes in flight at once during the ramp.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

pub fn hold_scenario(a: HoldArgs) -> Result<(), String> {
    let mut c = ConnectArgs::ramp_only(&a.common, a.connections, a.concurrency);
    c.hold = a.duration;
    c.settle = 1;
    connect(c)
}

impl ConnectArgs {
    /// Settings for a plain ramp inside another scenario.
    fn ramp_only(common: &Common, connections: u64, concurrency: usize) -> ConnectArgs {
        ConnectArgs {
            common: common.clone(),
            connections,
            rate: 0.0,
            concurrency,
            hold: 0,
            settle: 0,
            processes: 1,
            child: false,
            broadcasts: 0,
            broadcast_admin: String::new(),
        }
    }
}

/// Wall-clock microseconds (comparable across processes on one box).
fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Per broadcast seq: (connections that got it, last arrival in epoch µs).
type Arrivals = HashMap<u64, (u64, u64)>;

/// POSTs one JSON body to /broadcast on an admin address.
fn post_broadcast(admin: &str, body: &str) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(admin).map_err(|e| format!("admin {admin}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "POST /broadcast HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).map_err(|e| e.to_string())?;
    if !resp.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "broadcast refused: {}",
            resp.lines().next().unwrap_or("")
        ));
    }
    Ok(())
}

/// What a ramp achieved.
struct Ramped {
    opened: u64,
    failed: u64,
    took: Duration,
    handshake: Latency,
    series: Vec<Sample>,
}

/// How often the ramp's `timeseries` is sampled. Fine enough that a ramp
/// of a fraction of a second still shows its shape (at one sample a second
/// it was a straight line between two points); the progress line on stderr
/// stays at one a second.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Adds one point to the ramp's timeseries and, once a second (`report`),
/// the progress line on stderr.
fn record_sample(series: &mut Vec<Sample>, t: f64, open: u64, failed: u64, rss: u64, report: bool) {
    series.push(Sample {
        t,
        open,
        server_rss: rss,
    });
    if report {
        eprintln!(
            "wsbench: {t:6.1}s open {open:>8} failed {failed:>6} ({:.0}/s) server rss {} MiB",
            open as f64 / t,
            rss >> 20
        );
    }
}

/// Ramps `n` connections.
fn ramp(
    engine: &mut Engine,
    a: &ConnectArgs,
    n: u64,
    deadline: Instant,
    pids: &[u32],
) -> Result<Ramped, String> {
    let start = Instant::now();
    let mut started = 0u64;
    let (mut opened, mut failed) = (0u64, 0u64);
    let mut hs = new_histogram();
    let mut events = Vec::new();
    let mut series = Vec::new();
    if !a.child {
        series.push(Sample {
            t: 0.0,
            open: 0,
            server_rss: procfs::rss(pids),
        });
    }
    let mut next_sample = start + SAMPLE_EVERY;
    let mut next_report = start + Duration::from_secs(1);
    while opened + failed < n && Instant::now() < deadline {
        let allowed = if a.rate > 0.0 {
            (start.elapsed().as_secs_f64() * a.rate) as u64
        } else {
            u64::MAX
        };
        while started < n && started < allowed && engine.connecting < a.concurrency {
            engine.connect(&mut events);
            started += 1;
        }
        engine
            .poll(Duration::from_millis(5), &mut events)
            .map_err(|e| e.to_string())?;
        for ev in events.drain(..) {
            match ev {
                Ev::Opened { handshake, .. } => {
                    opened += 1;
                    let _ = hs.record(handshake.as_micros().max(1) as u64);
                }
                Ev::Failed { .. } => failed += 1,
                Ev::Closed { .. } => failed += 1,
                Ev::Text { .. } => {}
            }
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let t = start.elapsed().as_secs_f64();
            if a.child {
                // The parent sums these into one progress line and series.
                println!("OPEN {opened} {failed}");
                let _ = std::io::stdout().flush();
                continue;
            }
            let report = now >= next_report;
            if report {
                next_report += Duration::from_secs(1);
            }
            record_sample(&mut series, t, opened, failed, procfs::rss(pids), report);
        }
    }
    let took = start.elapsed();
    series.push(Sample {
        t: took.as_secs_f64(),
        open: opened,
        server_rss: procfs::rss(pids),
    });
    Ok(Ramped {
        opened,
        failed,
        took,
        handshake: Latency::of(&hs),
        series,
    })
}

/// Polls until `stop()` or `secs` pass, answering pings and recording
/// broadcast arrivals; returns connections lost meanwhile. With
/// `announce_of` (the connections opened), prints `ARRIVED seq` on stdout
/// once every live connection has broadcast `seq`, so a parent can keep
/// exactly one broadcast in flight.
fn hold(
    engine: &mut Engine,
    secs: u64,
    stop: impl Fn(&Arrivals, u64) -> bool,
    arrivals: &mut Arrivals,
    announce_of: Option<u64>,
) -> Result<u64, String> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut events = Vec::new();
    let mut drops = 0;
    let mut announced = std::collections::HashSet::new();
    while Instant::now() < until && !stop(arrivals, drops) {
        engine
            .poll(Duration::from_millis(20), &mut events)
            .map_err(|e| e.to_string())?;
        let now = epoch_us();
        for ev in events.drain(..) {
            match ev {
                Ev::Closed { .. } => drops += 1,
                Ev::Text {
                    kind: MsgKind::Broadcast,
                    seq: Some(s),
                    ..
                } => {
                    let e = arrivals.entry(s).or_insert((0, 0));
                    e.0 += 1;
                    e.1 = e.1.max(now);
                }
                _ => {}
            }
        }
        if let Some(opened) = announce_of {
            let live = opened.saturating_sub(drops);
            for (seq, (n, _)) in arrivals.iter() {
                if *n >= live && announced.insert(*seq) {
                    println!("ARRIVED {seq}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }
    Ok(drops)
}

pub fn connect(a: ConnectArgs) -> Result<(), String> {
    let cap = per_process_capacity();
    if (a.connections > cap || a.processes > 1) && !a.child {
        let procs = a
            .connections
            .div_ceil(cap)
            .max(a.processes)
            .min(a.connections.max(1));
        return connect_multi(a, procs, cap);
    }
    let target = a.common.target()?;
    let mut engine = Engine::new(target, a.common.src_ips()?).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(a.common.timeout);
    let pids = &a.common.server_pids;
    let before = Probe::take(pids);
    let Ramped {
        opened,
        failed,
        took,
        handshake,
        series,
    } = ramp(&mut engine, &a, a.connections, deadline, pids)?;
    let ramp_cpu = procfs::cpu(pids).saturating_sub(before.cpu);
    let mut arrivals = Arrivals::new();
    let mut sent_us = Vec::new();
    let mut bcast_cpu = Duration::ZERO;
    let (after, drops) = if a.child {
        // Tell the parent we are up, then hold (recording broadcasts) until
        // it says it is done measuring and broadcasting.
        println!("RAMPED {opened}");
        let _ = std::io::stdout().flush();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            flag.store(true, std::sync::atomic::Ordering::Release);
        });
        let stop = |_: &Arrivals, _| done.load(std::sync::atomic::Ordering::Acquire);
        let drops = hold(
            &mut engine,
            a.common.timeout,
            stop,
            &mut arrivals,
            Some(opened),
        )?;
        (Probe::take(pids), drops)
    } else {
        std::thread::sleep(Duration::from_secs(a.settle));
        let after = Probe::take(pids);
        let cpu0 = procfs::cpu(pids);
        let (sent, lost) = broadcast_in_process(&mut engine, &a, opened, &mut arrivals)?;
        sent_us = sent;
        bcast_cpu = procfs::cpu(pids).saturating_sub(cpu0);
        let no_stop = |_: &Arrivals, _| false;
        (
            after,
            lost + hold(&mut engine, a.hold, no_stop, &mut arrivals, None)?,
        )
    };
    engine.close_all();
    let client_cpu = procfs::self_cpu().saturating_sub(before.self_cpu);
    let mut result = Connect {
        target: a.connections,
        opened,
        failed,
        failures: failures(&engine.failures),
        ramp_secs: took.as_secs_f64(),
        handshakes_per_sec: per(opened as f64, took.as_secs_f64()),
        handshake_latency: Some(handshake),
        drops_during_hold: drops,
        hold_secs: Some(a.hold),
        client_cpu_secs: client_cpu.as_secs_f64(),
        timeseries: series,
        tls: engine.tls_handshakes(),
        ..Connect::default()
    };
    if !pids.is_empty() && !a.child {
        result.server = Some(server_figures(
            &before,
            &after,
            ramp_cpu,
            opened.max(1) as f64,
        ));
    }
    let arrivals: Vec<Arrival> = arrivals.iter().map(|(s, (n, t))| (*s, *n, *t)).collect();
    if a.child {
        result.broadcast_arrivals = arrivals;
        let line = serde_json::to_string(&result).map_err(|e| e.to_string())?;
        println!("RESULT {line}");
        return Ok(());
    }
    if a.broadcasts > 0 {
        result.broadcast = Some(broadcast_figures(
            a.broadcasts,
            &arrivals,
            &sent_us,
            opened,
            bcast_cpu,
        ));
    }
    finish(
        "wsbench connect",
        &a.common,
        Results::Connect(Box::new(result)),
    )
}

/// Server and kernel memory per connection and CPU per handshake, from the
/// probes before the ramp and after it settled.
fn server_figures(before: &Probe, after: &Probe, ramp_cpu: Duration, opened: f64) -> ServerFigures {
    let per_conn = |b: u64, a: u64| ((a as f64 - b as f64) / opened).round();
    ServerFigures {
        server_rss_before: before.rss,
        server_rss_after: after.rss,
        server_bytes_per_conn: per_conn(before.rss, after.rss),
        kernel_tcp_buffer_bytes_per_conn: per_conn(before.tcp_mem, after.tcp_mem),
        kernel_socket_slab_bytes_per_conn: per_conn(before.slab, after.slab),
        server_cpu_us_per_handshake: per(ramp_cpu.as_secs_f64() * 1e6, opened),
    }
}

/// Fan-out completion, missing deliveries and server CPU per delivery of
/// `broadcasts` messages to `opened` connections, from the arrivals that
/// one or more processes recorded.
fn broadcast_figures(
    broadcasts: u64,
    arrivals: &[Arrival],
    sent_us: &[u64],
    opened: u64,
    cpu: Duration,
) -> BroadcastFigures {
    let (fanout, missing) = merge_arrivals(arrivals, sent_us, opened);
    let deliveries = (broadcasts * opened).saturating_sub(missing) as f64;
    BroadcastFigures {
        broadcasts,
        broadcast_fanout_completion: fanout,
        broadcast_missing_deliveries: missing,
        server_cpu_us_per_delivery: per(cpu.as_secs_f64() * 1e6, deliveries),
    }
}

/// Broadcasts `a.broadcasts` messages through the admin API, one in flight:
/// each is posted from a helper thread while this one keeps reading, and the
/// next goes when every live connection has the previous one (or after
/// [`BROADCAST_WAIT`]). Returns the send times and connections lost.
fn broadcast_in_process(
    engine: &mut Engine,
    a: &ConnectArgs,
    opened: u64,
    arrivals: &mut Arrivals,
) -> Result<(Vec<u64>, u64), String> {
    let (mut sent_us, mut lost) = (Vec::new(), 0u64);
    for seq in 0..a.broadcasts {
        let t = epoch_us();
        let admin = a.broadcast_admin.clone();
        let poster = std::thread::spawn(move || {
            post_broadcast(&admin, &format!(r#"{{"seq":{seq},"t":{t}}}"#))
        });
        let live = opened.saturating_sub(lost);
        let complete =
            |got: &Arrivals, dropped: u64| got.get(&seq).is_some_and(|e| e.0 + dropped >= live);
        lost += hold(engine, BROADCAST_WAIT.as_secs(), complete, arrivals, None)?;
        match poster.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.contains(" 504 ") => eprintln!("wsbench: broadcast {seq}: {e}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("broadcast poster panicked".into()),
        }
        sent_us.push(t);
        if a.broadcasts <= 10 || seq % 10 == 9 {
            eprintln!(
                "wsbench: broadcast {seq}: complete after {:.0} ms",
                epoch_us().saturating_sub(t) as f64 / 1e3
            );
        }
    }
    Ok((sent_us, lost))
}

/// What a child process says on its stdout (see `connect` in child mode).
#[derive(Debug, PartialEq)]
enum ChildSays {
    Open { open: u64, failed: u64 },
    Ramped(u64),
    Arrived(u64),
    Result(Box<Connect>),
}

impl ChildSays {
    fn parse(line: &str) -> Option<ChildSays> {
        let (word, rest) = line.trim().split_once(' ')?;
        match word {
            "OPEN" => {
                let (o, f) = rest.split_once(' ')?;
                Some(ChildSays::Open {
                    open: o.parse().ok()?,
                    failed: f.parse().ok()?,
                })
            }
            "RAMPED" => rest.parse().ok().map(ChildSays::Ramped),
            "ARRIVED" => rest.parse().ok().map(ChildSays::Arrived),
            "RESULT" => serde_json::from_str(rest).ok().map(ChildSays::Result),
            _ => None,
        }
    }
}

/// One line from child `i`, or `None` when its stdout ended.
type FromChild = (usize, Option<ChildSays>);

/// How long one broadcast may take to reach everyone before the run moves on
/// (the deliveries still count if they come later).
const BROADCAST_WAIT: Duration = Duration::from_secs(60);

/// Splits a run over child processes when one process's descriptor limit
/// is too small, measures the server once all are up, and sums the results.
/// The children report progress, ramp completion, broadcast arrivals and
/// results as lines on their stdout; one thread per child forwards them.
fn connect_multi(a: ConnectArgs, procs: u64, cap: u64) -> Result<(), String> {
    let ips = a.common.src_ips()?;
    eprintln!(
        "wsbench: {} connections over {procs} processes ({cap} each at most)",
        a.connections
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let pids = a.common.server_pids.clone();
    let before = Probe::take(&pids);
    let mut children = Vec::new();
    for i in 0..procs {
        let share = (a.connections / procs) + u64::from(i < a.connections % procs);
        // Each child gets its own slice of source addresses when there are enough.
        let mine: Vec<String> = if ips.len() as u64 >= procs {
            ips.iter()
                .enumerate()
                .filter(|(j, _)| *j as u64 % procs == i)
                .map(|(_, ip)| ip.to_string())
                .collect()
        } else {
            ips.iter().map(|ip| ip.to_string()).collect()
        };
        let mut cmd = Command::new(&exe);
        cmd.args(["connect", "--child", "--url", &a.common.url])
            .args(["--settle", "0"])
            .args(["--connections", &share.to_string()])
            .args(["--rate", &(a.rate / procs as f64).to_string()])
            .args(["--concurrency", &a.concurrency.to_string()])
            .args(["--hold", &a.hold.to_string()])
            .args(["--timeout", &a.common.timeout.to_string()])
            .args(["--src-ips", &mine.join(",")])
            .args(a.common.deflate.then_some("--deflate"))
            .args(a.common.tls_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        children.push(cmd.spawn().map_err(|e| format!("spawn child: {e}"))?);
    }
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<FromChild>();
    for (i, c) in children.iter_mut().enumerate() {
        let out = c.stdout.take().ok_or("child stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(said) = ChildSays::parse(&line) {
                    if tx.send((i, Some(said))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, None));
        });
    }
    drop(tx);
    let n = children.len();
    let give_up = start + Duration::from_secs(a.common.timeout + 30);

    // --- ramp: a series point every SAMPLE_EVERY, a progress line a second --
    let (mut open, mut failed) = (vec![0u64; n], vec![0u64; n]);
    let mut ramped: Vec<Option<u64>> = vec![None; n];
    let mut series = vec![Sample {
        t: 0.0,
        open: 0,
        server_rss: procfs::rss(&pids),
    }];
    let mut next_sample = start + SAMPLE_EVERY;
    let mut next_report = start + Duration::from_secs(1);
    while ramped.iter().any(Option::is_none) && Instant::now() < give_up {
        let wait = next_sample.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok((i, Some(ChildSays::Open { open: o, failed: f }))) => {
                open[i] = o;
                failed[i] = f;
            }
            Ok((i, Some(ChildSays::Ramped(k)))) => {
                ramped[i] = Some(k);
                open[i] = k;
            }
            Ok((i, None)) if ramped[i].is_none() => {
                return Err(format!("child {i} exited before its ramp ended"));
            }
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let t = start.elapsed().as_secs_f64();
            let (o, f): (u64, u64) = (open.iter().sum(), failed.iter().sum());
            let report = now >= next_report;
            if report {
                next_report += Duration::from_secs(1);
            }
            record_sample(&mut series, t, o, f, procfs::rss(&pids), report);
        }
    }
    let ramp_secs = start.elapsed().as_secs_f64();
    let ramped_total: u64 = ramped.iter().flatten().sum();
    series.push(Sample {
        t: ramp_secs,
        open: ramped_total,
        server_rss: procfs::rss(&pids),
    });
    let ramp_cpu = procfs::cpu(&pids).saturating_sub(before.cpu);
    std::thread::sleep(Duration::from_secs(a.settle));
    let after = Probe::take(&pids);
    let child_pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let client_rss = procfs::rss(&child_pids);
    eprintln!(
        "wsbench: all {procs} processes up: {ramped_total} connections; server rss {} MiB, \
         load generator rss {} MiB, box memory in use {} MiB",
        after.rss >> 20,
        client_rss >> 20,
        after.box_mem >> 20
    );

    // --- broadcast to everyone, one in flight ------------------------------
    let mut sent_us = Vec::new();
    let mut results: Vec<Option<Box<Connect>>> = vec![None; n];
    let mut ended = vec![false; n];
    let bcast_cpu0 = procfs::cpu(&pids);
    let expecting = ramped.iter().filter(|k| k.unwrap_or(0) > 0).count();
    for seq in 0..a.broadcasts {
        let t = epoch_us();
        match post_broadcast(&a.broadcast_admin, &format!(r#"{{"seq":{seq},"t":{t}}}"#)) {
            Ok(()) => {}
            // The node queued it but its workers did not confirm the count
            // in time: the deliveries are still measured below.
            Err(e) if e.contains(" 504 ") => eprintln!("wsbench: broadcast {seq}: {e}"),
            Err(e) => return Err(e),
        }
        sent_us.push(t);
        let mut arrived = 0;
        let until = Instant::now() + BROADCAST_WAIT;
        while arrived < expecting {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok((_, Some(ChildSays::Arrived(s)))) if s == seq => arrived += 1,
                Ok((i, Some(ChildSays::Result(r)))) => results[i] = Some(r),
                Ok((i, None)) => ended[i] = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if a.broadcasts <= 10 || seq % 10 == 9 || arrived < expecting {
            eprintln!(
                "wsbench: broadcast {seq}: complete in {arrived}/{expecting} processes after {:.0} ms",
                (epoch_us().saturating_sub(t)) as f64 / 1e3
            );
        }
    }
    let bcast_cpu = procfs::cpu(&pids).saturating_sub(bcast_cpu0);
    std::thread::sleep(Duration::from_secs(a.hold));
    for c in children.iter_mut() {
        if let Some(stdin) = c.stdin.as_mut() {
            let _ = writeln!(stdin, "go");
        }
    }
    // --- results --------------------------------------------------------------
    while ended.iter().any(|e| !e) && Instant::now() < give_up + Duration::from_secs(60) {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok((i, Some(ChildSays::Result(r)))) => results[i] = Some(r),
            Ok((i, None)) => ended[i] = true,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    let results: Vec<Connect> = results.into_iter().flatten().map(|r| *r).collect();
    if results.len() < n {
        eprintln!("wsbench: only {} of {n} processes reported", results.len());
    }
    let mut total = aggregate_children(&results);
    let opened = total.opened.max(1) as f64;
    total.timeseries = series;
    total.multi = Some(MultiFigures {
        processes: results.len() as u64,
        box_mem_used_before: before.box_mem,
        box_mem_used_after: after.box_mem,
        client_rss_after: client_rss,
        client_bytes_per_conn: (client_rss as f64 / opened).round(),
    });
    if a.broadcasts > 0 {
        let arrivals: Vec<Arrival> = results
            .iter()
            .flat_map(|r| r.broadcast_arrivals.iter().copied())
            .collect();
        total.broadcast = Some(broadcast_figures(
            a.broadcasts,
            &arrivals,
            &sent_us,
            opened as u64,
            bcast_cpu,
        ));
    }
    total.target = a.connections;
    total.ramp_secs = ramp_secs;
    total.handshakes_per_sec = per(opened, ramp_secs);
    if !pids.is_empty() {
        total.server = Some(server_figures(&before, &after, ramp_cpu, opened));
    }
    finish(
        "wsbench connect (multi-process)",
        &a.common,
        Results::Connect(Box::new(total)),
    )
}

#[derive(Args, Clone, Debug)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Listening connections.
    #[arg(long, default_value_t = 1000)]
    pub listeners: u64,
    /// Messages to send.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// Messages per second (0 = one in flight: send the next when every
    /// listener has the previous one).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// What the sender sends: `publish` (to a topic the listeners subscribe
    /// to) or `broadcast` (to every connection).
    #[arg(long, value_enum, default_value_t = Mode::Publish)]
    pub mode: Mode,
    /// Extra payload bytes per message.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Fill the extra payload with quote-like text (symbols, prices,
    /// timestamps with varying digits) that compresses about as well as
    /// real market-data JSON, instead of one repeated letter.
    #[arg(long)]
    pub realistic_payload: bool,
    /// Handshakes in flight at once during the ramp.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
}

pub fn broadcast(a: BroadcastArgs) -> Result<(), String> {
    let publish = a.mode == Mode::Publish;
    let mut engine =
        Engine::new(a.common.target()?, a.common.src_ips()?).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(a.common.timeout);
    let pids = a.common.server_pids.clone();
    let ramp_args = ConnectArgs::ramp_only(&a.common, a.listeners + 1, a.concurrency);
    let opened = ramp(&mut engine, &ramp_args, a.listeners + 1, deadline, &pids)?.opened;
    if opened < a.listeners + 1 {
        return Err(format!(
            "only {opened} of {} connections opened",
            a.listeners + 1
        ));
    }
    let keys = engine.keys();
    let sender = keys[keys.len() - 1];
    let listeners: Vec<usize> = keys[..keys.len() - 1].to_vec();
    let mut events = Vec::new();
    if publish {
        for &k in &listeners {
            engine.send_text(k, br#"{"type":"subscribe","topic":"bench"}"#);
        }
        let mut confirmed = 0;
        while confirmed < listeners.len() && Instant::now() < deadline {
            engine
                .poll(Duration::from_millis(10), &mut events)
                .map_err(|e| e.to_string())?;
            confirmed += events
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Ev::Text {
                            kind: MsgKind::Subscribed,
                            ..
                        }
                    )
                })
                .count();
            events.clear();
        }
    }
    let pad = if a.realistic_payload {
        quote_text(a.payload_bytes)
    } else {
        "x".repeat(a.payload_bytes)
    };
    let n = listeners.len() as u64;
    let before = Probe::take(&pids);
    let (bytes0, compressed0) = (engine.bytes_in, engine.compressed_in);
    let mut sent_at: Vec<Option<Instant>> = vec![None; a.messages as usize];
    let mut got: Vec<u64> = vec![0; a.messages as usize];
    let mut last: Vec<Option<Instant>> = vec![None; a.messages as usize];
    let mut completion = new_histogram();
    let mut next = 0u64;
    let start = Instant::now();
    let mut last_report = Instant::now();
    let wanted = |seq: u64, got: &[u64]| got[seq as usize] >= n;
    let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.rate));
    let mut outstanding: Option<u64> = None;
    let mut give_up = Instant::now();
    loop {
        let now = Instant::now();
        if now > deadline {
            break;
        }
        let can_send = next < a.messages
            && match interval {
                Some(iv) => now >= start + iv * next as u32,
                None => outstanding.is_none(),
            };
        if can_send {
            let text = if publish {
                format!(
                    r#"{{"type":"publish","topic":"bench","payload":{{"seq":{next},"pad":"{pad}"}}}}"#
                )
            } else {
                format!(r#"{{"type":"broadcast","payload":{{"seq":{next},"pad":"{pad}"}}}}"#)
            };
            sent_at[next as usize] = Some(Instant::now());
            engine.send_text(sender, text.as_bytes());
            outstanding = Some(next);
            give_up = Instant::now() + Duration::from_secs(2);
            next += 1;
        }
        engine
            .poll(Duration::from_millis(1), &mut events)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        for ev in events.drain(..) {
            if let Ev::Text {
                key,
                kind: MsgKind::Broadcast | MsgKind::Message,
                seq: Some(s),
                ..
            } = ev
            {
                if key != sender && s < a.messages {
                    got[s as usize] += 1;
                    last[s as usize] = Some(t);
                }
            }
        }
        if let Some(s) = outstanding {
            if wanted(s, &got) || Instant::now() > give_up {
                outstanding = None;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let delivered: u64 = got.iter().sum();
            eprintln!("wsbench: sent {next}/{} delivered {delivered}", a.messages);
        }
        if next >= a.messages && (outstanding.is_none() || interval.is_some()) {
            let all = (0..a.messages).all(|s| wanted(s, &got));
            if all || Instant::now() > give_up {
                break;
            }
        }
    }
    let window = start.elapsed();
    let after = Probe::take(&pids);
    let mut missing = 0u64;
    for s in 0..a.messages as usize {
        missing += n.saturating_sub(got[s]);
        if let (Some(t0), Some(t1)) = (sent_at[s], last[s]) {
            if got[s] >= n {
                let _ = completion.record(t1.duration_since(t0).as_micros().max(1) as u64);
            }
        }
    }
    let deliveries: u64 = got.iter().sum();
    let server_cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    let client_cpu = after.self_cpu.saturating_sub(before.self_cpu).as_secs_f64();
    let wire_bytes = engine.bytes_in - bytes0;
    let compressed = engine.compressed_in - compressed0;
    engine.close_all();
    let result = Results::Broadcast(Broadcast {
        mode: a.mode,
        listeners: n,
        messages: a.messages,
        rate: if a.rate > 0.0 {
            Rate::PerSec(a.rate)
        } else {
            Rate::Paced(Paced::OneInFlight)
        },
        payload_bytes: a.payload_bytes,
        fanout_completion: Latency::of(&completion),
        deliveries,
        missing_deliveries: missing,
        window_secs: window.as_secs_f64(),
        deliveries_per_sec: per(deliveries as f64, window.as_secs_f64()),
        server_cpu_secs: server_cpu,
        server_cpu_us_per_delivery: per(server_cpu * 1e6, deliveries as f64),
        client_cpu_secs: client_cpu,
        client_cpu_us_per_delivery: per(client_cpu * 1e6, deliveries as f64),
        deflate: a.common.deflate,
        wire_bytes_per_delivery: per(wire_bytes as f64, deliveries as f64),
        compressed_deliveries: compressed,
        tls: engine.tls_handshakes(),
    });
    finish("wsbench broadcast", &a.common, result)
}

/// `len` bytes of text shaped like quotes (`S0412 b 101.25 a 101.31 t
/// 1700000123; `), digits from a fixed pseudo-random sequence: about as
/// compressible as real market data, and safe inside a JSON string.
fn quote_text(len: usize) -> String {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let mut s = String::with_capacity(len + 64);
    while s.len() < len {
        let bid = 100 + next(50);
        let cents = next(100);
        s.push_str(&format!(
            "S{:04} b {bid}.{cents:02} a {bid}.{:02} t 17000{:05}; ",
            next(600),
            (cents + 1 + next(5)).min(99),
            next(100_000)
        ));
    }
    s.truncate(len);
    s
}

#[derive(Args, Clone, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections, each with one message in flight.
    #[arg(long, default_value_t = 100)]
    pub connections: u64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    pub payload_bytes: usize,
}

pub fn echo(a: EchoArgs) -> Result<(), String> {
    let mut engine =
        Engine::new(a.common.target()?, a.common.src_ips()?).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(a.common.timeout);
    let pids = a.common.server_pids.clone();
    let ramp_args = ConnectArgs::ramp_only(&a.common, a.connections, 512);
    let opened = ramp(&mut engine, &ramp_args, a.connections, deadline, &pids)?.opened;
    let keys = engine.keys();
    let pad = "x".repeat(a.payload_bytes);
    let msg = format!(r#"{{"type":"echo","payload":{{"seq":1,"pad":"{pad}"}}}}"#);
    let mut sent: HashMap<usize, Instant> = HashMap::new();
    let mut lat = new_histogram();
    let before = Probe::take(&pids);
    for &k in &keys {
        sent.insert(k, Instant::now());
        engine.send_text(k, msg.as_bytes());
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(a.duration);
    let mut events = Vec::new();
    let mut last_report = Instant::now();
    // A connection the server closes (a rate limit, say) stops counting:
    // say so in the results rather than quietly measuring fewer clients.
    let mut closed = 0u64;
    while Instant::now() < until {
        engine
            .poll(Duration::from_millis(5), &mut events)
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        for ev in events.drain(..) {
            match ev {
                Ev::Text { key, .. } => {
                    if let Some(t0) = sent.get(&key) {
                        let _ = lat.record(now.duration_since(*t0).as_micros().max(1) as u64);
                    }
                    sent.insert(key, Instant::now());
                    engine.send_text(key, msg.as_bytes());
                }
                Ev::Closed { .. } => closed += 1,
                _ => {}
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!("wsbench: {} round trips", lat.len());
        }
    }
    let window = start.elapsed().as_secs_f64();
    let after = Probe::take(&pids);
    engine.close_all();
    if closed > 0 || opened < a.connections {
        eprintln!(
            "wsbench: {} of {} connections opened, {closed} closed by the server during the run",
            opened, a.connections
        );
    }
    let trips = lat.len();
    let cpu_per_trip = |d: Duration| per(d.as_secs_f64() * 1e6, trips as f64);
    let result = Results::Echo(Echo {
        connections: opened,
        failed_to_open: a.connections.saturating_sub(opened),
        closed_by_server: closed,
        round_trips: trips,
        round_trips_per_sec: per(trips as f64, window),
        latency: Latency::of(&lat),
        server_cpu_us_per_round_trip: cpu_per_trip(after.cpu.saturating_sub(before.cpu)),
        client_cpu_us_per_round_trip: cpu_per_trip(after.self_cpu.saturating_sub(before.self_cpu)),
        tls: engine.tls_handshakes(),
    });
    finish("wsbench echo", &a.common, result)
}

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections held throughout.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// Connections closed and replaced per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

pub fn churn(a: ChurnArgs) -> Result<(), String> {
    let mut engine =
        Engine::new(a.common.target()?, a.common.src_ips()?).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(a.common.timeout);
    let pids = a.common.server_pids.clone();
    let ramp_args = ConnectArgs::ramp_only(&a.common, a.connections, 512);
    ramp(&mut engine, &ramp_args, a.connections, deadline, &pids)?;
    let before = Probe::take(&pids);
    let start = Instant::now();
    let until = start + Duration::from_secs(a.duration);
    let mut events = Vec::new();
    let (mut replaced, mut opened, mut failed, mut drops) = (0u64, 0u64, 0u64, 0u64);
    // Oldest first, so every held connection takes its turn; a key may have
    // been closed (or reused) meanwhile, which only shifts whom we replace.
    let mut by_age: std::collections::VecDeque<usize> = engine.keys().into();
    while Instant::now() < until {
        let due = (start.elapsed().as_secs_f64() * a.rate) as u64;
        while replaced < due {
            if let Some(k) = by_age.pop_front() {
                engine.drop_conn(k);
            }
            engine.connect(&mut events);
            replaced += 1;
        }
        engine
            .poll(Duration::from_millis(5), &mut events)
            .map_err(|e| e.to_string())?;
        for ev in events.drain(..) {
            match ev {
                Ev::Opened { key, .. } => {
                    opened += 1;
                    by_age.push_back(key);
                }
                Ev::Failed { .. } => failed += 1,
                Ev::Closed { .. } => drops += 1,
                Ev::Text { .. } => {}
            }
        }
    }
    let window = start.elapsed().as_secs_f64();
    let after = Probe::take(&pids);
    engine.close_all();
    let server_cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
    let client_cpu = after.self_cpu.saturating_sub(before.self_cpu).as_secs_f64();
    let result = Results::Churn(Churn {
        held: a.connections,
        replaced,
        reconnected: opened,
        failed,
        failures: failures(&engine.failures),
        unexpected_drops: drops,
        churn_per_sec: per(replaced as f64, window),
        server_cpu_us_per_reconnect: per(server_cpu * 1e6, opened as f64),
        client_cpu_us_per_reconnect: per(client_cpu * 1e6, opened as f64),
        tls: engine.tls_handshakes(),
    });
    finish("wsbench churn", &a.common, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_lines_parse() {
        assert_eq!(
            ChildSays::parse("OPEN 12 3\n"),
            Some(ChildSays::Open {
                open: 12,
                failed: 3
            })
        );
        assert_eq!(ChildSays::parse("RAMPED 7"), Some(ChildSays::Ramped(7)));
        assert_eq!(ChildSays::parse("ARRIVED 2"), Some(ChildSays::Arrived(2)));
        let child = Connect {
            opened: 1,
            broadcast_arrivals: vec![(0, 1, 2)],
            ..Connect::default()
        };
        let line = format!("RESULT {}", serde_json::to_string(&child).unwrap());
        assert_eq!(
            ChildSays::parse(&line),
            Some(ChildSays::Result(Box::new(child)))
        );
        assert_eq!(ChildSays::parse("OPEN x 1"), None);
        assert_eq!(ChildSays::parse("noise"), None);
    }
}

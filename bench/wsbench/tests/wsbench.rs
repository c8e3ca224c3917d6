//! End to end: the real `wsbench` binary against an in-process wsgate, one
//! short bounded run per scenario, checking the figures its JSON reports,
//! then `wsbench report` on the results.
//!
//! One test function on purpose: the server runs in this test process
//! (`--server-pid` is our own pid), so nothing else may run beside it while
//! server CPU and memory are measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A scratch directory removed when the test ends (pass or fail).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("wsbench-e2e-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion within `limit` (killed past it), asserting it
/// succeeds; returns its output.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsbench");
    // Drain the pipes on threads so a chatty child never blocks on them.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every worker thread still runs its event loop: each answers a probe.
fn assert_workers_alive(server: &wsgate::ServerHandle) {
    let before: Vec<u64> = server.stats().iter().map(|s| s.watchdog).collect();
    server.probe_workers();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !server
        .stats()
        .iter()
        .zip(&before)
        .all(|(s, b)| s.watchdog > *b)
    {
        assert!(Instant::now() < deadline, "a worker does not answer");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wsbench(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbench"));
    cmd.args(args);
    cmd
}

/// Runs a scenario with `--out DIR/NAME.json` and the common flags; returns
/// the JSON it wrote, after checking the Markdown summary on stdout.
fn scenario(dir: &Path, url: &str, name: &str, args: &[&str]) -> (Value, PathBuf) {
    let out = dir.join(format!("{name}.json"));
    let pid = std::process::id().to_string();
    let mut cmd = wsbench(args);
    cmd.args(["--url", url, "--server-pid", &pid, "--timeout", "20"])
        .arg("--out")
        .arg(&out);
    let o = run(cmd, Duration::from_secs(30));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains("## wsbench ") && md.contains("| figure | value |"),
        "{name}: no Markdown summary on stdout: {md}"
    );
    let text = std::fs::read_to_string(&out).expect("results JSON written");
    let v: Value = serde_json::from_str(&text).expect("results are JSON");
    (v, out)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not an unsigned number in {v:#}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v:#}"))
}

/// A latency object with `count` samples at least and ordered percentiles.
fn assert_latency(v: &Value, k: &str, min_count: u64) {
    let l = &v[k];
    assert!(u(l, "count") >= min_count, "{k}: too few samples in {l:#}");
    let p: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
        .iter()
        .map(|q| u(l, q))
        .collect();
    assert!(p[0] >= 1, "{k}: p50 of at least 1 µs: {l:#}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{k}: unordered: {l:#}");
    assert!(f(l, "mean_us") > 0.0);
}

/// Runs `wsbench report` on `json` into `dir`; returns the paths it printed.
fn report(json: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut cmd = wsbench(&["report"]);
    cmd.arg(json).arg("--out").arg(dir);
    let o = run(cmd, Duration::from_secs(20));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The chart exists, is not trivial, and (SVG) is an SVG document that
/// carries every string in `has`.
fn assert_chart(path: &Path, has: &[&str]) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 2000, "{} is tiny", path.display());
    if path.extension().is_some_and(|e| e == "png") {
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        return;
    }
    let svg = String::from_utf8(bytes).expect("SVG is UTF-8");
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "{} is not SVG",
        path.display()
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "{} is cut short",
        path.display()
    );
    for s in has {
        assert!(svg.contains(s), "{} lacks {s:?}", path.display());
    }
}

#[test]
fn wsbench_scenarios_and_report_against_a_live_server() {
    let started = Instant::now();
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    // Closed-loop echo from few connections may pass the default per-connection rate.
    cfg.max_messages_per_sec = 0;
    // The broadcast scenario measures fan-out, not the per-client broadcast limit.
    cfg.max_broadcasts_per_sec = 0;
    // For the restart scenario (the others use no topic history).
    cfg.history_size = 10_000;
    let server = wsgate::start(cfg).expect("server starts");
    let url = format!("ws://{}/ws", server.local_addr());
    let admin = server.admin_addr().expect("admin API on").to_string();
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();

    // connect: 300 up, held a second, memory per connection measured.
    let (c, connect_json) = scenario(
        dir,
        &url,
        "connect",
        &[
            "connect",
            "--connections",
            "300",
            // A sub-second ramp: its timeseries must still have a shape.
            "--rate",
            "600",
            "--hold",
            "1",
            "--settle",
            "1",
            "--broadcasts",
            "2",
            "--broadcast-admin",
            &admin,
        ],
    );
    assert_eq!(c["scenario"], "connect");
    assert_eq!(u(&c, "broadcasts"), 2, "{c:#}");
    assert_eq!(u(&c, "broadcast_missing_deliveries"), 0, "{c:#}");
    assert_latency(&c, "broadcast_fanout_completion", 2);
    assert_eq!(u(&c, "opened"), 300, "{c:#}");
    assert_eq!(u(&c, "failed"), 0, "{c:#}");
    assert_eq!(u(&c, "drops_during_hold"), 0, "{c:#}");
    assert!(f(&c, "handshakes_per_sec") > 0.0);
    assert_latency(&c, "handshake_latency", 300);
    for k in [
        "server_bytes_per_conn",
        "kernel_socket_slab_bytes_per_conn",
        "kernel_tcp_buffer_bytes_per_conn",
        "server_rss_before",
        "server_rss_after",
    ] {
        assert!(c[k].is_number(), "{k} missing: {c:#}");
    }
    assert!(u(&c, "server_rss_after") > 0);
    let ts = c["timeseries"].as_array().expect("timeseries");
    let last = ts.last().expect("at least the final sample");
    assert_eq!(u(last, "open"), 300);
    // Sampled every 100 ms from t = 0, so a 0.5 s ramp has several points
    // (at one a second it had only its final one).
    assert_eq!(f(&ts[0], "t"), 0.0, "{ts:?}");
    assert!(
        ts.len() >= 4,
        "only {} samples in a 0.5 s ramp: {ts:?}",
        ts.len()
    );
    assert!(
        ts.windows(2).all(|w| f(&w[0], "t") < f(&w[1], "t")),
        "{ts:?}"
    );
    assert!(u(last, "server_rss") > 0, "RSS of our own pid: {last}");

    // echo: closed loop, round trips and their latency.
    let (e, echo_json) = scenario(
        dir,
        &url,
        "echo",
        &["echo", "--connections", "50", "--duration", "2"],
    );
    assert_eq!(u(&e, "connections"), 50);
    assert!(u(&e, "round_trips") > 100, "{e:#}");
    assert!(f(&e, "round_trips_per_sec") > 0.0);
    assert_latency(&e, "latency", 100);
    assert!(e["server_cpu_us_per_round_trip"].is_number(), "{e:#}");
    assert!(e["client_cpu_us_per_round_trip"].is_number(), "{e:#}");

    // broadcast (publish to a topic, one message in flight): no misses.
    let (b, broadcast_json) = scenario(
        dir,
        &url,
        "broadcast",
        &["broadcast", "--listeners", "300", "--messages", "20"],
    );
    assert_eq!(b["mode"], "publish");
    assert_eq!(u(&b, "listeners"), 300);
    assert_eq!(u(&b, "missing_deliveries"), 0, "{b:#}");
    assert_eq!(u(&b, "deliveries"), 300 * 20);
    assert_latency(&b, "fanout_completion", 20);
    assert!(f(&b, "deliveries_per_sec") > 0.0);

    // broadcast to every connection.
    let (b2, _) = scenario(
        dir,
        &url,
        "broadcast-all",
        &[
            "broadcast",
            "--listeners",
            "100",
            "--messages",
            "10",
            "--mode",
            "broadcast",
        ],
    );
    assert_eq!(u(&b2, "missing_deliveries"), 0, "{b2:#}");
    assert_eq!(u(&b2, "deliveries"), 100 * 10);

    // churn: 200 held, 100 replaced per second for 2 s.
    let (ch, churn_json) = scenario(
        dir,
        &url,
        "churn",
        &[
            "churn",
            "--connections",
            "200",
            "--rate",
            "100",
            "--duration",
            "2",
        ],
    );
    assert_eq!(u(&ch, "held"), 200);
    assert!(u(&ch, "replaced") >= 150, "{ch:#}");
    assert!(u(&ch, "reconnected") >= 150, "{ch:#}");
    assert_eq!(u(&ch, "failed"), 0, "{ch:#}");
    assert!(ch["server_cpu_us_per_reconnect"].is_number(), "{ch:#}");

    // connect split over processes (a low descriptor limit forces it), with
    // broadcasts to everyone through the admin API.
    let pid = std::process::id().to_string();
    let multi_json = dir.join("multi.json");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 400 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_wsbench"))
        .args(["connect", "--url", &url, "--connections", "300"])
        .args(["--hold", "0", "--settle", "0", "--broadcasts", "2"])
        .args(["--broadcast-admin", &admin, "--server-pid", &pid])
        .args(["--timeout", "20", "--out"])
        .arg(&multi_json);
    run(cmd, Duration::from_secs(30));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&multi_json).unwrap()).unwrap();
    assert!(u(&m, "processes") >= 2, "{m:#}");
    assert_eq!(u(&m, "opened"), 300, "{m:#}");
    assert_eq!(u(&m, "failed"), 0, "{m:#}");
    assert_eq!(u(&m, "broadcast_missing_deliveries"), 0, "{m:#}");
    assert_latency(&m, "broadcast_fanout_completion", 2);
    assert!(m["server_bytes_per_conn"].is_number(), "{m:#}");

    // report: ramp + latency for connect, latency only for the others.
    let charts = dir.join("charts");
    let got = report(&connect_json, &charts);
    let want: Vec<PathBuf> = ["ramp.svg", "ramp.png", "latency.svg", "latency.png"]
        .iter()
        .map(|s| charts.join(format!("connect-{s}")))
        .collect();
    assert_eq!(got, want);
    assert_chart(
        &want[0],
        &["connections open", "server RSS (MiB)", "<polyline"],
    );
    assert_chart(&want[1], &[]);
    assert_chart(&want[2], &["handshake_latency (n = 300)", "p99.9", "<rect"]);
    assert_chart(&want[3], &[]);

    let got = report(&broadcast_json, &charts);
    assert_eq!(
        got,
        vec![
            charts.join("broadcast-latency.svg"),
            charts.join("broadcast-latency.png")
        ]
    );
    assert_chart(&got[0], &["fanout_completion (n = 20)", "p50", "max"]);
    assert_chart(&got[1], &[]);

    // The multi-process run has one timeseries for all its children.
    let got = report(&multi_json, &charts);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0], charts.join("multi-ramp.svg"));
    assert_chart(&got[0], &["connections open", "<polyline"]);
    assert_chart(&got[2], &["broadcast_fanout_completion (n = 2)"]);

    // Default output directory: beside the JSON.
    let got = report(&echo_json, dir);
    assert_eq!(got[0], dir.join("echo-latency.svg"));
    assert_chart(&got[0], &["latency (n = "]);

    // Nothing to chart is an error, not an empty success.
    let o = wsbench(&["report"])
        .arg(&churn_json)
        .output()
        .expect("run report");
    assert!(!o.status.success(), "churn results have nothing to chart");

    // restart: 300 clients on 3 history topics lose their connections
    // mid-run and resume: nothing lost, doubled or reordered.
    let (rs, _) = scenario(
        dir,
        &url,
        "restart",
        &[
            "restart",
            "--connections",
            "300",
            "--topics",
            "3",
            "--rate",
            "100",
            "--duration",
            "3",
            "--at",
            "1.5",
            "--reconnect-jitter-ms",
            "300",
            "--probe-rate",
            "50",
        ],
    );
    assert_eq!(u(&rs, "clients"), 300);
    assert_eq!(u(&rs, "resumed"), 300, "{rs:#}");
    assert!(u(&rs, "published") >= 250, "{rs:#}");
    assert_eq!(u(&rs, "delivered"), u(&rs, "published") * 100, "{rs:#}");
    for k in [
        "lost",
        "duplicated",
        "out_of_order",
        "unrecovered",
        "epoch_changes",
    ] {
        assert_eq!(u(&rs, k), 0, "{k}: {rs:#}");
    }
    assert_latency(&rs, "reconnection", 300);
    // Probe clients the drop did not touch kept connecting, before, during
    // and after the storm.
    assert_latency(&rs, "unaffected_handshake_calm", 20);
    assert_latency(&rs, "unaffected_handshake_storm", 1);
    // Connected clients through the drop: all 300, then fewer, then all
    // again at the end.
    let series = rs["timeseries"].as_array().expect("timeseries");
    let open: Vec<u64> = series.iter().map(|p| u(p, "open")).collect();
    let first_full = open
        .iter()
        .position(|&o| o == 300)
        .unwrap_or_else(|| panic!("never reached 300: {open:?}"));
    assert!(
        open[first_full..].iter().any(|&o| o < 300),
        "the drop shows in the series: {open:?}"
    );
    assert_eq!(open.last(), Some(&300), "everyone back: {open:?}");
    let restart_json = dir.join("restart.json");
    let charts = report(&restart_json, dir);
    let ramp = charts
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-ramp.svg"))
        .expect("a connected-clients chart");
    assert_chart(ramp, &["connected clients"]);

    // The server took all that and still serves.
    assert_workers_alive(&server);
    let (mut ws, _) = tungstenite::connect(url.as_str()).expect("connect");
    ws.send(tungstenite::Message::text(
        r#"{"type":"echo","payload":"still there?"}"#,
    ))
    .expect("send");
    let reply = ws.read().expect("echo reply");
    let reply: Value = serde_json::from_str(reply.to_text().expect("text")).expect("JSON");
    assert_eq!(reply["payload"], "still there?");
    for (name, v) in [
        ("connect", &c),
        ("echo", &e),
        ("broadcast", &b),
        ("churn", &ch),
        ("multi", &m),
    ] {
        eprintln!("{name}: {v}");
    }
    eprintln!("wsbench end-to-end took {:?}", started.elapsed());
}

/// `hold` keeps its connections through the server's heartbeat: with a ping
/// every 0.5 s and a 1.5 s idle timeout, a client that did not answer pings
/// would lose every connection within the 3 s hold.
#[test]
fn hold_answers_the_servers_pings_and_loses_nothing() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.ping_interval = Duration::from_millis(500);
    cfg.idle_timeout = Duration::from_millis(1500);
    let server = wsgate::start(cfg).expect("server starts");
    let url = format!("ws://{}/ws", server.local_addr());
    let tmp = TempDir::new();
    let (h, _) = scenario(
        tmp.0.as_path(),
        &url,
        "hold",
        &["hold", "--connections", "200", "--duration", "3"],
    );
    assert_eq!(u(&h, "opened"), 200, "{h:#}");
    assert_eq!(u(&h, "drops_during_hold"), 0, "{h:#}");
    assert!(
        server.total_stats().pings_sent > 0,
        "the server never pinged: nothing was tested"
    );
}

/// `broadcast --deflate` against a server with permessage-deflate: every
/// delivery arrives compressed (and inflates to a valid message), fewer
/// bytes cross the wire than without it, and the server compressed each
/// publish once.
#[test]
fn broadcast_with_deflate_reports_compressed_deliveries_and_wire_bytes() {
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.permessage_deflate = true;
    let server = wsgate::start(cfg).expect("server starts");
    let url = format!("ws://{}/ws", server.local_addr());
    let tmp = TempDir::new();
    let args = [
        "broadcast",
        "--listeners",
        "100",
        "--messages",
        "10",
        "--payload-bytes",
        "1000",
    ];
    let (plain, _) = scenario(tmp.0.as_path(), &url, "plain", &args);
    let before = server.total_stats().deflate_compressions;
    let mut with = args.to_vec();
    with.push("--deflate");
    let (z, _) = scenario(tmp.0.as_path(), &url, "deflate", &with);
    for b in [&plain, &z] {
        assert_eq!(u(b, "missing_deliveries"), 0, "{b:#}");
        assert_eq!(u(b, "deliveries"), 1000, "{b:#}");
    }
    assert_eq!(z["deflate"], true);
    assert_eq!(u(&z, "compressed_deliveries"), 1000, "{z:#}");
    assert_eq!(u(&plain, "compressed_deliveries"), 0, "{plain:#}");
    let (wp, wz) = (
        f(&plain, "wire_bytes_per_delivery"),
        f(&z, "wire_bytes_per_delivery"),
    );
    assert!(wp > 1000.0 && wz < wp / 4.0, "plain {wp} B, deflate {wz} B");
    // One compression per publish (the publisher's own messages are not
    // compressed by wsbench, and its replies are under the threshold).
    assert_eq!(server.total_stats().deflate_compressions - before, 10);
}

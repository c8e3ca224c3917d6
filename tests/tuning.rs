//! The kernel tuning files on this machine: sysctl.conf applies and reads
//! back, and tune.sh reports the real shortfalls for a target.

use std::process::Command;

fn root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// `key = value` lines of sysctl.conf.
fn settings() -> Vec<(String, String)> {
    std::fs::read_to_string(repo("sysctl.conf"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key = value");
            (
                k.trim().to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

#[test]
fn sysctl_conf_applies_and_reads_back() {
    if !root() {
        eprintln!("not root: sysctl.conf cannot be applied here; skipped");
        return;
    }
    let out = Command::new("sysctl")
        .args(["-e", "-p", &repo("sysctl.conf")])
        .output()
        .expect("sysctl from procps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = settings();
    assert!(all.len() >= 15, "sysctl.conf lost its settings");
    let mut checked = 0;
    for (key, want) in all {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let Ok(have) = std::fs::read_to_string(&path) else {
            continue; // e.g. nf_conntrack not loaded on this kernel
        };
        let have = have.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(have, want, "{key} did not take");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} keys exist here");
}

fn tune(args: &[&str]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(repo("tuning/tune.sh"))
        .args(args)
        .output()
        .expect("bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn nofile_hard() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().1
}

#[test]
fn tune_sh_names_the_descriptor_limit_when_a_million_is_out_of_reach() {
    let hard = nofile_hard();
    let (code, out) = tune(&["--target", "1000000"]);
    if hard >= 1_001_024 {
        assert!(!out.contains("SHORT  RLIMIT_NOFILE"), "{out}");
        return;
    }
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("SHORT") && l.contains("RLIMIT_NOFILE"))
        .unwrap_or_else(|| panic!("no descriptor shortfall reported:\n{out}"));
    assert!(line.contains(&format!("have {hard}")), "{line}");
    assert!(out.contains("NOT reachable"));
}

#[test]
fn tune_sh_passes_a_target_this_machine_can_hold() {
    let hard = nofile_hard();
    let target = (hard.saturating_sub(2048)).min(5000).to_string();
    let (code, out) = tune(&["--target", &target]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is reachable"));
}

#[test]
fn tune_sh_rejects_bad_usage() {
    assert_eq!(tune(&["--target", "lots"]).0, 2);
    assert_eq!(tune(&["--frobnicate"]).0, 2);
}

// ---------------------------------------------------------------------------
// The operator files: the systemd unit, limits.conf and the Grafana dashboard.
// ---------------------------------------------------------------------------

mod common;

use std::collections::{BTreeMap, BTreeSet};

/// `fs.nr_open` from sysctl.conf: the ceiling for every descriptor limit.
fn nr_open() -> u64 {
    settings()
        .into_iter()
        .find(|(k, _)| k == "fs.nr_open")
        .expect("sysctl.conf sets fs.nr_open")
        .1
        .parse()
        .unwrap()
}

/// `Key=value` lines of the unit's `[Service]` section (later ones win).
fn unit_service_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("Key=value");
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

#[test]
fn wsgate_service_is_hardened_and_keeps_what_the_server_needs() {
    let unit = std::fs::read_to_string(repo("tuning/wsgate.service")).unwrap();
    let s = unit_service_settings(&unit);
    let one = |k: &str| -> &str {
        s.get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("wsgate.service lacks {k}="))
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("DynamicUser"), "yes");
    // Empty: no capabilities at all (a port below 1024 would need
    // CAP_NET_BIND_SERVICE in both).
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("AmbientCapabilities"), "");
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 1_048_576, "LimitNOFILE={nofile}");
    assert!(
        nofile <= nr_open(),
        "LimitNOFILE={nofile} is above fs.nr_open in sysctl.conf: the service would not start"
    );
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    // What the server itself needs: AF_UNIX for NOTIFY_SOCKET, TCP, and its
    // own /proc/self (RSS and open descriptors for /metrics).
    let families = one("RestrictAddressFamilies");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(families.split_whitespace().any(|x| x == f), "{families}");
    }
    assert_ne!(one("NotifyAccess"), "none");
    if let Some(subset) = s.get("ProcSubset").and_then(|v| v.last()) {
        assert!(subset == "pid" || subset == "all", "ProcSubset={subset}");
    }
    assert!(!s.contains_key("PrivateNetwork"), "a network server");
    // wsgate raises RLIMIT_NOFILE and pins cores: @resources must stay.
    for filter in s.get("SystemCallFilter").into_iter().flatten() {
        if let Some(denied) = filter.strip_prefix('~') {
            assert!(
                !denied.split_whitespace().any(|g| g == "@resources"),
                "SystemCallFilter={filter} denies setrlimit/sched_setaffinity"
            );
        }
    }
}

/// `systemd-analyze`, which run-all.sh installs (the `systemd` package).
fn systemd_analyze() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "systemd-analyze not found: apt-get install systemd (tests/run-all.sh does)"
    );
    path
}

/// A scratch directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wsgate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_verify_accepts_wsgate_service() {
    let analyze = systemd_analyze();
    let unit = std::fs::read_to_string(repo("tuning/wsgate.service")).unwrap();
    // The installed path does not exist here: point ExecStart at the binary
    // this build made, in a copy (nothing is installed on this machine).
    let installed = "ExecStart=/usr/local/bin/wsgate ";
    assert!(
        unit.lines().any(|l| l.starts_with(installed)),
        "ExecStart no longer runs /usr/local/bin/wsgate"
    );
    let built = format!("ExecStart=\"{}\" ", env!("CARGO_BIN_EXE_wsgate"));
    let copy: String = unit
        .lines()
        .map(|l| match l.strip_prefix(installed) {
            Some(rest) => format!("{built}{rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let dir = TempDir::new("unit");
    let path = dir.0.join("wsgate.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("wsgate.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn limits_conf_lines_parse_and_allow_a_million_descriptors() {
    let text = std::fs::read_to_string(repo("tuning/limits.conf")).unwrap();
    let ceiling = nr_open();
    let mut nofile: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [domain, kind, item, value] = f[..] else {
            panic!("not `<domain> <type> <item> <value>`: {line:?}");
        };
        assert!(
            domain == "*"
                || domain
                    .trim_start_matches(['@', '%'])
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)),
            "domain {domain:?}"
        );
        assert!(["soft", "hard", "-"].contains(&kind), "type {kind:?}");
        assert_eq!(
            item, "nofile",
            "only descriptor limits belong here: {line:?}"
        );
        // nofile cannot be "unlimited": the kernel caps it at fs.nr_open.
        let value: u64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value {value:?} is not a number"));
        assert!(value >= 1_048_576, "{line:?}: below a million connections");
        assert!(
            value <= ceiling,
            "{line:?}: above fs.nr_open ({ceiling}) in sysctl.conf, login would fail"
        );
        let kinds: &[&str] = if kind == "-" {
            &["soft", "hard"]
        } else {
            &[kind]
        };
        for k in kinds {
            nofile.insert((domain.to_string(), k.to_string()), value);
        }
    }
    let domains: BTreeSet<&String> = nofile.keys().map(|(d, _)| d).collect();
    assert!(domains.len() >= 2, "service user and benchmark shells");
    for d in domains {
        let soft = nofile.get(&(d.clone(), "soft".into()));
        let hard = nofile
            .get(&(d.clone(), "hard".into()))
            .unwrap_or_else(|| panic!("{d}: no hard limit"));
        if let Some(soft) = soft {
            assert!(soft <= hard, "{d}: soft {soft} above hard {hard}");
        }
    }
}

#[test]
fn nginx_descriptor_limit_fits_under_fs_nr_open() {
    let conf = std::fs::read_to_string(repo("tuning/nginx.conf")).unwrap();
    let limit: u64 = conf
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("worker_rlimit_nofile "))
        .expect("worker_rlimit_nofile")
        .trim_end_matches(';')
        .parse()
        .unwrap();
    assert!(
        limit <= nr_open(),
        "worker_rlimit_nofile {limit} is above fs.nr_open: nginx's setrlimit would fail"
    );
}

/// Metric families and their labels, as a running server exports them.
struct Exported {
    /// Sample name (counters with `_total`) → label name → values seen.
    metrics: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    /// Scrapes an in-process server with every optional family on (the
    /// cluster bridge, pointed at a port nobody listens on).
    fn scrape() -> Exported {
        let mut cfg = wsgate::Config::for_tests();
        cfg.workers = Some(2);
        cfg.redis = Some(format!("redis://127.0.0.1:{}/", common::free_port()));
        cfg.history_size = 16;
        let server = wsgate::start(cfg).expect("server starts");
        let admin = server.admin_addr().expect("admin listener");
        let (status, body) = common::http(admin, "GET", "/metrics", "");
        assert_eq!(status, 200);
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("valid Prometheus text format");
        let mut metrics: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for s in scrape.samples {
            let labels = metrics.entry(s.metric).or_default();
            for (k, v) in s.labels.iter() {
                labels.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        Exported { metrics }
    }
}

/// A label matcher inside `{...}`: name, operator, value.
type Matcher = (String, String, String);

/// What a PromQL expression refers to.
#[derive(Default, Debug)]
struct Refs {
    /// Selectors: metric name and its matchers.
    selectors: Vec<(String, Vec<Matcher>)>,
    /// Every identifier starting with `wsgate_`, wherever it is.
    wsgate_names: BTreeSet<String>,
    /// Labels in `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
    grouping: BTreeSet<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A small PromQL reader: enough to find metric names, matchers and
/// grouping labels in the dashboard's expressions.
fn promql_refs(expr: &str) -> Refs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = Refs::default();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let read_string = |j: usize| -> (String, usize) {
        let quote = chars[j];
        let mut k = j + 1;
        let mut s = String::new();
        while k < chars.len() && chars[k] != quote {
            if chars[k] == '\\' {
                k += 1;
            }
            s.push(chars[k]);
            k += 1;
        }
        (s, k + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = read_string(i).1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable like $__rate_interval or ${job}.
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || "{}".contains(chars[i])) {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("wsgate_") {
                refs.wsgate_names.insert(word.clone());
            }
            let j = skip_ws(i);
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) && j < chars.len() && chars[j] == '(' {
                let end = j + chars[j..].iter().position(|&c| c == ')').expect(")");
                let inner: String = chars[j + 1..end].iter().collect();
                refs.grouping.extend(
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
                i = end + 1;
            } else if j < chars.len() && chars[j] == '{' {
                // A selector: read its matchers.
                let mut k = j + 1;
                let mut matchers = Vec::new();
                loop {
                    k = skip_ws(k);
                    if chars[k] == '}' {
                        k += 1;
                        break;
                    }
                    let ls = k;
                    while is_ident(chars[k]) {
                        k += 1;
                    }
                    let label: String = chars[ls..k].iter().collect();
                    k = skip_ws(k);
                    let os = k;
                    while "=!~".contains(chars[k]) {
                        k += 1;
                    }
                    let op: String = chars[os..k].iter().collect();
                    k = skip_ws(k);
                    let (value, next) = read_string(k);
                    k = skip_ws(next);
                    if chars[k] == ',' {
                        k += 1;
                    }
                    assert!(!label.is_empty(), "bad matcher in {expr}");
                    matchers.push((label, op, value));
                }
                refs.selectors.push((word, matchers));
                i = k;
            }
        } else {
            i += 1;
        }
    }
    refs
}

#[test]
fn promql_reader_finds_names_matchers_and_groupings() {
    let r = promql_refs(
        r#"sum by (instance, worker) (rate(wsgate_a_total{job=~"$job", reason="x"}[$__rate_interval])) / (sum(wsgate_b) > 0)"#,
    );
    assert_eq!(r.selectors.len(), 1);
    assert_eq!(r.selectors[0].0, "wsgate_a_total");
    assert_eq!(
        r.selectors[0].1,
        vec![
            ("job".into(), "=~".into(), "$job".into()),
            ("reason".into(), "=".into(), "x".into())
        ]
    );
    let names: Vec<&str> = r.wsgate_names.iter().map(String::as_str).collect();
    assert_eq!(names, ["wsgate_a_total", "wsgate_b"]);
    let grouping: Vec<&str> = r.grouping.iter().map(String::as_str).collect();
    assert_eq!(grouping, ["instance", "worker"]);
}

/// Every PromQL expression in the dashboard: panel targets and variable
/// queries, with where each came from.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner); // collapsed rows
        }
    }
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target with an expr");
            out.push((format!("panel {:?}", p["title"]), expr.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .or_else(|| v["definition"].as_str());
        if let Some(q) = q {
            // label_values(selector, label): the selector part is PromQL.
            let q = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map_or(q, |(sel, _)| sel);
            out.push((format!("variable {:?}", v["name"]), q.to_string()));
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_only_metrics_wsgate_exports() {
    let text = std::fs::read_to_string(repo("tuning/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    // An importable dashboard with a Prometheus data source input.
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(inputs
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "{:?} has no gridPos",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{:?}",
                p["title"]
            );
            for t in p["targets"].as_array().expect("targets") {
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
            }
        }
    }

    let exported = Exported::scrape();
    let scraped_labels = |name: &str| exported.metrics.get(name);
    // Prometheus adds these to every series it scrapes.
    let target_labels = ["job", "instance"];
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "only {} queries", queries.len());
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let refs = promql_refs(expr);
        assert!(
            !refs.wsgate_names.is_empty(),
            "{place}: no wsgate metric in {expr:?}"
        );
        for name in &refs.wsgate_names {
            assert!(
                scraped_labels(name).is_some(),
                "{place}: {name} is not exported (exported: {:?})",
                exported.metrics.keys().collect::<Vec<_>>()
            );
            used.insert(name.clone());
        }
        let mut labels_here: BTreeSet<&str> = target_labels.into();
        for (name, matchers) in &refs.selectors {
            let labels =
                scraped_labels(name).unwrap_or_else(|| panic!("{place}: {name} is not exported"));
            labels_here.extend(labels.keys().map(String::as_str));
            for (label, op, value) in matchers {
                if target_labels.contains(&label.as_str()) {
                    continue;
                }
                let values = labels
                    .get(label)
                    .unwrap_or_else(|| panic!("{place}: {name} has no label {label}"));
                if op == "=" {
                    assert!(
                        values.contains(value),
                        "{place}: {name}{{{label}={value:?}}} matches nothing; values: {values:?}"
                    );
                }
            }
        }
        for label in &refs.grouping {
            assert!(
                labels_here.contains(label.as_str()),
                "{place}: groups by {label}, which no metric in {expr:?} has"
            );
        }
    }
    // The panels the Operations issue asks for.
    for want in [
        "wsgate_connections_open",
        "wsgate_connections_accepted_total",
        "wsgate_connections_closed_total",
        "wsgate_handshake_failures_total",
        "wsgate_messages_in_total",
        "wsgate_messages_out_total",
        "wsgate_bytes_in_total",
        "wsgate_bytes_out_total",
        "wsgate_publishes_total",
        "wsgate_deliveries_total",
        "wsgate_outbound_queued_bytes",
        "wsgate_inbox_depth",
        "wsgate_inbox_full_drops_total",
        "wsgate_timers",
        "wsgate_cluster_connected",
        "wsgate_cluster_dropped_total",
        "wsgate_cluster_reconnects_total",
        "wsgate_process_resident_memory_bytes",
        "wsgate_process_open_fds",
    ] {
        assert!(used.contains(want), "no panel shows {want}");
    }
    assert!(
        queries
            .iter()
            .any(|(_, e)| e.contains("reason=\"slow_consumer\"")),
        "no slow-consumer panel"
    );
    assert!(
        queries.iter().any(|(_, e)| {
            let rss = e.find("wsgate_process_resident_memory_bytes");
            let open = e.find("wsgate_connections_open");
            matches!((rss, open), (Some(r), Some(o)) if r < o && e[r..o].contains('/'))
        }),
        "no RSS-per-connection panel"
    );
}

/// Every `wsgate_*` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wsgate_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let name = tail[..len].trim_end_matches('_');
        if !before.is_some_and(is_ident) && name.starts_with("wsgate_") {
            names.insert(name.to_string());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

#[test]
fn docs_name_only_metrics_wsgate_exports() {
    // README.md and every Markdown file under tuning/ and bench/: PromQL
    // copied from them must match what /metrics really has.
    let mut docs = vec![repo("README.md")];
    for dir in ["tuning", "bench"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "md") {
                docs.push(p.to_string_lossy().into_owned());
            }
        }
    }
    let exported = Exported::scrape();
    let is_exported = |name: &str| {
        exported.metrics.contains_key(name)
            // Histograms: the family name, or its _bucket/_sum/_count series.
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|base| exported.metrics.contains_key(base))
            })
    };
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for name in metric_names_in(&text) {
            assert!(
                is_exported(&name),
                "{doc} names {name}, which /metrics does not export (exported: {:?})",
                exported.metrics.keys().collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} metric names found in {docs:?}"
    );
}

#[test]
fn metric_names_are_found_in_prose_and_promql() {
    let names = metric_names_in(
        "counted in `wsgate_deliveries`, rate(wsgate_bytes_in_total[1m]); not my_wsgate_x or wsgate_",
    );
    let want: BTreeSet<String> = ["wsgate_deliveries", "wsgate_bytes_in_total"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

#[test]
fn run_all_names_a_too_old_rustc_and_runs_every_test_binary() {
    // A fake rustc older than rust-version, first on PATH: the script must
    // stop before building anything and say what to install.
    let dir = common::temp_dir("old-rustc");
    let fake = dir.path().join("rustc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'rustc 1.63.0 (distribution build)'\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&fake, perms).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(repo("tests/run-all.sh"))
        .env("PATH", path)
        .output()
        .expect("bash");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let need = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(
        err.contains("rustc 1.63.0") && err.contains(&format!("rust-version = {need}")),
        "{err}"
    );
    assert!(err.contains("rustup"), "{err}");

    // One failing test binary must not hide the others.
    let script = std::fs::read_to_string(repo("tests/run-all.sh")).unwrap();
    let test_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("cargo test"))
        .expect("a cargo test line");
    assert!(test_line.contains("--no-fail-fast"), "{test_line}");
}

#[test]
fn scripts_print_their_usage_and_bench_scripts_change_nothing_unasked() {
    for script in [
        "tuning/tune.sh",
        "tests/flake-hunt.sh",
        "tests/conformance.sh",
        "bench/million.sh",
        "bench/reference.sh",
        "bench/compare.sh",
        "bench/deflate.sh",
        "bench/storm.sh",
    ] {
        // Run as the docs do: directly, so the run bit must be set.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(repo(script)).unwrap().permissions(),
        );
        assert!(mode & 0o111 != 0, "{script} is not executable");
        let out = Command::new(repo(script)).arg("--help").output().unwrap();
        assert!(out.status.success(), "{script} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--"), "{script} --help: {help}");
        for line in help.lines() {
            assert!(
                !line.starts_with("set -") && !line.starts_with("#!"),
                "{script} --help prints its own code: {line}"
            );
        }
        let out = Command::new(repo(script))
            .arg("--no-such-flag")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{script} --no-such-flag");
    }
    let help = Command::new(repo("bench/million.sh"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--port",
        "--apply-sysctl",
        "--show-sysctl",
        "--out",
        "--io-backend",
    ] {
        assert!(help.contains(flag), "million.sh --help lacks {flag}");
    }
    let bad = Command::new(repo("bench/million.sh"))
        .args(["--io-backend", "kqueue"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "million.sh --io-backend kqueue");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("epoll or io-uring"));
    // Without --apply-sysctl the machine's settings are only read and shown.
    let out = Command::new(repo("bench/million.sh"))
        .arg("--show-sysctl")
        .output()
        .unwrap();
    assert!(out.status.success());
    let keys: BTreeSet<String> = settings().into_iter().map(|(k, _)| k).collect();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("sysctl.conf") {
            continue;
        }
        let (key, change) = line.trim().split_once(": ").expect("key: have → want");
        assert!(keys.contains(key), "{line}");
        assert!(change.contains(" → "), "{line}");
    }
}

#[test]
fn the_source_address_rule_is_one_rule() {
    // sysctl.conf states the rule with its figure for 1M; tune.sh computes
    // it. With the port range sysctl.conf sets, they must agree.
    let (_, out) = tune(&["--target", "1000000"]);
    let n: u64 = out
        .split("a client should use ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no source-address count in:\n{out}"));
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let range: Vec<&str> = range.split_whitespace().collect();
    let conf = std::fs::read_to_string(repo("sysctl.conf")).unwrap();
    let conf_range = settings()
        .into_iter()
        .find(|(k, _)| k == "net.ipv4.ip_local_port_range")
        .expect("sysctl.conf sets the port range")
        .1;
    if conf_range.split_whitespace().collect::<Vec<_>>() == range {
        assert!(
            conf.contains(&format!("= {n} source addresses")),
            "tune.sh says {n} source addresses for 1M; sysctl.conf says otherwise"
        );
    }
    for doc in ["README.md", "bench/README.md", "tuning/README.md"] {
        let text = std::fs::read_to_string(repo(doc)).unwrap();
        assert!(
            !text.contains("16 source addresses") && !text.contains("16+ source"),
            "{doc} states another source-address rule"
        );
    }
}

#[test]
fn bench_docs_run_wsbench_by_path_and_keep_published_results() {
    // Following the docs must neither need wsbench on PATH nor overwrite
    // the committed results in bench/results/.
    for doc in ["README.md", "bench/README.md"] {
        let text = std::fs::read_to_string(repo(doc)).unwrap();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            let line = line.trim_start();
            assert!(
                !line.starts_with("wsbench "),
                "{doc}: `{line}` needs wsbench on PATH"
            );
            if line.contains("bench/results") {
                assert!(
                    line.contains("--out bench/results") && line.contains("replace"),
                    "{doc}: `{line}` writes into the published bench/results/"
                );
            }
        }
    }
    for script in [
        "bench/million.sh",
        "bench/reference.sh",
        "bench/compare.sh",
        "bench/deflate.sh",
        "bench/storm.sh",
    ] {
        let text = std::fs::read_to_string(repo(script)).unwrap();
        let default = text
            .lines()
            .find_map(|l| l.strip_prefix("out="))
            .unwrap_or_else(|| panic!("{script} has no out= default"));
        assert!(
            !default.contains("bench/results"),
            "{script} writes into bench/results by default"
        );
    }
}

/// `flake-hunt.sh --since REV` reruns test targets (files directly in
/// tests/); a change to a helper module in tests/support/ or tests/common/
/// names no target and must not stop the hunt (it once failed CI with "no
/// integration test tests/tls.rs" for tests/support/tls.rs).
#[test]
fn flake_hunt_since_skips_helper_modules() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("tests/support")).unwrap();
    std::fs::create_dir_all(root.join("tests/common")).unwrap();
    std::fs::copy(
        repo("tests/flake-hunt.sh"),
        root.join("tests/flake-hunt.sh"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "start"]);
    std::fs::write(root.join("tests/support/tls.rs"), "// helper\n").unwrap();
    std::fs::write(root.join("tests/common/mod.rs"), "// helper\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-qm", "helpers"]);
    let out = Command::new("bash")
        .arg(root.join("tests/flake-hunt.sh"))
        .args(["--since", "HEAD~1"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no test files to rerun"), "{text}");
}

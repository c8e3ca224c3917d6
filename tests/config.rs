//! Configuration sources on the real binary: flag > WSGATE_* env > file >
//! default; one naming rule and a `--print-config` round trip for every
//! setting the parser knows; clear errors for unknown keys and bad values;
//! log output (JSON, colour, the start-up line).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use wsgate::config::{env_name, settings, Setting};

/// Runs the binary to completion with only `env` of the WSGATE_*
/// variables (the test's own environment must not leak into the checks).
fn wsgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WSGATE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wsgate")
}

fn temp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every `key = value` line of --print-config: key → (value, source).
fn print_config(out: &Output) -> BTreeMap<String, (String, String)> {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (kv, source) = l.split_once("  # ").unwrap_or((l, ""));
            let (k, v) = kv.split_once(" = ").unwrap_or_else(|| panic!("{l}"));
            (k.to_string(), (v.to_string(), source.to_string()))
        })
        .collect()
}

/// Settings that --print-config writes and a file can hold.
fn file_settings() -> Vec<Setting> {
    settings()
        .into_iter()
        .filter(|s| s.long != "config")
        .collect()
}

/// A value for `s` that the parser accepts and that is not its default, so
/// a setting added later is covered without editing this test.
fn sample(s: &Setting) -> Option<String> {
    if s.switch {
        return None;
    }
    let mut candidates: Vec<String> = s.choices.clone();
    candidates.extend(
        [
            "7",
            "70",
            "2s",
            "127.0.0.1:7",
            "redis://127.0.0.1:7/",
            "debug",
            "https://app.example.com",
        ]
        .map(String::from),
    );
    candidates
        .into_iter()
        .filter(|c| Some(c) != s.default.as_ref())
        .find(|c| {
            wsgate::config::cli()
                .try_get_matches_from(["wsgate".to_string(), format!("--{}={c}", s.long)])
                .is_ok()
        })
}

/// The command-line arguments that set `s` to a non-default value.
fn set_args(s: &Setting) -> Vec<String> {
    match sample(s) {
        Some(v) => vec![format!("--{}={v}", s.long)],
        None if s.switch => vec![format!("--{}", s.long)],
        None => panic!(
            "no sample value parses for --{}: add one to sample() in tests/config.rs",
            s.long
        ),
    }
}

/// `key = value  # source` of --print-config, for one key.
fn effective(out: &Output, key: &str) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("{key} missing from:\n{text}"));
    let (kv, source) = line.split_once("  # ").unwrap();
    (
        kv.split_once(" = ").unwrap().1.to_string(),
        source.to_string(),
    )
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = temp_dir("config");
    let file = temp_file(
        &dir,
        "p.toml",
        "max-connections = 10\nmax_subscriptions = 7\nping-interval = \"20s\"\nidle-timeout = \"40s\"\n",
    );
    let f = file.to_str().unwrap();
    let out = wsgate(
        &["--config", f, "--print-config", "--max-connections", "30"],
        &[
            ("WSGATE_MAX_CONNECTIONS", "20"),
            ("WSGATE_PING_INTERVAL", "25s"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        effective(&out, "max-connections"),
        ("30".into(), "flag".into())
    );
    assert_eq!(
        effective(&out, "ping-interval"),
        ("\"25s\"".into(), "env".into())
    );
    assert_eq!(
        effective(&out, "max-subscriptions"),
        ("7".into(), "file".into())
    );
    assert_eq!(
        effective(&out, "idle-timeout"),
        ("\"40s\"".into(), "file".into())
    );
    assert_eq!(
        effective(&out, "max-topic-bytes"),
        ("256".into(), "default".into())
    );
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    let dir = temp_dir("config");
    for (text, want) in [
        ("bogus-key = 1\n", "unknown key 'bogus-key'"),
        ("idle-timeout = \"soon\"\n", "bad value for 'idle-timeout'"),
        (
            "max-connections = \"many\"\n",
            "bad value for 'max-connections'",
        ),
        ("pin-cores = 3\n", "bad value for 'pin-cores'"),
        ("listen = [\n", "not valid TOML"),
        // Where the syntax error is, not only what it is.
        ("path = \"/ws\"\nlisten = [\n", "line 2, column"),
        // Both spellings of one key: one setting given twice, said so.
        (
            "max-connections = 1\nmax_connections = 2\n",
            "'max-connections' and 'max_connections' are the same setting",
        ),
        // A file value is checked alone: no flag name in the message.
        ("workers = 0\n", "bad value for 'workers'"),
    ] {
        let file = temp_file(&dir, "bad.toml", text);
        let out = wsgate(&["--config", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains("bad.toml"), "{err}");
    }
    let out = wsgate(&["--config", "/nonexistent/wsgate.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn the_example_file_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/wsgate.toml");
    let out = wsgate(&["--config", example, "--print-config"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        effective(&out, "listen"),
        ("\"0.0.0.0:8080\"".into(), "file".into())
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    let out = wsgate(&["--idle-timeout", "forever"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
    let out = wsgate(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--workers",
        "--max-message-size",
        "--handshake-timeout",
        "--config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    // Each flag's environment variable is shown too.
    assert!(help.contains("[env: WSGATE_MAX_CONNECTIONS="), "{help}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let mut cmd = wsgate_command(port);
    cmd.args(["--log-format", "json", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut p = Proc(cmd.spawn().unwrap());
    p.wait_listening(port, Duration::from_secs(10));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(5)).success());
    let mut err = String::new();
    std::io::Read::read_to_string(p.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "{err}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    assert!(err.contains("wsgate listening"));
}

#[test]
fn every_setting_follows_the_naming_rule() {
    // flag --max-connections, env WSGATE_MAX_CONNECTIONS, key max-connections.
    let all = settings();
    assert!(all.len() > 20, "{all:?}");
    for s in &all {
        assert_eq!(
            s.env.as_deref(),
            Some(env_name(&s.long).as_str()),
            "--{} must read the environment variable {} (add `env = \"{}\"` to its #[arg])",
            s.long,
            env_name(&s.long),
            env_name(&s.long)
        );
        assert_eq!(
            s.id,
            s.long.replace('-', "_"),
            "--{}: the clap id (and so the file key) must be the flag name",
            s.long
        );
    }
}

#[test]
fn print_config_loads_back_to_the_same_config_for_every_setting() {
    let dir = temp_dir("config");
    let round_trip = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let first = wsgate(&[&args[..], &["--print-config"]].concat(), &[]);
        let printed = print_config(&first);
        let file = temp_file(
            &dir,
            "round-trip.toml",
            &String::from_utf8_lossy(&first.stdout),
        );
        let again = print_config(&wsgate(
            &["--config", file.to_str().unwrap(), "--print-config"],
            &[],
        ));
        let values = |m: &BTreeMap<String, (String, String)>| -> BTreeMap<String, String> {
            m.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
        };
        assert_eq!(values(&printed), values(&again), "{args:?}");
        for (k, (_, source)) in &again {
            assert_eq!(source, "file", "{k} in a round trip of {args:?}");
        }
        printed
    };
    // All defaults.
    let defaults = round_trip(&[]);
    for s in file_settings() {
        let args = set_args(&s);
        let printed = round_trip(&args);
        if s.secret {
            // Secrets are never printed, so they are not round-tripped.
            assert!(!printed.contains_key(&s.long), "{} printed", s.long);
            continue;
        }
        let (value, source) = &printed[&s.long];
        assert_eq!(source, "flag", "{args:?}");
        assert_ne!(
            Some(value),
            defaults.get(&s.long).map(|(v, _)| v),
            "{args:?} did not change --{}",
            s.long
        );
    }
}

#[test]
fn every_setting_can_come_from_its_environment_variable() {
    for s in file_settings() {
        let flag = print_config(&wsgate(&[set_args(&s)[0].as_str(), "--print-config"], &[]));
        let value = sample(&s).unwrap_or_else(|| "true".into());
        let var = env_name(&s.long);
        let from_env = print_config(&wsgate(&["--print-config"], &[(&var, &value)]));
        if s.secret {
            assert!(!from_env.contains_key(&s.long));
            continue;
        }
        assert_eq!(
            from_env[&s.long],
            (flag[&s.long].0.clone(), "env".to_string()),
            "{var}={value}"
        );
    }
}

#[test]
fn the_example_file_names_every_setting() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/wsgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Keys set or shown commented out (`# workers = 16`).
    // Flags are named before the first table (`[[history.topic]]` rules
    // come after them, with keys of their own).
    let named: BTreeSet<String> = text
        .lines()
        .take_while(|l| {
            !l.trim_start()
                .trim_start_matches('#')
                .trim_start()
                .starts_with('[')
        })
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            let (key, _) = l.split_once(" = ").or_else(|| l.split_once('='))?;
            let key = key.trim();
            (!key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .then(|| key.to_string())
        })
        .collect();
    let known: BTreeSet<String> = file_settings().into_iter().map(|s| s.long).collect();
    let missing: Vec<_> = known.difference(&named).collect();
    assert!(missing.is_empty(), "tuning/wsgate.toml lacks {missing:?}");
    let unknown: Vec<_> = named.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "tuning/wsgate.toml names no such setting {unknown:?}"
    );
}

#[test]
fn value_errors_say_where_the_bad_value_came_from() {
    // From the environment: the variable is named, not a flag.
    let out = wsgate(&[], &[("WSGATE_MAX_CONNECTIONS", "-5")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("WSGATE_MAX_CONNECTIONS") && err.contains("'-5'"),
        "{err}"
    );
    assert!(!err.contains("--max-connections"), "{err}");
    // A negative number on the command line is a bad value, not a flag.
    let out = wsgate(&["--max-connections", "-5"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("invalid value '-5' for '--max-connections"),
        "{err}"
    );
    assert!(!err.contains("unexpected argument"), "{err}");
    // A TLS version the server does not offer is named with the choices.
    let out = wsgate(&["--tls-min-version", "1.1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("invalid value '1.1' for '--tls-min-version")
            && err.contains("1.2")
            && err.contains("1.3"),
        "{err}"
    );
    // No workers is refused, not turned into one.
    let out = wsgate(&["--workers", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
    // Unknown log levels are refused with the valid ones listed.
    for (args, env) in [
        (&["--log-level", "lol"][..], &[][..]),
        (&[][..], &[("WSGATE_LOG_LEVEL", "lol")][..]),
        (&["--log-level", "wsgate=loud"][..], &[][..]),
    ] {
        let out = wsgate(args, env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = stderr(&out);
        assert!(
            err.contains("off, error, warn, info, debug, trace"),
            "{args:?} {env:?}: {err}"
        );
    }
    for ok in ["debug", "WARN", "wsgate=debug,warn", "off"] {
        let out = wsgate(&["--log-level", ok, "--print-config"], &[]);
        assert!(out.status.success(), "{ok}: {}", stderr(&out));
    }
}

#[test]
fn print_config_shows_the_resolved_worker_count_and_hides_secrets() {
    let printed = print_config(&wsgate(&["--print-config"], &[]));
    let (workers, source) = &printed["workers"];
    let n: usize = workers
        .parse()
        .unwrap_or_else(|_| panic!("workers = {workers}"));
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(n, cpus);
    assert!(source.starts_with("default"), "{source}");

    let out = wsgate(
        &["--print-config"],
        &[("WSGATE_JWT_SECRET", "correct-horse-battery")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("correct-horse-battery"), "{text}");
    assert!(text.contains("# jwt-secret = (hidden)  # env"), "{text}");
}

/// Starts the binary (admin off), waits until it listens, stops it with
/// SIGTERM and returns what it logged.
fn logs_of_a_short_run(extra: &[&str], env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut cmd = wsgate_command(port);
    cmd.args(["--log-level", "info"])
        .args(extra)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc(cmd.spawn().unwrap());
    p.wait_listening(port, Duration::from_secs(10));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(5)).success());
    let mut err = String::new();
    std::io::Read::read_to_string(p.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn logs_to_a_pipe_are_plain_text_in_operator_words() {
    let err = logs_of_a_short_run(&["--app", "echo"], &[]);
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in piped logs:\n{err:?}"
    );
    let start = err
        .lines()
        .find(|l| l.contains("wsgate listening"))
        .unwrap_or_else(|| panic!("no start-up line in {err}"));
    assert!(
        start.contains("wsgate listening on ws://127.0.0.1:"),
        "{start}"
    );
    assert!(
        start.contains("admin=off") && start.contains("app=echo"),
        "{start}"
    );
    for debug_form in ["Some(", "None", "Echo", "PubSub"] {
        assert!(!start.contains(debug_form), "{debug_form} in {start}");
    }
}

#[test]
fn a_variable_that_names_no_setting_is_reported() {
    // The old plural spelling, which used to be silently ignored.
    let err = logs_of_a_short_run(&[], &[("WSGATE_ALLOWED_ORIGINS", "https://a.example")]);
    let warn = err
        .lines()
        .find(|l| l.contains("WSGATE_ALLOWED_ORIGINS"))
        .unwrap_or_else(|| panic!("no warning in {err}"));
    assert!(
        warn.contains("WARN") && warn.contains("names no setting"),
        "{warn}"
    );
}

#[test]
fn history_topic_rules_load_from_the_file_and_bad_ones_are_clear_errors() {
    let dir = temp_dir("config");
    let file = temp_file(
        &dir,
        "rules.toml",
        "history-size = 10\n[[history.topic]]\npattern = \"chat.*\"\nsize = 100\nttl = \"5m\"\n\n[[history.topic]]\npattern = \"firehose\"\nsize = 0\n",
    );
    let loaded = wsgate::config::Loaded::from_args(["wsgate", "--config", file.to_str().unwrap()])
        .expect("rules load");
    let rules = &loaded.config.history_topics;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        (rules[0].pattern.as_str(), rules[0].size, rules[0].ttl),
        ("chat.*", 100, Some(std::time::Duration::from_secs(300)))
    );
    assert_eq!(
        (rules[1].pattern.as_str(), rules[1].size, rules[1].ttl),
        ("firehose", 0, None)
    );
    // --print-config writes the rules, and its output loads back to the
    // same rules.
    let printed = loaded.effective_toml();
    assert!(printed.contains("[[history.topic]]"), "{printed}");
    let again = temp_file(&dir, "printed.toml", &printed);
    let reloaded =
        wsgate::config::Loaded::from_args(["wsgate", "--config", again.to_str().unwrap()])
            .expect("printed config loads");
    assert_eq!(&reloaded.config.history_topics, rules, "{printed}");
    for (text, want) in [
        ("[[history.topic]]\nsize = 1\n", "history.topic[0]': missing pattern"),
        ("[[history.topic]]\npattern = \"a\"\n", "missing size"),
        ("[[history.topic]]\npattern = \"a*b\"\nsize = 1\n", "trailing *"),
        ("[[history.topic]]\npattern = \"a\"\nsize = -1\n", "not a message count"),
        ("[[history.topic]]\npattern = \"a\"\nsize = 1\nttl = \"soon\"\n", "history.topic[0].ttl"),
        ("[[history.topic]]\npattern = \"a\"\nsize = 1\nlimit = 2\n", "use pattern, size, ttl"),
        ("[history]\nsize = 1\n", "'history.size': unknown key"),
        (
            "[[history.topic]]\npattern = \"a\"\nsize = 1\n[[history.topic]]\npattern = \"a\"\nsize = 2\n",
            "given twice",
        ),
    ] {
        let file = temp_file(&dir, "bad.toml", text);
        let out = wsgate(&["--config", file.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = stderr(&out);
        assert!(err.contains(want), "{text}: {err}");
        assert!(err.contains("bad.toml"), "{err}");
    }
}

/// Start-up errors are typed and name the setting to fix; the binary
/// prints them and exits 1.
#[test]
fn start_errors_are_typed_and_name_the_setting() {
    use wsgate::StartError;
    let start = |tweak: &dyn Fn(&mut wsgate::Config)| {
        let mut cfg = wsgate::Config::for_tests();
        cfg.workers = Some(1);
        cfg.admin_listen = None;
        tweak(&mut cfg);
        match wsgate::start(cfg) {
            Ok(_) => panic!("started"),
            Err(e) => e,
        }
    };
    let e = start(&|c| c.workers = Some(100_000));
    assert!(
        matches!(e, StartError::TooManyWorkers { given: 100_000, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("--workers 100000 is over the maximum"),
        "{e}"
    );

    let e = start(&|c| {
        c.jwt_secret = Some("s".into());
        c.jwt_secret_file = Some("/x".into());
    });
    assert!(matches!(e, StartError::JwtSettingsConflict), "{e:?}");

    let e = start(&|c| c.jwt_secret_file = Some("/nonexistent/wsgate-secret".into()));
    assert!(matches!(e, StartError::JwtSecretFile { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("--jwt-secret-file /nonexistent/wsgate-secret"),
        "{e}"
    );

    let e = start(&|c| c.jwt_public_key_file = Some("/nonexistent/key.pem".into()));
    assert!(e.to_string().starts_with("--jwt-public-key-file: "), "{e}");

    let e = start(&|c| c.redis_cluster = Some("http://x".into()));
    assert!(matches!(e, StartError::RedisClusterSeeds(_)), "{e:?}");
    assert!(e.to_string().starts_with("--redis-cluster: "), "{e}");

    let e = start(&|c| c.redis = Some("not a url".into()));
    assert!(matches!(e, StartError::RedisUrl { .. }), "{e:?}");

    let dir = tempfile::tempdir().unwrap();
    let empty = temp_file(&dir, "token", "  \n");
    let e = start(&|c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_token_file = Some(empty.clone());
    });
    assert!(matches!(e, StartError::Admin(_)), "{e:?}");
    assert!(e.to_string().contains("is empty"), "{e}");

    // The port is taken (by a listener without SO_REUSEPORT).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = start(&|c| c.listen = addr);
    assert!(matches!(e, StartError::Listen { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on {addr}: ")),
        "{e}"
    );

    let out = wsgate(
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret-file",
            "/nonexistent/wsgate-secret",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot start"), "{err}");
    assert!(
        err.contains("--jwt-secret-file /nonexistent/wsgate-secret"),
        "{err}"
    );
}

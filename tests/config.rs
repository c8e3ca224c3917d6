//! Configuration sources on the real binary: flag > WSGATE_* env > file >
//! default; clear errors for unknown keys and bad values; JSON logs.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn wsgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run wsgate")
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
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
    let file = temp_file(
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
    for (text, want) in [
        ("bogus-key = 1\n", "unknown key 'bogus-key'"),
        ("idle-timeout = \"soon\"\n", "bad value for 'idle-timeout'"),
        (
            "max-connections = \"many\"\n",
            "bad value for 'max-connections'",
        ),
        ("pin-cores = 3\n", "bad value for 'pin-cores'"),
        ("listen = [\n", "not valid TOML"),
    ] {
        let file = temp_file("bad.toml", text);
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
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        "off",
    ])
    .args(["--log-format", "json", "--log-level", "info"])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut p = Proc(cmd.spawn().unwrap());
    wait_for_port(port, Duration::from_secs(10));
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

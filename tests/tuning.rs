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

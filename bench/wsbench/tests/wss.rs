//! End to end over wss://: the real `wsbench` binary through a real TLS
//! terminator (nginx, with a certificate from a CA this test makes) in front
//! of an in-process wsgate. Every connection opens, echoes come back,
//! reconnects resume their TLS sessions (and do not with `--tls-resume
//! false`), and a client trusting the wrong CA fails every connection with a
//! certificate error, counted in `failures`.
//!
//! The TLS endpoint is chosen in one place (the `let front = ...` line of
//! the test): once wsgate terminates TLS itself, give its configuration the
//! same certificate files (`certs.chain`, `certs.key`) and use
//! [`TlsFront::direct`] instead of [`TlsFront::nginx`].

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;

/// A scratch directory removed when the test ends (pass or fail).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("wsbench-wss-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(p.join("logs")).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files of a test PKI: a CA, a server certificate it issued for
/// 127.0.0.1 and localhost (chain: leaf then CA), its key, and another CA
/// that issued nothing here. Generated at test time; no key is committed.
struct Certs {
    ca: PathBuf,
    wrong_ca: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        let ca = new_ca("wsbench test CA");
        let wrong = new_ca("wsbench wrong CA");
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let c = Certs {
            ca: dir.join("ca.pem"),
            wrong_ca: dir.join("wrong-ca.pem"),
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&c.ca, ca.pem()).unwrap();
        std::fs::write(&c.wrong_ca, wrong.pem()).unwrap();
        std::fs::write(&c.chain, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        c
    }
}

/// Where wss:// clients connect, and what keeps it running.
struct TlsFront {
    url: String,
    _process: Option<Group>,
}

/// A child leading its own process group (nginx and its workers): SIGTERM
/// to the group when dropped, then SIGKILL to what is left, then reaped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = -(self.0.id() as i32);
        // SAFETY: kill(2) takes plain integers; the group is led by our
        // child, which is not reaped until below, so the id is still ours.
        unsafe { libc::kill(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; workers left behind by a master that died.
        unsafe { libc::kill(pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TlsFront {
    /// A server that speaks TLS itself at `addr`.
    #[allow(dead_code)] // until wsgate terminates TLS (see the module docs)
    fn direct(addr: SocketAddr) -> TlsFront {
        TlsFront {
            url: format!("wss://{addr}/ws"),
            _process: None,
        }
    }

    /// nginx on 127.0.0.1 terminating TLS 1.2/1.3 with `certs` (session
    /// tickets on, as by default) and proxying WebSocket upgrades to
    /// `upstream`.
    fn nginx(dir: &Path, certs: &Certs, upstream: SocketAddr) -> TlsFront {
        let port = free_port();
        let conf = format!(
            r#"worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:1m;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_read_timeout 60s;
        }}
    }}
}}
"#,
            chain = certs.chain.display(),
            key = certs.key.display(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            // Its own process group, so stopping it stops its workers too.
            .process_group(0)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args([
                "-g",
                "daemon off; pid nginx.pid; error_log logs/error.log warn;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        let nginx = Group(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsFront {
            url: format!("wss://127.0.0.1:{port}/ws"),
            _process: Some(nginx),
        }
    }
}

/// Runs one wsbench scenario to completion (killed past 60 s), asserting it
/// succeeds; returns the results JSON it wrote.
fn scenario(dir: &Path, name: &str, url: &str, args: &[&str]) -> Value {
    let out = dir.join(format!("{name}.json"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbench"))
        .args(args)
        .args(["--url", url, "--timeout", "30", "--server-pid"])
        .arg(std::process::id().to_string())
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsbench");
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsbench {name} ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    assert!(
        o.status.success(),
        "wsbench {name} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("results written"))
        .expect("results are JSON");
    eprintln!("{name}: {v}");
    v
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not an unsigned number in {v:#}"))
}

#[test]
fn wss_through_a_tls_terminator_opens_echoes_resumes_and_refuses_the_wrong_ca() {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    let certs = Certs::make(dir);
    let mut cfg = wsgate::Config::for_tests();
    cfg.workers = Some(2);
    cfg.max_messages_per_sec = 0;
    // For the restart scenario's history topics.
    cfg.history_size = 10_000;
    let server = wsgate::start(cfg).expect("server starts");
    let front = TlsFront::nginx(dir, &certs, server.local_addr());
    let url = front.url.as_str();
    let ca = certs.ca.to_str().unwrap();

    // connect: every connection opens, each with one TLS handshake.
    let c = scenario(
        dir,
        "connect",
        url,
        &[
            "connect",
            "--ca-file",
            ca,
            "--connections",
            "200",
            "--hold",
            "0",
            "--settle",
            "0",
        ],
    );
    assert_eq!(u(&c, "opened"), 200, "{c:#}");
    assert_eq!(u(&c, "failed"), 0, "{c:#}");
    assert_eq!(u(&c, "tls_full") + u(&c, "tls_resumed"), 200, "{c:#}");
    assert!(
        u(&c, "tls_full") > 0,
        "the first handshakes are full: {c:#}"
    );
    let hs = &c["handshake_latency"];
    assert_eq!(u(hs, "count"), 200, "{c:#}");
    assert!(u(hs, "p50_us") > 0, "{c:#}");

    // connect split over child processes (a low descriptor limit forces
    // it): the children get the TLS options too, and their counts add up.
    let multi = dir.join("multi.json");
    let o = Command::new("sh")
        .args(["-c", "ulimit -n 300 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_wsbench"))
        .args([
            "connect",
            "--url",
            url,
            "--ca-file",
            ca,
            "--connections",
            "200",
        ])
        .args(["--hold", "0", "--settle", "0", "--timeout", "30", "--out"])
        .arg(&multi)
        .output()
        .expect("run wsbench");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&multi).unwrap()).unwrap();
    eprintln!("multi: {m}");
    assert!(u(&m, "processes") >= 2, "{m:#}");
    assert_eq!(u(&m, "opened"), 200, "{m:#}");
    assert_eq!(u(&m, "tls_full") + u(&m, "tls_resumed"), 200, "{m:#}");

    // echo: replies come back through TLS both ways.
    let e = scenario(
        dir,
        "echo",
        url,
        &[
            "echo",
            "--ca-file",
            ca,
            "--connections",
            "20",
            "--duration",
            "1",
            "--payload-bytes",
            "3000",
        ],
    );
    assert_eq!(u(&e, "connections"), 20, "{e:#}");
    assert_eq!(u(&e, "closed_by_server"), 0, "{e:#}");
    assert!(u(&e, "round_trips") > 20, "{e:#}");

    // churn: the reconnects resume with tickets from earlier handshakes.
    let churn = |name: &str, resume: &str| {
        scenario(
            dir,
            name,
            url,
            &[
                "churn",
                "--ca-file",
                ca,
                "--tls-resume",
                resume,
                "--connections",
                "100",
                "--rate",
                "100",
                "--duration",
                "2",
            ],
        )
    };
    let ch = churn("churn", "true");
    let reconnected = u(&ch, "reconnected");
    assert!(reconnected >= 150, "{ch:#}");
    assert_eq!(u(&ch, "failed"), 0, "{ch:#}");
    assert_eq!(
        u(&ch, "tls_full") + u(&ch, "tls_resumed"),
        100 + reconnected,
        "ramp and reconnects each counted once: {ch:#}"
    );
    assert!(
        u(&ch, "tls_resumed") >= reconnected * 9 / 10,
        "reconnects resume: {ch:#}"
    );
    // Without the ticket store every handshake is a full one.
    let ch = churn("churn-no-resume", "false");
    assert!(u(&ch, "reconnected") >= 150, "{ch:#}");
    assert_eq!(u(&ch, "tls_resumed"), 0, "{ch:#}");
    assert_eq!(u(&ch, "tls_full"), 100 + u(&ch, "reconnected"), "{ch:#}");

    // restart: every client loses its connection at once and all reconnect
    // together; each resumes with a ticket of its own (a store of a few
    // tickets per server, like rustls' default, would resume only a few).
    let rs = scenario(
        dir,
        "restart",
        url,
        &[
            "restart",
            "--ca-file",
            ca,
            "--connections",
            "200",
            "--topics",
            "2",
            "--rate",
            "50",
            "--duration",
            "3",
            "--at",
            "1.5",
            "--reconnect-jitter-ms",
            "0",
            "--probe-rate",
            "0",
        ],
    );
    assert_eq!(u(&rs, "resumed"), 200, "{rs:#}");
    assert_eq!(u(&rs, "lost"), 0, "{rs:#}");
    assert!(u(&rs, "tls_resumed") >= 200, "{rs:#}");

    // The wrong CA: every connection fails on the certificate.
    let bad = scenario(
        dir,
        "wrong-ca",
        url,
        &[
            "connect",
            "--ca-file",
            certs.wrong_ca.to_str().unwrap(),
            "--connections",
            "30",
            "--hold",
            "0",
            "--settle",
            "0",
        ],
    );
    assert_eq!(u(&bad, "opened"), 0, "{bad:#}");
    assert_eq!(u(&bad, "failed"), 30, "{bad:#}");
    assert_eq!(
        u(&bad["failures"], "tls: certificate from an unknown issuer"),
        30,
        "{bad:#}"
    );
    assert_eq!(u(&bad, "tls_full") + u(&bad, "tls_resumed"), 0, "{bad:#}");

    // --insecure takes the same certificate without knowing its CA.
    let any = scenario(
        dir,
        "insecure",
        url,
        &[
            "connect",
            "--insecure",
            "--connections",
            "30",
            "--hold",
            "0",
            "--settle",
            "0",
        ],
    );
    assert_eq!(u(&any, "opened"), 30, "{any:#}");

    // The default trust (the public roots) does not know the test CA.
    let public = scenario(
        dir,
        "public-roots",
        url,
        &[
            "connect",
            "--connections",
            "5",
            "--hold",
            "0",
            "--settle",
            "0",
        ],
    );
    assert_eq!(u(&public, "opened"), 0, "{public:#}");
    assert_eq!(
        u(
            &public["failures"],
            "tls: certificate from an unknown issuer"
        ),
        5,
        "{public:#}"
    );
}

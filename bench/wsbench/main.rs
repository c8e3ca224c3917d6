//! wsbench: a lean WebSocket load generator for million-connection runs.
//!
//! Speaks plain RFC 6455 and the JSON `echo` / `broadcast` / `publish` shapes
//! of wsgate's design, so it can be pointed at any server that speaks them.
//! Every scenario is bounded in time, prints a progress line per second on
//! stderr, and ends with a Markdown summary on stdout (and JSON with --out).
//! Server cost is measured from /proc (RSS, CPU time of --server-pid), beside
//! the generator's own CPU, because both share the box.

mod charts;
mod client;
mod procfs;
mod report;
mod restart;
mod results;
mod scenarios;
mod tls;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsbench",
    about = "WebSocket load generator (connect, hold, echo, broadcast, churn) and its charts"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ramp to N connections, measure server memory per connection, hold, close.
    Connect(scenarios::ConnectArgs),
    /// Hold N open for T seconds answering pings; count drops.
    Hold(scenarios::HoldArgs),
    /// N listeners, one sender: fan-out completion time, deliveries/s, misses.
    Broadcast(scenarios::BroadcastArgs),
    /// C connections in closed loop: round trips/s and latency percentiles.
    Echo(scenarios::EchoArgs),
    /// Hold N while connecting/disconnecting R per second.
    Churn(scenarios::ChurnArgs),
    /// N clients on K history topics, a steady publisher, every connection
    /// lost mid-run (or --restart-cmd run): lost/duplicated/out-of-order
    /// messages from offsets, and reconnection times.
    Restart(restart::RestartArgs),
    /// Draw charts (SVG and PNG) from a results JSON: ramp and latency.
    Report(charts::ReportArgs),
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Server URL (ws://HOST:PORT/PATH or wss://HOST:PORT/PATH). Loopback only.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// wss://: trust the CA certificate(s) in this PEM file instead of the
    /// Mozilla roots built into wsbench.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<String>,
    /// wss://: INSECURE — accept ANY server certificate, for any name, without
    /// checking who issued it. Only for a self-signed test server you started
    /// yourself; a man in the middle would go unnoticed.
    #[arg(long)]
    pub insecure: bool,
    /// wss://: keep TLS session tickets so reconnects resume (abbreviated
    /// handshakes); `--tls-resume false` makes every handshake a full one.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_resume: bool,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.40.
    #[arg(long, default_value = "")]
    pub src_ips: String,
    /// Server process(es) to measure (RSS, CPU) from /proc. Repeatable.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Hard limit on the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<String>,
    /// Offer permessage-deflate (RFC 7692) on every connection and inflate
    /// the compressed messages that arrive.
    #[arg(long)]
    pub deflate: bool,
}

impl Common {
    pub fn target(&self) -> Result<client::Target, String> {
        let (tls, rest) = if let Some(rest) = self.url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = self.url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err("only ws:// and wss:// URLs are supported".into());
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = hostport
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
            .next()
            .ok_or("no address")?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not loopback: benchmarks stay on 127.0.0.0/8"
            ));
        }
        if !tls && (self.ca_file.is_some() || self.insecure) {
            return Err("--ca-file and --insecure apply to wss:// URLs only".into());
        }
        if tls && self.insecure {
            eprintln!(
                "wsbench: WARNING: --insecure: the server's certificate is NOT verified \
                 (any certificate, any name, any issuer is accepted)"
            );
        }
        let tls = if tls {
            let host = match hostport.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => hostport,
            };
            Some(client::TlsTarget {
                config: tls::client_config(&self.tls_options())?,
                name: tls::server_name(host)?,
            })
        } else {
            None
        };
        Ok(client::Target {
            addr,
            host: hostport.to_string(),
            path: path.to_string(),
            deflate: self.deflate,
            tls,
        })
    }

    pub fn tls_options(&self) -> tls::TlsOptions {
        tls::TlsOptions {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
            resume: self.tls_resume,
        }
    }

    /// The TLS options as arguments, for child processes.
    pub fn tls_args(&self) -> Vec<String> {
        let mut v = vec!["--tls-resume".to_string(), self.tls_resume.to_string()];
        if let Some(ca) = &self.ca_file {
            v.extend(["--ca-file".to_string(), ca.clone()]);
        }
        if self.insecure {
            v.push("--insecure".to_string());
        }
        v
    }

    pub fn src_ips(&self) -> Result<Vec<IpAddr>, String> {
        client::parse_src_ips(&self.src_ips)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each connection is a descriptor: take everything the hard limit allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let result = match cli.cmd {
        Cmd::Connect(a) => scenarios::connect(a),
        Cmd::Hold(a) => scenarios::hold_scenario(a),
        Cmd::Broadcast(a) => scenarios::broadcast(a),
        Cmd::Echo(a) => scenarios::echo(a),
        Cmd::Churn(a) => scenarios::churn(a),
        Cmd::Restart(a) => restart::restart(a),
        Cmd::Report(a) => charts::report(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsbench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(args: &[&str]) -> Common {
        let mut argv = vec!["wsbench", "echo"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").cmd {
            Cmd::Echo(a) => a.common,
            _ => unreachable!(),
        }
    }

    #[test]
    fn urls_pick_plain_or_tls() {
        let plain = common(&["--url", "ws://127.0.0.1:9/ws"]).target().unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(
            (plain.host.as_str(), plain.path.as_str()),
            ("127.0.0.1:9", "/ws")
        );
        let c = common(&["--url", "wss://127.0.0.1:9/x", "--insecure"]);
        assert!(c.tls_resume, "resumption is on by default");
        let t = c.target().unwrap().tls.expect("wss:// speaks TLS");
        assert!(matches!(t.name, rustls_pki_types::ServerName::IpAddress(_)));
        let t = common(&["--url", "wss://localhost:9", "--tls-resume", "false"]);
        assert!(!t.tls_resume);
        assert_eq!(
            t.tls_args(),
            ["--tls-resume", "false"].map(String::from).to_vec()
        );
        let e = common(&["--url", "ws://127.0.0.1:9/", "--insecure"]).target();
        assert!(e.unwrap_err().contains("wss:// URLs only"));
        let e = common(&["--url", "https://127.0.0.1:9/"]).target();
        assert!(e.unwrap_err().contains("ws:// and wss://"));
        let e = common(&[
            "--url",
            "wss://127.0.0.1:9/",
            "--ca-file",
            "/nonexistent.pem",
        ]);
        assert!(e.target().is_err(), "a missing CA file is an error");
    }
}

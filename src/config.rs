//! The command line: every setting of a wsgate process, with its default.
//!
//! Owns parsing and validation of settings (including human-friendly
//! durations). It must not start anything; `main` and [`crate::server`]
//! read the resulting [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Which application runs on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppKind {
    /// The JSON pub/sub protocol: echo, broadcast, subscribe, publish, ping.
    #[value(name = "pubsub")]
    PubSub,
    /// Echo every message back with its opcode (used by the conformance suite).
    Echo,
}

/// wsgate: a WebSocket server for a million connections per box.
#[derive(Debug, Clone, Parser)]
#[command(name = "wsgate", version, about, long_about = None)]
pub struct Config {
    /// Address to accept WebSocket clients on (every worker binds it with SO_REUSEPORT).
    #[arg(long, env = "WSGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Request path that upgrades to WebSocket; other paths get 404.
    #[arg(long, env = "WSGATE_PATH", default_value = "/ws")]
    pub path: String,

    /// Worker threads, each with its own event loop and listener [default: online CPUs].
    #[arg(long, env = "WSGATE_WORKERS")]
    pub workers: Option<usize>,

    /// Pin worker N to CPU core N (mod the number of cores).
    #[arg(long, env = "WSGATE_PIN_CORES")]
    pub pin_cores: bool,

    /// Application served on each connection.
    #[arg(long, env = "WSGATE_APP", value_enum, default_value = "pubsub")]
    pub app: AppKind,

    /// Admin HTTP listener (publish API, health), or "off". Keep it off the public network.
    #[arg(long, env = "WSGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9090", value_parser = parse_optional_addr)]
    // Spelled out so clap treats "off" as a value, not the flag as optional.
    pub admin_listen: ::std::option::Option<SocketAddr>,

    /// Join a cluster through this Redis (redis://host:port/): publishes and
    /// broadcasts reach subscribers on every node sharing the prefix.
    #[arg(long, env = "WSGATE_REDIS")]
    pub redis: Option<String>,

    /// Redis channel prefix; nodes with the same prefix form one cluster.
    #[arg(long, env = "WSGATE_CLUSTER_PREFIX", default_value = "wsgate")]
    pub cluster_prefix: String,

    /// This node's id in the cluster [default: random per process].
    #[arg(long, env = "WSGATE_NODE_ID")]
    pub node_id: Option<u64>,

    /// Longest topic name, in bytes.
    #[arg(long, env = "WSGATE_MAX_TOPIC_BYTES", default_value_t = 256)]
    pub max_topic_bytes: usize,

    /// Most topics one connection may subscribe to.
    #[arg(long, env = "WSGATE_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub max_subscriptions: usize,

    /// Largest message (and frame) accepted, in bytes; larger ones close with 1009.
    #[arg(long, env = "WSGATE_MAX_MESSAGE_SIZE", default_value_t = 16 << 20)]
    pub max_message_size: u64,

    /// Largest number of frames one message may arrive in; more closes with 1009.
    #[arg(long, env = "WSGATE_MAX_FRAGMENTS", default_value_t = 1 << 20)]
    pub max_fragments: u32,

    /// Bytes queued for a client before the server stops reading from it
    /// (echo) or disconnects it as a slow consumer (fan-out).
    #[arg(long, env = "WSGATE_MAX_OUTBOUND_BYTES", default_value_t = 1 << 20)]
    pub max_outbound_bytes: usize,

    /// Close connections that have not completed the upgrade within this time
    /// (seconds, or with a unit: 500ms, 10s, 2m).
    #[arg(long, env = "WSGATE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Send a WebSocket ping to a connection silent (in both directions) this long.
    #[arg(long, env = "WSGATE_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Close (1001) a connection from which nothing arrived this long, counted
    /// from its last traffic; a pinged client has until then to answer.
    #[arg(long, env = "WSGATE_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most upgraded connections in the whole process (0 = no limit);
    /// over it, upgrades get 503 with Retry-After.
    #[arg(long, env = "WSGATE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most upgraded connections per client IP address (0 = no limit).
    #[arg(long, env = "WSGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Sustained messages (and control frames) per second one connection may
    /// send, with bursts of twice that; over it, close 1008 (0 = no limit).
    #[arg(long, env = "WSGATE_MAX_MESSAGES_PER_SEC", default_value_t = 10_000)]
    pub max_messages_per_sec: u32,

    /// How long a closing connection may take to flush and finish the close handshake.
    #[arg(long, env = "WSGATE_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for clients to finish closing.
    #[arg(long, env = "WSGATE_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Largest HTTP upgrade request head, in bytes (larger gets 431).
    #[arg(long, env = "WSGATE_MAX_REQUEST_HEAD", default_value_t = 8 * 1024)]
    pub max_request_head: usize,

    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG-style directive).
    #[arg(long, env = "WSGATE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// Parses a command line (the first item is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::try_parse_from(args)
    }

    /// The worker count to run: the flag, or the number of online CPUs.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    /// Settings for tests and embedding: loopback, OS-chosen ports.
    pub fn for_tests() -> Config {
        Config::from_args([
            "wsgate",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .unwrap_or_else(|e| panic!("default test config must parse: {e}"))
    }
}

/// Parses a socket address, or `off` for "no listener".
pub fn parse_optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim() {
        "off" | "none" | "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|e| format!("invalid address {a:?}: {e} (use HOST:PORT or off)")),
    }
}

/// Parses `3`, `0.5` (seconds) or a number with a unit: `ms`, `s`, `m`, `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 3, 0.5, 500ms, 2m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?} (use ms, s, m, h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::from_args(["wsgate"]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.path, "/ws");
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert!(c.worker_count() >= 1);
        assert_eq!(c.app, AppKind::PubSub);
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        let off = Config::from_args(["wsgate", "--admin-listen", "off"]).unwrap();
        assert_eq!(off.admin_listen, None);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = Config::from_args(["wsgate", "--handshake-timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        assert!(Config::from_args(["wsgate", "--listen", "nope"]).is_err());
    }
}

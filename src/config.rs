//! Every setting of a wsgate process, with its default, and where settings
//! come from: command-line flags, then `WSGATE_*` environment variables,
//! then a TOML file (`--config`), then defaults.
//!
//! One naming rule holds for every setting: the flag `--max-connections`,
//! the environment variable `WSGATE_MAX_CONNECTIONS` (upper snake case of the
//! flag) and the TOML key `max-connections` (the flag name). [`settings`]
//! lists them; the tests check the rule and the `--print-config` round trip
//! for every entry, so a new `#[arg]` is covered without further edits.
//!
//! Owns parsing and validation of settings (including human-friendly
//! durations). It must not start anything; `main` and [`crate::node`]
//! read the resulting [`Config`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Which application runs on each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppKind {
    /// The JSON pub/sub protocol: echo, broadcast, subscribe, publish, ping.
    #[value(name = "pubsub")]
    PubSub,
    /// Echo every message back with its opcode (used by the conformance suite).
    Echo,
}

/// Which clients may send `{"type":"broadcast"}` (reaching every connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientBroadcast {
    /// Any client; with authentication on, a token limited by a `topics`
    /// claim also needs `"broadcast": true`.
    On,
    /// Only connections whose token carries `"broadcast": true`.
    Token,
    /// No client: broadcasts come only from the admin API.
    Off,
}

/// Which event loop the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoBackend {
    /// mio over epoll: readiness, then read/write syscalls per socket.
    Epoll,
    /// io_uring: multishot accept and recv into a per-worker buffer ring,
    /// sends batched into one `io_uring_enter` per loop turn (Linux 6.0+).
    #[value(name = "io-uring")]
    IoUring,
}

/// The oldest TLS version the client listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMinVersion {
    /// TLS 1.2 and 1.3.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only: every established connection uses wsgate's own record
    /// layer (≈ 0.4 KiB idle, where a TLS 1.2 connection keeps ≈ 3.5 KiB of
    /// rustls state); a TLS 1.2-only client gets a protocol_version alert.
    #[value(name = "1.3")]
    Tls13,
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
    #[arg(long, env = "WSGATE_WORKERS", value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Pin worker N to CPU core N (mod the number of cores).
    #[arg(long, env = "WSGATE_PIN_CORES")]
    pub pin_cores: bool,

    /// Event loop of the workers: "epoll", or "io-uring" (Linux 6.0+; a
    /// kernel without what it needs stops the server at start-up).
    #[arg(long, env = "WSGATE_IO_BACKEND", value_enum, default_value = "epoll")]
    pub io_backend: IoBackend,

    /// Application served on each connection.
    #[arg(long, env = "WSGATE_APP", value_enum, default_value = "pubsub")]
    pub app: AppKind,

    /// Admin HTTP listener (publish API, /metrics, health), or "off". Keep it off the public network.
    #[arg(long, env = "WSGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9090", value_parser = parse_optional_addr)]
    // Spelled out so clap treats "off" as a value, not the flag as optional.
    pub admin_listen: ::std::option::Option<SocketAddr>,

    /// Join a cluster through this Redis (redis://host:port/): publishes and
    /// broadcasts reach subscribers on every node sharing the prefix.
    #[arg(long, env = "WSGATE_REDIS")]
    pub redis: Option<String>,

    /// Join a cluster through a Redis Cluster instead of one Redis: seed nodes
    /// (redis://h1:p1,redis://h2:p2,...). Topics, users and broadcasts travel
    /// with sharded pub/sub (Redis 7+), each on the shard owning its slot.
    #[arg(long, env = "WSGATE_REDIS_CLUSTER", conflicts_with = "redis")]
    pub redis_cluster: Option<String>,

    /// With --redis-cluster: how many channels (in evenly spaced slots)
    /// broadcasts are spread over, so no one shard carries them all.
    #[arg(long, env = "WSGATE_CLUSTER_BROADCAST_CHANNELS", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub cluster_broadcast_channels: u16,

    /// With --redis-cluster: how long a publish whose shard refuses it (a
    /// master failing over, a slot moving) is held and retried before it is
    /// dropped and counted. Cover your cluster-node-timeout plus election.
    #[arg(long, env = "WSGATE_CLUSTER_PUBLISH_HOLD", default_value = "20s", value_parser = parse_duration)]
    pub cluster_publish_hold: Duration,

    /// With --redis or --redis-cluster: how long a node's presence entries
    /// (GET /presence) outlive it if it dies without cleaning up; renewed
    /// every third of it.
    #[arg(long, env = "WSGATE_CLUSTER_PRESENCE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub cluster_presence_ttl: Duration,

    /// Redis channel prefix; nodes with the same prefix form one cluster.
    #[arg(long, env = "WSGATE_CLUSTER_PREFIX", default_value = "wsgate")]
    pub cluster_prefix: String,

    /// This node's id in the cluster [default: random per process].
    #[arg(long, env = "WSGATE_NODE_ID")]
    pub node_id: Option<u64>,

    /// Require a JWT (HS256) signed with this secret on every handshake.
    /// Prefer --jwt-secret-file: command lines are visible to other users.
    #[arg(long, env = "WSGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Require a JWT (HS256) signed with the secret in this file.
    #[arg(long, env = "WSGATE_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<String>,

    /// Require a JWT (RS256 or ES256) verified with this PEM public key.
    #[arg(long, env = "WSGATE_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<String>,

    /// How long past its token's `exp` a connection may stay before it is
    /// closed with 1008 (a client refreshes with {"type":"refresh","token":…}).
    #[arg(long, env = "WSGATE_JWT_EXPIRY_GRACE", default_value = "0s", value_parser = parse_duration)]
    pub jwt_expiry_grace: Duration,

    /// Browser origins allowed to connect (repeatable; exact like
    /// https://app.example.com, or *.example.com). None listed: any origin.
    // The id follows the flag (the naming rule); the field keeps its plural.
    #[arg(
        id = "allowed_origin",
        long = "allowed-origin",
        env = "WSGATE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Refuse handshakes without an Origin header when --allowed-origin is set
    /// (by default non-browser clients, which send none, are allowed).
    #[arg(long, env = "WSGATE_REQUIRE_ORIGIN")]
    pub require_origin: bool,

    /// Handshakes per second allowed from one client address, with bursts of
    /// twice that (0 = no limit); over it, 429.
    #[arg(long, env = "WSGATE_MAX_HANDSHAKES_PER_IP", default_value_t = 0.0)]
    pub max_handshakes_per_ip: f64,

    /// Longest topic name, in bytes.
    #[arg(long, env = "WSGATE_MAX_TOPIC_BYTES", default_value_t = 256)]
    pub max_topic_bytes: usize,

    /// Most topics one connection may subscribe to.
    #[arg(long, env = "WSGATE_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Most subscriptions (connection × topic) in the whole process; past it,
    /// subscribe answers error 429.
    #[arg(
        long,
        env = "WSGATE_MAX_TOTAL_SUBSCRIPTIONS",
        default_value_t = 10_000_000
    )]
    pub max_total_subscriptions: u64,

    /// Most topic entries in the whole process (a topic counts once per
    /// worker that has subscribers to it); past it, subscribing to a new
    /// topic answers error 429.
    #[arg(long, env = "WSGATE_MAX_TOPICS", default_value_t = 1_000_000)]
    pub max_topics: u64,

    /// Which clients may broadcast to every connection.
    #[arg(
        long,
        env = "WSGATE_CLIENT_BROADCAST",
        value_enum,
        default_value = "on"
    )]
    pub client_broadcast: ClientBroadcast,

    /// Broadcasts per second one connection may send, with bursts of twice
    /// that; over it, the broadcast is refused with error 429 (0 = no limit).
    #[arg(long, env = "WSGATE_MAX_BROADCASTS_PER_SEC", default_value_t = 10)]
    pub max_broadcasts_per_sec: u32,

    /// Shortest time between two token refreshes one connection may ask for;
    /// earlier ones are refused (error 429) without checking the token.
    /// 0 turns the limit off.
    #[arg(long, env = "WSGATE_MIN_REFRESH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub min_refresh_interval: Duration,

    /// Deliveries (whole publishes) queued for one worker before further ones
    /// are dropped and counted. The queue is allocated up front (~50 bytes a
    /// slot): lower it when running many small processes on one box.
    #[arg(long, env = "WSGATE_INBOX_DEPTH", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub inbox_depth: u32,

    /// Largest message (and frame) accepted, in bytes; larger ones close
    /// with 1009 [default: 65536 for pubsub, 16777216 for echo].
    #[arg(long, env = "WSGATE_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<u64>,

    /// Bytes of partly received messages the whole process may hold; a
    /// connection whose message would pass it is closed with 1009.
    #[arg(long, env = "WSGATE_MAX_REASSEMBLY_BYTES", default_value_t = 256 << 20)]
    pub max_reassembly_bytes: u64,

    /// Accept permessage-deflate (RFC 7692) from clients that offer it. Off by
    /// default: compressed replies and inflating client messages cost CPU per
    /// message, and compressing secrets together with attacker-chosen text in
    /// one message can leak them (CRIME/BREACH-style). Fan-out is compressed
    /// once per publish, and a connection keeps no compression state.
    #[arg(long, env = "WSGATE_PERMESSAGE_DEFLATE")]
    pub permessage_deflate: bool,

    /// With permessage-deflate: messages smaller than this (bytes) are sent
    /// uncompressed, as compressing them saves little or nothing.
    #[arg(long, env = "WSGATE_DEFLATE_MIN_SIZE", default_value_t = 128)]
    pub deflate_min_size: usize,

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

    /// Let the kernel hold each new client connection until its first bytes
    /// arrive (TCP_DEFER_ACCEPT), for at most this long (seconds, or with a
    /// unit; 0 = off). Saves the worker a wake-up per handshake. A client
    /// that connects and sends nothing is then not accepted (not counted in
    /// --max-handshaking or wsgate_connections_handshaking) until this time
    /// is over, rounded up to the kernel's SYN-ACK retransmissions; then
    /// --handshake-timeout applies.
    #[arg(long, env = "WSGATE_DEFER_ACCEPT", default_value = "0", value_parser = parse_duration)]
    pub defer_accept: Duration,

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

    /// Most connections still in their handshake (accepted, upgrade not yet
    /// answered) in the whole process (0 = no limit); past it new connections
    /// get 503 and are closed at once. Bounds what half-sent requests can
    /// hold: up to --max-request-head bytes each.
    #[arg(long, env = "WSGATE_MAX_HANDSHAKING", default_value_t = 16_384)]
    pub max_handshaking: usize,

    /// Most connections in their handshake from one client address (IPv6:
    /// one /64) (0 = no limit); past it new connections from there get 503
    /// and are closed at once, so one address cannot lock out the others.
    #[arg(long, env = "WSGATE_MAX_HANDSHAKING_PER_IP", default_value_t = 512)]
    pub max_handshaking_per_ip: u32,

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

    /// On SIGTERM or admin POST /drain, spread the closes (1001, with a
    /// jittered `{"reconnect_in_ms":N}` reason) over this long so clients do
    /// not all reconnect at once (0 = close every connection at once).
    #[arg(long, env = "WSGATE_DRAIN_SPREAD", default_value = "0s", value_parser = parse_duration)]
    pub drain_spread: Duration,

    /// Messages each topic keeps for clients that resume with
    /// {"type":"subscribe","since":…} (0 = no history; messages then carry no
    /// offset/epoch).
    #[arg(long, env = "WSGATE_HISTORY_SIZE", default_value_t = 0)]
    pub history_size: usize,

    /// With history on: messages older than this are dropped and not
    /// replayed (default: kept until --history-size pushes them out).
    #[arg(long, env = "WSGATE_HISTORY_TTL", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,

    /// Bytes of history the whole process may hold; past it the least
    /// recently used topics lose their history (their epoch changes).
    #[arg(long, env = "WSGATE_HISTORY_MAX_BYTES", default_value_t = 256 << 20)]
    pub history_max_bytes: u64,

    /// Per-topic-pattern history rules, from the file's `[[history.topic]]`
    /// tables only (first match wins).
    #[arg(skip)]
    pub history_topics: Vec<crate::pubsub::history::TopicRule>,

    /// WebSocket upgrades one worker accepts per second, with bursts of
    /// twice that; past it new connections get a fast 503 with a jittered
    /// Retry-After. `auto`: the rate at which handshakes would take half of
    /// the worker's time, measured as it runs (no limit until measured); a
    /// number: that fixed rate; 0 or `off`: no limit.
    #[arg(long, env = "WSGATE_MAX_HANDSHAKES_PER_SEC", default_value = "auto",
          value_parser = parse_handshake_limit)]
    pub max_handshakes_per_sec: HandshakeLimit,

    /// Largest HTTP upgrade request head, in bytes (larger gets 431).
    #[arg(long, env = "WSGATE_MAX_REQUEST_HEAD", default_value_t = 8 * 1024)]
    pub max_request_head: usize,

    /// File holding a bearer token the admin API requires (`Authorization:
    /// Bearer …`) on every path except /healthz and /readyz.
    #[arg(long, env = "WSGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// PEM certificate chain (leaf first) for the client listener: with it
    /// (and --tls-key) clients connect with wss:// only. Re-read on SIGHUP
    /// and admin POST /reload-tls.
    /// Needs --tls-key (checked at start, wherever each comes from).
    #[arg(long, env = "WSGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert's leaf.
    #[arg(long, env = "WSGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// With TLS: bytes one connection may buffer while its TLS handshake
    /// runs (a ClientHello split across reads); past it the connection is
    /// closed and counted under wsgate_tls_handshake_failures_total.
    #[arg(long, env = "WSGATE_TLS_HANDSHAKE_BUFFER", default_value_t = crate::tls::DEFAULT_MAX_HANDSHAKE_BUFFER)]
    pub tls_handshake_buffer: usize,

    /// With TLS: entries of the server-side session cache (TLS 1.2
    /// session-ID resumption; TLS 1.3 resumes with stateless tickets).
    #[arg(long, env = "WSGATE_TLS_SESSION_CACHE", default_value_t = crate::tls::config::DEFAULT_SESSION_CACHE_ENTRIES)]
    pub tls_session_cache: usize,

    /// With TLS: the oldest version the client listener accepts, 1.2 or
    /// 1.3. With 1.3 an idle TLS connection costs ≈ 0.4 KiB instead of
    /// up to ≈ 3.5 KiB (TLS 1.2 stays on rustls' state); clients that only
    /// speak TLS 1.2 are refused with a protocol_version alert.
    #[arg(
        long,
        env = "WSGATE_TLS_MIN_VERSION",
        value_enum,
        default_value = "1.2"
    )]
    pub tls_min_version: TlsMinVersion,

    /// PEM certificate chain (leaf first) for the admin listener: with it
    /// (and --admin-tls-key) the admin API answers HTTPS only. Re-read with
    /// --tls-cert on SIGHUP and POST /reload-tls. May name the same files
    /// as --tls-cert.
    #[arg(long, env = "WSGATE_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,

    /// PEM private key of --admin-tls-cert's leaf.
    #[arg(long, env = "WSGATE_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,

    /// With TLS: file of session-ticket keys (one 64-hex-digit secret per
    /// line, the first encrypts, all decrypt), so tickets resume across
    /// restarts and across nodes sharing the file. Re-read on SIGHUP and
    /// admin POST /reload-tls. Default: random keys per process, rotated
    /// every 6 hours.
    #[arg(long, env = "WSGATE_TLS_TICKET_KEYS")]
    pub tls_ticket_keys: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG-style directive).
    #[arg(long, env = "WSGATE_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "WSGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Read settings from this TOML file (keys are flag names: `listen`,
    /// `max-connections` or `max_connections`, ...). Flags and WSGATE_*
    /// variables override it.
    #[arg(long, env = "WSGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (as TOML, with where each value
    /// came from) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Debug builds only, set by tests (no flag): a text message equal to
    /// [`DEBUG_PANIC_MESSAGE`] panics inside the worker, to prove that a
    /// panic closes only that connection. Ignored in release builds.
    #[arg(skip)]
    pub debug_panic_trigger: bool,
}

/// The message that panics a worker when [`Config::debug_panic_trigger`] is
/// set in a debug build.
pub const DEBUG_PANIC_MESSAGE: &str = "wsgate-debug: panic here";

impl Config {
    /// Parses a command line (the first item is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = cli().try_get_matches_from(args)?;
        Config::from_arg_matches(&matches)
    }

    /// The worker count to run: the flag (at least 1), or the number of online CPUs.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The largest message accepted: the setting, or the app's default
    /// (a chat-sized 64 KiB for pub/sub; 16 MiB for echo, which the
    /// conformance suite needs).
    pub fn message_limit(&self) -> u64 {
        self.max_message_size.unwrap_or(match self.app {
            AppKind::PubSub => DEFAULT_PUBSUB_MESSAGE,
            AppKind::Echo => DEFAULT_ECHO_MESSAGE,
        })
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

/// `--max-message-size` default of the pub/sub app.
pub const DEFAULT_PUBSUB_MESSAGE: u64 = 64 << 10;
/// `--max-message-size` default of the echo app.
pub const DEFAULT_ECHO_MESSAGE: u64 = 16 << 20;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: '{key}' and '{other}' are the same setting; keep one")]
    DuplicateKey {
        path: PathBuf,
        key: String,
        other: String,
    },
    #[error("environment variable {var}: {message}")]
    BadEnv { var: String, message: String },
    #[error("config file {path}: unknown key '{key}' (keys are the long flag names, see --help)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: bad value for '{key}': {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Settings that cannot come from the file.
const NOT_IN_FILE: [&str; 4] = ["config", "print_config", "help", "version"];

/// Arguments that are actions, not settings: no environment variable.
const ACTIONS: [&str; 3] = ["print_config", "help", "version"];

/// The command line parser: the derived one, with negative numbers taken as
/// values (so `--max-connections -5` is reported as a bad value, not as an
/// unknown flag `-5`).
pub fn cli() -> clap::Command {
    Config::command().mut_args(|a| {
        if a.get_action().takes_values() {
            a.allow_negative_numbers(true)
        } else {
            a
        }
    })
}

/// One setting and its three spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// clap's id: the flag with `_` for `-`.
    pub id: String,
    /// The long flag without dashes, which is also the TOML key.
    pub long: String,
    /// The environment variable clap reads, if any.
    pub env: Option<String>,
    /// A switch (`--pin-cores`), true or false.
    pub switch: bool,
    /// A secret: `--print-config` does not print its value.
    pub secret: bool,
    /// The default as written on the command line, if any.
    pub default: Option<String>,
    /// The closed set of values, for enumerations.
    pub choices: Vec<String>,
}

/// Every setting (flags that are not actions), as the parser knows them.
pub fn settings() -> Vec<Setting> {
    cli()
        .get_arguments()
        .filter(|a| !ACTIONS.contains(&a.get_id().as_str()))
        .filter_map(|a| {
            Some(Setting {
                id: a.get_id().to_string(),
                long: a.get_long()?.to_string(),
                env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
                switch: matches!(a.get_action(), ArgAction::SetTrue),
                secret: a.is_hide_env_values_set(),
                default: a
                    .get_default_values()
                    .first()
                    .map(|v| v.to_string_lossy().into_owned()),
                choices: a
                    .get_possible_values()
                    .iter()
                    .map(|p| p.get_name().to_string())
                    .collect(),
            })
        })
        .collect()
}

/// The environment variable the naming rule gives a flag:
/// `max-connections` → `WSGATE_MAX_CONNECTIONS`.
pub fn env_name(long: &str) -> String {
    format!("WSGATE_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// `cmd` reading no environment variable except `keep`'s.
fn env_only(cmd: &clap::Command, keep: Option<&str>) -> clap::Command {
    cmd.clone().mut_args(|a| {
        if Some(a.get_id().as_str()) == keep {
            a
        } else {
            a.env(None)
        }
    })
}

/// clap's error without its "error: " prefix, usage lines and the flag it
/// names (the caller names the file key or the variable instead).
fn first_line(e: &clap::Error) -> String {
    let msg = e.to_string();
    let line = msg
        .lines()
        .next()
        .unwrap_or("invalid value")
        .trim_start_matches("error: ");
    match line.split_once(" for '--") {
        Some((head, rest)) => match rest.split_once('\'') {
            Some((_, tail)) => format!("{head}{tail}"),
            None => line.to_string(),
        },
        None => line.to_string(),
    }
}

/// A loaded configuration and where each setting came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    matches: ArgMatches,
    from_file: HashSet<String>,
    unknown_env: Vec<String>,
}

impl Loaded {
    /// Loads flags > environment > `--config` file > defaults.
    pub fn from_args<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = cli();
        let bare = env_only(&cmd, None);
        // The command line alone first, so its errors are about flags ...
        let flags = match bare.clone().try_get_matches_from(&args) {
            // ... except --help and --version, which show the variables too.
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                return Err(cmd
                    .clone()
                    .try_get_matches_from(&args)
                    .err()
                    .unwrap_or(e)
                    .into())
            }
            other => other?,
        };
        // ... then each WSGATE_* variable alone, so an error names the variable.
        let mut known_env = HashSet::new();
        for arg in cmd.get_arguments() {
            let (Some(var), id) = (arg.get_env(), arg.get_id().as_str()) else {
                continue;
            };
            known_env.insert(var.to_os_string());
            let on_command_line = flags.value_source(id) == Some(ValueSource::CommandLine);
            if on_command_line || std::env::var_os(var).is_none() {
                continue;
            }
            if let Err(e) = env_only(&cmd, Some(id)).try_get_matches_from(["wsgate"]) {
                return Err(ConfigError::BadEnv {
                    var: var.to_string_lossy().into_owned(),
                    message: first_line(&e),
                });
            }
        }
        let mut unknown_env: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| k.to_string_lossy().starts_with("WSGATE_") && !known_env.contains(k))
            .map(|k| k.to_string_lossy().into_owned())
            .collect();
        unknown_env.sort();
        let first = cmd.clone().try_get_matches_from(&args)?;
        let mut from_file = HashSet::new();
        let mut history_topics = Vec::new();
        if let Some(path) = first.get_one::<PathBuf>("config") {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            // toml's Display carries the line, column and the offending text.
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        path: path.clone(),
                        message: e.to_string().trim_end().to_string(),
                    })?;
            let mut seen: HashMap<String, String> = HashMap::new();
            let mut table = table;
            if let Some(h) = table.remove("history") {
                history_topics = history_rules(path, &h)?;
            }
            for (key, value) in table {
                let flag_args = file_entry_to_args(&bare, path, &key, &value)?;
                let id = key.replace('-', "_");
                if let Some(other) = seen.insert(id.clone(), key.clone()) {
                    return Err(ConfigError::DuplicateKey {
                        path: path.clone(),
                        key: other,
                        other: key,
                    });
                }
                // Flags and environment variables win over the file.
                let overridden = matches!(
                    first.value_source(&id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
                if !overridden {
                    args.extend(flag_args);
                    from_file.insert(id);
                }
            }
        }
        let matches = cmd.try_get_matches_from(&args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        config.history_topics = history_topics;
        Ok(Loaded {
            config,
            matches,
            from_file,
            unknown_env,
        })
    }

    /// `WSGATE_*` variables in the environment that name no setting (a typo,
    /// or a spelling that breaks the naming rule): they have no effect.
    pub fn unknown_env_vars(&self) -> &[String] {
        &self.unknown_env
    }

    /// The effective configuration as TOML, each line commented with its source.
    pub fn effective_toml(&self) -> String {
        let mut out = String::from("# wsgate effective configuration\n");
        for arg in cli().get_arguments() {
            let id = arg.get_id().as_str();
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_FILE.contains(&id) {
                continue;
            }
            let source = if self.from_file.contains(id) {
                "file"
            } else {
                match self.matches.value_source(id) {
                    Some(ValueSource::CommandLine) => "flag",
                    Some(ValueSource::EnvVariable) => "env",
                    Some(ValueSource::DefaultValue) => "default",
                    _ => "unset",
                }
            };
            let values: Vec<String> = self
                .matches
                .get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let rendered = if matches!(arg.get_action(), ArgAction::SetTrue) {
                self.matches.get_flag(id).to_string()
            } else if arg.is_hide_env_values_set() && !values.is_empty() {
                // Secrets stay out of terminals and pasted bug reports.
                out.push_str(&format!("# {long} = (hidden)  # {source}\n"));
                continue;
            } else if id == "workers" && values.is_empty() {
                // Show what runs, not that nothing was asked for.
                let n = self.config.worker_count();
                out.push_str(&format!("{long} = {n}  # default (online CPUs)\n"));
                continue;
            } else if values.is_empty() {
                out.push_str(&format!("# {long} = (unset)  # {source}\n"));
                continue;
            } else if values.len() == 1 {
                toml_scalar(&values[0])
            } else {
                format!(
                    "[{}]",
                    values
                        .iter()
                        .map(|v| toml_scalar(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            out.push_str(&format!("{long} = {rendered}  # {source}\n"));
        }
        // Per-topic history rules exist only in the file; written last, as
        // TOML wants tables after the plain keys.
        for rule in &self.config.history_topics {
            out.push_str("\n[[history.topic]]  # file\n");
            out.push_str(&format!(
                "pattern = {}\n",
                toml::Value::String(rule.pattern.clone())
            ));
            out.push_str(&format!("size = {}\n", rule.size));
            if let Some(ttl) = rule.ttl {
                out.push_str(&format!("ttl = \"{}ms\"\n", ttl.as_millis()));
            }
        }
        out
    }
}

/// A value as TOML: numbers and booleans bare when that reads back as the
/// same text (`007` or `1.50` stay strings), everything else a string.
fn toml_scalar(v: &str) -> String {
    let canonical_int = v.parse::<i64>().is_ok_and(|n| n.to_string() == v);
    let canonical_float = v.contains('.') && v.parse::<f64>().is_ok_and(|f| f.to_string() == v);
    if canonical_int || canonical_float || v == "true" || v == "false" {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

/// Turns one `key = value` of the file into flag arguments, checking the key
/// exists and the value parses, so errors name the key and the file.
fn file_entry_to_args(
    cmd: &clap::Command,
    path: &std::path::Path,
    key: &str,
    value: &toml::Value,
) -> Result<Vec<OsString>, ConfigError> {
    let id = key.replace('-', "_");
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id().as_str() == id && a.get_long().is_some())
        .filter(|_| !NOT_IN_FILE.contains(&id.as_str()))
        .ok_or_else(|| ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: key.to_string(),
        })?;
    let bad = |message: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let long = format!("--{}", arg.get_long().unwrap_or(key));
    let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(bad(format!(
                "expected a string, number or boolean, got {other}"
            ))),
        }
    };
    let mut out: Vec<OsString> = Vec::new();
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        match value {
            toml::Value::Boolean(true) => out.push(long.into()),
            toml::Value::Boolean(false) => {}
            other => return Err(bad(format!("expected true or false, got {other}"))),
        }
    } else {
        let items: Vec<String> = match value {
            toml::Value::Array(a) => a.iter().map(scalar).collect::<Result<_, _>>()?,
            v => vec![scalar(v)?],
        };
        for item in items {
            out.push(format!("{long}={item}").into());
        }
    }
    // Parse the key alone (`cmd` reads no environment) to report a bad
    // value against the file's key.
    let mut probe: Vec<OsString> = vec!["wsgate".into()];
    probe.extend(out.iter().cloned());
    if let Err(e) = cmd.clone().try_get_matches_from(probe) {
        return Err(bad(first_line(&e)));
    }
    Ok(out)
}

/// The file's `[history]` table: `[[history.topic]]` entries, each with a
/// `pattern` (an exact topic or a prefix ending in `*`), a `size` (messages
/// kept; 0: none) and optionally a `ttl` duration. Unknown keys, a missing
/// pattern or size, a `*` anywhere but at the end, and a pattern given
/// twice are refused, naming the entry.
pub fn history_rules(
    path: &std::path::Path,
    value: &toml::Value,
) -> Result<Vec<crate::pubsub::history::TopicRule>, ConfigError> {
    let bad = |key: String, message: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        key,
        message,
    };
    let toml::Value::Table(t) = value else {
        return Err(bad(
            "history".into(),
            "expected a table ([[history.topic]] entries)".into(),
        ));
    };
    let mut rules: Vec<crate::pubsub::history::TopicRule> = Vec::new();
    for (k, v) in t {
        if k != "topic" {
            return Err(bad(
                format!("history.{k}"),
                "unknown key (the [history] table holds [[history.topic]] entries only)".into(),
            ));
        }
        let toml::Value::Array(entries) = v else {
            return Err(bad(
                "history.topic".into(),
                "expected [[history.topic]] entries".into(),
            ));
        };
        for (i, e) in entries.iter().enumerate() {
            let key = format!("history.topic[{i}]");
            let toml::Value::Table(e) = e else {
                return Err(bad(key, "expected a table".into()));
            };
            let (mut pattern, mut size, mut ttl) = (None, None, None);
            for (k, v) in e {
                match (k.as_str(), v) {
                    ("pattern", toml::Value::String(p)) => pattern = Some(p.clone()),
                    ("size", toml::Value::Integer(n)) => {
                        size = Some(usize::try_from(*n).map_err(|_| {
                            bad(format!("{key}.size"), format!("{n} is not a message count"))
                        })?)
                    }
                    ("ttl", toml::Value::String(d)) => {
                        ttl = Some(parse_duration(d).map_err(|m| bad(format!("{key}.ttl"), m))?)
                    }
                    ("pattern" | "ttl", other) => {
                        return Err(bad(
                            format!("{key}.{k}"),
                            format!("expected a string, got {other}"),
                        ))
                    }
                    ("size", other) => {
                        return Err(bad(
                            format!("{key}.size"),
                            format!("expected a number, got {other}"),
                        ))
                    }
                    _ => {
                        return Err(bad(
                            format!("{key}.{k}"),
                            "unknown key (use pattern, size, ttl)".into(),
                        ))
                    }
                }
            }
            let pattern = pattern.ok_or_else(|| bad(key.clone(), "missing pattern".into()))?;
            let size = size.ok_or_else(|| bad(key.clone(), "missing size".into()))?;
            let star = pattern.find('*');
            if pattern.is_empty() || star.is_some_and(|i| i + 1 != pattern.len()) {
                return Err(bad(
                    format!("{key}.pattern"),
                    format!(
                        "{pattern:?}: use a topic name, or a prefix followed by one trailing *"
                    ),
                ));
            }
            if rules.iter().any(|r| r.pattern == pattern) {
                return Err(bad(
                    format!("{key}.pattern"),
                    format!("{pattern:?} is given twice"),
                ));
            }
            rules.push(crate::pubsub::history::TopicRule { pattern, size, ttl });
        }
    }
    Ok(rules)
}

/// `--max-handshakes-per-sec`: how fast one worker takes new upgrades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeLimit {
    /// Measured: the rate at which handshakes take half of the worker's
    /// time (see `server::worker::handshake_rate`).
    Auto,
    /// A fixed number of upgrades per second per worker.
    PerSec(u32),
    /// No limit.
    Off,
}

impl std::fmt::Display for HandshakeLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeLimit::Auto => f.write_str("auto"),
            HandshakeLimit::PerSec(n) => write!(f, "{n}"),
            HandshakeLimit::Off => f.write_str("0"),
        }
    }
}

/// `auto`, a whole number of upgrades per second per worker, or 0 / `off`.
pub fn parse_handshake_limit(s: &str) -> Result<HandshakeLimit, String> {
    match s.trim() {
        "auto" => Ok(HandshakeLimit::Auto),
        "off" | "0" => Ok(HandshakeLimit::Off),
        n => match n.parse::<u32>() {
            Ok(n) => Ok(HandshakeLimit::PerSec(n)),
            Err(_) => Err(format!(
                "{s:?} is not a handshake rate: use auto (measured), a whole number of \
                 upgrades per second per worker, or 0 (no limit)"
            )),
        },
    }
}

/// Worker count: at least 1 (0 used to become 1 silently).
fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave it unset for one worker per CPU)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number of workers")),
    }
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter: a level, or comma-separated `target=level` directives
/// (`wsgate=debug,info`). Anything else is refused: a typo would otherwise
/// be read as a target name and silence every log.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let help = || {
        format!(
            "invalid log level {s:?}: use one of {}, or TARGET=LEVEL directives like \"wsgate=debug,warn\"",
            LOG_LEVELS.join(", ")
        )
    };
    let is_level = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    for directive in s.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !is_level(level) {
            return Err(help());
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|_| help())?;
    Ok(s.to_string())
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
        assert_eq!(c.message_limit(), 64 << 10);
        let echo = Config::from_args(["wsgate", "--app", "echo"]).unwrap();
        assert_eq!(echo.message_limit(), 16 << 20);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert!(c.worker_count() >= 1);
        assert_eq!(c.app, AppKind::PubSub);
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        let off = Config::from_args(["wsgate", "--admin-listen", "off"]).unwrap();
        assert_eq!(off.admin_listen, None);
    }

    #[test]
    fn handshake_limit_is_auto_a_number_or_off() {
        let limit = |v: &str| {
            Config::from_args(["wsgate", "--max-handshakes-per-sec", v])
                .map(|c| c.max_handshakes_per_sec)
        };
        let default = Config::from_args(["wsgate"]).unwrap();
        assert_eq!(default.max_handshakes_per_sec, HandshakeLimit::Auto);
        assert_eq!(limit("auto").unwrap(), HandshakeLimit::Auto);
        assert_eq!(limit("500").unwrap(), HandshakeLimit::PerSec(500));
        assert_eq!(limit("0").unwrap(), HandshakeLimit::Off);
        assert_eq!(limit("off").unwrap(), HandshakeLimit::Off);
        for bad in ["fast", "-1", "1.5", "", "4294967296"] {
            let e = limit(bad).unwrap_err().to_string();
            assert!(e.contains("not a handshake rate"), "{bad:?}: {e}");
            assert!(e.contains("auto"), "{e}");
        }
        // What --print-config writes reads back as the same setting.
        for v in [
            HandshakeLimit::Auto,
            HandshakeLimit::PerSec(7),
            HandshakeLimit::Off,
        ] {
            assert_eq!(parse_handshake_limit(&v.to_string()), Ok(v));
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = Config::from_args(["wsgate", "--handshake-timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        assert!(Config::from_args(["wsgate", "--listen", "nope"]).is_err());
    }
}

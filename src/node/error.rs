//! Why a node cannot start: each setting or resource that can stop it, with
//! the flag to fix named in the message.

use std::io;
use std::net::SocketAddr;

use crate::admin::AdminStartError;
use crate::cluster::slots::SeedError;
use crate::security::KeyError;

/// What [`crate::start`] returns when the node cannot start. Settings are
/// checked before any thread starts; the bridge and admin threads started
/// before a later failure are stopped again when dropped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--workers {given} is over the maximum of {max}")]
    TooManyWorkers { given: usize, max: usize },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("--redis-cluster: {0}")]
    RedisClusterSeeds(#[from] SeedError),
    #[error("--redis {url}: {source}")]
    RedisUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error(transparent)]
    Admin(#[from] AdminStartError),
    #[error("use one of --jwt-secret, --jwt-secret-file, --jwt-public-key-file")]
    JwtSettingsConflict,
    #[error("--jwt-secret-file {path}: {source}")]
    JwtSecretFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{flag}: {source}")]
    JwtKey {
        flag: &'static str,
        #[source]
        source: KeyError,
    },
    #[error("--node-id 18446744073709551615 is reserved (it marks cluster history messages on the wire)")]
    ReservedNodeId,
    #[error("--io-backend io-uring: {0} (use --io-backend epoll on this kernel)")]
    IoUring(#[source] wsgate_uring::Error),
    #[error("{given} needs {missing} too")]
    TlsHalf {
        given: &'static str,
        missing: &'static str,
    },
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[source] crate::tls::TlsConfigError),
    #[error("--admin-tls-cert/--admin-tls-key: {0}")]
    AdminTls(#[source] crate::tls::TlsConfigError),
    #[error("--admin-tls-cert is set but the admin listener is off (--admin-listen off)")]
    AdminTlsWithoutAdmin,
    #[error("--tls-ticket-keys: {0}")]
    TlsTicketKeys(#[source] crate::tls::ticket_keys::TicketKeyError),
    #[error("cannot start the workers: {0}")]
    Workers(#[source] io::Error),
}

//! Native TLS (wss://) as a sans-IO layer under the WebSocket session.
//!
//! The layer owns no socket and no clock. Ciphertext read by the event loop
//! goes in, plaintext for the WebSocket session comes out; plaintext from the
//! session goes in, TLS records for the socket come out. Handshakes (and
//! TLS 1.2 connections) run on rustls' unbuffered API, so that the read and
//! write buffers belong to the worker ([`TlsScratch`], the caller's output
//! `Vec`s); an established TLS 1.3 connection leaves rustls' record layer
//! for ours ([`record`]) and keeps only its keys, sequence numbers and
//! traffic secrets (≈ 400 B idle).
//!
//! - [`certs`]: PEM certificate chain and private key loading.
//! - [`compact_aead`]: TLS 1.3 record keys kept raw (not expanded) per
//!   connection, so an idle connection holds ~64 bytes of keys, not ~1.3 KiB.
//! - [`resolver`]: the certificate in use, swappable at run time (reload).
//! - [`config`]: the rustls server configuration (versions, ALPN,
//!   resumption) and the reload entry point ([`TlsContext`]).
//! - [`session`]: one connection's TLS state machine ([`TlsConn`]): rustls
//!   for the handshake, then (TLS 1.3) our record layer.
//! - [`record`]: TLS 1.3 records after the handshake (RFC 8446 5): parsing,
//!   protection, alerts, KeyUpdate messages; pure code over bytes.
//! - [`traffic_keys`]: TLS 1.3 traffic secrets caught from rustls' `KeyLog`
//!   during the handshake, and the next keys derived for a KeyUpdate.
//! - [`ticket_keys`]: session-ticket keys shared through a file
//!   (`--tls-ticket-keys`), for resumption across restarts and nodes.
//! - [`error`]: what can go wrong, typed, with the close reason each maps to.

pub mod certs;
pub mod compact_aead;
pub mod config;
pub mod error;
pub mod record;
pub mod resolver;
pub mod session;
pub mod ticket_keys;
pub mod traffic_keys;

pub use certs::{load_certified_key, CertError};
pub use config::{TlsConfigError, TlsContext, TlsSettings};
pub use error::{TlsCloseReason, TlsError};
pub use resolver::ReloadableResolver;
pub use session::{
    ReadOutcome, TlsConn, TlsLimits, TlsRead, TlsScratch, DEFAULT_MAX_HANDSHAKE_BUFFER,
};

//! The TLS server configuration: which files, which protocol versions, ALPN,
//! and TLS 1.3 resumption; plus the reload entry point.
//!
//! One [`TlsContext`] per process, shared by every worker. Its
//! `Arc<ServerConfig>` is what each new [`TlsConn`](super::TlsConn) starts
//! from; certificate reloads go through its [`ReloadableResolver`], so the
//! `ServerConfig` itself (and with it the ticket keys and the session cache)
//! survives a reload and clients resume across it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::ServerConfig;

use super::certs::{load_certified_key, CertError};
use super::resolver::ReloadableResolver;
use super::ticket_keys::{FileTicketer, TicketKeyError};
use crate::escape::Esc;

/// What the operator configures.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_path: PathBuf,
    /// Entries in the server-side session cache, used by TLS 1.2 session-ID
    /// resumption (TLS 1.3 and TLS 1.2 ticket resumption are stateless). An
    /// entry is a few hundred bytes; when full, the oldest is dropped and
    /// that client does a full handshake.
    pub session_cache_entries: usize,
    /// TLS 1.3 tickets sent after each full handshake. A client uses one per
    /// resumption, so 2 lets it reconnect twice without a new full handshake.
    pub tls13_tickets: usize,
    /// `--tls-ticket-keys`: ticket keys shared through a file (resumption
    /// across restarts and nodes). None: random keys of this process,
    /// rotated every 6 hours.
    pub ticket_keys: Option<PathBuf>,
    /// `--tls-min-version 1.2` (true, the default) or `1.3` (false).
    pub tls12: bool,
}

impl TlsSettings {
    /// Defaults for the given files.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            session_cache_entries: DEFAULT_SESSION_CACHE_ENTRIES,
            tls13_tickets: 2,
            ticket_keys: None,
            tls12: true,
        }
    }
}

/// Default session cache size: ~256 bytes per entry, so about 8 MiB at
/// most. Clients past it fall back to tickets (TLS 1.3) or a full handshake.
pub const DEFAULT_SESSION_CACHE_ENTRIES: usize = 32 * 1024;

/// The versions `--tls-min-version` 1.2 and 1.3 allow.
const BOTH_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The ALPN protocol wsgate speaks over TLS (WebSocket over HTTP/1.1).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The process-wide TLS state: configuration and the swappable certificate.
#[derive(Debug, Clone)]
pub struct TlsContext {
    config: Arc<ServerConfig>,
    resolver: Arc<ReloadableResolver>,
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    reloads: Arc<ReloadCounts>,
    /// With `--tls-ticket-keys`: the file's ticketer, re-read on reload.
    ticket_file: Option<Arc<FileTicketer>>,
}

/// Reloads done and refused since start (`wsgate_tls_reloads_total`).
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("--tls-ticket-keys {0}")]
    TicketKeys(#[from] TicketKeyError),
}

impl TlsContext {
    /// Loads the certificate and builds the configuration with the
    /// aws-lc-rs crypto provider (chosen by benchmark,
    /// bench/results/tls-provider.md) and its rotating ticket keys. Its
    /// TLS 1.3 record keys are kept raw per connection and expanded per
    /// record ([`compact_aead`](super::compact_aead)), and after the
    /// handshake TLS 1.3 records are ours ([`record`](super::record)):
    /// ≈ 400 B per idle connection instead of ≈ 3.7 KiB.
    pub fn new(settings: TlsSettings) -> Result<Self, TlsConfigError> {
        let (ticketer, ticket_file): (Arc<dyn ProducesTickets>, _) = match &settings.ticket_keys {
            Some(path) => {
                let file = FileTicketer::open(path)?;
                (file.clone(), Some(file))
            }
            None => (rustls::crypto::aws_lc_rs::Ticketer::new()?, None),
        };
        let mut ctx = Self::with_provider(
            settings,
            Arc::new(super::compact_aead::compact_provider(
                rustls::crypto::aws_lc_rs::default_provider(),
            )),
            ticketer,
        )?;
        ctx.ticket_file = ticket_file;
        // TLS 1.3 connections leave rustls after the handshake for our own
        // record layer (`session`), which takes the record keys out of
        // rustls: rustls allows that only when asked to.
        // Its KeyLog catches the traffic secrets (for KeyUpdates) and
        // nothing else; see `traffic_keys`.
        let config = Arc::make_mut(&mut ctx.config);
        config.enable_secret_extraction = true;
        config.key_log = Arc::new(super::traffic_keys::TrafficSecretLog);
        Ok(ctx)
    }

    /// Builds the configuration with an explicit provider and ticketer
    /// (the provider benchmark and the memory test compare ring and
    /// aws-lc-rs this way).
    ///
    /// The ticketer should rotate its keys: rustls' `Ticketer::new()` makes
    /// a new key every 6 hours and still accepts tickets of the previous one,
    /// so a stolen ticket key opens at most 12 hours of resumptions.
    pub fn with_provider(
        settings: TlsSettings,
        provider: Arc<CryptoProvider>,
        ticketer: Arc<dyn ProducesTickets>,
    ) -> Result<Self, TlsConfigError> {
        let initial = load_certified_key(&settings.cert_path, &settings.key_path, &provider)?;
        let resolver = Arc::new(ReloadableResolver::new(initial));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(if settings.tls12 {
                BOTH_VERSIONS
            } else {
                TLS13_ONLY
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.session_storage = ServerSessionMemoryCache::new(settings.session_cache_entries);
        config.ticketer = ticketer;
        config.send_tls13_tickets = settings.tls13_tickets;
        // No 0-RTT: early data is replayable and a WebSocket upgrade is not
        // idempotent (it subscribes, authenticates).
        config.max_early_data_size = 0;
        Ok(Self {
            config: Arc::new(config),
            resolver,
            settings,
            provider,
            reloads: Arc::default(),
            ticket_file: None,
        })
    }

    /// The configuration each new connection starts from.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The certificate resolver (for tests and the admin status page).
    pub fn resolver(&self) -> &Arc<ReloadableResolver> {
        &self.resolver
    }

    /// Reloads done and refused so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.ok.load(Relaxed),
            self.reloads.failed.load(Relaxed),
        )
    }

    /// The settings this context was built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Re-reads every context in `contexts` (the client and the admin
    /// listener's), each even when an earlier one's file is bad: the first
    /// error, `None` when there is none to reload.
    pub fn reload_all<'a>(
        contexts: impl IntoIterator<Item = &'a TlsContext>,
    ) -> Option<Result<(), CertError>> {
        let mut reloaded = contexts.into_iter().map(TlsContext::reload);
        let first = reloaded.next()?;
        Some(reloaded.fold(first, Result::and))
    }

    /// Re-reads the certificate and key files (SIGHUP, admin
    /// `POST /reload-tls`). On success new handshakes use the new pair;
    /// established connections are not affected. On failure nothing changes:
    /// the old pair stays in use, and both the log line and the error say
    /// which file is wrong.
    pub fn reload(&self) -> Result<(), CertError> {
        // Ticket keys (with --tls-ticket-keys) are re-read too; a bad file
        // keeps the keys in use and is logged, the certificate reload goes
        // on regardless.
        if let Some(file) = &self.ticket_file {
            match file.reload() {
                Ok(()) => tracing::info!(file = %file.path().display(), "TLS ticket keys reloaded"),
                Err(e) => tracing::warn!(
                    error = %Esc::str(&e.to_string()),
                    "TLS ticket keys reload refused; the current keys stay in use"
                ),
            }
        }
        let loaded = load_certified_key(
            &self.settings.cert_path,
            &self.settings.key_path,
            &self.provider,
        );
        match loaded {
            Ok(next) => {
                self.resolver.replace(next);
                self.reloads.ok.fetch_add(1, Relaxed);
                tracing::info!(
                    cert = %self.settings.cert_path.display(),
                    "TLS certificate reloaded; new handshakes use it"
                );
                Ok(())
            }
            Err(e) => {
                self.reloads.failed.fetch_add(1, Relaxed);
                // Paths come from the operator, but the error may quote file
                // contents' parse failures: escape it like any other text.
                tracing::warn!(
                    error = %Esc::str(&e.to_string()),
                    "TLS certificate reload refused; the current certificate stays in use"
                );
                Err(e)
            }
        }
    }
}

//! wss:// for the load generator: the rustls client configuration every
//! connection of a run shares (trust, ALPN, session resumption), the ticket
//! store that lets thousands of simulated clients each resume, and short
//! names for TLS failures (the `failures` reasons).
//!
//! The connection engine (`client.rs`) drives one buffered rustls
//! `ClientConnection` per socket; nothing here touches sockets.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Resumption, Tls12ClientSessionValue};
use rustls::client::{Tls13ClientSessionValue, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, NamedGroup, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How a wss:// run trusts the server and resumes.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust only the CA certificates in this PEM file (else the Mozilla
    /// roots compiled into webpki-roots).
    pub ca_file: Option<String>,
    /// Accept any certificate (signatures on the handshake are still checked).
    pub insecure: bool,
    /// Keep session tickets so reconnects resume.
    pub resume: bool,
}

/// TLS 1.3 tickets kept for later connections. Each simulated client that
/// reconnects takes one (a ticket is used at most once), so the store must
/// hold about as many as there are clients that may reconnect at once —
/// rustls' own in-memory store keeps 8 per server, which would make a
/// reconnect storm of thousands almost all full handshakes. A ticket is a
/// few hundred bytes: 100,000 of them is tens of MB.
const TICKETS_KEPT: usize = 100_000;

/// Session store for one server: many TLS 1.3 tickets, the newest used
/// first (the oldest are the likeliest to have expired), one TLS 1.2
/// session, and the key-exchange group the server chose last.
#[derive(Debug, Default)]
struct Tickets {
    inner: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    tls13: VecDeque<Tls13ClientSessionValue>,
    tls12: Option<Tls12ClientSessionValue>,
    kx_hint: Option<NamedGroup>,
}

impl Tickets {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves nothing half-written here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// wsbench talks to one server per run, so the store ignores the name.
impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.store().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.store().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.store().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.store().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.store().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut s = self.store();
        if s.tls13.len() >= TICKETS_KEPT {
            s.tls13.pop_front();
        }
        s.tls13.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.store().tls13.pop_back()
    }
}

/// `--insecure`: accepts any certificate chain for any name, but still
/// checks that the server holds the key of the certificate it sent (the
/// handshake signatures), so the handshake costs what a verified one does
/// less the chain check.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The roots a run trusts: the CA file's certificates, or webpki-roots.
fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("--ca-file {path}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--ca-file {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca-file {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca-file {path}: no certificates in it"));
    }
    Ok(roots)
}

/// The client configuration every connection of a run shares: TLS 1.2 and
/// 1.3 on aws-lc-rs (the server's provider), ALPN `http/1.1`, and with
/// `resume` a ticket store shared by all connections.
pub fn client_config(o: &TlsOptions) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(o.ca_file.as_deref())?),
            provider,
        )
        .build()
        .map_err(|e| e.to_string())?;
        builder.with_webpki_verifier(verifier).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if o.resume {
        Resumption::store(Arc::new(Tickets::default()))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// The server name for SNI and certificate checks: the URL's host (an IP
/// address is checked against the certificate's IP entries and sends no SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| format!("bad TLS server name {host:?}: {e}"))
}

/// A short, fixed name for a TLS failure, for the `failures` counts.
pub fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "tls: certificate from an unknown issuer",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls: certificate not valid for the name"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls: certificate expired"
            }
            CertificateError::BadSignature => "tls: certificate bad signature",
            _ => "tls: certificate invalid",
        },
        Error::AlertReceived(_) => "tls: alert from the server",
        Error::NoApplicationProtocol => "tls: no common ALPN protocol",
        Error::PeerIncompatible(_) => "tls: server incompatible",
        Error::PeerMisbehaved(_) | Error::InvalidMessage(_) => "tls: server misbehaved",
        _ => "tls: handshake error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_url_hosts() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }

    #[test]
    fn ca_file_problems_are_errors() {
        let o = |ca: &str| TlsOptions {
            ca_file: Some(ca.to_string()),
            ..TlsOptions::default()
        };
        let missing = client_config(&o("/nonexistent/ca.pem")).unwrap_err();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = std::env::temp_dir().join(format!("wsbench-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate\n").unwrap();
        let empty = client_config(&o(dir.to_str().unwrap())).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(empty.contains("no certificates"), "{empty}");
        // The defaults (webpki-roots) and --insecure build.
        client_config(&TlsOptions::default()).unwrap();
        let insecure = TlsOptions {
            insecure: true,
            resume: true,
            ..TlsOptions::default()
        };
        let c = client_config(&insecure).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn certificate_failures_have_names() {
        let e = Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            failure_reason(&e),
            "tls: certificate from an unknown issuer"
        );
        assert!(failure_reason(&Error::HandshakeNotComplete).starts_with("tls: "));
    }
}

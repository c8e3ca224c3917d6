//! Test PKI and an in-memory harness for the TLS layer: a rustls client
//! connection talking to a `wsgate::tls::TlsConn`, bytes carried between
//! them in chunks of a chosen size (1 = byte by byte), no sockets.
//!
//! Certificates and keys are generated here with rcgen at test time and
//! written to a temporary directory; none are committed.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
use wsgate::tls::{TlsConn, TlsContext, TlsError, TlsScratch, TlsSettings};

/// A test CA that issues leaf certificates for `localhost`, and the files a
/// server reads.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// One issued leaf: PEM chain (leaf, then CA), PEM key, and the leaf's DER.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsgate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Issues a new leaf for `localhost` (a new key each time).
    pub fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The CA certificate, PEM, written next to the server's files (for
    /// clients outside this process: Python, Node, a browser).
    pub fn ca_path(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Writes `leaf` where the server reads its files.
    pub fn install(&self, leaf: &Leaf) {
        std::fs::write(self.cert_path(), &leaf.chain_pem).unwrap();
        std::fs::write(self.key_path(), &leaf.key_pem).unwrap();
    }

    /// A server context over freshly issued files; returns the leaf too.
    pub fn server(&self) -> (TlsContext, Leaf) {
        let leaf = self.leaf();
        self.install(&leaf);
        let ctx = TlsContext::new(TlsSettings::new(self.cert_path(), self.key_path())).unwrap();
        (ctx, leaf)
    }

    /// A client trusting this CA, offering `versions` and ALPN http/1.1.
    /// Its session store is in the config, so connections made from the
    /// same `Arc` can resume.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        self.client_config_with(versions, rustls::crypto::ring::default_provider())
    }

    /// As [`Pki::client_config`], with a given provider (e.g. restricted to
    /// one cipher suite).
    pub fn client_config_with(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        provider: rustls::crypto::CryptoProvider,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A rustls client and the server layer, joined in memory.
pub struct Pair {
    pub client: ClientConnection,
    pub server: TlsConn,
    pub scratch: TlsScratch,
    /// Plaintext the server layer has produced (for the WebSocket session).
    pub server_plain: Vec<u8>,
    /// Plaintext the client has read.
    pub client_plain: Vec<u8>,
    /// Bytes moved per delivery, each way.
    pub chunk: usize,
    /// The peer reported end of stream (close_notify).
    pub client_eof: bool,
    pub server_peer_closed: bool,
    /// The server finished its handshake during some read.
    pub server_established: bool,
    /// Largest carry the server held between calls.
    pub max_server_buffered: usize,
}

impl Pair {
    pub fn new(client: Arc<ClientConfig>, server: &TlsContext, chunk: usize) -> Self {
        let name = ServerName::try_from("localhost").unwrap();
        Self {
            client: ClientConnection::new(client, name).unwrap(),
            server: TlsConn::new(server.server_config().clone()).unwrap(),
            scratch: TlsScratch::default(),
            server_plain: Vec::new(),
            client_plain: Vec::new(),
            chunk,
            client_eof: false,
            server_peer_closed: false,
            server_established: false,
            max_server_buffered: 0,
        }
    }

    /// Feeds ciphertext to the server `chunk` bytes at a time; what the
    /// server answers goes to the client.
    pub fn deliver_to_server(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
        for piece in bytes.chunks(self.chunk.max(1)) {
            let mut out = Vec::new();
            let result =
                self.server
                    .read_tls(piece, &mut self.scratch, &mut self.server_plain, &mut out);
            self.max_server_buffered = self.max_server_buffered.max(self.server.buffered());
            // Even on an error the alert (if any) is delivered.
            self.deliver_to_client(&out);
            let outcome = result?;
            self.server_established |= outcome.handshake_completed;
            self.server_peer_closed |= outcome.peer_closed;
        }
        Ok(())
    }

    /// Delivers server records to the client, `chunk` bytes at a time.
    pub fn deliver_to_client(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(self.chunk.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).unwrap();
                self.client
                    .process_new_packets()
                    .expect("client accepts the server's records");
                // rustls' client caps its unread plaintext; read as we go.
                self.drain_client_plaintext();
            }
        }
    }

    fn drain_client_plaintext(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_eof = true;
                    return;
                }
                Ok(n) => self.client_plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    /// Moves the client's pending records to the server until neither side
    /// has anything to send.
    pub fn pump(&mut self) -> Result<(), TlsError> {
        while self.client.wants_write() {
            let mut bytes = Vec::new();
            self.client.write_tls(&mut bytes).unwrap();
            self.deliver_to_server(&bytes)?;
        }
        Ok(())
    }

    /// Runs the handshake to completion (both sides).
    pub fn handshake(&mut self) -> Result<(), TlsError> {
        self.pump()?;
        assert!(!self.client.is_handshaking(), "client finished");
        assert!(self.server_established, "server finished");
        Ok(())
    }

    /// Client sends `data`; returns what the server layer decrypted.
    pub fn client_sends(&mut self, data: &[u8]) -> Vec<u8> {
        self.client.writer().write_all(data).unwrap();
        self.pump().unwrap();
        std::mem::take(&mut self.server_plain)
    }

    /// Server layer sends `data`; returns what the client read.
    pub fn server_sends(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.server.write_plaintext(data, &mut out).unwrap();
        self.deliver_to_client(&out);
        // The client may answer (e.g. a key update); carry it over.
        self.pump().unwrap();
        std::mem::take(&mut self.client_plain)
    }
}

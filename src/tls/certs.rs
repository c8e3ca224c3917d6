//! Loading a PEM certificate chain and private key into a rustls
//! [`CertifiedKey`], with a typed error for each way the files can be wrong.
//!
//! The key is checked against the leaf certificate, so a reload with a
//! mismatched pair is refused instead of failing every handshake afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why a certificate chain and key could not be loaded.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    /// The key is of a kind the crypto provider cannot sign with, or it does
    /// not belong to the leaf certificate.
    #[error("key {key_path} is unusable with certificate {cert_path}: {source}")]
    Unusable {
        cert_path: PathBuf,
        key_path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads a PEM chain (leaf first, intermediates after) and its private key.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    parse(&cert_pem, cert_path, &key_pem, key_path, provider)
}

/// Builds a [`CertifiedKey`] from PEM text already in memory (errors name
/// the files `<cert>` and `<key>`).
pub fn certified_key_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    parse(
        cert_pem,
        Path::new("<cert>"),
        key_pem,
        Path::new("<key>"),
        provider,
    )
}

fn parse(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey {
            path: key_path.to_owned(),
        },
        source => CertError::Pem {
            path: key_path.to_owned(),
            source,
        },
    })?;
    // `from_der` loads the key with the provider and checks that it matches
    // the leaf certificate's public key.
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| CertError::Unusable {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            source,
        })?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        source,
    })
}

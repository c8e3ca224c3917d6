//! The server certificate in use, swappable while the server runs.
//!
//! rustls asks the resolver once per full handshake; a reload replaces the
//! `Arc` it hands out. Connections that already finished their handshake do
//! not consult it again, so they continue untouched; a handshake that already
//! picked the old certificate completes with it.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A [`ResolvesServerCert`] whose certificate can be replaced at run time.
#[derive(Debug)]
pub struct ReloadableResolver {
    // A read lock per full handshake is cheap next to the handshake's
    // signature; writers (reloads) are rare.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableResolver {
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        // A poisoned lock only means a writer panicked mid-swap of an `Arc`,
        // which leaves a whole value either way: keep serving it.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `next` the certificate for handshakes from now on.
    pub fn replace(&self, next: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

impl ResolvesServerCert for ReloadableResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

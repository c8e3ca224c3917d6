//! Session-ticket keys from a file (`--tls-ticket-keys`), so that a ticket
//! issued by one process resumes on another: after a restart, or on another
//! node behind an L4 balancer that shares the file.
//!
//! The file holds one secret per line, 64 hex digits (32 random bytes, e.g.
//! `openssl rand -hex 32`); blank lines and `#` comments are ignored. The
//! first secret encrypts new tickets; every secret listed decrypts. To
//! rotate: put a new secret first, keep the previous one below it for a
//! ticket lifetime, then drop it; re-read on SIGHUP and `POST /reload-tls`
//! with the certificate. A ticket whose key is no longer listed just means a
//! full handshake.
//!
//! A ticket is `id (8) ‖ nonce (12) ‖ AES-256-GCM(ticket, aad = id)`, with
//! the id and the AES key derived from the secret by SHA-256 under distinct
//! labels, so the id reveals nothing about the key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{Context, SHA256};
use rustls::server::ProducesTickets;

/// Seconds a client may keep a ticket (advertised to it): 12 hours, the
/// same as rustls' own rotating ticketer (6-hour keys, the previous one
/// still accepted).
pub const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;

const ID_LEN: usize = 8;

/// Why the ticket-key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected 64 hex digits (32 random bytes)")]
    BadLine { path: PathBuf, line: usize },
    #[error("{path}: no key in the file")]
    Empty { path: PathBuf },
}

/// One secret's derived keys.
struct Key {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

impl Key {
    fn from_secret(secret: &[u8; 32]) -> Self {
        let derive = |label: &[u8]| {
            let mut ctx = Context::new(&SHA256);
            ctx.update(label);
            ctx.update(secret);
            ctx.finish()
        };
        let id_digest = derive(b"wsgate tls ticket id\0");
        let key_digest = derive(b"wsgate tls ticket key\0");
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&id_digest.as_ref()[..ID_LEN]);
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key_digest.as_ref()).expect("32-byte AES-256 key"),
        );
        Self { id, aead }
    }
}

/// Reads and parses a ticket-key file.
fn load(path: &Path) -> Result<Vec<Key>, TicketKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || TicketKeyError::BadLine {
            path: path.to_owned(),
            line: i + 1,
        };
        if line.len() != 64 || !line.is_ascii() {
            return Err(bad());
        }
        let mut secret = [0u8; 32];
        for (j, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).map_err(|_| bad())?;
        }
        keys.push(Key::from_secret(&secret));
    }
    if keys.is_empty() {
        return Err(TicketKeyError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// A [`ProducesTickets`] over the keys of a file; [`FileTicketer::reload`]
/// swaps them.
pub struct FileTicketer {
    path: PathBuf,
    keys: RwLock<Vec<Key>>,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTicketer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileTicketer {
    /// Loads `path`; refuses a missing, empty or malformed file.
    pub fn open(path: impl Into<PathBuf>) -> Result<Arc<Self>, TicketKeyError> {
        let path = path.into();
        let keys = load(&path)?;
        warn_if_readable_by_others(&path);
        Ok(Arc::new(Self {
            path,
            keys: RwLock::new(keys),
        }))
    }

    /// Re-reads the file. On error the keys in use stay.
    pub fn reload(&self) -> Result<(), TicketKeyError> {
        let keys = load(&self.path)?;
        warn_if_readable_by_others(&self.path);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Anyone who can read the file can decrypt tickets (and so the resumed
/// sessions' keys): say so when its mode lets others read it.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "--tls-ticket-keys file is readable by group or others; it should be mode 0600"
            );
        }
    }
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.iter().find(|k| k.id[..] == *id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(&key.id), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn a_ticket_opens_on_another_ticketer_with_the_same_file_only() {
        let f = file(&format!("# current\n{A}\n"));
        let one = FileTicketer::open(f.path()).unwrap();
        let two = FileTicketer::open(f.path()).unwrap();
        let ticket = one.encrypt(b"session state").unwrap();
        assert_eq!(two.decrypt(&ticket).unwrap(), b"session state");
        let other = FileTicketer::open(file(&format!("{B}\n")).path()).unwrap();
        assert!(other.decrypt(&ticket).is_none());
        let mut tampered = ticket.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(two.decrypt(&tampered).is_none());
        assert!(two.decrypt(&ticket[..10]).is_none());
    }

    #[test]
    fn rotation_keeps_old_tickets_until_their_key_is_dropped() {
        let f = file(&format!("{A}\n"));
        let t = FileTicketer::open(f.path()).unwrap();
        let old = t.encrypt(b"old").unwrap();
        std::fs::write(f.path(), format!("{B}\n{A}\n")).unwrap();
        t.reload().unwrap();
        assert_eq!(t.decrypt(&old).unwrap(), b"old");
        let new = t.encrypt(b"new").unwrap();
        assert_ne!(new[..ID_LEN], old[..ID_LEN], "the first key encrypts");
        std::fs::write(f.path(), format!("{B}\n")).unwrap();
        t.reload().unwrap();
        assert!(t.decrypt(&old).is_none());
        assert_eq!(t.decrypt(&new).unwrap(), b"new");
        // A bad file on reload keeps the keys in use.
        std::fs::write(f.path(), "not hex\n").unwrap();
        assert!(matches!(
            t.reload(),
            Err(TicketKeyError::BadLine { line: 1, .. })
        ));
        assert_eq!(t.decrypt(&new).unwrap(), b"new");
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(matches!(
            FileTicketer::open(file("# nothing\n\n").path()),
            Err(TicketKeyError::Empty { .. })
        ));
        assert!(matches!(
            FileTicketer::open(file(&format!("{A}\n{}\n", &B[..62])).path()),
            Err(TicketKeyError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            FileTicketer::open("/nonexistent/wsgate-ticket-keys"),
            Err(TicketKeyError::Read { .. })
        ));
    }
}

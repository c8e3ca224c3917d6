//! TLS 1.3 application traffic secrets of established connections: caught
//! from rustls during the handshake, and the next generation derived for a
//! KeyUpdate (RFC 8446 7.2, 7.3).
//!
//! rustls hands the traffic secrets out only through its `KeyLog`
//! interface (CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0); its
//! `dangerous_extract_secrets()` gives record keys, not secrets, and its
//! `KernelConnection` (which keeps the key schedule) costs ≈ 800 bytes per
//! connection, most of them a QUIC-only struct. So the server's
//! configuration gets [`TrafficSecretLog`], which puts the two secrets in a
//! slot of the calling thread, and [`TlsConn`](super::TlsConn) takes them
//! right after each rustls call of its handshake.
//!
//! Why a connection can only ever take its own secrets:
//! - rustls calls `KeyLog::log` synchronously, on the thread that called
//!   `process_tls_records`, inside that call (it has no threads of its own);
//! - a worker thread runs one connection's call at a time, and
//!   [`TlsConn`](super::TlsConn) arms the slot (emptying it) right before
//!   each rustls call and takes it right after, in the same method: what it
//!   takes was logged during its own call;
//! - the slot stores nothing unless armed, so a thread that never arms it
//!   (another rustls user of the same configuration) keeps no secrets, and
//!   the two halves must carry the same client_random;
//! - finally the session checks the secrets against the record keys rustls
//!   hands over: a key derived from a wrong secret would not match, and the
//!   connection is closed instead.

use std::cell::RefCell;

use rustls::crypto::tls13::OkmBlock;
use rustls::{KeyLog, Tls13CipherSuite};

use super::compact_aead::CompactKey;

const CLIENT_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

/// Both application traffic secrets of one handshake, as logged so far.
#[derive(Default)]
pub struct HandshakeSecrets {
    client_random: [u8; 32],
    pub client: Option<TrafficSecret>,
    pub server: Option<TrafficSecret>,
}

/// This thread's slot: `None` unarmed (nothing is stored), `Some` armed.
enum Slot {
    Unarmed,
    Armed(Option<Box<HandshakeSecrets>>),
}

thread_local! {
    static SLOT: RefCell<Slot> = const { RefCell::new(Slot::Unarmed) };
}

/// The `KeyLog` of the server's configuration: stores the two application
/// traffic secrets in the calling thread's slot while it is armed.
#[derive(Debug)]
pub struct TrafficSecretLog;

impl KeyLog for TrafficSecretLog {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        // rustls may log other labels (TLS 1.2's CLIENT_RANDOM) without
        // asking `will_log`: they make no entry.
        if !self.will_log(label) {
            return;
        }
        let Ok(client_random) = <[u8; 32]>::try_from(client_random) else {
            return;
        };
        SLOT.with(|slot| {
            let mut slot = slot.borrow_mut();
            let Slot::Armed(captured) = &mut *slot else {
                return;
            };
            // A new client_random replaces whatever another handshake left.
            let entry = match captured {
                Some(c) if c.client_random == client_random => c,
                _ => captured.insert(Box::new(HandshakeSecrets {
                    client_random,
                    ..Default::default()
                })),
            };
            let secret = Some(TrafficSecret(OkmBlock::new(secret)));
            match label {
                CLIENT_LABEL => entry.client = secret,
                SERVER_LABEL => entry.server = secret,
                _ => {}
            }
        });
    }

    fn will_log(&self, label: &str) -> bool {
        label == CLIENT_LABEL || label == SERVER_LABEL
    }
}

/// Arms this thread's slot, empty, before a rustls call.
pub fn arm() {
    SLOT.with(|slot| *slot.borrow_mut() = Slot::Armed(None));
}

/// Disarms this thread's slot after a rustls call and returns what that
/// call logged.
pub fn take() -> Option<Box<HandshakeSecrets>> {
    SLOT.with(
        |slot| match std::mem::replace(&mut *slot.borrow_mut(), Slot::Unarmed) {
            Slot::Armed(captured) => captured,
            Slot::Unarmed => None,
        },
    )
}

/// One direction's current traffic secret (zeroed on drop by
/// [`OkmBlock`]).
pub struct TrafficSecret(OkmBlock);

impl TrafficSecret {
    /// The next generation: HKDF-Expand-Label(secret, "traffic upd", "",
    /// Hash.length) (RFC 8446 7.2).
    pub fn next(&self, suite: &Tls13CipherSuite) -> Option<Self> {
        let expander = suite.hkdf_provider.expander_for_okm(&self.0);
        let mut out = [0u8; OkmBlock::MAX_LEN];
        let out = out.get_mut(..expander.hash_len())?;
        expand_label(&*expander, b"traffic upd", out)?;
        let next = Self(OkmBlock::new(out));
        out.fill(0);
        Some(next)
    }

    /// The record key and IV of this secret (RFC 8446 7.3), for the AEAD of
    /// `like`.
    pub fn key(&self, suite: &Tls13CipherSuite, like: &CompactKey) -> Option<CompactKey> {
        let expander = suite.hkdf_provider.expander_for_okm(&self.0);
        let mut key = [0u8; 32];
        let mut iv = [0u8; 12];
        expand_label(&*expander, b"key", key.get_mut(..like.key_len())?)?;
        expand_label(&*expander, b"iv", &mut iv)?;
        let made = like.with_same_aead(key, iv);
        key.fill(0);
        Some(made)
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 7.1).
fn expand_label(
    expander: &dyn rustls::crypto::tls13::HkdfExpander,
    label: &[u8],
    out: &mut [u8],
) -> Option<()> {
    let len = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(b"tls13 ".len() + label.len()).ok()?];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    expander.expand_slice(&info, out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::SupportedCipherSuite;

    fn suite() -> &'static Tls13CipherSuite {
        match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
            SupportedCipherSuite::Tls13(s) => s,
            _ => unreachable!(),
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// RFC 8448 3 (simple 1-RTT handshake): the server application
    /// traffic secret and the record key and IV derived from it.
    #[test]
    fn keys_match_rfc_8448() {
        let secret = TrafficSecret(OkmBlock::new(&hex(
            "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a \
             4b 4f 1f 3f cb 63 16 43",
        )));
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"));
        let iv: [u8; 12] = hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")
            .try_into()
            .unwrap();
        let want_len = 16;
        let derived = secret.key(suite(), &aes128()).unwrap();
        assert_eq!(derived.key_len(), want_len);
        assert!(derived.same_as(&aes128().with_same_aead(key, iv)));
        // The next generation differs, and is what HKDF-Expand-Label
        // "traffic upd" gives (checked against real peers in
        // tests/tls_record.rs).
        let next = secret.next(suite()).unwrap();
        assert!(!next.key(suite(), &aes128()).unwrap().same_as(&derived));
    }

    /// An AES-128-GCM key (any bytes), to name the AEAD.
    fn aes128() -> CompactKey {
        CompactKey::aes128_for_tests()
    }

    #[test]
    fn the_slot_keeps_nothing_unless_armed_and_one_handshake_at_a_time() {
        let log = TrafficSecretLog;
        let random_a = [1u8; 32];
        let random_b = [2u8; 32];
        // Unarmed: nothing is kept.
        log.log(CLIENT_LABEL, &random_a, &[7; 32]);
        assert!(take().is_none());
        // Other labels make no entry.
        arm();
        log.log("CLIENT_RANDOM", &random_a, &[7; 48]);
        assert!(take().is_none());
        arm();
        log.log(CLIENT_LABEL, &random_a, &[7; 32]);
        log.log("EXPORTER_SECRET", &random_a, &[9; 32]);
        log.log(SERVER_LABEL, &random_a, &[8; 32]);
        let got = take().unwrap();
        assert_eq!(got.client.as_ref().unwrap().0.as_ref(), &[7; 32]);
        assert_eq!(got.server.as_ref().unwrap().0.as_ref(), &[8; 32]);
        // Taking disarms.
        log.log(CLIENT_LABEL, &random_a, &[7; 32]);
        assert!(take().is_none());
        // Another handshake's secret replaces, never completes, a half.
        arm();
        log.log(CLIENT_LABEL, &random_a, &[7; 32]);
        log.log(SERVER_LABEL, &random_b, &[8; 32]);
        let got = take().unwrap();
        assert!(got.client.is_none());
        assert_eq!(got.server.as_ref().unwrap().0.as_ref(), &[8; 32]);
        assert!(!log.will_log("EXPORTER_SECRET"));
        assert!(log.will_log(SERVER_LABEL));
    }
}

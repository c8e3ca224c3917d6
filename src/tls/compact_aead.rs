//! TLS 1.3 record protection that keeps only the raw traffic key per
//! connection and direction, not the expanded cipher state.
//!
//! aws-lc-rs' AEAD key (`EVP_AEAD_CTX`) is a ~600-byte C allocation per
//! direction (an AES key schedule and GHASH table, in a union sized for the
//! largest AEAD, so ChaCha20 pays the same); rustls keeps two per connection
//! for its whole life. Here a connection keeps the 16–32-byte key and the
//! 12-byte IV, and the AEAD context is built for each record and dropped
//! (aws-lc wipes it on free). That costs one key setup per record (measured
//! in bench/results/tls-idle-memory.md) and saves ≈ 1.2 KiB per idle
//! connection.
//!
//! The record format is rustls' own TLS 1.3 one (the same nonce, AAD, inner
//! content type and padding handling as `rustls::crypto::aws_lc_rs`); only
//! where the key lives changes. Key derivation, hashing, key updates and
//! QUIC stay the provider's. TLS 1.2 suites are left as they are.

use std::sync::Mutex;

use aws_lc_rs::aead;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

/// Which AEAD a compact key is for (also names the secrets for
/// `extract_keys`).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Kind {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Kind::Aes128Gcm => &aead::AES_128_GCM,
            Kind::Aes256Gcm => &aead::AES_256_GCM,
            Kind::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// A [`Tls13AeadAlgorithm`] whose encrypters and decrypters hold raw keys.
struct CompactAead(Kind);

static AES_128_GCM: CompactAead = CompactAead(Kind::Aes128Gcm);
static AES_256_GCM: CompactAead = CompactAead(Kind::Aes256Gcm);
static CHACHA20_POLY1305: CompactAead = CompactAead(Kind::Chacha20Poly1305);

impl Tls13AeadAlgorithm for CompactAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(CompactKey {
            kind: self.0,
            key,
            iv,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(CompactKey {
            kind: self.0,
            key,
            iv,
        })
    }

    fn key_len(&self) -> usize {
        self.0.algorithm().key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(match self.0 {
            Kind::Aes128Gcm => ConnectionTrafficSecrets::Aes128Gcm { key, iv },
            Kind::Aes256Gcm => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            Kind::Chacha20Poly1305 => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        })
    }

    fn fips(&self) -> bool {
        false
    }
}

/// One direction's traffic key: the raw key (zeroed on drop by
/// [`AeadKey`]) and IV, ~64 bytes instead of the expanded context. rustls
/// holds these during the handshake; after it the server's own record
/// layer ([`record`](super::record)) holds them.
pub struct CompactKey {
    kind: Kind,
    key: AeadKey,
    iv: Iv,
}

impl CompactKey {
    /// The key of extracted TLS 1.3 traffic secrets (`None` for an AEAD
    /// this module does not know, i.e. a TLS 1.2-only one).
    pub fn from_secrets(secrets: ConnectionTrafficSecrets) -> Option<Self> {
        let (kind, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Kind::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Kind::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Kind::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        (key.as_ref().len() == kind.algorithm().key_len()).then_some(Self { kind, key, iv })
    }

    /// The expanded key for one record (or one batch of records). Dropping
    /// it frees and wipes the C context.
    pub fn expand(&self) -> Result<aead::LessSafeKey, aws_lc_rs::error::Unspecified> {
        aead::UnboundKey::new(self.kind.algorithm(), self.key_bytes()?).map(aead::LessSafeKey::new)
    }

    /// The key itself: a key made by [`CompactKey::with_same_aead`] is
    /// kept in a 32-byte [`AeadKey`] whatever the AEAD's key length.
    fn key_bytes(&self) -> Result<&[u8], aws_lc_rs::error::Unspecified> {
        self.key
            .as_ref()
            .get(..self.key_len())
            .ok_or(aws_lc_rs::error::Unspecified)
    }

    /// The AEAD's key length in bytes (16 or 32).
    pub fn key_len(&self) -> usize {
        self.kind.algorithm().key_len()
    }

    /// A key for the same AEAD from raw bytes (the first
    /// [`CompactKey::key_len`] of `key`), e.g. after a KeyUpdate.
    pub fn with_same_aead(&self, key: [u8; 32], iv: [u8; 12]) -> Self {
        Self {
            kind: self.kind,
            key: AeadKey::from(key),
            iv: Iv::new(iv),
        }
    }

    /// An all-zero AES-128-GCM key, to name the AEAD in tests (rustls'
    /// `AeadKey` has no public 16-byte constructor).
    #[cfg(test)]
    pub(crate) fn aes128_for_tests() -> Self {
        Self {
            kind: Kind::Aes128Gcm,
            key: AeadKey::from([0u8; 32]),
            iv: Iv::new([0; 12]),
        }
    }

    /// Same AEAD, key and IV (compared in constant time).
    pub fn same_as(&self, other: &CompactKey) -> bool {
        let (Ok(a), Ok(b)) = (self.key_bytes(), other.key_bytes()) else {
            return false;
        };
        self.key_len() == other.key_len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                self.iv.as_ref(),
                other.iv.as_ref(),
            )
            .is_ok()
    }

    /// The TLS 1.3 per-record nonce: the IV xor the sequence number
    /// (RFC 8446 5.3).
    pub fn nonce(&self, seq: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0)
    }

    /// Bytes the AEAD adds to each record.
    pub fn tag_len(&self) -> usize {
        self.kind.algorithm().tag_len()
    }
}

impl MessageEncrypter for CompactKey {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        let nonce = self.nonce(seq);
        let aad = aead::Aad::from(make_tls13_aad(total_len));
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        self.expand()
            .map_err(|_| Error::EncryptError)?
            .seal_in_place_append_tag(nonce, aad, &mut payload)
            .map_err(|_| Error::EncryptError)?;
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            // TLS 1.3 records carry the legacy 1.2 version (RFC 8446 5.1).
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        // The inner content type byte, then the tag.
        payload_len + 1 + self.tag_len()
    }
}

impl MessageDecrypter for CompactKey {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.tag_len() {
            return Err(Error::DecryptError);
        }
        let nonce = self.nonce(seq);
        let aad = aead::Aad::from(make_tls13_aad(payload.len()));
        let plain_len = self
            .expand()
            .map_err(|_| Error::DecryptError)?
            .open_in_place(nonce, aad, payload)
            .map_err(|_| Error::DecryptError)?
            .len();
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

/// The compact AEAD for a TLS 1.3 suite, if there is one.
fn compact_for(suite: CipherSuite) -> Option<&'static CompactAead> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => Some(&AES_128_GCM),
        CipherSuite::TLS13_AES_256_GCM_SHA384 => Some(&AES_256_GCM),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(&CHACHA20_POLY1305),
        _ => None,
    }
}

/// `provider` with its TLS 1.3 suites' record protection replaced by the
/// compact one (same suites, same order; the key schedule, hash and QUIC
/// parts are the provider's). Meant for the aws-lc-rs provider, whose AEAD
/// this module uses.
pub fn compact_provider(mut provider: CryptoProvider) -> CryptoProvider {
    for suite in &mut provider.cipher_suites {
        let SupportedCipherSuite::Tls13(base) = *suite else {
            continue;
        };
        let Some(aead_alg) = compact_for(base.common.suite) else {
            continue;
        };
        *suite = SupportedCipherSuite::Tls13(compact_suite(base, aead_alg));
    }
    provider
}

/// The compact variant of `base`. A suite must be `'static`, so each is
/// made once per process (a few dozen bytes each) and reused by every
/// later TLS context (tests build many).
fn compact_suite(
    base: &'static Tls13CipherSuite,
    aead_alg: &'static CompactAead,
) -> &'static Tls13CipherSuite {
    static MADE: Mutex<Vec<(usize, &'static Tls13CipherSuite)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let id = base as *const Tls13CipherSuite as usize;
    if let Some((_, suite)) = made.iter().find(|(b, _)| *b == id) {
        return suite;
    }
    let suite: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg,
        quic: base.quic,
    }));
    made.push((id, suite));
    suite
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::OutboundChunks;

    /// The stock aws-lc-rs TLS 1.3 AEAD of `suite`.
    fn stock(suite: SupportedCipherSuite) -> &'static dyn Tls13AeadAlgorithm {
        match suite {
            SupportedCipherSuite::Tls13(s) => s.aead_alg,
            _ => unreachable!("a TLS 1.3 suite"),
        }
    }

    fn key() -> AeadKey {
        AeadKey::from([7u8; 32])
    }

    fn iv() -> Iv {
        Iv::new([9u8; 12])
    }

    /// Encrypts `text` as record number `seq`; returns the record payload.
    fn seal(enc: &mut dyn MessageEncrypter, text: &[u8], seq: u64) -> Vec<u8> {
        let msg = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(text),
        };
        enc.encrypt(msg, seq).unwrap().encode()[5..].to_vec()
    }

    fn open(
        dec: &mut dyn MessageDecrypter,
        mut record: Vec<u8>,
        seq: u64,
    ) -> Result<Vec<u8>, Error> {
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut record,
        );
        dec.decrypt(msg, seq).map(|m| {
            assert_eq!(m.typ, ContentType::ApplicationData);
            m.payload.to_vec()
        })
    }

    /// Same key, IV and sequence number: the compact AEAD writes the very
    /// records the stock one writes, and each opens the other's; a flipped
    /// bit or a wrong sequence number is refused.
    #[test]
    fn records_match_the_stock_provider() {
        use rustls::crypto::aws_lc_rs::cipher_suite as cs;
        for (suite, compact) in [
            (cs::TLS13_AES_256_GCM_SHA384, &AES_256_GCM),
            (cs::TLS13_CHACHA20_POLY1305_SHA256, &CHACHA20_POLY1305),
        ] {
            let stock = stock(suite);
            let mut c_enc = compact.encrypter(key(), iv());
            let mut s_enc = stock.encrypter(key(), iv());
            let mut c_dec = compact.decrypter(key(), iv());
            let mut s_dec = stock.decrypter(key(), iv());
            for seq in [0u64, 1, 2, 1 << 40] {
                let text = format!("record {seq}");
                let ours = seal(c_enc.as_mut(), text.as_bytes(), seq);
                let theirs = seal(s_enc.as_mut(), text.as_bytes(), seq);
                assert_eq!(ours, theirs, "{suite:?} seq {seq}");
                assert_eq!(
                    open(s_dec.as_mut(), ours.clone(), seq).unwrap(),
                    text.as_bytes()
                );
                assert_eq!(open(c_dec.as_mut(), theirs, seq).unwrap(), text.as_bytes());
                let mut flipped = ours.clone();
                flipped[0] ^= 1;
                assert!(open(c_dec.as_mut(), flipped, seq).is_err());
                assert!(open(c_dec.as_mut(), ours, seq + 1).is_err());
            }
            assert!(
                open(c_dec.as_mut(), vec![0; 3], 0).is_err(),
                "shorter than a tag"
            );
        }
    }

    /// The server's provider gets compact TLS 1.3 suites in the same order,
    /// and keeps its TLS 1.2 suites.
    #[test]
    fn provider_swaps_only_tls13_record_protection() {
        let base = rustls::crypto::aws_lc_rs::default_provider();
        let compact = compact_provider(base.clone());
        assert_eq!(base.cipher_suites.len(), compact.cipher_suites.len());
        for (b, c) in base.cipher_suites.iter().zip(&compact.cipher_suites) {
            assert_eq!(b.suite(), c.suite());
            match (b, c) {
                (SupportedCipherSuite::Tls13(b), SupportedCipherSuite::Tls13(c)) => {
                    assert!(!std::ptr::eq(*b, *c), "{:?} replaced", b.common.suite);
                    assert_eq!(b.aead_alg.key_len(), c.aead_alg.key_len());
                }
                (SupportedCipherSuite::Tls12(b), SupportedCipherSuite::Tls12(c)) => {
                    assert!(std::ptr::eq(*b, *c));
                }
                _ => panic!("suite kinds differ"),
            }
        }
        // Made once per process: a second context reuses the same suites.
        let again = compact_provider(base);
        for (a, c) in again.cipher_suites.iter().zip(&compact.cipher_suites) {
            if let (SupportedCipherSuite::Tls13(a), SupportedCipherSuite::Tls13(c)) = (a, c) {
                assert!(std::ptr::eq(*a, *c));
            }
        }
    }
}

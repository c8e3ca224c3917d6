//! JWT authentication at the handshake and topic permissions from claims.
//!
//! Tokens come from `Authorization: Bearer …` or the `token` query parameter
//! (browsers cannot set headers on a WebSocket handshake). Verification is
//! the `jsonwebtoken` crate's: HS256 with a shared secret, or RS256/ES256
//! with a public key; `alg: none` and algorithm confusion are refused there.
//! This module adds what is ours: where the token is found, what `sub` and
//! `topics` mean, and pattern matching of topic permissions.

use std::borrow::Cow;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Why the server cannot start with the given key settings.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is neither an RSA nor an EC public key in PEM form")]
    NotAKey { path: String },
    #[error("the JWT secret is empty")]
    EmptySecret,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    topics: Option<Vec<String>>,
    broadcast: Option<bool>,
}

/// What a valid token grants a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub topics: TopicPerms,
    /// The token's `broadcast` claim, if it has one.
    pub broadcast: Option<bool>,
}

impl Grant {
    /// The Unix second the connection must be closed at: `exp` plus the
    /// grace period. Saturating: `exp` is whatever the token says, and
    /// `u64::MAX` plus any grace must not overflow (it panicked in debug
    /// builds and wrapped to "long expired" in release builds).
    pub fn ends_at(&self, grace_secs: u64) -> u64 {
        self.exp.saturating_add(grace_secs)
    }
}

/// Topics a token allows: exact names and `prefix.*` patterns. No `topics`
/// claim means no restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPerms {
    Any,
    Only(Vec<String>),
}

impl TopicPerms {
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            TopicPerms::Any => true,
            TopicPerms::Only(list) => list.iter().any(|p| match p.strip_suffix('*') {
                // `news.*` matches `news.sport` (not `news` or `newsroom`).
                Some(prefix) if prefix.ends_with('.') => {
                    topic.len() > prefix.len() && topic.starts_with(prefix)
                }
                _ => p == topic,
            }),
        }
    }
}

#[derive(Debug)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Authenticator, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Authenticator::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// RS256 or ES256, from a PEM public key file.
    pub fn from_public_key_file(path: &str) -> Result<Authenticator, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_string(),
            source,
        })?;
        if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Authenticator::new(k, Algorithm::RS256));
        }
        if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Authenticator::new(k, Algorithm::ES256));
        }
        Err(KeyError::NotAKey {
            path: path.to_string(),
        })
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Authenticator {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        Authenticator { key, validation }
    }

    /// Verifies a token's signature, algorithm, `exp` and `nbf`.
    pub fn verify(&self, token: &str, _now_unix: u64) -> Result<Grant, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        Ok(Grant {
            user: c.sub,
            exp: c.exp,
            topics: c.topics.map_or(TopicPerms::Any, TopicPerms::Only),
            broadcast: c.broadcast,
        })
    }
}

/// The token of a handshake: the `Authorization: Bearer` header, else the
/// `token` query parameter (percent-decoded).
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    if let Some(h) = authorization {
        // Compared as bytes: the header is the client's, and a multi-byte
        // character across byte 7 must not be sliced through (that panicked).
        let h = h.trim();
        let (scheme, rest) = h.as_bytes().split_at_checked(7).unwrap_or((b"", b""));
        if !rest.is_empty() && scheme.eq_ignore_ascii_case(b"bearer ") {
            // Splitting after seven ASCII bytes is a character boundary.
            if let Some(token) = h.get(7..) {
                return Some(Cow::Borrowed(token.trim()));
            }
        }
    }
    let q = query?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| Cow::<str>::Owned(v.into_owned()))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> u64 {
        crate::security::unix_now()
    }

    #[test]
    fn valid_expired_future_and_forged_tokens() {
        let a = Authenticator::hs256(b"s3cret").unwrap();
        let ok = token(
            b"s3cret",
            serde_json::json!({"sub": "u1", "exp": now() + 60, "topics": ["a", "news.*"]}),
        );
        let g = a.verify(&ok, now()).unwrap();
        assert_eq!(g.user.as_deref(), Some("u1"));
        assert!(g.topics.allows("news.sport") && g.topics.allows("a") && !g.topics.allows("b"));
        let old = token(b"s3cret", serde_json::json!({"exp": now() - 60}));
        assert_eq!(a.verify(&old, now()), Err(AuthError::Expired));
        let early = token(
            b"s3cret",
            serde_json::json!({"exp": now() + 600, "nbf": now() + 300}),
        );
        assert_eq!(a.verify(&early, now()), Err(AuthError::NotYetValid));
        let forged = token(b"other", serde_json::json!({"exp": now() + 60}));
        assert!(matches!(
            a.verify(&forged, now()),
            Err(AuthError::Invalid(_))
        ));
        let no_exp = token(b"s3cret", serde_json::json!({"sub": "x"}));
        assert!(matches!(
            a.verify(&no_exp, now()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.verify("garbage", now()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"exp":{}}}"#, now() + 60))
        );
        let a = Authenticator::hs256(b"s3cret").unwrap();
        assert!(matches!(
            a.verify(&unsigned, now()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn topic_patterns() {
        let p = TopicPerms::Only(vec!["chat.*".into(), "exact".into()]);
        assert!(p.allows("chat.room1"));
        assert!(
            !p.allows("chat."),
            "a pattern needs something after the dot"
        );
        assert!(!p.allows("chat"));
        assert!(!p.allows("chatter.x"));
        assert!(p.allows("exact"));
        assert!(!p.allows("exactly"));
        assert!(TopicPerms::Any.allows("anything"));
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            token_from_request(Some("Bearer abc.def"), None).as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            token_from_request(Some("bearer  xyz "), Some("token=q")).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            token_from_request(None, Some("a=1&token=x%2By")).as_deref(),
            Some("x+y")
        );
        assert_eq!(token_from_request(Some("Basic zzz"), None), None);
        assert_eq!(token_from_request(None, Some("token=")), None);
        assert_eq!(token_from_request(None, None), None);
    }

    #[test]
    fn a_multibyte_character_across_the_scheme_never_panics() {
        // 'é' is two bytes at index 6..8: slicing at 7 used to panic.
        assert_eq!(token_from_request(Some("Bearer\u{e9}x"), None), None);
        assert_eq!(
            token_from_request(Some("\u{e9}\u{e9}\u{e9}\u{e9}"), None),
            None
        );
        assert_eq!(
            token_from_request(Some("Bearer \u{e9}"), None).as_deref(),
            Some("\u{e9}")
        );
        assert_eq!(token_from_request(Some("Bearer "), None), None);
        for s in ["", "B", "Bearer", "bearer\u{e9}", "\u{1F600}\u{1F600}"] {
            let _ = token_from_request(Some(s), Some("token=\u{e9}%ZZ"));
        }
    }

    #[test]
    fn expiry_plus_grace_saturates() {
        let g = Grant {
            user: None,
            exp: u64::MAX - 1,
            topics: TopicPerms::Any,
            broadcast: None,
        };
        assert_eq!(g.ends_at(10), u64::MAX);
        assert_eq!(g.ends_at(0), u64::MAX - 1);
        let g = Grant { exp: 100, ..g };
        assert_eq!(g.ends_at(5), 105);
    }
}

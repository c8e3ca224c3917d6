//! Who may connect and what they may do: JWT authentication with topic
//! permissions, the Origin allow-list, and the per-IP handshake rate limit.
//!
//! All checks run once per upgrade (and per `subscribe`/`publish` for topic
//! permissions), never per frame. Policy only: this module never touches a
//! socket; the connection code asks and answers with the HTTP status.

pub mod handshake_rate;
pub mod jwt;
pub mod origin;

use std::net::IpAddr;

pub use handshake_rate::HandshakeRate;
pub use jwt::{AuthError, Authenticator, Grant, KeyError, TopicPerms};
pub use origin::OriginPolicy;

/// The security settings of a server, shared by all workers.
#[derive(Debug, Default)]
pub struct Security {
    pub auth: Option<Authenticator>,
    pub origins: OriginPolicy,
    pub handshake_rate: Option<HandshakeRate>,
}

/// Why an upgrade is refused, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("origin not allowed")]
    Origin,
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("too many handshakes from your address")]
    HandshakeRate,
}

impl Refused {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Refused::Origin => (403, "Forbidden"),
            Refused::Auth(_) => (401, "Unauthorized"),
            Refused::HandshakeRate => (429, "Too Many Requests"),
        }
    }
}

impl Security {
    /// Runs every upgrade-time check. Returns the grant of a valid token
    /// (when authentication is on).
    pub fn check_upgrade(
        &self,
        ip: Option<IpAddr>,
        origin: Option<&str>,
        authorization: Option<&str>,
        query: Option<&str>,
    ) -> Result<Option<Grant>, Refused> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if let (Some(rate), Some(ip)) = (&self.handshake_rate, ip) {
            if !rate.allow_at(ip, now.as_millis() as u64) {
                return Err(Refused::HandshakeRate);
            }
        }
        if !self.origins.allows(origin) {
            return Err(Refused::Origin);
        }
        match &self.auth {
            None => Ok(None),
            Some(a) => {
                let token =
                    jwt::token_from_request(authorization, query).ok_or(AuthError::Missing)?;
                Ok(Some(a.verify(&token, now.as_secs())?))
            }
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

//! The security policy a node's workers apply, built from the settings:
//! token authentication (`--jwt-*`), allowed origins and the per-IP
//! handshake rate.

use super::StartError;
use crate::config::Config;
use crate::security::{Authenticator, HandshakeRate, OriginPolicy, Security};

/// Builds the policy; a key file that cannot be read or used, or two ways
/// of giving the key at once, stop the start.
pub fn from_config(config: &Config) -> Result<Security, StartError> {
    let key = |flag: &'static str| move |source| StartError::JwtKey { flag, source };
    let auth = match (
        &config.jwt_secret,
        &config.jwt_secret_file,
        &config.jwt_public_key_file,
    ) {
        (None, None, None) => None,
        (Some(s), None, None) => {
            Some(Authenticator::hs256(s.as_bytes()).map_err(key("--jwt-secret"))?)
        }
        (None, Some(path), None) => {
            let secret = std::fs::read(path).map_err(|source| StartError::JwtSecretFile {
                path: path.clone(),
                source,
            })?;
            let trimmed = secret.trim_ascii_end();
            Some(Authenticator::hs256(trimmed).map_err(key("--jwt-secret-file"))?)
        }
        (None, None, Some(path)) => {
            Some(Authenticator::from_public_key_file(path).map_err(key("--jwt-public-key-file"))?)
        }
        _ => return Err(StartError::JwtSettingsConflict),
    };
    let rate = config.max_handshakes_per_ip;
    Ok(Security {
        auth,
        origins: OriginPolicy::new(&config.allowed_origins, !config.require_origin),
        handshake_rate: (rate > 0.0).then(|| HandshakeRate::new(rate, 2.0 * rate)),
    })
}

//! Access tokens (JWT, HS256) and opaque random tokens (refresh, password reset).
//!
//! Access tokens are short-lived and carry the session id (`sid`), which is checked against
//! the `sessions` row on every request, so logout and revocation take effect at once.
//! Refresh and reset tokens are 256 random bits; only their SHA-256 is stored.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::error::{AppError, AppResult};

/// Tolerated clock skew when checking `exp` and `iat`.
const LEEWAY_SECS: u64 = 30;
const ACCESS_TYPE: &str = "access";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    pub typ: String,
    /// The session (refresh-token family) this token belongs to.
    pub sid: Uuid,
}

/// Signs and checks access tokens. Keys are derived once from `JWT_SECRET`.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: Duration,
}

pub struct AccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl TokenKeys {
    pub fn new(config: &AuthConfig) -> Self {
        // The algorithm is pinned: a token whose header says `none` or RS256 is rejected.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        TokenKeys {
            encoding: EncodingKey::from_secret(&config.jwt_secret),
            decoding: DecodingKey::from_secret(&config.jwt_secret),
            validation,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: config.access_token_ttl,
        }
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> AppResult<AccessToken> {
        let now = Utc::now();
        let expires_at = now
            + chrono::Duration::from_std(self.access_ttl)
                .map_err(|e| AppError::internal(anyhow::anyhow!("access token ttl: {e}")))?;
        let claims = Claims {
            sub: user_id,
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Uuid::new_v4(),
            typ: ACCESS_TYPE.to_owned(),
            sid: session_id,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AppError::internal(anyhow::anyhow!("jwt encode: {e}")))?;
        Ok(AccessToken { token, expires_at })
    }

    /// Checks signature, algorithm, `iss`, `aud`, `exp` and `typ`. Says nothing about why a
    /// token failed beyond "invalid or expired": the reason goes to the debug log.
    pub fn verify(&self, token: &str) -> AppResult<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "rejected access token");
                AppError::unauthenticated("invalid or expired access token")
            })?;
        let claims = data.claims;
        if claims.typ != ACCESS_TYPE {
            return Err(AppError::unauthenticated("invalid or expired access token"));
        }
        if claims.iat > Utc::now().timestamp() + LEEWAY_SECS as i64 {
            return Err(AppError::unauthenticated("invalid or expired access token"));
        }
        Ok(claims)
    }
}

/// 256 random bits, URL-safe base64 without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for an opaque token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn keys() -> TokenKeys {
        let config = Config::from_lookup(|k| {
            (k == "JWT_SECRET").then(|| "test-secret-test-secret-test-secret".to_owned())
        })
        .expect("config");
        TokenKeys::new(&config.auth)
    }

    #[test]
    fn round_trip() {
        let keys = keys();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(user, session).expect("issue");
        let claims = keys.verify(&token.token).expect("verify");
        assert_eq!(claims.sub, user);
        assert_eq!(claims.sid, session);
        assert_eq!(claims.typ, "access");
    }

    #[test]
    fn random_tokens_are_256_bits() {
        let t = random_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, random_token());
        assert_eq!(token_hash(&t).len(), 32);
    }
}

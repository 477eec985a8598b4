//! Password hashing with argon2id (m = 19456 KiB, t = 2, p = 1: OWASP's recommendation).
//!
//! Hashing is deliberately slow, so it runs on tokio's blocking pool behind a semaphore: a
//! burst of logins queues there instead of stalling the async workers or the whole machine.

use std::sync::Arc;

use anyhow::anyhow;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{AppError, AppResult};

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 256;

#[derive(Clone)]
pub struct Passwords {
    /// Bounds concurrent hashes: each costs ~19 MiB and a core for tens of milliseconds.
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the email is unknown so that
    /// answering "no such user" takes as long as "wrong password".
    dummy: Arc<OnceCell<String>>,
}

fn argon2() -> AppResult<Argon2<'static>> {
    let params = Params::new(19_456, 2, 1, None)
        .map_err(|e| AppError::internal(anyhow!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

impl Passwords {
    pub fn new(concurrency: usize) -> Self {
        Passwords {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    /// Hashes `password` into a PHC string (salt and parameters included).
    pub async fn hash(&self, password: &str) -> AppResult<String> {
        let password = password.to_owned();
        self.blocking(move || {
            argon2()?
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| AppError::internal(anyhow!("argon2 hash: {e}")))
        })
        .await
    }

    /// True when `password` matches `hash`. With `hash = None` (unknown account) a dummy
    /// hash is verified instead, so the time taken does not reveal whether the account exists.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> AppResult<bool> {
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash().await?, false),
        };
        let password = password.to_owned();
        let matched = self
            .blocking(move || {
                Ok(argon2()?
                    .verify_password(password.as_bytes(), hash.as_str())
                    .is_ok())
            })
            .await?;
        Ok(real && matched)
    }

    async fn dummy_hash(&self) -> AppResult<String> {
        self.dummy
            .get_or_try_init(|| async {
                let random = crate::auth::tokens::random_token();
                self.hash(&random).await
            })
            .await
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> AppResult<T> + Send + 'static,
    ) -> AppResult<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| AppError::internal(anyhow!("password pool closed: {e}")))?;
        tokio::task::spawn_blocking(work).await?
    }
}

/// Checks the length rules: 12 to 256 characters; longer is rejected, never truncated.
pub fn validate_new_password(field: &str, password: &str) -> AppResult<()> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AppError::bad_input(
            field,
            format!("password must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(AppError::bad_input(
            field,
            format!("password must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let p = Passwords::new(2);
        let h = p.hash("correct horse battery").await.expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(
            p.verify("correct horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(
            !p.verify("wrong horse battery", Some(&h))
                .await
                .expect("verify")
        );
        assert!(
            !p.verify("correct horse battery", None)
                .await
                .expect("dummy")
        );
    }

    #[test]
    fn length_rules() {
        assert!(validate_new_password("p", &"a".repeat(11)).is_err());
        assert!(validate_new_password("p", &"a".repeat(12)).is_ok());
        assert!(validate_new_password("p", &"é".repeat(256)).is_ok());
        assert!(validate_new_password("p", &"a".repeat(257)).is_err());
    }
}

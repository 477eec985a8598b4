//! Rate limits on the unauthenticated account operations (`login`, `requestPasswordReset`),
//! per email and per client IP, with governor's keyed GCRA limiters in process.
//!
//! Callers see only `Limiter::check(class, key)`, so the Redis-backed limiter of the quotas
//! capability can replace the storage without touching them.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::AuthRateLimits;
use crate::error::{AppError, AppResult};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitClass {
    LoginPerEmail,
    LoginPerIp,
    ResetPerEmail,
    ResetPerIp,
}

#[derive(Clone)]
pub struct Limiter {
    login_email: Arc<Keyed>,
    login_ip: Arc<Keyed>,
    reset_email: Arc<Keyed>,
    reset_ip: Arc<Keyed>,
    clock: DefaultClock,
}

fn per_minute(n: u32) -> Arc<Keyed> {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Arc::new(RateLimiter::keyed(Quota::per_minute(n)))
}

impl Limiter {
    pub fn new(config: &AuthRateLimits) -> Self {
        Limiter {
            login_email: per_minute(config.login_per_email),
            login_ip: per_minute(config.login_per_ip),
            reset_email: per_minute(config.reset_per_email),
            reset_ip: per_minute(config.reset_per_ip),
            clock: DefaultClock::default(),
        }
    }

    fn limiter(&self, class: LimitClass) -> &Keyed {
        match class {
            LimitClass::LoginPerEmail => &self.login_email,
            LimitClass::LoginPerIp => &self.login_ip,
            LimitClass::ResetPerEmail => &self.reset_email,
            LimitClass::ResetPerIp => &self.reset_ip,
        }
    }

    /// Spends one cell for `key` or answers RATE_LIMITED with the time until the next one.
    pub fn check(&self, class: LimitClass, key: &str) -> AppResult<()> {
        match self.limiter(class).check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                tracing::info!(?class, "rate limited");
                Err(AppError::RateLimited {
                    retry_after: wait.max(Duration::from_millis(1)),
                })
            }
        }
    }

    /// Forgets keys whose limits have fully recovered, so memory stays bounded by the keys
    /// seen in the last minute. Called periodically by the server.
    pub fn retain_recent(&self) {
        for limiter in [
            &self.login_email,
            &self.login_ip,
            &self.reset_email,
            &self.reset_ip,
        ] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let limiter = Limiter::new(&AuthRateLimits {
            login_per_email: 2,
            login_per_ip: 100,
            reset_per_email: 1,
            reset_per_ip: 100,
        });
        assert!(limiter.check(LimitClass::LoginPerEmail, "a@x.io").is_ok());
        assert!(limiter.check(LimitClass::LoginPerEmail, "a@x.io").is_ok());
        match limiter.check(LimitClass::LoginPerEmail, "a@x.io") {
            Err(AppError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::from_secs(1));
                assert!(retry_after <= Duration::from_secs(30));
            }
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        assert!(limiter.check(LimitClass::LoginPerEmail, "b@x.io").is_ok());
    }
}

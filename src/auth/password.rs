//! Password hashing with argon2id (m = 19456 KiB, t = 2, p = 1: OWASP's recommendation).
//!
//! Hashing is deliberately slow (tens of milliseconds of a core each), so it runs on a few
//! threads of its own, `PASSWORD_HASH_CONCURRENCY` of them, fed by one queue: a burst of logins
//! waits there instead of stalling the async workers. On Linux those threads are SCHED_IDLE:
//! hashes take the cores' spare time, and reads and streams keep their latency while logins
//! wait instead (BENCHMARKS.md, scenario 6).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::anyhow;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use tokio::sync::{OnceCell, oneshot};

use crate::error::{AppError, AppResult};

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 256;

#[derive(Clone)]
pub struct Passwords {
    /// The hashing threads' queue. Their number bounds concurrent hashes: each costs ~19 MiB
    /// and a core for tens of milliseconds. They end when the last `Passwords` goes.
    queue: Arc<Mutex<mpsc::Sender<Job>>>,
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
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..concurrency.max(1) {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || hashing_thread(&jobs));
            if let Err(err) = spawned {
                // Fewer threads, or none: `blocking` then answers INTERNAL.
                tracing::error!(%err, "cannot start a password hashing thread");
            }
        }
        Passwords {
            queue: Arc::new(Mutex::new(queue)),
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
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(AppError::internal(anyhow!("password hashing panicked"))));
            let _ = done.send(outcome);
        });
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .map_err(|_| AppError::internal(anyhow!("no password hashing thread")))?;
        result
            .await
            .map_err(|_| AppError::internal(anyhow!("no password hashing thread")))?
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One hashing thread: lowers its own priority, then runs jobs until the queue closes.
fn hashing_thread(jobs: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held while waiting only: one thread waits, the others queue on the lock.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// SCHED_IDLE for the calling thread (on Linux, scheduling policies are per thread): it runs
/// on cores nothing else wants, and any other thread that wakes up takes the core at once.
/// A nice value was not enough: the kernel lets a running thread finish its slice (a few
/// milliseconds) before a woken one runs, and a read makes a dozen such wake-ups.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is the calling
    // thread. Lowering one's own priority needs no privilege.
    let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 };
    if failed {
        tracing::debug!("cannot lower the password hashing thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

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

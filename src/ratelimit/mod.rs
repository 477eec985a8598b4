//! Rate limits, per subject (user id, email or client IP) and per class of operation, with
//! GCRA (the generic cell rate algorithm: a leaky bucket kept as one timestamp per key).
//!
//! - With `REDIS_URL`, every check runs one atomic Lua script (`gcra.lua`, sent with EVALSHA and
//!   loaded again on NOSCRIPT) against the Redis server's clock, so all processes share one
//!   limit per key. Keys expire (PEXPIRE in the script) once their bucket is full again.
//! - Without Redis, or while Redis does not answer, governor's keyed limiters in this process
//!   decide. An outage is logged once when it starts and once when it ends; every check it
//!   decides in process is counted (`fallbacks()`). While Redis is down, it is tried again at
//!   most once a second, by one request; the others go straight to the in-process limiters.
//!   The limits are then per process (N processes allow up to N times the limit), never off.
//! - `WsSubscribe` is per WebSocket connection, and a connection lives in one process: it is
//!   always decided in process.
//! - Open WebSocket connections per user are a counter (`ws_connection`), not a rate, and are
//!   counted in process too (see `WsConnections`).
//!
//! Memory stays bounded: `retain_recent` (called every minute by the server) forgets the
//! in-process keys whose buckets are full again.

pub mod operations;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::RedisConn;
use crate::config::RateLimits;
use crate::error::{AppError, AppResult};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// The longest a check waits for Redis before deciding in process.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// While Redis is down, how often one request tries it again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// Subjects longer than this are hashed, so a client-chosen email cannot make a large key.
const MAX_SUBJECT_BYTES: usize = 64;

/// What is being limited. Each class has its own limit and its own buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitClass {
    /// `sendMessage`, `regenerateMessage`, `editMessage`, per user. Charged where the
    /// operation arrives (HTTP and WebSocket), once per such root field.
    Generation,
    /// Other mutations per user (anonymous: per client IP, e.g. `register`).
    Mutation,
    /// Queries per user (anonymous: per client IP).
    Query,
    LoginPerEmail,
    LoginPerIp,
    ResetPerEmail,
    ResetPerIp,
    /// `subscribe` messages per WebSocket connection; always in process.
    WsSubscribe,
}

impl LimitClass {
    pub const ALL: [LimitClass; 8] = [
        LimitClass::Generation,
        LimitClass::Mutation,
        LimitClass::Query,
        LimitClass::LoginPerEmail,
        LimitClass::LoginPerIp,
        LimitClass::ResetPerEmail,
        LimitClass::ResetPerIp,
        LimitClass::WsSubscribe,
    ];

    /// The class's part of its Redis keys.
    pub fn name(self) -> &'static str {
        match self {
            LimitClass::Generation => "generation",
            LimitClass::Mutation => "mutation",
            LimitClass::Query => "query",
            LimitClass::LoginPerEmail => "login-email",
            LimitClass::LoginPerIp => "login-ip",
            LimitClass::ResetPerEmail => "reset-email",
            LimitClass::ResetPerIp => "reset-ip",
            LimitClass::WsSubscribe => "ws-subscribe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Whether the limit is shared between processes (through Redis, when configured).
    fn shared(self) -> bool {
        self != LimitClass::WsSubscribe
    }
}

/// One class's limit: a cell every `interval`, at most `burst` at once.
#[derive(Debug, Clone, Copy)]
struct Rule {
    interval: Duration,
    burst: NonZeroU32,
}

impl Rule {
    fn per_minute(per_minute: u32, burst: u32) -> Rule {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Rule {
            interval: (Duration::from_secs(60) / per_minute.get()).max(Duration::from_micros(1)),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }

    fn keyed(self) -> Keyed {
        let quota = Quota::with_period(self.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst);
        RateLimiter::keyed(quota)
    }
}

/// Whether Redis answered lately, and when to try it again if not.
struct Health {
    down: AtomicBool,
    /// Milliseconds after `epoch` before which Redis is not tried while down.
    retry_at: AtomicU64,
    epoch: Instant,
    /// Checks decided in process because Redis did not answer.
    fallbacks: AtomicU64,
    /// Times Redis went from answering to not answering.
    outages: AtomicU64,
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this check should ask Redis: always while it answers; while it is down, one
    /// check a second.
    fn should_try(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let retry_at = self.retry_at.load(Ordering::Acquire);
        now >= retry_at
            && self
                .retry_at
                .compare_exchange(
                    retry_at,
                    now + REDIS_RETRY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::warn!("Redis answers again: rate limits are shared between processes again");
        }
    }

    fn failed(&self, error: &str) {
        self.retry_at.store(
            self.now_ms() + REDIS_RETRY.as_millis() as u64,
            Ordering::Release,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                error,
                "Redis does not answer: rate limits fall back to this process's own limiters \
                 (each process now allows the full limit) until it does"
            );
        }
    }
}

/// Open WebSocket connections per user.
///
/// Counted in process, not in Redis: a connection lives in one process from start to end, so
/// the count is exact here and needs no expiry; the cap is per user per process (N processes
/// allow up to N times the cap).
struct WsConnections {
    max: u32,
    open: Mutex<HashMap<Uuid, u32>>,
}

/// One open WebSocket connection of a user; dropping it frees the place.
pub struct WsConnectionSlot {
    inner: Arc<Inner>,
    user: Uuid,
}

impl Drop for WsConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .inner
            .ws
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl std::fmt::Debug for WsConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnectionSlot")
            .field("user", &self.user)
            .finish()
    }
}

struct Inner {
    rules: [Rule; LimitClass::ALL.len()],
    local: [Keyed; LimitClass::ALL.len()],
    clock: DefaultClock,
    redis: Option<RedisConn>,
    script: redis::Script,
    prefix: String,
    health: Health,
    ws: WsConnections,
}

/// The rate limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// What Redis said.
enum Decision {
    Allowed,
    Refused(Duration),
}

impl Limiter {
    /// Limits from the configuration, shared through `redis` when given.
    pub fn new(config: &RateLimits, redis: Option<RedisConn>) -> Self {
        let rule = |class: LimitClass| match class {
            LimitClass::Generation => {
                Rule::per_minute(config.generations_per_min, config.generations_burst)
            }
            LimitClass::Mutation => {
                Rule::per_minute(config.mutations_per_min, config.mutations_per_min)
            }
            LimitClass::Query => Rule::per_minute(config.queries_per_min, config.queries_per_min),
            LimitClass::LoginPerEmail => {
                Rule::per_minute(config.login_per_email, config.login_per_email)
            }
            LimitClass::LoginPerIp => Rule::per_minute(config.login_per_ip, config.login_per_ip),
            LimitClass::ResetPerEmail => {
                Rule::per_minute(config.reset_per_email, config.reset_per_email)
            }
            LimitClass::ResetPerIp => Rule::per_minute(config.reset_per_ip, config.reset_per_ip),
            LimitClass::WsSubscribe => {
                Rule::per_minute(config.ws_subscribes_per_min, config.ws_subscribes_per_min)
            }
        };
        let rules = LimitClass::ALL.map(rule);
        Limiter {
            inner: Arc::new(Inner {
                local: rules.map(Rule::keyed),
                rules,
                clock: DefaultClock::default(),
                redis,
                script: redis::Script::new(include_str!("gcra.lua")),
                prefix: config.key_prefix.clone(),
                health: Health {
                    down: AtomicBool::new(false),
                    retry_at: AtomicU64::new(0),
                    epoch: Instant::now(),
                    fallbacks: AtomicU64::new(0),
                    outages: AtomicU64::new(0),
                },
                ws: WsConnections {
                    max: config.ws_max_connections_per_user.max(1),
                    open: Mutex::new(HashMap::new()),
                },
            }),
        }
    }

    /// Spends one cell of `class` for `key`, or answers RATE_LIMITED with the time until
    /// the next one.
    pub async fn check(&self, class: LimitClass, key: &str) -> AppResult<()> {
        self.check_n(class, key, 1).await
    }

    /// Spends `cells` cells at once, or none. More cells than the class's burst can never
    /// pass: that is BAD_USER_INPUT rather than a wait.
    pub async fn check_n(&self, class: LimitClass, key: &str, cells: u32) -> AppResult<()> {
        let Some(cells) = NonZeroU32::new(cells) else {
            return Ok(());
        };
        let rule = self.inner.rules[class.index()];
        if cells > rule.burst {
            return Err(AppError::BadUserInput {
                message: format!(
                    "this request needs {cells} {} operations at once; the rate limit allows \
                     at most {}",
                    class.name(),
                    rule.burst
                ),
                field: None,
            });
        }
        let subject = subject_key(key);
        if class.shared()
            && let Some(redis) = &self.inner.redis
        {
            if self.inner.health.should_try() {
                let redis_key = format!("{}:{}:{subject}", self.inner.prefix, class.name());
                let asked = tokio::time::timeout(
                    REDIS_TIMEOUT,
                    self.redis_check(redis, &redis_key, rule, cells),
                )
                .await;
                match asked {
                    Ok(Ok(decision)) => {
                        self.inner.health.answered();
                        return outcome(class, decision);
                    }
                    Ok(Err(e)) => self.inner.health.failed(&format!("{e:#}")),
                    Err(_) => self.inner.health.failed("no answer within the timeout"),
                }
            }
            self.inner.health.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        outcome(class, self.local_check(class, subject, cells))
    }

    async fn redis_check(
        &self,
        redis: &RedisConn,
        key: &str,
        rule: Rule,
        cells: NonZeroU32,
    ) -> anyhow::Result<Decision> {
        let mut conn = redis.connection().await?;
        let interval = u64::try_from(rule.interval.as_micros()).unwrap_or(u64::MAX);
        let (allowed, wait_us): (i64, i64) = self
            .inner
            .script
            .key(key)
            .arg(interval)
            .arg(rule.burst.get())
            .arg(cells.get())
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            Decision::Allowed
        } else {
            Decision::Refused(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
        })
    }

    fn local_check(&self, class: LimitClass, subject: String, cells: NonZeroU32) -> Decision {
        match self.inner.local[class.index()].check_key_n(&subject, cells) {
            Ok(Ok(())) => Decision::Allowed,
            Ok(Err(not_until)) => {
                Decision::Refused(not_until.wait_time_from(self.inner.clock.now()))
            }
            // `check_n` refuses more cells than the burst before getting here.
            Err(_) => Decision::Refused(self.inner.rules[class.index()].interval),
        }
    }

    /// Takes a place for one more WebSocket connection of `user`, or None at the cap
    /// (`WS_MAX_CONNECTIONS_PER_USER`). The place is freed when the slot is dropped.
    pub fn ws_connection(&self, user: Uuid) -> Option<WsConnectionSlot> {
        let mut open = self
            .inner
            .ws
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user).or_insert(0);
        if *count >= self.inner.ws.max {
            tracing::info!(%user, max = self.inner.ws.max, "WebSocket connection cap reached");
            return None;
        }
        *count += 1;
        drop(open);
        Some(WsConnectionSlot {
            inner: self.inner.clone(),
            user,
        })
    }

    /// The open WebSocket connections of `user` in this process.
    pub fn ws_connections(&self, user: Uuid) -> u32 {
        self.inner
            .ws
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&user)
            .copied()
            .unwrap_or(0)
    }

    /// Checks decided in process because Redis was configured but did not answer. A metric.
    pub fn fallbacks(&self) -> u64 {
        self.inner.health.fallbacks.load(Ordering::Relaxed)
    }

    /// Times Redis stopped answering. A metric.
    pub fn outages(&self) -> u64 {
        self.inner.health.outages.load(Ordering::Relaxed)
    }

    /// True while Redis is configured but not answering.
    pub fn redis_down(&self) -> bool {
        self.inner.redis.is_some() && self.inner.health.down.load(Ordering::Acquire)
    }

    /// Forgets in-process keys whose limits have fully recovered, so memory stays bounded by
    /// the keys seen in the last minute. Called periodically by the server.
    pub fn retain_recent(&self) {
        for limiter in &self.inner.local {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The key's subject, hashed when long.
fn subject_key(key: &str) -> String {
    if key.len() <= MAX_SUBJECT_BYTES {
        key.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

fn outcome(class: LimitClass, decision: Decision) -> AppResult<()> {
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Refused(wait) => {
            tracing::info!(?class, "rate limited");
            crate::metrics::rate_limited(class.name());
            Err(AppError::RateLimited {
                retry_after: wait.max(Duration::from_millis(1)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RateLimits {
        RateLimits {
            login_per_email: 2,
            login_per_ip: 100,
            reset_per_email: 1,
            reset_per_ip: 100,
            generations_per_min: 60,
            generations_burst: 3,
            mutations_per_min: 120,
            queries_per_min: 600,
            ws_subscribes_per_min: 60,
            ws_max_connections_per_user: 2,
            key_prefix: format!("colloquy:rl-unit:{}", Uuid::new_v4().simple()),
        }
    }

    fn redis_url() -> String {
        std::env::var("COLLOQUY_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    fn wait_of(result: AppResult<()>) -> Duration {
        match result {
            Err(AppError::RateLimited { retry_after }) => retry_after,
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn limits_per_key_in_process() {
        let limiter = Limiter::new(&config(), None);
        assert!(
            limiter
                .check(LimitClass::LoginPerEmail, "a@x.io")
                .await
                .is_ok()
        );
        assert!(
            limiter
                .check(LimitClass::LoginPerEmail, "a@x.io")
                .await
                .is_ok()
        );
        let wait = wait_of(limiter.check(LimitClass::LoginPerEmail, "a@x.io").await);
        assert!(wait > Duration::from_secs(1) && wait <= Duration::from_secs(30));
        assert!(
            limiter
                .check(LimitClass::LoginPerEmail, "b@x.io")
                .await
                .is_ok()
        );
        // Burst, then the steady rate: 3 at once, the 4th waits about a second.
        for _ in 0..3 {
            assert!(limiter.check(LimitClass::Generation, "u").await.is_ok());
        }
        let wait = wait_of(limiter.check(LimitClass::Generation, "u").await);
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert_eq!(
            limiter.fallbacks(),
            0,
            "no Redis configured is not a fallback"
        );
    }

    #[tokio::test]
    async fn more_cells_than_the_burst_is_bad_input() {
        let limiter = Limiter::new(&config(), None);
        assert!(matches!(
            limiter.check_n(LimitClass::Generation, "u", 4).await,
            Err(AppError::BadUserInput { .. })
        ));
        assert!(
            limiter
                .check_n(LimitClass::Generation, "u", 3)
                .await
                .is_ok()
        );
        assert!(
            limiter
                .check_n(LimitClass::Generation, "u", 0)
                .await
                .is_ok()
        );
    }

    #[test]
    fn websocket_connections_are_capped_per_user() {
        let limiter = Limiter::new(&config(), None);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = limiter.ws_connection(a).expect("first");
        let _second = limiter.ws_connection(a).expect("second");
        assert!(limiter.ws_connection(a).is_none());
        assert!(limiter.ws_connection(b).is_some());
        drop(first);
        assert_eq!(limiter.ws_connections(a), 1);
        assert!(limiter.ws_connection(a).is_some());
    }

    #[test]
    fn long_subjects_are_hashed() {
        let long = "x".repeat(1000);
        let key = subject_key(&long);
        assert!(key.len() < 80, "{key}");
        assert_eq!(key, subject_key(&long));
        assert_eq!(subject_key("a@b.c"), "a@b.c");
    }

    /// The Lua script against a real Redis: a burst, then the steady rate, the key's expiry,
    /// and a refused request spending nothing.
    #[tokio::test]
    async fn the_script_gives_a_burst_then_the_steady_rate() {
        let redis = RedisConn::new(&redis_url()).expect("url");
        let mut conn = redis
            .connection()
            .await
            .expect("unit tests need Redis at COLLOQUY_TEST_REDIS_URL or 127.0.0.1:6379");
        let script = redis::Script::new(include_str!("gcra.lua"));
        let key = format!("colloquy:rl-unit:{}", Uuid::new_v4().simple());
        // 300 ms per cell, burst 3.
        let shared = conn.clone();
        let call = |cost: u32| {
            let mut conn = shared.clone();
            let script = &script;
            let key = &key;
            async move {
                script
                    .key(key)
                    .arg(300_000u64)
                    .arg(3u32)
                    .arg(cost)
                    .invoke_async::<(i64, i64)>(&mut conn)
                    .await
                    .expect("script")
            }
        };
        for _ in 0..3 {
            assert_eq!(call(1).await, (1, 0));
        }
        let (allowed, wait) = call(1).await;
        assert_eq!(allowed, 0);
        assert!(wait > 200_000 && wait <= 300_000, "{wait} µs");
        // Refusals spend nothing: the same wait (less the time passed).
        let (_, again) = call(1).await;
        assert!(again <= wait && again > 150_000, "{again} µs");
        // The full bucket is 3 × 300 ms away: the key expires then.
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pttl");
        assert!(ttl > 500 && ttl <= 900, "{ttl} ms");
        // The steady rate: one cell per interval.
        tokio::time::sleep(Duration::from_micros(wait as u64 + 5_000)).await;
        assert_eq!(call(1).await, (1, 0));
        assert_eq!(call(1).await.0, 0);
        // Two cells at once need two intervals.
        let (allowed, wait) = call(2).await;
        assert_eq!(allowed, 0);
        assert!(wait > 300_000 && wait <= 600_000, "{wait} µs");
        // NOSCRIPT (a restarted or flushed Redis) is handled by loading the script again.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("script flush");
        assert_eq!(call(1).await.0, 0);
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("del");
    }

    #[tokio::test]
    async fn the_limiter_shares_limits_through_redis() {
        let config = config();
        let one = Limiter::new(&config, Some(RedisConn::new(&redis_url()).expect("url")));
        let two = Limiter::new(&config, Some(RedisConn::new(&redis_url()).expect("url")));
        for limiter in [&one, &two, &one] {
            assert!(limiter.check(LimitClass::Generation, "u").await.is_ok());
        }
        let wait = wait_of(two.check(LimitClass::Generation, "u").await);
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert_eq!(one.fallbacks() + two.fallbacks(), 0);
    }

    #[tokio::test]
    async fn unreachable_redis_falls_back_and_still_limits() {
        // Nothing listens on port 1.
        let limiter = Limiter::new(
            &config(),
            Some(RedisConn::fail_fast("redis://127.0.0.1:1").expect("url")),
        );
        assert!(
            limiter
                .check(LimitClass::LoginPerEmail, "a@x.io")
                .await
                .is_ok()
        );
        assert!(
            limiter
                .check(LimitClass::LoginPerEmail, "a@x.io")
                .await
                .is_ok()
        );
        wait_of(limiter.check(LimitClass::LoginPerEmail, "a@x.io").await);
        assert_eq!(limiter.fallbacks(), 3);
        assert_eq!(limiter.outages(), 1);
        assert!(limiter.redis_down());
    }
}

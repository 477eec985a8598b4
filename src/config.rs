//! Configuration from the environment: every variable, its default and its meaning are listed
//! in `.env.sample` and the README. A bad value fails at start with a sentence naming it.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rand::RngCore;

/// Where the server runs: development is friendly (GraphiQL at `/`, introspection, a
/// generated JWT secret); production is strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub env: Environment,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub graphql: GraphqlLimits,
    pub quota: QuotaDefaults,
    pub mail: MailConfig,
    pub rate_limits: RateLimits,
    pub chat: ChatConfig,
    pub llm: LlmConfig,
    pub instances: InstanceConfig,
    pub agents: AgentsConfig,
    /// Instance administrators (lower-cased emails): they set workspace quotas.
    pub admin_emails: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The model of a new conversation when none is given.
    pub default_model: String,
    /// Most messages of a branch sent to a model as context.
    pub context_max_messages: usize,
    /// The model that writes conversation titles; None: the conversation's own.
    pub title_model: Option<String>,
    /// The model that judges comparisons; None: the conversation's own.
    pub compare_judge_model: Option<String>,
    /// How long the hub keeps a finished generation's deltas for late subscribers.
    pub hub_retention: Duration,
    /// Most deltas the hub keeps per generation for replay.
    pub hub_replay_max_events: usize,
}

/// Agents (`crate::agents`).
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// Every new workspace (personal ones too) starts with the example agents.
    pub examples: bool,
}

/// How server processes sharing one database tell each other they are alive
/// (`streaming::instances`).
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// How often a process writes its heartbeat, and how often it reaps the generations of
    /// dead ones.
    pub heartbeat_interval: Duration,
    /// A process whose heartbeat is older than this is dead: its unfinished generations end
    /// FAILED. More than twice the interval, so one late heartbeat is not a death.
    pub heartbeat_timeout: Duration,
}

impl InstanceConfig {
    fn validated(self) -> anyhow::Result<Self> {
        if self.heartbeat_interval.is_zero() {
            bail!("HEARTBEAT_INTERVAL_SECS must be at least 1");
        }
        if self.heartbeat_timeout <= self.heartbeat_interval * 2 {
            bail!(
                "HEARTBEAT_TIMEOUT_SECS ({}) must be more than twice HEARTBEAT_INTERVAL_SECS ({}), \
                 or a single late heartbeat would declare a live server dead",
                self.heartbeat_timeout.as_secs(),
                self.heartbeat_interval.as_secs()
            );
        }
        Ok(self)
    }
}

/// Providers, models and how to talk to them.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    pub catalog: crate::llm::catalog::Catalog,
    pub stream: crate::llm::StreamSettings,
    /// Delay per token of `local/echo`.
    pub echo_delay: Duration,
    /// Encrypts workspace provider keys (AES-256-GCM). None: bring-your-own keys are off.
    pub master_key: Option<Secret>,
}

/// A value that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind_addr: SocketAddr,
    /// Browser origins allowed by CORS and on WebSocket upgrades; `*` allows any.
    pub cors_origins: Vec<String>,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_proxy_headers: bool,
    /// How long a WebSocket may stay open without `connection_init` (then 4408).
    pub ws_init_timeout: Duration,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
    pub pool_timeout: Duration,
}

#[derive(Clone)]
pub struct RedisConfig {
    pub url: Option<String>,
}

// URLs may carry passwords: `Debug` shows where, never who.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::db::describe(&self.url))
            .field("pool_size", &self.pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("configured", &self.url.is_some())
            .finish()
    }
}

#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 key. Never printed: `Debug` is redacted.
    pub jwt_secret: Vec<u8>,
    /// True when no `JWT_SECRET` was given and one was generated for this process.
    pub jwt_secret_generated: bool,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub password_reset_ttl: Duration,
    /// How many argon2 hashes may run at once (the hashing threads).
    pub password_hash_concurrency: usize,
    /// The link mailed for a password reset; `?token=...` is appended.
    pub password_reset_url: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_secret_generated", &self.jwt_secret_generated)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("password_reset_ttl", &self.password_reset_ttl)
            .field("password_hash_concurrency", &self.password_hash_concurrency)
            .field("password_reset_url", &self.password_reset_url)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct GraphqlLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_aliases: usize,
    pub max_query_bytes: usize,
    /// Operations per batched request; 1 turns batching off.
    pub max_batch: usize,
    pub introspection: bool,
    pub suggestions: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriodSetting {
    Day,
    Month,
}

#[derive(Debug, Clone)]
pub struct QuotaDefaults {
    pub period: QuotaPeriodSetting,
    pub token_limit: Option<i64>,
    pub message_limit: Option<i64>,
    /// How long a reservation lives before the sweeper releases it (longer than any
    /// generation).
    pub reservation_ttl: Duration,
}

#[derive(Clone)]
pub struct MailConfig {
    /// `smtp://user:pass@host:587` (STARTTLS) or `smtps://...` (TLS); unset logs the mail.
    pub smtp_url: Option<String>,
    pub from: String,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .finish()
    }
}

/// Rate limits (`crate::ratelimit`), per minute unless named otherwise. Each class allows its
/// whole per-minute budget at once, except generations, whose burst is set apart.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// `login` (and `changePassword`) attempts per email.
    pub login_per_email: u32,
    /// `login` attempts per client IP.
    pub login_per_ip: u32,
    /// `requestPasswordReset` per email.
    pub reset_per_email: u32,
    /// `requestPasswordReset` and `resetPassword` per client IP.
    pub reset_per_ip: u32,
    /// `sendMessage`, `regenerateMessage` and `editMessage` per user.
    pub generations_per_min: u32,
    /// How many generations may start back to back before the steady rate applies.
    pub generations_burst: u32,
    /// Other mutations per user (per client IP when anonymous, e.g. `register`).
    pub mutations_per_min: u32,
    /// Queries per user (per client IP when anonymous).
    pub queries_per_min: u32,
    /// `subscribe` messages per WebSocket connection.
    pub ws_subscribes_per_min: u32,
    /// Open WebSocket connections per user, in each server process.
    pub ws_max_connections_per_user: u32,
    /// Prefix of the limiter's keys in Redis.
    pub key_prefix: String,
}

impl RateLimits {
    fn validated(self) -> anyhow::Result<Self> {
        let positive = [
            ("LOGIN_LIMIT_PER_EMAIL", self.login_per_email),
            ("LOGIN_LIMIT_PER_IP", self.login_per_ip),
            ("PASSWORD_RESET_LIMIT_PER_EMAIL", self.reset_per_email),
            ("PASSWORD_RESET_LIMIT_PER_IP", self.reset_per_ip),
            ("RATE_LIMIT_GENERATIONS_PER_MIN", self.generations_per_min),
            ("RATE_LIMIT_GENERATIONS_BURST", self.generations_burst),
            ("RATE_LIMIT_MUTATIONS_PER_MIN", self.mutations_per_min),
            ("RATE_LIMIT_QUERIES_PER_MIN", self.queries_per_min),
            (
                "RATE_LIMIT_WS_SUBSCRIBES_PER_MIN",
                self.ws_subscribes_per_min,
            ),
            (
                "WS_MAX_CONNECTIONS_PER_USER",
                self.ws_max_connections_per_user,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.key_prefix.trim().is_empty() {
            bail!("RATE_LIMIT_KEY_PREFIX must not be empty");
        }
        Ok(self)
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests can pass a map instead of mutating the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env(&lookup);
        let environment = match env.string("COLLOQUY_ENV", "development").as_str() {
            "development" | "dev" => Environment::Development,
            "production" | "prod" => Environment::Production,
            other => bail!("COLLOQUY_ENV must be `development` or `production`, not `{other}`"),
        };
        let production = environment == Environment::Production;

        let (jwt_secret, jwt_secret_generated) = match env.get("JWT_SECRET") {
            Some(secret) => {
                if production && secret.len() < 32 {
                    bail!(
                        "JWT_SECRET must be at least 32 bytes when COLLOQUY_ENV=production (it has {})",
                        secret.len()
                    );
                }
                if secret.is_empty() {
                    bail!("JWT_SECRET is set but empty");
                }
                (secret.into_bytes(), false)
            }
            None if production => {
                bail!("JWT_SECRET is required when COLLOQUY_ENV=production (at least 32 bytes)")
            }
            None => {
                let mut secret = vec![0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                (secret, true)
            }
        };

        Config {
            env: environment,
            server: ServerConfig {
                bind_addr: env.parse("BIND_ADDR", "127.0.0.1:8080")?,
                cors_origins: env
                    .string("CORS_ORIGINS", "")
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_end_matches('/').to_owned())
                    .collect(),
                body_limit_bytes: env.parse("REQUEST_BODY_LIMIT_BYTES", "1048576")?,
                request_timeout: Duration::from_secs(env.parse("REQUEST_TIMEOUT_SECS", "30")?),
                shutdown_grace: Duration::from_secs(env.parse("SHUTDOWN_GRACE_SECS", "10")?),
                trust_proxy_headers: env.parse("TRUST_PROXY_HEADERS", "false")?,
                ws_init_timeout: Duration::from_millis(env.parse("WS_INIT_TIMEOUT_MS", "3000")?),
            },
            database: DatabaseConfig {
                url: env.string(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/colloquy",
                ),
                pool_size: env.parse("DATABASE_POOL_SIZE", "16")?,
                pool_timeout: Duration::from_secs(env.parse("DATABASE_POOL_TIMEOUT_SECS", "5")?),
            },
            redis: RedisConfig {
                url: env.get("REDIS_URL").filter(|s| !s.is_empty()),
            },
            auth: AuthConfig {
                jwt_secret,
                jwt_secret_generated,
                jwt_issuer: env.string("JWT_ISSUER", "colloquy"),
                jwt_audience: env.string("JWT_AUDIENCE", "colloquy-api"),
                access_token_ttl: Duration::from_secs(env.parse("ACCESS_TOKEN_TTL_SECS", "900")?),
                refresh_token_ttl: Duration::from_secs(
                    env.parse::<u64>("REFRESH_TOKEN_TTL_DAYS", "30")? * 86_400,
                ),
                password_reset_ttl: Duration::from_secs(
                    env.parse::<u64>("PASSWORD_RESET_TTL_MINS", "30")? * 60,
                ),
                // Half the cores (at least one): logins never take the whole machine.
                password_hash_concurrency: env.parse(
                    "PASSWORD_HASH_CONCURRENCY",
                    &std::thread::available_parallelism()
                        .map(|n| (n.get() / 2).max(1))
                        .unwrap_or(1)
                        .to_string(),
                )?,
                password_reset_url: env
                    .string("PASSWORD_RESET_URL", "http://127.0.0.1:8080/reset-password"),
            },
            graphql: GraphqlLimits {
                max_depth: env.parse("GRAPHQL_MAX_DEPTH", "12")?,
                max_complexity: env.parse("GRAPHQL_MAX_COMPLEXITY", "1000")?,
                max_aliases: env.parse("GRAPHQL_MAX_ALIASES", "30")?,
                max_query_bytes: env.parse("GRAPHQL_MAX_QUERY_BYTES", "16384")?,
                max_batch: env.parse("GRAPHQL_MAX_BATCH", "10")?,
                introspection: env.parse(
                    "GRAPHQL_INTROSPECTION",
                    if production { "false" } else { "true" },
                )?,
                suggestions: env.parse(
                    "GRAPHQL_SUGGESTIONS",
                    if production { "false" } else { "true" },
                )?,
            },
            quota: QuotaDefaults {
                period: match env
                    .string("QUOTA_DEFAULT_PERIOD", "MONTH")
                    .to_uppercase()
                    .as_str()
                {
                    "DAY" => QuotaPeriodSetting::Day,
                    "MONTH" => QuotaPeriodSetting::Month,
                    other => bail!("QUOTA_DEFAULT_PERIOD must be DAY or MONTH, not `{other}`"),
                },
                token_limit: env.limit("QUOTA_DEFAULT_TOKEN_LIMIT", "1000000")?,
                message_limit: env.limit("QUOTA_DEFAULT_MESSAGE_LIMIT", "unlimited")?,
                reservation_ttl: Duration::from_secs(
                    env.parse("QUOTA_RESERVATION_TTL_SECS", "1800")?,
                ),
            },
            mail: MailConfig {
                smtp_url: env.get("SMTP_URL").filter(|s| !s.is_empty()),
                from: env.string("MAIL_FROM", "Colloquy <no-reply@localhost>"),
            },
            admin_emails: env
                .string("ADMIN_EMAILS", "")
                .split(',')
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            chat: ChatConfig {
                default_model: env.string("DEFAULT_MODEL", "local/echo"),
                context_max_messages: env.parse("CONTEXT_MAX_MESSAGES", "50")?,
                title_model: env.get("TITLE_MODEL").filter(|m| !m.is_empty()),
                compare_judge_model: env.get("COMPARE_JUDGE_MODEL").filter(|m| !m.is_empty()),
                hub_retention: Duration::from_secs(env.parse("HUB_RETENTION_SECS", "300")?),
                hub_replay_max_events: env.parse("HUB_REPLAY_MAX_EVENTS", "20000")?,
            },
            llm: LlmConfig {
                catalog: crate::llm::catalog::Catalog::load(
                    env.get("MODEL_CATALOG_FILE")
                        .filter(|f| !f.is_empty())
                        .map(std::path::PathBuf::from)
                        .as_deref(),
                    &|name| env.get(name),
                )?,
                stream: crate::llm::StreamSettings {
                    connect_timeout: Duration::from_secs(
                        env.parse("PROVIDER_CONNECT_TIMEOUT_SECS", "10")?,
                    ),
                    first_token_timeout: Duration::from_secs(
                        env.parse("PROVIDER_FIRST_TOKEN_TIMEOUT_SECS", "60")?,
                    ),
                    idle_timeout: Duration::from_secs(
                        env.parse("PROVIDER_IDLE_TIMEOUT_SECS", "30")?,
                    ),
                    max_retries: env.parse("PROVIDER_MAX_RETRIES", "2")?,
                    retry_base: Duration::from_millis(env.parse("PROVIDER_RETRY_BASE_MS", "500")?),
                    retry_max: Duration::from_millis(env.parse("PROVIDER_RETRY_MAX_MS", "8000")?),
                },
                echo_delay: Duration::from_millis(env.parse("ECHO_TOKEN_DELAY_MS", "20")?),
                master_key: env
                    .get("COLLOQUY_MASTER_KEY")
                    .filter(|k| !k.is_empty())
                    .map(Secret::new),
            },
            agents: AgentsConfig {
                examples: env.parse("EXAMPLE_AGENTS", "true")?,
            },
            instances: InstanceConfig {
                heartbeat_interval: Duration::from_secs(env.parse("HEARTBEAT_INTERVAL_SECS", "3")?),
                heartbeat_timeout: Duration::from_secs(env.parse("HEARTBEAT_TIMEOUT_SECS", "15")?),
            }
            .validated()?,
            rate_limits: RateLimits {
                login_per_email: env.parse("LOGIN_LIMIT_PER_EMAIL", "10")?,
                login_per_ip: env.parse("LOGIN_LIMIT_PER_IP", "60")?,
                reset_per_email: env.parse("PASSWORD_RESET_LIMIT_PER_EMAIL", "3")?,
                reset_per_ip: env.parse("PASSWORD_RESET_LIMIT_PER_IP", "20")?,
                generations_per_min: env.parse("RATE_LIMIT_GENERATIONS_PER_MIN", "20")?,
                generations_burst: env.parse("RATE_LIMIT_GENERATIONS_BURST", "10")?,
                mutations_per_min: env.parse("RATE_LIMIT_MUTATIONS_PER_MIN", "120")?,
                queries_per_min: env.parse("RATE_LIMIT_QUERIES_PER_MIN", "600")?,
                ws_subscribes_per_min: env.parse("RATE_LIMIT_WS_SUBSCRIBES_PER_MIN", "60")?,
                ws_max_connections_per_user: env.parse("WS_MAX_CONNECTIONS_PER_USER", "20")?,
                key_prefix: env.string("RATE_LIMIT_KEY_PREFIX", "colloquy:rl"),
            }
            .validated()?,
        }
        .validated()
    }

    fn validated(self) -> anyhow::Result<Self> {
        let positive = [
            ("DATABASE_POOL_SIZE", self.database.pool_size),
            (
                "PASSWORD_HASH_CONCURRENCY",
                self.auth.password_hash_concurrency,
            ),
            ("GRAPHQL_MAX_BATCH", self.graphql.max_batch),
            ("GRAPHQL_MAX_DEPTH", self.graphql.max_depth),
            ("GRAPHQL_MAX_QUERY_BYTES", self.graphql.max_query_bytes),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        let rates = [
            ("LOGIN_LIMIT_PER_EMAIL", self.rate_limits.login_per_email),
            ("LOGIN_LIMIT_PER_IP", self.rate_limits.login_per_ip),
            (
                "PASSWORD_RESET_LIMIT_PER_EMAIL",
                self.rate_limits.reset_per_email,
            ),
            ("PASSWORD_RESET_LIMIT_PER_IP", self.rate_limits.reset_per_ip),
        ];
        for (name, value) in rates {
            if value == 0 {
                bail!("{name} must be at least 1 per minute");
            }
        }
        if let Some(key) = &self.llm.master_key {
            crate::llm::keys::MasterKey::parse(key.expose())?;
        }
        if let Some(title_model) = &self.chat.title_model
            && self.llm.catalog.model(title_model).is_none()
        {
            bail!("TITLE_MODEL `{title_model}` is not in the model catalog");
        }
        if let Some(judge) = &self.chat.compare_judge_model
            && self.llm.catalog.model(judge).is_none()
        {
            bail!("COMPARE_JUDGE_MODEL `{judge}` is not in the model catalog");
        }
        if self.chat.context_max_messages == 0 {
            bail!("CONTEXT_MAX_MESSAGES must be at least 1");
        }
        if self.llm.catalog.model(&self.chat.default_model).is_none() {
            bail!(
                "DEFAULT_MODEL `{}` is not in the model catalog",
                self.chat.default_model
            );
        }
        if self.auth.access_token_ttl.is_zero() {
            bail!("ACCESS_TOKEN_TTL_SECS must be at least 1");
        }
        url::Url::parse(&self.database.url)
            .with_context(|| "DATABASE_URL is not a valid URL".to_string())?;
        Ok(self)
    }

    pub fn is_production(&self) -> bool {
        self.env == Environment::Production
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default.to_owned())
    }

    fn parse<T>(&self, name: &str, default: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.string(name, default);
        raw.trim()
            .parse()
            .map_err(|e| anyhow!("{name} has an invalid value `{raw}`: {e}"))
    }

    /// A non-negative limit where `unlimited` (or `none`) means no limit.
    fn limit(&self, name: &str, default: &str) -> anyhow::Result<Option<i64>> {
        let raw = self.string(name, default);
        match raw.trim().to_lowercase().as_str() {
            "unlimited" | "none" => Ok(None),
            value => match value.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Some(n)),
                _ => bail!("{name} must be a non-negative integer or `unlimited`, not `{raw}`"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_with_nothing_set() {
        let c = config(&[]).expect("defaults are valid");
        assert_eq!(c.env, Environment::Development);
        assert!(c.auth.jwt_secret_generated);
        assert_eq!(c.auth.jwt_secret.len(), 32);
        assert!(c.graphql.introspection);
        assert_eq!(c.server.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.quota.message_limit, None);
        assert!(c.agents.examples);
    }

    #[test]
    fn production_requires_a_long_secret() {
        let err = config(&[("COLLOQUY_ENV", "production")]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
        let err = config(&[("COLLOQUY_ENV", "production"), ("JWT_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        let c = config(&[
            ("COLLOQUY_ENV", "production"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .expect("valid production config");
        assert!(!c.graphql.introspection && !c.graphql.suggestions);
        let c = config(&[
            ("COLLOQUY_ENV", "production"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("GRAPHQL_INTROSPECTION", "true"),
        ])
        .expect("override");
        assert!(c.graphql.introspection);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = config(&[("BIND_ADDR", "nowhere")]).unwrap_err();
        assert!(err.to_string().contains("BIND_ADDR"), "{err}");
        let err = config(&[("QUOTA_DEFAULT_TOKEN_LIMIT", "-3")]).unwrap_err();
        assert!(
            err.to_string().contains("QUOTA_DEFAULT_TOKEN_LIMIT"),
            "{err}"
        );
        let err = config(&[("GRAPHQL_MAX_BATCH", "0")]).unwrap_err();
        assert!(err.to_string().contains("GRAPHQL_MAX_BATCH"), "{err}");
        let err = config(&[("EXAMPLE_AGENTS", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("EXAMPLE_AGENTS"), "{err}");
        assert!(
            !config(&[("EXAMPLE_AGENTS", "false")])
                .expect("ok")
                .agents
                .examples
        );
    }

    #[test]
    fn heartbeat_timeout_must_exceed_two_intervals() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.instances.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(c.instances.heartbeat_timeout, Duration::from_secs(15));
        let err = config(&[
            ("HEARTBEAT_INTERVAL_SECS", "5"),
            ("HEARTBEAT_TIMEOUT_SECS", "10"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("HEARTBEAT_TIMEOUT_SECS"), "{err}");
        let err = config(&[("HEARTBEAT_INTERVAL_SECS", "0")]).unwrap_err();
        assert!(err.to_string().contains("HEARTBEAT_INTERVAL_SECS"), "{err}");
        let c = config(&[
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("HEARTBEAT_TIMEOUT_SECS", "3"),
        ])
        .expect("3 > 2 × 1");
        assert_eq!(c.instances.heartbeat_timeout, Duration::from_secs(3));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = config(&[
            ("JWT_SECRET", "super-secret-value-that-must-not-leak"),
            (
                "DATABASE_URL",
                "postgres://app:db-password-here@db:5432/app",
            ),
            ("REDIS_URL", "redis://:redis-password-here@cache:6379"),
            ("OPENAI_API_KEY", "sk-openai-key-here"),
        ])
        .expect("ok");
        let printed = format!("{c:?}");
        for secret in ["super-secret", "db-password", "redis-password", "sk-openai"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }
}

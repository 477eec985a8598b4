//! `App`, the shared state; `router()`; `serve()` with graceful shutdown. Tests build the same
//! `AppState` and serve it on `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::auth::password::Passwords;
use crate::auth::tokens::TokenKeys;
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::graphql::{self, AppSchema, graphiql, http};
use crate::llm::Providers;
use crate::mail::Mailer;
use crate::ratelimit::Limiter;
use crate::streaming::admission::{Admission, QuotaAdmission};
use crate::streaming::hub::{EventHub, InProcessHub};
use crate::streaming::instances;
use crate::streaming::redis_hub::RedisHub;
use crate::streaming::runner::Runners;

/// How long a readiness probe waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared by every request, connection and background task.
pub struct App {
    /// Everything read from the environment at start.
    pub config: Config,
    /// All durable state lives in Postgres.
    pub db: DbPool,
    /// Present when `REDIS_URL` is set: readiness now, limits and fan-out later.
    pub redis: Option<RedisConn>,
    /// argon2id on a few low-priority threads of its own.
    pub passwords: Passwords,
    /// Signs and verifies access tokens.
    pub tokens: TokenKeys,
    /// Rate limits per user, IP and operation class (shared through Redis when configured).
    pub limiter: Limiter,
    /// Sends password-reset mail (SMTP, the log, or memory in tests).
    pub mailer: Mailer,
    /// The model catalog and one client per LLM provider.
    pub providers: Providers,
    /// Carries deltas, conversation events and stop requests between runners and
    /// subscribers.
    pub hub: Arc<dyn EventHub>,
    /// Rate limits and quota for generations.
    pub admission: Arc<dyn Admission>,
    /// The generations running in this process.
    pub runners: Arc<Runners>,
    /// Wakes the job worker when a job is queued.
    pub jobs_wakeup: Notify,
    /// This process among those sharing the database: its row in `instances`, and the
    /// `runner_instance` of the generations it runs. Random per process.
    pub instance_id: Uuid,
    /// The messages conversation events carry, read once for all their subscribers.
    pub event_loads: crate::streaming::shared::EventLoads,
}

/// A lazily connected, self-reconnecting Redis connection.
pub struct RedisConn {
    client: redis::Client,
    manager: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// Timeouts and reconnection; None: the `redis` crate's defaults.
    config: Option<redis::aio::ConnectionManagerConfig>,
}

impl RedisConn {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(RedisConn {
            client: redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?,
            manager: tokio::sync::OnceCell::new(),
            config: None,
        })
    }

    /// A connection of its own that gives up quickly: short connect and response timeouts
    /// and a single reconnection attempt per failure, for callers with a fallback (the rate
    /// limiter) rather than a reason to wait.
    pub fn fail_fast(url: &str) -> anyhow::Result<Self> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        Ok(RedisConn {
            config: Some(config),
            ..RedisConn::new(url)?
        })
    }

    /// The shared connection, opening it on first use.
    pub async fn connection(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        self.manager
            .get_or_try_init(|| async {
                let client = self.client.clone();
                match &self.config {
                    Some(config) => {
                        redis::aio::ConnectionManager::new_with_config(client, config.clone()).await
                    }
                    None => redis::aio::ConnectionManager::new(client).await,
                }
            })
            .await
            .cloned()
            .context("cannot connect to Redis (REDIS_URL)")
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .context("Redis did not answer PING")?;
        Ok(())
    }
}

impl App {
    /// Builds the state from a configuration. Does not touch the database: call
    /// `db::prepare` first (as `start` does).
    pub fn build(config: Config) -> anyhow::Result<App> {
        crate::metrics::install();
        let db = db::pool(&config.database)?;
        let hub: Arc<dyn EventHub> = match config.redis.url.as_deref() {
            Some(url) => Arc::new(RedisHub::new(
                url,
                config.chat.hub_retention,
                config.chat.hub_replay_max_events,
            )?),
            None => Arc::new(InProcessHub::new(
                config.chat.hub_retention,
                config.chat.hub_replay_max_events,
            )),
        };
        Ok(App {
            event_loads: Default::default(),
            admission: Arc::new(QuotaAdmission {
                db: db.clone(),
                hub: hub.clone(),
                reservation_ttl: config.quota.reservation_ttl,
            }),
            hub,
            db,
            redis: config
                .redis
                .url
                .as_deref()
                .map(RedisConn::new)
                .transpose()?,
            passwords: Passwords::new(config.auth.password_hash_concurrency),
            tokens: TokenKeys::new(&config.auth),
            // A connection of its own, so limit checks never queue behind other Redis traffic.
            limiter: Limiter::new(
                &config.rate_limits,
                config
                    .redis
                    .url
                    .as_deref()
                    .map(RedisConn::fail_fast)
                    .transpose()?,
            ),
            mailer: Mailer::from_config(&config)?,
            providers: Providers::new(&config.llm)?,
            runners: Arc::new(Runners::default()),
            jobs_wakeup: Notify::new(),
            instance_id: Uuid::new_v4(),
            config,
        })
    }
}

/// What the router hands to every handler.
#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub schema: AppSchema,
}

impl AppState {
    pub fn new(app: App) -> AppState {
        let app = Arc::new(app);
        AppState {
            schema: graphql::build_schema(app.clone()),
            app,
        }
    }
}

/// Everything `colloquy serve` does before listening: TLS provider, database creation and
/// migrations, state.
pub async fn start(config: Config) -> anyhow::Result<AppState> {
    crate::install_crypto_provider();
    if config.auth.jwt_secret_generated {
        tracing::warn!(
            "JWT_SECRET is not set: using a random secret for this process only. Every access \
             token becomes invalid when the server restarts. Set JWT_SECRET (32+ bytes) for \
             anything but local development."
        );
    }
    db::prepare(&config.database.url).await?;
    let app = App::build(config)?;
    // Registered before reaping: the other processes' reapers must never take this one's
    // generations for orphans.
    instances::register(&app).await?;
    // Generations left by processes that died (this host's previous run among them).
    instances::reap(&app).await?;
    // The dummy hash that unknown-email logins verify against, built now rather than on the
    // first such login (which would then take twice as long as the others).
    let passwords = app.passwords.clone();
    tokio::spawn(async move {
        let _ = passwords.verify("warm-up", None).await;
    });
    Ok(AppState::new(app))
}

pub fn router(state: AppState) -> Router {
    let config = &state.app.config;
    let mut router = Router::new()
        .route("/graphql", get(http::get).post(http::post))
        .route("/graphql/stream", axum::routing::post(graphql::sse::stream))
        .route("/graphiql", get(graphiql::page))
        .route("/graphiql/assets/{file}", get(graphiql::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if !config.is_production() {
        router = router.route("/", get(graphiql::page));
    }
    let request_id = HeaderName::from_static("x-request-id");
    let mut router = router
        .layer(RequestBodyLimitLayer::new(config.server.body_limit_bytes))
        .layer(axum::middleware::map_response(http::json_payload_too_large));
    if let Some(cors) = cors(config) {
        router = router.layer(cors);
    }
    router
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// The span of one HTTP request (a WebSocket connection's too): method, path (never the
/// query string, which can carry variables) and the request id that `x-request-id` returns.
/// Everything done for the request, including a generation it starts, happens inside it.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
    )
}

/// CORS for the origins in `CORS_ORIGINS`; none configured means same-origin only.
fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = &config.server.cors_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics in the text exposition format.
async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    crate::metrics::render(&state.app)
}

/// 200 when Postgres (and Redis, when configured) answer within two seconds; 503 otherwise,
/// naming what failed.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let app = &state.app;
    let database = match tokio::time::timeout(READY_TIMEOUT, db::ping(&app.db)).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = ?e, "readiness: database");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!("readiness: database timed out");
            "unavailable"
        }
    };
    let redis = match &app.redis {
        None => "not configured",
        Some(redis) => match tokio::time::timeout(READY_TIMEOUT, redis.ping()).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::warn!(error = ?e, "readiness: redis");
                "unavailable"
            }
            Err(_) => "unavailable",
        },
    };
    let ready = database == "ok" && redis != "unavailable";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "database": database, "redis": redis })),
    )
}

/// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish for
/// up to `SHUTDOWN_GRACE_SECS`, and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.app.config.server.shutdown_grace;
    let app = state.app.clone();
    let jobs = tokio::spawn(crate::streaming::jobs::worker(app.clone()));
    let sweeper = tokio::spawn(sweep_reservations(app.clone()));
    let heartbeat = tokio::spawn(instances::heartbeat(app.clone()));
    let (stop_reaper, reaper_stopped) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(instances::reaper(app.clone(), reaper_stopped));
    let limiter = state.app.limiter.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.retain_recent();
            crate::metrics::upkeep();
        }
    });

    let signalled = Arc::new(Notify::new());
    let notify = signalled.clone();
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Deltas are small frames written one at a time: Nagle's algorithm would hold each one
    // back until the previous is acknowledged (delayed ACKs make that up to 40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on a connection");
        }
    });
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        notify.notify_one();
    });
    let result = tokio::select! {
        result = server => result.context("server failed"),
        () = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "shutdown grace period over; closing remaining connections");
            Ok(())
        }
    };
    housekeeping.abort();
    // Stopped between runs rather than aborted: a run cut short would leave the generations
    // it ended unsettled and their subscribers waiting.
    let _ = stop_reaper.send(true);
    let _ = reaper.await;
    app.runners.shutdown(&app, grace).await;
    jobs.abort();
    sweeper.abort();
    // Alive until the runners wrote their ends; then gone, so whatever outlived the grace
    // period is reaped by the other processes at once.
    heartbeat.abort();
    instances::deregister(&app).await;
    result
}

/// Releases expired quota reservations once a minute.
async fn sweep_reservations(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let swept = async {
            let mut conn = app.db.get().await?;
            Ok::<_, crate::error::AppError>(crate::usage::quota::sweep(&mut conn).await?)
        }
        .await;
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::warn!(released = n, "released expired quota reservations"),
            Err(err) => tracing::warn!(?err, "cannot sweep quota reservations"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

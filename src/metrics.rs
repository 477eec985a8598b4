//! Prometheus metrics: one global recorder per process (installed by `install`, rendered at
//! `GET /metrics`), and small helpers so every call site stays one line. Gauges that describe
//! state (hub, database pool, limiter fallbacks) are sampled when `/metrics` is scraped.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::App;

/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Distinct operation names kept as labels; later names are counted as `other`, so clients
/// cannot grow the metrics without bound.
const MAX_OPERATION_NAMES: usize = 256;
/// Longer operation names are counted as `other`.
const MAX_OPERATION_NAME_BYTES: usize = 64;

/// Buckets of the `_seconds` histograms.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static OPERATION_NAMES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls (more servers in one process, as in
/// the tests) reuse it. Never panics: when another recorder is already installed, a warning
/// is logged and `/metrics` renders only what this handle sees.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        {
            Ok(with_buckets) => with_buckets,
            Err(err) => {
                tracing::warn!(%err, "metrics: histogram buckets refused; using summaries");
                PrometheusBuilder::new()
            }
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(err) = metrics::set_global_recorder(recorder) {
            tracing::warn!(%err, "metrics: a global recorder is already installed");
        }
        handle
    })
}

/// Drains histogram samples into their buckets; called periodically by `serve`.
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// `GET /metrics`: samples the state gauges, then renders everything.
pub fn render(app: &App) -> Response {
    gauge!("colloquy_hub_generations").set(app.hub.held() as f64);
    let pool = app.db.status();
    gauge!("colloquy_db_pool_connections", "state" => "size").set(pool.size as f64);
    gauge!("colloquy_db_pool_connections", "state" => "available").set(pool.available as f64);
    counter!("colloquy_ratelimit_fallbacks_total").absolute(app.limiter.fallbacks());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        install().render(),
    )
        .into_response()
}

/// The `operation` label: the operation's name, `anonymous`, or `other` past the limits.
pub fn operation_label(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".to_owned();
    };
    if name.len() > MAX_OPERATION_NAME_BYTES {
        return "other".to_owned();
    }
    let names = OPERATION_NAMES.get_or_init(|| Mutex::new(HashSet::new()));
    let mut names = names.lock().unwrap_or_else(PoisonError::into_inner);
    if names.contains(name) || names.len() < MAX_OPERATION_NAMES {
        names.insert(name.to_owned());
        name.to_owned()
    } else {
        "other".to_owned()
    }
}

/// One GraphQL operation over HTTP: its count by outcome and its duration.
pub fn graphql_request(operation: String, kind: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    histogram!("colloquy_graphql_request_duration_seconds", "operation" => operation.clone(), "kind" => kind)
        .record(elapsed.as_secs_f64());
    counter!("colloquy_graphql_requests_total", "operation" => operation, "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// Holds `name` one higher while alive: drop-safe for tasks that are aborted.
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    fn new(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

/// An open WebSocket connection (`colloquy_websocket_connections`).
pub fn websocket_connection() -> GaugeGuard {
    GaugeGuard::new("colloquy_websocket_connections")
}

/// A running `graphql-transport-ws` operation, one per `subscribe` message
/// (`colloquy_subscriptions_active`).
pub fn subscription() -> GaugeGuard {
    GaugeGuard::new("colloquy_subscriptions_active")
}

/// A running generation (`colloquy_generations_active`).
pub fn generation() -> GaugeGuard {
    GaugeGuard::new("colloquy_generations_active")
}

/// A generation ended with `status` (COMPLETE, CANCELLED, FAILED).
pub fn generation_ended(model: &str, status: &'static str) {
    counter!("colloquy_generations_total", "model" => model.to_owned(), "status" => status)
        .increment(1);
}

/// The counter of deltas relayed for `model`: taken once per generation, then incremented per
/// delta without looking it up again.
pub fn deltas_relayed(model: &str) -> metrics::Counter {
    counter!("colloquy_deltas_relayed_total", "model" => model.to_owned())
}

/// The time from a provider request to its first text.
pub fn provider_first_token(provider: &str, elapsed: Duration) {
    histogram!("colloquy_provider_first_token_seconds", "provider" => provider.to_owned())
        .record(elapsed.as_secs_f64());
}

/// A provider stream that ended in an error (after any retries).
pub fn provider_error(provider: &str, kind: crate::llm::ErrorKind) {
    let kind = format!("{kind:?}");
    counter!("colloquy_provider_errors_total", "provider" => provider.to_owned(), "kind" => kind)
        .increment(1);
}

/// A rate-limit check refused.
pub fn rate_limited(class: &'static str) {
    counter!("colloquy_rate_limited_total", "class" => class).increment(1);
}

/// A quota reservation refused with QUOTA_EXCEEDED.
pub fn quota_rejected() {
    counter!("colloquy_quota_rejections_total").increment(1);
}

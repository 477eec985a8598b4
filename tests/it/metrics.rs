//! `GET /metrics`: the Prometheus text format with the request, generation and state metrics.
//! The recorder is global to the test process and tests run in parallel, so only the presence
//! of names (and counters of this test's own operation) is checked.

use std::time::Duration;

use serde_json::json;

use crate::common::TestApp;

const SEND: &str = "mutation MetricsSend($i: SendMessageInput!) { sendMessage(input: $i) {
    assistantMessage { id status } } }";
const MESSAGE: &str = "query MetricsMessage($m: ID!) { message(id: $m) { status } }";

/// The value of the first sample of `metric` whose labels contain all of `labels`.
pub(crate) fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{metric}{{")) || line.starts_with(&format!("{metric} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_requests_generations_and_state() {
    let app = TestApp::spawn().await;
    let user = app.register("metrics@example.com").await;
    let body = app
        .gql_as(
            Some(&user.access),
            "query MetricsMe { me { id } }",
            json!({}),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");

    let ws = app.personal_workspace(&user).await;
    let conversation = app.create_conversation(&user, &ws, "").await;
    let body = app
        .gql_as(
            Some(&user.access),
            SEND,
            json!({ "i": { "conversationId": conversation, "content": "count me" } }),
        )
        .await;
    let assistant = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let mut status = String::new();
    for _ in 0..300 {
        let body = app
            .gql_as(Some(&user.access), MESSAGE, json!({ "m": assistant }))
            .await;
        status = body["data"]["message"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !matches!(status.as_str(), "PENDING" | "STREAMING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "COMPLETE");

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("body");
    for name in [
        "colloquy_graphql_requests_total",
        "colloquy_graphql_request_duration_seconds",
        "colloquy_generations_total",
        "colloquy_deltas_relayed_total",
        "colloquy_db_pool_connections",
        "colloquy_hub_generations",
        "colloquy_ratelimit_fallbacks_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let me = sample(
        &text,
        "colloquy_graphql_requests_total",
        &[
            "operation=\"MetricsMe\"",
            "kind=\"query\"",
            "outcome=\"ok\"",
        ],
    );
    assert!(me.is_some_and(|n| n >= 1.0), "{text}");
    let send = sample(
        &text,
        "colloquy_graphql_requests_total",
        &["operation=\"MetricsSend\"", "kind=\"mutation\""],
    );
    assert!(send.is_some_and(|n| n >= 1.0), "{text}");
    let generations = sample(
        &text,
        "colloquy_generations_total",
        &["model=\"local/echo\"", "status=\"COMPLETE\""],
    );
    assert!(generations.is_some_and(|n| n >= 1.0), "{text}");
    for state in ["size", "available"] {
        let label = format!("state=\"{state}\"");
        assert!(
            sample(&text, "colloquy_db_pool_connections", &[&label]).is_some(),
            "{text}"
        );
    }
}

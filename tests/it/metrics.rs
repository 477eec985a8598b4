//! `GET /metrics`: the Prometheus text format with the request, generation and state metrics.
//! The recorder is global to the test process and tests run in parallel, so only the presence
//! of names (and counters of this test's own operation) is checked.

use std::time::Duration;

use serde_json::json;

use crate::common::TestApp;
use crate::common::process::ServerProcess;

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

/// With `LOG_FORMAT=json`, a generation's logs are JSON lines inside the span of the request
/// that started it: the request id (returned in `x-request-id`) ties them together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_logs_carry_the_request_id_in_json() {
    let app = TestApp::spawn().await;
    let server = ServerProcess::start(
        &app.db_name,
        &[("LOG_FORMAT", "json"), ("ECHO_TOKEN_DELAY_MS", "1")],
    )
    .await;
    let user = server.register("logs@example.com").await;
    let ws = server.personal_workspace(&user).await;
    let conversation = server.create_conversation(&user, &ws, "").await;
    let response = server
        .client
        .post(server.url("/graphql"))
        .bearer_auth(&user.access)
        .header("x-request-id", "req-logs-42")
        .json(&json!({
            "query": "mutation($i: SendMessageInput!) { sendMessage(input: $i) { assistantMessage { id } } }",
            "variables": { "i": { "conversationId": conversation, "content": "/words 3" } },
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"req-logs-42"[..])
    );
    let body: serde_json::Value = response.json().await.expect("json");
    let message_id = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let found = server.logs().lines().find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                (value["fields"]["message"] == "generation ended").then_some(value)
            });
            if let Some(line) = found {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no JSON 'generation ended' line:\n{}", server.logs()));
    let spans = line["spans"].as_array().expect("span list");
    let field = |span: &str, name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == span)
            .map(|s| s[name].clone())
            .unwrap_or_else(|| panic!("no {span} span: {line}"))
    };
    assert_eq!(field("request", "request_id"), "req-logs-42", "{line}");
    assert_eq!(field("request", "path"), "/graphql", "{line}");
    assert_eq!(field("graphql", "operation"), "anonymous", "{line}");
    assert_eq!(
        field("generation", "message_id"),
        message_id.as_str(),
        "{line}"
    );
    assert_eq!(line["level"], "INFO");
}

//! A fake OpenAI-compatible upstream on loopback.
//!
//! `POST /v1/chat/completions` with `"stream": true` answers Server-Sent Events the way OpenAI
//! does: one `chat.completion.chunk` per chunk, a last chunk with `finish_reason: "stop"`, a
//! usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`. Chunk `k` of
//! a stream is due at `first + k × interval` after the request, on an absolute schedule (a late
//! chunk does not push the later ones back), and its text carries the moment it was handed to
//! the connection (see `frames`). Without `stream` the whole text comes as one completion.
//! `GET /v1/models` lists the one model. The model name asked for is echoed, never checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{Listener, ListenerExt};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::frames::{self, Shape};

struct Upstream {
    default: Shape,
    ids: AtomicU64,
}

/// Serves until the process is killed.
pub async fn serve(addr: SocketAddr, default: Shape) -> anyhow::Result<()> {
    let state = Arc::new(Upstream {
        default,
        ids: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(state);
    // Small writes go out at once, as from any real streaming API (no Nagle delay waiting
    // for the previous chunk's ACK).
    let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!(
        "upstream: listening on http://{}/v1 ({} chunks, {} ms apart, first after {} ms)",
        listener.local_addr()?,
        default.chunks,
        default.interval.as_millis(),
        default.first.as_millis()
    );
    axum::serve(listener, app).await?;
    Ok(())
}

async fn models() -> impl IntoResponse {
    axum::Json(json!({
        "object": "list",
        "data": [{ "id": "bench", "object": "model", "created": 0, "owned_by": "bench" }]
    }))
}

/// The text of the last user message: it may carry a shape (`bench:chunks=…`).
fn last_user_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            // The array form: [{ "type": "text", "text": "…" }].
            other => other.to_string(),
        })
        .unwrap_or_default()
}

async fn completions(State(up): State<Arc<Upstream>>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": { "message": "the body is not JSON", "type": "invalid_request_error" } })),
        )
            .into_response();
    };
    let shape = up.default.overridden_by(&last_user_text(&body));
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("bench")
        .to_owned();
    let id = format!("chatcmpl-bench-{}", up.ids.fetch_add(1, Ordering::Relaxed));
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let prompt_tokens = 16u64;
    if !stream {
        tokio::time::sleep(shape.first + shape.interval * shape.chunks as u32).await;
        let sent = frames::now_us();
        let text: String = (0..shape.chunks).map(|k| frames::encode(k, sent)).collect();
        return axum::Json(json!({
            "id": id, "object": "chat.completion", "created": sent / 1_000_000, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": shape.chunks, "total_tokens": prompt_tokens + shape.chunks as u64 }
        }))
        .into_response();
    }

    let start = tokio::time::Instant::now();
    let created = frames::now_us() / 1_000_000;
    // Steps: chunks 0..n, then the finish chunk, the usage chunk (if asked) and [DONE].
    let steps = shape.chunks + 3;
    let events = futures_util::stream::unfold(0usize, move |k| {
        let (id, model) = (id.clone(), model.clone());
        async move {
            if k >= steps {
                return None;
            }
            let event = if k < shape.chunks {
                tokio::time::sleep_until(start + shape.first + shape.interval * k as u32).await;
                let chunk = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": { "content": frames::encode(k, frames::now_us()) }, "finish_reason": null }]
                });
                format!("data: {chunk}\n\n")
            } else if k == shape.chunks {
                let chunk = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }]
                });
                format!("data: {chunk}\n\n")
            } else if k == shape.chunks + 1 {
                if !usage {
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::new()), k + 1));
                }
                let chunk = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [],
                    "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": shape.chunks, "total_tokens": prompt_tokens + shape.chunks as u64 }
                });
                format!("data: {chunk}\n\n")
            } else {
                "data: [DONE]\n\n".to_owned()
            };
            Some((Ok(Bytes::from(event)), k + 1))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

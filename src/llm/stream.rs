//! The engine under every HTTP provider: send, read Server-Sent Events, enforce the
//! connect, first-token and idle timeouts, retry before the first token, and close every
//! stream with usage and a finish reason (or an error).
//!
//! A wire format only builds its request and reads its events (`WireFormat`). The stream
//! runs in its own task feeding a bounded channel; when the consumer drops the stream, the
//! next send fails, the task ends, and the upstream connection is closed.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::llm::tokens::Tokenizer;
use crate::llm::{
    ChatRequest, Chunk, ChunkStream, ErrorKind, FinishReason, Provider, ProviderError, Usage,
};

/// Timeouts and retry policy, the same for every HTTP provider.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub connect_timeout: Duration,
    /// From sending the request to the first text token.
    pub first_token_timeout: Duration,
    /// Longest gap between two events once text flows.
    pub idle_timeout: Duration,
    /// Retries after the first attempt, only before the first token.
    pub max_retries: u32,
    pub retry_base: Duration,
    /// Longest wait between attempts; a `Retry-After` longer than this is not waited for.
    pub retry_max: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            connect_timeout: Duration::from_secs(10),
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
        }
    }
}

/// What a wire format accumulates while reading a stream.
#[derive(Debug, Default)]
pub struct WireState {
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub finish: Option<FinishReason>,
}

/// An error the upstream reported inside the stream, or a frame that makes no sense.
#[derive(Debug)]
pub struct WireError {
    pub kind: ErrorKind,
    /// Whether the same request may succeed later (overloaded, rate limited, server error).
    pub retryable: bool,
    /// For the log only.
    pub detail: String,
}

impl WireError {
    pub fn protocol(detail: impl Into<String>) -> Self {
        WireError {
            kind: ErrorKind::Protocol,
            retryable: false,
            detail: detail.into(),
        }
    }
}

/// An event's data as JSON; None for an empty data line (keep-alives).
pub fn event_json(event: &Event) -> Result<Option<serde_json::Value>, WireError> {
    let data = event.data.trim();
    if data.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(data)
        .map(Some)
        .map_err(|e| WireError::protocol(format!("not JSON: {e}")))
}

pub enum Step {
    Continue,
    /// The stream is complete (an explicit end marker).
    Done,
}

pub trait WireFormat: Send + Sync + 'static {
    fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        request: &ChatRequest,
        api_key: Option<&str>,
    ) -> reqwest::RequestBuilder;

    /// Reads one event: pushes text to `texts`, records usage and finish in `state`.
    fn event(
        &self,
        event: &Event,
        state: &mut WireState,
        texts: &mut Vec<String>,
    ) -> Result<Step, WireError>;

    /// A short reason from an HTTP error body, for the log.
    fn error_detail(&self, body: &str) -> String {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let e = v.get("error").unwrap_or(&v);
                e.get("message").and_then(|m| m.as_str()).map(str::to_owned)
            })
            .unwrap_or_else(|| body.chars().take(200).collect())
    }
}

struct Inner<W> {
    name: String,
    client: reqwest::Client,
    base_url: String,
    wire: W,
    settings: StreamSettings,
    tokenizer: Tokenizer,
    /// Providers such as Ollama need no key; the others fail fast without one.
    needs_key: bool,
}

/// A provider speaking wire format `W` over HTTP.
pub struct HttpProvider<W> {
    inner: Arc<Inner<W>>,
}

impl<W: WireFormat> HttpProvider<W> {
    pub fn new(
        name: &str,
        base_url: &str,
        wire: W,
        settings: StreamSettings,
        tokenizer: Tokenizer,
        needs_key: bool,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(HttpProvider {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                client,
                base_url: base_url.trim_end_matches('/').to_owned(),
                wire,
                settings,
                tokenizer,
                needs_key,
            }),
        })
    }
}

impl<W: WireFormat> Provider for HttpProvider<W> {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn stream(&self, request: ChatRequest, api_key: Option<String>) -> ChunkStream {
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        tokio::spawn(async move { run(&inner, &request, api_key.as_deref(), &tx).await });
        receiver_stream(rx)
    }
}

/// A channel receiver as a stream.
pub fn receiver_stream(mut rx: mpsc::Receiver<Result<Chunk, ProviderError>>) -> ChunkStream {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

type Tx = mpsc::Sender<Result<Chunk, ProviderError>>;

enum Outcome {
    Finished(WireState),
    Failed {
        kind: ErrorKind,
        status: Option<u16>,
        retryable: bool,
        retry_after: Option<Duration>,
        state: WireState,
    },
    /// The consumer dropped the stream.
    Gone,
}

async fn run<W: WireFormat>(inner: &Inner<W>, request: &ChatRequest, key: Option<&str>, tx: &Tx) {
    let error = |kind, status, retryable| ProviderError {
        provider: inner.name.clone(),
        kind,
        status,
        retryable,
    };
    if inner.needs_key && key.is_none_or(str::is_empty) {
        crate::metrics::provider_error(&inner.name, ErrorKind::MissingKey);
        let _ = tx
            .send(Err(error(ErrorKind::MissingKey, None, false)))
            .await;
        return;
    }
    let mut text = String::new();
    let mut attempt = 0u32;
    loop {
        match attempt_once(inner, request, key, tx, &mut text).await {
            Outcome::Gone => return,
            Outcome::Finished(state) => {
                let usage = usage(inner.tokenizer, request, &text, &state);
                if tx.send(Ok(Chunk::Usage(usage))).await.is_ok() {
                    let finish = state.finish.unwrap_or(FinishReason::Stop);
                    let _ = tx.send(Ok(Chunk::Finish(finish))).await;
                }
                return;
            }
            Outcome::Failed {
                kind,
                status,
                retryable,
                retry_after,
                state,
            } => {
                let started = !text.is_empty();
                if !started
                    && retryable
                    && attempt < inner.settings.max_retries
                    && let Some(wait) = backoff(&inner.settings, attempt, retry_after)
                {
                    tracing::info!(
                        provider = %inner.name,
                        attempt = attempt + 1,
                        wait_ms = wait.as_millis() as u64,
                        "retrying provider request"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = tx.closed() => return,
                    }
                    attempt += 1;
                    continue;
                }
                crate::metrics::provider_error(&inner.name, kind);
                if started || state.prompt_tokens.is_some() {
                    let usage = usage(inner.tokenizer, request, &text, &state);
                    if tx.send(Ok(Chunk::Usage(usage))).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send(Err(error(kind, status, retryable && !started)))
                    .await;
                return;
            }
        }
    }
}

/// The wait before retry `attempt + 1`: exponential with jitter, at least `Retry-After`.
/// None when `Retry-After` asks for longer than `retry_max`.
fn backoff(
    settings: &StreamSettings,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let exp = settings
        .retry_base
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(settings.retry_max);
    let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
    match retry_after {
        Some(after) if after > settings.retry_max => None,
        Some(after) => Some(after.max(jittered)),
        None => Some(jittered),
    }
}

/// Provider-reported usage when complete, our count otherwise.
fn usage(tokenizer: Tokenizer, request: &ChatRequest, text: &str, state: &WireState) -> Usage {
    match (state.prompt_tokens, state.completion_tokens) {
        (Some(prompt), Some(completion)) => Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            estimated: false,
        },
        (prompt, completion) => Usage {
            prompt_tokens: prompt
                .unwrap_or_else(|| tokenizer.count_prompt(&request.messages) as u32),
            completion_tokens: completion.unwrap_or_else(|| tokenizer.count(text) as u32),
            estimated: true,
        },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs and read as absent).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Largest error body read for the log.
const MAX_ERROR_BODY: usize = 16 * 1024;

async fn attempt_once<W: WireFormat>(
    inner: &Inner<W>,
    request: &ChatRequest,
    key: Option<&str>,
    tx: &Tx,
    text: &mut String,
) -> Outcome {
    let failed = |kind, status, retryable, retry_after, state| Outcome::Failed {
        kind,
        status,
        retryable,
        retry_after,
        state,
    };
    let started = Instant::now();
    let first_token_deadline = started + inner.settings.first_token_timeout;
    let send = inner
        .wire
        .request(&inner.client, &inner.base_url, request, key)
        .send();
    let response = tokio::select! {
        sent = timeout_at(first_token_deadline, send) => sent,
        () = tx.closed() => return Outcome::Gone,
    };
    let response = match response {
        Err(_) => {
            return failed(
                ErrorKind::FirstTokenTimeout,
                None,
                false,
                None,
                WireState::default(),
            );
        }
        Ok(Err(e)) => {
            let connect = e.is_connect() || (e.is_timeout() && !e.is_body());
            tracing::warn!(provider = %inner.name, error = %redact(&e.to_string(), key), "provider request failed");
            let kind = if connect {
                ErrorKind::Connect
            } else {
                ErrorKind::Dropped
            };
            return failed(kind, None, connect, None, WireState::default());
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if !status.is_success() {
        let after = retry_after(response.headers());
        let body = read_error_body(response).await;
        tracing::warn!(
            provider = %inner.name,
            status = status.as_u16(),
            detail = %redact(&inner.wire.error_detail(&body), key),
            "provider answered with an error"
        );
        let code = status.as_u16();
        let retryable = code == 408 || code == 429 || code >= 500;
        return failed(
            ErrorKind::Http,
            Some(code),
            retryable,
            after,
            WireState::default(),
        );
    }

    let mut events = response.bytes_stream().eventsource();
    let mut state = WireState::default();
    let mut texts = Vec::new();
    loop {
        let deadline = if text.is_empty() {
            first_token_deadline
        } else {
            Instant::now() + inner.settings.idle_timeout
        };
        let next = tokio::select! {
            next = timeout_at(deadline, events.next()) => next,
            () = tx.closed() => return Outcome::Gone,
        };
        let event = match next {
            Err(_) => {
                let kind = if text.is_empty() {
                    ErrorKind::FirstTokenTimeout
                } else {
                    ErrorKind::IdleTimeout
                };
                return failed(kind, None, false, None, state);
            }
            Ok(None) => {
                // Gemini has no end marker; others may omit theirs once they sent a finish
                // reason. Without one, the answer was cut off.
                if state.finish.is_some() {
                    return Outcome::Finished(state);
                }
                return failed(ErrorKind::Dropped, None, false, None, state);
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(provider = %inner.name, error = %e, "provider stream broke");
                return failed(ErrorKind::Dropped, None, false, None, state);
            }
            Ok(Some(Ok(event))) => event,
        };
        let step = match inner.wire.event(&event, &mut state, &mut texts) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(provider = %inner.name, detail = %redact(&e.detail, key), "provider stream error");
                return failed(e.kind, None, e.retryable, None, state);
            }
        };
        for t in texts.drain(..) {
            if t.is_empty() {
                continue;
            }
            if text.is_empty() {
                crate::metrics::provider_first_token(&inner.name, started.elapsed());
            }
            text.push_str(&t);
            if tx.send(Ok(Chunk::Text(t))).await.is_err() {
                return Outcome::Gone;
            }
        }
        if let Step::Done = step {
            return Outcome::Finished(state);
        }
    }
}

async fn read_error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    let read = async {
        while let Some(Ok(bytes)) = stream.next().await {
            body.extend_from_slice(&bytes);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// Removes the key from a text bound for the log.
fn redact(text: &str, key: Option<&str>) -> String {
    match key {
        Some(key) if key.len() >= 4 => text.replace(key, "***"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jitters_and_honours_retry_after() {
        let s = StreamSettings {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..StreamSettings::default()
        };
        for attempt in 0..6 {
            let wait = backoff(&s, attempt, None).expect("wait");
            let cap = Duration::from_millis(100 * 2u64.pow(attempt)).min(s.retry_max);
            assert!(wait <= cap && wait >= cap / 2, "{attempt}: {wait:?}");
        }
        assert_eq!(
            backoff(&s, 0, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(backoff(&s, 0, Some(Duration::from_secs(60))), None);
    }

    #[test]
    fn keys_are_redacted() {
        assert_eq!(
            redact("bad key sk-secret1", Some("sk-secret1")),
            "bad key ***"
        );
    }
}

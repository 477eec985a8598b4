//! LLM providers behind one streaming interface.
//!
//! A `Provider` turns a `ChatRequest` into a `ChunkStream` of typed chunks. Every stream ends
//! one of two ways:
//! - `Text*`, then exactly one `Usage`, then exactly one `Finish`;
//! - `Text*`, then `Usage` (what was spent so far), then one `Err(ProviderError)`.
//!
//! Usage is the provider's when it reports one, else counted with tiktoken (`estimated`).
//! Dropping the stream cancels the upstream request.
//!
//! - `stream`: the engine shared by the HTTP wire formats (timeouts, retries before the
//!   first token, usage)
//! - `openai`, `anthropic`, `gemini`: the wire formats; `echo`: the in-process `local/echo`
//! - `catalog`: models and providers, built in and from `MODEL_CATALOG_FILE`
//! - `tokens`: token counting; `context`: what of a branch fits in a model's window
//! - `keys`: per-workspace provider keys, encrypted at rest
//! - `graphql`: `models`, `setProviderKey`, `deleteProviderKey`

pub mod anthropic;
pub mod catalog;
pub mod context;
pub mod echo;
pub mod gemini;
pub mod graphql;
pub mod keys;
pub mod openai;
pub mod registry;
pub mod stream;
pub mod tokens;

use std::fmt;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use registry::Providers;
pub use stream::StreamSettings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// A stored `f32` setting (a temperature) as the `f64` with the same shortest decimal form,
/// so 0.7 reaches JSON as 0.7 rather than 0.699999988079071.
pub fn decimal_f64(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// One generation request, in provider-neutral form.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The provider's own model name (the catalog's `upstream`).
    pub model: String,
    /// Role-tagged messages, oldest first; a system message, if any, comes first.
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_output_tokens: u32,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Counted by us (the provider reported none).
    pub estimated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer (or hit a stop sequence).
    Stop,
    /// The output-token limit was reached.
    Length,
    ContentFilter,
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Text(String),
    Usage(Usage),
    Finish(FinishReason),
}

/// Why a stream failed. Its `Display` is safe to show a client: provider, what happened,
/// HTTP status, whether a retry may help. Never a key or an upstream body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub provider: String,
    pub kind: ErrorKind,
    pub status: Option<u16>,
    pub retryable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Could not connect (or the connection attempt timed out).
    Connect,
    /// The provider answered with an HTTP error status.
    Http,
    /// No first token within the first-token timeout.
    FirstTokenTimeout,
    /// A gap between chunks longer than the idle timeout.
    IdleTimeout,
    /// The provider sent an error event in the stream.
    Upstream,
    /// The connection ended before the stream was complete.
    Dropped,
    /// A frame we could not read.
    Protocol,
    /// No key for a provider that needs one.
    MissingKey,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.kind, self.status) {
            (ErrorKind::Connect, _) => "could not be reached".to_owned(),
            (ErrorKind::Http, Some(401 | 403)) => {
                format!("rejected the API key (HTTP {})", self.status.unwrap_or(401))
            }
            (ErrorKind::Http, Some(429)) => "is rate limiting requests (HTTP 429)".to_owned(),
            (ErrorKind::Http, Some(status)) => format!("answered HTTP {status}"),
            (ErrorKind::Http, None) => "answered with an error".to_owned(),
            (ErrorKind::FirstTokenTimeout, _) => "sent no first token in time".to_owned(),
            (ErrorKind::IdleTimeout, _) => "stalled in the middle of the answer".to_owned(),
            (ErrorKind::Upstream, _) => "reported an error in the stream".to_owned(),
            (ErrorKind::Dropped, _) => {
                "closed the connection before the answer was complete".to_owned()
            }
            (ErrorKind::Protocol, _) => "sent a response we could not read".to_owned(),
            (ErrorKind::MissingKey, _) => "has no API key configured".to_owned(),
        };
        let retry = if self.retryable {
            "retryable"
        } else {
            "not retryable"
        };
        write!(f, "provider {} {what} ({retry})", self.provider)
    }
}

pub type ChunkStream = BoxStream<'static, Result<Chunk, ProviderError>>;

/// A source of streamed completions.
pub trait Provider: Send + Sync {
    /// The provider's name in the catalog (`openai`, `anthropic`, ...).
    fn name(&self) -> &str;

    /// Starts a generation. Never fails up front: failures arrive as the stream's last item.
    fn stream(&self, request: ChatRequest, api_key: Option<String>) -> ChunkStream;
}

/// The system messages joined, and the other messages as turns with consecutive
/// same-role messages merged and empty ones dropped: the shape Anthropic and Gemini want
/// (they take the system prompt apart and expect alternating turns).
pub fn system_and_turns(messages: &[ChatMessage]) -> (Option<String>, Vec<(ChatRole, String)>) {
    let mut system = Vec::new();
    let mut turns: Vec<(ChatRole, String)> = Vec::new();
    for m in messages {
        if m.role == ChatRole::System {
            system.push(m.content.as_str());
            continue;
        }
        if m.content.trim().is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((role, text)) if *role == m.role => {
                text.push_str("\n\n");
                text.push_str(&m.content);
            }
            _ => turns.push((m.role, m.content.clone())),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    (system, turns)
}

/// A whole stream, gathered (tests, title generation, non-streaming callers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    pub text: String,
    /// The text chunks as they arrived.
    pub chunks: Vec<String>,
    pub usage: Option<Usage>,
    pub finish: Option<FinishReason>,
    pub error: Option<ProviderError>,
}

pub async fn collect(mut stream: ChunkStream) -> Collected {
    let mut out = Collected::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Chunk::Text(t)) => {
                out.text.push_str(&t);
                out.chunks.push(t);
            }
            Ok(Chunk::Usage(u)) => out.usage = Some(u),
            Ok(Chunk::Finish(f)) => out.finish = Some(f),
            Err(e) => out.error = Some(e),
        }
    }
    out
}

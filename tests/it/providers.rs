//! Each wire format against a byte-exact fake upstream on loopback.
//!
//! The scenarios shared by the three formats are written once, over `Wire`, and run for
//! each format by `each_wire!` (tests `providers::openai::*`, `providers::anthropic::*`,
//! `providers::gemini::*`); the rest run once. Frames are written as the providers send
//! them (OpenAI Chat Completions chunks ending with `data: [DONE]`, Anthropic's named
//! events, Gemini's CRLF-separated `GenerateContentResponse`s with no end marker), and so
//! are the error bodies. Every stream is checked against the contract of `colloquy::llm`:
//! `Text*` then `Usage` then `Finish`, or `Text*` then `Usage` (when anything was produced
//! or usage is known) then one error.

use std::time::{Duration, Instant};

use colloquy::llm::anthropic::AnthropicWire;
use colloquy::llm::gemini::GeminiWire;
use colloquy::llm::openai::OpenAiWire;
use colloquy::llm::stream::{HttpProvider, StreamSettings};
use colloquy::llm::tokens::Tokenizer;
use colloquy::llm::{
    ChatMessage, ChatRequest, ChatRole, Chunk, ChunkStream, Collected, ErrorKind, FinishReason,
    Provider, ProviderError, Usage, collect,
};
use futures_util::StreamExt;
use serde_json::json;

use crate::fake_upstream::{End, FakeUpstream, RecordedRequest, Script};

const KEY: &str = "sk-test-key-123";
const SYSTEM: &str = "You are a terse assistant.";
const MAX_OUTPUT: u32 = 256;

/// Short timeouts so the suite stays fast; `max_retries` 2 means at most 3 attempts.
fn settings() -> StreamSettings {
    StreamSettings {
        connect_timeout: Duration::from_secs(1),
        first_token_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(300),
        max_retries: 2,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_secs(2),
    }
}

const ATTEMPTS: usize = 3;

/// The answer most scenarios stream, one text chunk per piece.
const ANSWER: &[&str] = &[
    "Hello", "!", " How", " can", " I", " help", " you", " today", "?",
];

fn chat_request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_owned(),
        messages: vec![
            ChatMessage::new(ChatRole::System, SYSTEM),
            ChatMessage::new(ChatRole::User, "Hi"),
            ChatMessage::new(ChatRole::Assistant, "Hello! What do you need?"),
            ChatMessage::new(ChatRole::User, "Say hello."),
        ],
        temperature: Some(0.5),
        max_output_tokens: MAX_OUTPUT,
        stop: vec!["END".to_owned()],
    }
}

/// How a scripted answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The model finished (`stop`, `end_turn`, `STOP`) and usage is reported.
    Stop,
    /// The output-token limit was hit (`length`, `max_tokens`, `MAX_TOKENS`).
    Length,
    /// The text frames only: no finish reason, no usage, no end marker.
    Cut,
}

/// An error answer or event, and a phrase of its text that must never reach a client.
struct Failure {
    status: u16,
    body: &'static str,
    secret: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

const WIRES: [Wire; 3] = [Wire::OpenAi, Wire::Anthropic, Wire::Gemini];

fn json_str(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string")
}

// --- OpenAI Chat Completions -------------------------------------------------------------

const OPENAI_CHUNK: &str = r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_06737a9306","choices":[@CHOICES@],"usage":@USAGE@}

"#;
const OPENAI_ROLE: &str = r#"{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}"#;
const OPENAI_TEXT: &str =
    r#"{"index":0,"delta":{"content":@TEXT@},"logprobs":null,"finish_reason":null}"#;
const OPENAI_FINISH: &str = r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"@REASON@"}"#;
const OPENAI_USAGE: &str = r#"{"prompt_tokens":31,"completion_tokens":10,"total_tokens":41,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#;
const OPENAI_DONE: &str = "data: [DONE]\n\n";

fn openai_chunk(choices: &str, usage: &str) -> String {
    OPENAI_CHUNK
        .replace("@CHOICES@", choices)
        .replace("@USAGE@", usage)
}

fn openai_frames(texts: &[&str], ending: Ending) -> Vec<String> {
    let mut frames = vec![openai_chunk(OPENAI_ROLE, "null")];
    for t in texts {
        frames.push(openai_chunk(
            &OPENAI_TEXT.replace("@TEXT@", &json_str(t)),
            "null",
        ));
    }
    let reason = match ending {
        Ending::Stop => "stop",
        Ending::Length => "length",
        Ending::Cut => return frames,
    };
    frames.push(openai_chunk(
        &OPENAI_FINISH.replace("@REASON@", reason),
        "null",
    ));
    frames.push(openai_chunk("", OPENAI_USAGE));
    frames.push(OPENAI_DONE.to_owned());
    frames
}

// --- Anthropic Messages ------------------------------------------------------------------

const ANTHROPIC_START: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

"#;
const ANTHROPIC_BLOCK_START: &str = r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

"#;
const ANTHROPIC_PING: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\n";
const ANTHROPIC_DELTA: &str = r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":@TEXT@}}

"#;
const ANTHROPIC_BLOCK_STOP: &str = r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}

"#;
const ANTHROPIC_MESSAGE_DELTA: &str = r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"@REASON@","stop_sequence":null},"usage":{"output_tokens":15}}

"#;
const ANTHROPIC_STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn anthropic_frames(texts: &[&str], ending: Ending) -> Vec<String> {
    let mut frames = vec![
        ANTHROPIC_START.to_owned(),
        ANTHROPIC_BLOCK_START.to_owned(),
        ANTHROPIC_PING.to_owned(),
    ];
    for t in texts {
        frames.push(ANTHROPIC_DELTA.replace("@TEXT@", &json_str(t)));
    }
    let reason = match ending {
        Ending::Stop => "end_turn",
        Ending::Length => "max_tokens",
        Ending::Cut => return frames,
    };
    frames.push(ANTHROPIC_BLOCK_STOP.to_owned());
    frames.push(ANTHROPIC_MESSAGE_DELTA.replace("@REASON@", reason));
    frames.push(ANTHROPIC_STOP.to_owned());
    frames
}

// --- Google Gemini -----------------------------------------------------------------------

const GEMINI_PARTIAL: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": @TEXT@}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 21,\"totalTokenCount\": 21,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"mJ0GaOXZBqLkz7IPgK6V2Qg\"}\r\n\r\n";
const GEMINI_LAST: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": @TEXT@}],\"role\": \"model\"},\"finishReason\": \"@REASON@\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 21,\"candidatesTokenCount\": 12,\"totalTokenCount\": 33,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}],\"candidatesTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 12}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"mJ0GaOXZBqLkz7IPgK6V2Qg\"}\r\n\r\n";

/// Gemini sends the finish reason and the full usage with the last text; then the
/// connection closes.
fn gemini_frames(texts: &[&str], ending: Ending) -> Vec<String> {
    let reason = match ending {
        Ending::Stop => "STOP",
        Ending::Length => "MAX_TOKENS",
        Ending::Cut => "",
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let template = if i + 1 == texts.len() && ending != Ending::Cut {
                GEMINI_LAST
            } else {
                GEMINI_PARTIAL
            };
            template
                .replace("@TEXT@", &json_str(t))
                .replace("@REASON@", reason)
        })
        .collect()
}

const GEMINI_API_KEY_INVALID: &str = r#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {
          "service": "generativelanguage.googleapis.com"
        }
      },
      {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid. Please pass a valid API key."
      }
    ]
  }
}
"#;

impl Wire {
    fn model(self) -> &'static str {
        match self {
            Wire::OpenAi => "gpt-4o-mini",
            Wire::Anthropic => "claude-sonnet-4-5",
            Wire::Gemini => "gemini-2.0-flash",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "google",
        }
    }

    fn tokenizer(self) -> Tokenizer {
        match self {
            Wire::OpenAi => Tokenizer::O200k,
            Wire::Anthropic | Wire::Gemini => Tokenizer::Cl100k,
        }
    }

    fn provider_at(self, base_url: &str, settings: StreamSettings) -> Box<dyn Provider> {
        let (name, tokenizer) = (self.name(), self.tokenizer());
        match self {
            Wire::OpenAi => Box::new(
                HttpProvider::new(
                    name,
                    &format!("{base_url}/v1"),
                    OpenAiWire,
                    settings,
                    tokenizer,
                    true,
                )
                .expect("provider"),
            ),
            Wire::Anthropic => Box::new(
                HttpProvider::new(name, base_url, AnthropicWire, settings, tokenizer, true)
                    .expect("provider"),
            ),
            Wire::Gemini => Box::new(
                HttpProvider::new(name, base_url, GeminiWire, settings, tokenizer, true)
                    .expect("provider"),
            ),
        }
    }

    fn provider(self, up: &FakeUpstream, settings: StreamSettings) -> Box<dyn Provider> {
        self.provider_at(&up.base_url, settings)
    }

    fn request(self) -> ChatRequest {
        chat_request(self.model())
    }

    fn frames(self, texts: &[&str], ending: Ending) -> Vec<String> {
        match self {
            Wire::OpenAi => openai_frames(texts, ending),
            Wire::Anthropic => anthropic_frames(texts, ending),
            Wire::Gemini => gemini_frames(texts, ending),
        }
    }

    /// A streamed answer, with each provider's content type.
    fn sse(self, frames: &[String]) -> Script {
        let script = Script::sse(200, frames);
        match self {
            Wire::Gemini => script.header("content-type", "text/event-stream"),
            Wire::OpenAi | Wire::Anthropic => script,
        }
    }

    fn answer(self) -> Script {
        self.sse(&self.frames(ANSWER, Ending::Stop))
    }

    /// The usage the frames of a finished answer report.
    fn reported_usage(self) -> Usage {
        let (prompt_tokens, completion_tokens) = match self {
            Wire::OpenAi => (31, 10),
            Wire::Anthropic => (25, 15),
            Wire::Gemini => (21, 12),
        };
        Usage {
            prompt_tokens,
            completion_tokens,
            estimated: false,
        }
    }

    /// The prompt tokens the provider has reported once it sent some text, if any.
    fn prompt_tokens_with_text(self) -> Option<u32> {
        match self {
            Wire::OpenAi => None,
            Wire::Anthropic => Some(25),
            Wire::Gemini => Some(21),
        }
    }

    /// The prompt tokens the provider reports before its first text (in `message_start`).
    fn prompt_tokens_before_text(self) -> Option<u32> {
        match self {
            Wire::OpenAi | Wire::Gemini => None,
            Wire::Anthropic => Some(25),
        }
    }

    /// An error event inside the stream (a frame).
    fn error_event(self, retryable: bool) -> (String, &'static str) {
        match (self, retryable) {
            (Wire::OpenAi, true) => (
                "data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".to_owned(),
                "The server had an error",
            ),
            (Wire::OpenAi, false) => (
                "data: {\"error\":{\"message\":\"This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.\",\"type\":\"invalid_request_error\",\"param\":\"messages\",\"code\":\"context_length_exceeded\"}}\n\n".to_owned(),
                "maximum context length",
            ),
            (Wire::Anthropic, true) => (
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_owned(),
                "Overloaded",
            ),
            (Wire::Anthropic, false) => (
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long: 210417 tokens > 200000 maximum\"}}\n\n".to_owned(),
                "prompt is too long",
            ),
            (Wire::Gemini, true) => (
                "data: {\"error\": {\"code\": 503,\"message\": \"The model is overloaded. Please try again later.\",\"status\": \"UNAVAILABLE\"}}\r\n\r\n".to_owned(),
                "The model is overloaded",
            ),
            (Wire::Gemini, false) => (
                "data: {\"error\": {\"code\": 400,\"message\": \"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).\",\"status\": \"INVALID_ARGUMENT\"}}\r\n\r\n".to_owned(),
                "input token count",
            ),
        }
    }

    /// The provider's answer to a bad key (Gemini says 400 INVALID_ARGUMENT).
    fn auth_failure(self) -> Failure {
        match self {
            Wire::OpenAi => Failure {
                status: 401,
                body: r#"{"error":{"message":"Incorrect API key provided: sk-test***123. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                secret: "Incorrect API key",
            },
            Wire::Anthropic => Failure {
                status: 401,
                body: r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
                secret: "invalid x-api-key",
            },
            Wire::Gemini => Failure {
                status: 400,
                body: GEMINI_API_KEY_INVALID,
                secret: "API key not valid",
            },
        }
    }

    fn rate_limited(self) -> Failure {
        match self {
            Wire::OpenAi => Failure {
                status: 429,
                body: r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-9QuzKZs4b2Ls0QW1bEvXf7Ve on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
                secret: "Rate limit reached",
            },
            Wire::Anthropic => Failure {
                status: 429,
                body: r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization (5c4e9c1b-2f0e-4d3a-9d1e-3f1d2b7a8c90) of 50,000 input tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later."},"request_id":"req_011CSHqAZ9vKMkBnWq5i3W8t"}"#,
                secret: "would exceed the rate limit",
            },
            Wire::Gemini => Failure {
                status: 429,
                body: r#"{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    "status": "RESOURCE_EXHAUSTED"
  }
}
"#,
                secret: "exceeded your current quota",
            },
        }
    }

    fn server_error(self) -> Failure {
        match self {
            Wire::OpenAi => Failure {
                status: 500,
                body: r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
                secret: "The server had an error",
            },
            Wire::Anthropic => Failure {
                status: 500,
                body: r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"},"request_id":"req_011CSHrV3ZtNwvd1WzcYc9pB"}"#,
                secret: "Internal server error",
            },
            Wire::Gemini => Failure {
                status: 500,
                body: r#"{
  "error": {
    "code": 500,
    "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    "status": "INTERNAL"
  }
}
"#,
                secret: "An internal error has occurred",
            },
        }
    }

    fn overloaded(self) -> Failure {
        match self {
            Wire::OpenAi => Failure {
                status: 503,
                body: r#"{"error":{"message":"The engine is currently overloaded, please try again later.","type":"server_error","param":null,"code":null}}"#,
                secret: "currently overloaded",
            },
            Wire::Anthropic => Failure {
                status: 529,
                body: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CSHsuqJrjCKjKa8Vn2hpm"}"#,
                secret: "Overloaded",
            },
            Wire::Gemini => Failure {
                status: 503,
                body: r#"{
  "error": {
    "code": 503,
    "message": "The model is overloaded. Please try again later.",
    "status": "UNAVAILABLE"
  }
}
"#,
                secret: "The model is overloaded",
            },
        }
    }

    /// What each format must put on the wire for `chat_request`.
    fn check_request(self, r: &RecordedRequest) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("accept")
                .is_some_and(|a| a.contains("text/event-stream")),
            "{:?}",
            r.headers
        );
        let body = &r.body;
        match self {
            Wire::OpenAi => {
                assert_eq!(r.path_and_query, "/v1/chat/completions");
                assert_eq!(
                    r.header("authorization"),
                    Some(format!("Bearer {KEY}").as_str())
                );
                assert_eq!(body["model"], "gpt-4o-mini");
                assert_eq!(body["stream"], true);
                assert_eq!(body["stream_options"]["include_usage"], true);
                assert_eq!(body["max_tokens"], MAX_OUTPUT);
                assert_eq!(body["temperature"], 0.5);
                assert_eq!(body["stop"], json!(["END"]));
                assert_eq!(
                    body["messages"],
                    json!([
                        { "role": "system", "content": SYSTEM },
                        { "role": "user", "content": "Hi" },
                        { "role": "assistant", "content": "Hello! What do you need?" },
                        { "role": "user", "content": "Say hello." },
                    ])
                );
            }
            Wire::Anthropic => {
                assert_eq!(r.path_and_query, "/v1/messages");
                assert_eq!(r.header("x-api-key"), Some(KEY));
                assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(r.header("authorization"), None);
                assert_eq!(body["model"], "claude-sonnet-4-5");
                assert_eq!(body["stream"], true);
                assert_eq!(body["max_tokens"], MAX_OUTPUT);
                assert_eq!(body["temperature"], 0.5);
                assert_eq!(body["stop_sequences"], json!(["END"]));
                // The system prompt is a top-level field, never a message.
                assert_eq!(body["system"], SYSTEM);
                assert_eq!(
                    body["messages"],
                    json!([
                        { "role": "user", "content": "Hi" },
                        { "role": "assistant", "content": "Hello! What do you need?" },
                        { "role": "user", "content": "Say hello." },
                    ])
                );
            }
            Wire::Gemini => {
                assert_eq!(
                    r.path_and_query,
                    "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
                );
                assert!(r.path_and_query.contains(":streamGenerateContent?alt=sse"));
                assert!(
                    !r.path_and_query.contains("key="),
                    "the key is not in the URL"
                );
                assert_eq!(r.header("x-goog-api-key"), Some(KEY));
                assert_eq!(r.header("authorization"), None);
                assert_eq!(
                    body["systemInstruction"],
                    json!({ "parts": [{ "text": SYSTEM }] })
                );
                assert_eq!(
                    body["generationConfig"],
                    json!({ "maxOutputTokens": MAX_OUTPUT, "temperature": 0.5, "stopSequences": ["END"] })
                );
                assert_eq!(
                    body["contents"],
                    json!([
                        { "role": "user", "parts": [{ "text": "Hi" }] },
                        { "role": "model", "parts": [{ "text": "Hello! What do you need?" }] },
                        { "role": "user", "parts": [{ "text": "Say hello." }] },
                    ])
                );
            }
        }
    }
}

// --- Running a stream --------------------------------------------------------------------

type Item = Result<Chunk, ProviderError>;

/// Reads a stream to its end (failing the test rather than hanging), checks it against the
/// contract, and gathers it with `colloquy::llm::collect`.
async fn gather(stream: ChunkStream) -> Collected {
    let items: Vec<Item> = tokio::time::timeout(Duration::from_secs(15), stream.collect())
        .await
        .expect("the stream ends");
    check_contract(&items);
    collect(futures_util::stream::iter(items).boxed()).await
}

fn check_contract(items: &[Item]) {
    let texts = items
        .iter()
        .take_while(|i| matches!(i, Ok(Chunk::Text(_))))
        .count();
    for item in &items[..texts] {
        if let Ok(Chunk::Text(t)) = item {
            assert!(!t.is_empty(), "an empty text chunk in {items:?}");
        }
    }
    match &items[texts..] {
        [Ok(Chunk::Usage(_)), Ok(Chunk::Finish(_))] | [Ok(Chunk::Usage(_)), Err(_)] => {}
        [Err(_)] => assert_eq!(texts, 0, "text then an error without usage: {items:?}"),
        tail => panic!("the stream does not end as the contract says: {tail:?} in {items:?}"),
    }
}

async fn run(provider: &dyn Provider, request: ChatRequest, key: Option<&str>) -> Collected {
    gather(provider.stream(request, key.map(str::to_owned))).await
}

/// Runs `wire`'s request against `up` with the test key.
async fn run_wire(wire: Wire, up: &FakeUpstream, settings: StreamSettings) -> Collected {
    let provider = wire.provider(up, settings);
    run(provider.as_ref(), wire.request(), Some(KEY)).await
}

/// The stream's error, checked safe to show: neither the key nor upstream text.
fn error_of(out: &Collected, secrets: &[&str]) -> ProviderError {
    let error = out.error.clone().expect("the stream failed");
    assert!(out.finish.is_none(), "{out:?}");
    assert_not_leaking(&error, secrets);
    error
}

fn assert_not_leaking(error: &ProviderError, secrets: &[&str]) {
    for shown in [error.to_string(), format!("{error:?}")] {
        let lower = shown.to_lowercase();
        assert!(!shown.contains(KEY), "the key leaks: {shown}");
        assert!(!lower.contains("sk-test"), "the key leaks: {shown}");
        for secret in secrets {
            assert!(
                !lower.contains(&secret.to_lowercase()),
                "upstream text {secret:?} leaks: {shown}"
            );
        }
    }
}

fn assert_answer(out: &Collected, wire: Wire) {
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, ANSWER, "{out:?}");
    assert_eq!(out.text, ANSWER.concat());
    assert_eq!(out.usage, Some(wire.reported_usage()));
    assert_eq!(out.finish, Some(FinishReason::Stop));
}

/// The usage sent before an error that ended a stream after `text`.
fn assert_partial_usage(out: &Collected, wire: Wire) {
    let usage = out.usage.expect("usage before the error");
    assert!(usage.estimated, "{usage:?}");
    assert!(usage.completion_tokens > 0, "{usage:?}");
    assert_eq!(
        usage.completion_tokens as usize,
        wire.tokenizer().count(&out.text)
    );
    match wire.prompt_tokens_with_text() {
        Some(reported) => assert_eq!(usage.prompt_tokens, reported),
        None => assert!(usage.prompt_tokens > 0, "{usage:?}"),
    }
}

/// Gives a late, unwanted retry the time to reach the fake upstream before counting.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

// --- Scenarios for every wire format -----------------------------------------------------

macro_rules! each_wire {
    ($($scenario:ident),* $(,)?) => {
        mod openai {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    colloquy::install_crypto_provider();
                    super::$scenario(super::Wire::OpenAi).await;
                }
            )*
        }
        mod anthropic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    colloquy::install_crypto_provider();
                    super::$scenario(super::Wire::Anthropic).await;
                }
            )*
        }
        mod gemini {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    colloquy::install_crypto_provider();
                    super::$scenario(super::Wire::Gemini).await;
                }
            )*
        }
    };
}

each_wire!(
    happy_path_with_reported_usage,
    output_limit_finishes_with_length,
    utf8_split_across_reads_arrives_intact,
    error_event_after_text_keeps_text_and_is_not_retried,
    retryable_error_event_before_text_is_retried,
    fatal_error_event_before_text_is_not_retried,
    rejected_key_is_not_retried,
    rate_limited_then_success_is_retried,
    transient_errors_then_success,
    server_errors_exhaust_the_retries,
    dropped_connection_after_text_is_not_retried,
    clean_close_before_the_end_is_dropped,
    stall_after_text_is_an_idle_timeout,
    slow_first_token_times_out,
    slow_first_token_within_the_timeout_succeeds,
);

async fn happy_path_with_reported_usage(wire: Wire) {
    let up = FakeUpstream::start(vec![wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    let requests = up.requests();
    assert_eq!(requests.len(), 1);
    wire.check_request(&requests[0]);
}

async fn output_limit_finishes_with_length(wire: Wire) {
    let texts = ["Once upon a time", ", in a land", " far away"];
    let up = FakeUpstream::start(vec![wire.sse(&wire.frames(&texts, Ending::Length))]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, texts);
    assert_eq!(out.usage, Some(wire.reported_usage()));
    assert_eq!(out.finish, Some(FinishReason::Length));
}

async fn utf8_split_across_reads_arrives_intact(wire: Wire) {
    let texts = ["Café", " au lait — ", "日本語", " 🦀!"];
    let frames = wire.frames(&texts, Ending::Stop);
    let mut script = wire
        .sse(&frames)
        // One byte into "é" (2 bytes), "—" (3), "本" (3) and "🦀" (4).
        .split_inside("é", 1)
        .split_inside("—", 2)
        .split_inside("日本", 4)
        .split_inside("🦀", 2);
    if wire == Wire::Gemini {
        // Gemini separates events with CRLF CRLF: cut between CR and LF, twice.
        script = script
            .split_inside("\r\n\r\n", 1)
            .split_inside("\r\n\r\n", 3);
    }
    let extra = if wire == Wire::Gemini { 6 } else { 4 };
    assert_eq!(script.chunks.len(), frames.len() + extra);
    for (_, bytes) in &script.chunks[..] {
        assert!(!bytes.is_empty());
    }
    let up = FakeUpstream::start(vec![script]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, texts, "{out:?}");
    assert_eq!(out.text, "Café au lait — 日本語 🦀!");
    assert!(!out.text.contains('\u{FFFD}'));
    assert_eq!(out.finish, Some(FinishReason::Stop));
    assert_eq!(out.usage, Some(wire.reported_usage()));
}

async fn error_event_after_text_keeps_text_and_is_not_retried(wire: Wire) {
    let mut frames = wire.frames(&["Hello", ", I am"], Ending::Cut);
    let (event, secret) = wire.error_event(true);
    frames.push(event);
    // Were it retried, the second answer would succeed.
    let up = FakeUpstream::start(vec![wire.sse(&frames), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.chunks, ["Hello", ", I am"]);
    assert_eq!(out.text, "Hello, I am");
    assert_partial_usage(&out, wire);
    let error = error_of(&out, &[secret]);
    assert_eq!(error.kind, ErrorKind::Upstream);
    assert_eq!(error.status, None);
    assert!(!error.retryable, "nothing may be retried after text");
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn retryable_error_event_before_text_is_retried(wire: Wire) {
    let mut frames = wire.frames(&[], Ending::Cut);
    frames.push(wire.error_event(true).0);
    let up = FakeUpstream::start(vec![wire.sse(&frames), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    assert_eq!(up.request_count(), 2);
}

async fn fatal_error_event_before_text_is_not_retried(wire: Wire) {
    let mut frames = wire.frames(&[], Ending::Cut);
    let (event, secret) = wire.error_event(false);
    frames.push(event);
    let up = FakeUpstream::start(vec![wire.sse(&frames), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.text, "");
    let error = error_of(&out, &[secret]);
    assert_eq!(error.kind, ErrorKind::Upstream);
    assert!(!error.retryable);
    // Usage only when the provider told the prompt's size before failing.
    assert_eq!(
        out.usage.map(|u| u.prompt_tokens),
        wire.prompt_tokens_before_text()
    );
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn rejected_key_is_not_retried(wire: Wire) {
    let failure = wire.auth_failure();
    let up = FakeUpstream::start(vec![
        Script::error(failure.status, failure.body),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    let error = error_of(&out, &[failure.secret]);
    assert_eq!(error.kind, ErrorKind::Http);
    assert_eq!(error.status, Some(failure.status));
    assert!(!error.retryable);
    assert_eq!(error.provider, wire.name());
    assert_eq!(out.text, "");
    assert_eq!(out.usage, None, "nothing produced, no usage known");
    settle().await;
    assert_eq!(up.request_count(), 1);
    wire.check_request(&up.requests()[0]);
}

async fn rate_limited_then_success_is_retried(wire: Wire) {
    let limited = wire.rate_limited();
    let up = FakeUpstream::start(vec![
        Script::error(limited.status, limited.body),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    let requests = up.requests();
    assert_eq!(requests.len(), 2);
    // The retry is the same request.
    wire.check_request(&requests[1]);
    assert_eq!(requests[0].body, requests[1].body);
}

async fn transient_errors_then_success(wire: Wire) {
    let limited = wire.rate_limited();
    let overloaded = wire.overloaded();
    let up = FakeUpstream::start(vec![
        Script::error(limited.status, limited.body),
        Script::error(overloaded.status, overloaded.body),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    assert_eq!(up.request_count(), ATTEMPTS);
}

async fn server_errors_exhaust_the_retries(wire: Wire) {
    let failure = wire.server_error();
    let mut scripts: Vec<Script> = (0..ATTEMPTS)
        .map(|_| Script::error(failure.status, failure.body))
        .collect();
    // One more attempt than allowed would succeed.
    scripts.push(wire.answer());
    let up = FakeUpstream::start(scripts).await;
    let out = run_wire(wire, &up, settings()).await;
    let error = error_of(&out, &[failure.secret]);
    assert_eq!(error.kind, ErrorKind::Http);
    assert_eq!(error.status, Some(failure.status));
    assert!(error.retryable, "a later try may succeed");
    assert_eq!(out.text, "");
    assert_eq!(out.usage, None);
    settle().await;
    assert_eq!(up.request_count(), ATTEMPTS);
    assert_eq!(up.scripts_left(), 1);
}

async fn dropped_connection_after_text_is_not_retried(wire: Wire) {
    let frames = wire.frames(&["The answer", " is"], Ending::Cut);
    let up = FakeUpstream::start(vec![wire.sse(&frames).end(End::Drop), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.chunks, ["The answer", " is"]);
    assert_partial_usage(&out, wire);
    let error = error_of(&out, &[]);
    assert_eq!(error.kind, ErrorKind::Dropped);
    assert!(!error.retryable);
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn clean_close_before_the_end_is_dropped(wire: Wire) {
    // No finish reason and no end marker: the answer was cut off even though the body
    // ended cleanly.
    let frames = wire.frames(&["The answer", " is"], Ending::Cut);
    let up = FakeUpstream::start(vec![wire.sse(&frames).end(End::Close), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.text, "The answer is");
    assert_partial_usage(&out, wire);
    let error = error_of(&out, &[]);
    assert_eq!(error.kind, ErrorKind::Dropped);
    assert!(!error.retryable);
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn stall_after_text_is_an_idle_timeout(wire: Wire) {
    let frames = wire.frames(&["Let me think", " about"], Ending::Cut);
    let up = FakeUpstream::start(vec![
        wire.sse(&frames).end(End::Stall(Duration::from_secs(5))),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    // Had it waited for the stall to end, the clean close would make it `Dropped`.
    assert_eq!(out.text, "Let me think about");
    assert_partial_usage(&out, wire);
    let error = error_of(&out, &[]);
    assert_eq!(error.kind, ErrorKind::IdleTimeout);
    assert!(!error.retryable);
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn slow_first_token_times_out(wire: Wire) {
    let s = StreamSettings {
        first_token_timeout: Duration::from_millis(500),
        ..settings()
    };
    // Headers (and, for OpenAI and Anthropic, the opening events) come at once; the first
    // text only after 3 s.
    let script = wire.answer();
    let first_text = script.chunk_index("Hello");
    let script = script.delay_chunk(first_text, Duration::from_secs(3));
    let up = FakeUpstream::start(vec![script, wire.answer()]).await;
    let out = run_wire(wire, &up, s).await;
    assert_eq!(out.text, "");
    let error = error_of(&out, &[]);
    assert_eq!(error.kind, ErrorKind::FirstTokenTimeout);
    settle().await;
    assert_eq!(up.request_count(), 1);
}

async fn slow_first_token_within_the_timeout_succeeds(wire: Wire) {
    // Headers after 300 ms, the first text 600 ms later: both gaps exceed the idle timeout
    // (300 ms), which only applies once text flows; together they stay well within the
    // first-token timeout (2 s).
    let script = wire.answer().first_delay(Duration::from_millis(300));
    let first_text = script.chunk_index("Hello");
    let script = script.delay_chunk(first_text, Duration::from_millis(600));
    let up = FakeUpstream::start(vec![script]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    assert_eq!(up.request_count(), 1);
}

// --- Once ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    colloquy::install_crypto_provider();
    let wire = Wire::OpenAi;
    let limited = wire.rate_limited();
    let up = FakeUpstream::start(vec![
        Script::error(limited.status, limited.body).header("retry-after", "1"),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
    let requests = up.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, Retry-After asked for 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_beyond_retry_max_is_not_waited_for() {
    colloquy::install_crypto_provider();
    let wire = Wire::OpenAi;
    let limited = wire.rate_limited();
    let up = FakeUpstream::start(vec![
        Script::error(limited.status, limited.body).header("retry-after", "30"),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, settings()).await;
    let error = error_of(&out, &[limited.secret]);
    assert_eq!(error.kind, ErrorKind::Http);
    assert_eq!(error.status, Some(429));
    assert!(error.retryable, "the client may try again later");
    settle().await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_is_retryable() {
    colloquy::install_crypto_provider();
    // A port bound but not listening: connections are refused. (A listener bound and
    // dropped would free the port for the next test's fake upstream to take.)
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let port = socket.local_addr().expect("address").port();
    for wire in WIRES {
        let provider = wire.provider_at(&format!("http://127.0.0.1:{port}"), settings());
        let out = run(provider.as_ref(), wire.request(), Some(KEY)).await;
        let error = error_of(&out, &[]);
        assert_eq!(error.kind, ErrorKind::Connect, "{wire:?}");
        assert_eq!(error.status, None);
        assert!(error.retryable);
        assert_eq!(out.usage, None);
        assert_eq!(out.text, "");
    }
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_key_fails_without_a_request() {
    colloquy::install_crypto_provider();
    for wire in WIRES {
        let up = FakeUpstream::start(vec![wire.answer(), wire.answer()]).await;
        let provider = wire.provider(&up, settings());
        for key in [None, Some("")] {
            let out = run(provider.as_ref(), wire.request(), key).await;
            let error = error_of(&out, &[]);
            assert_eq!(error.kind, ErrorKind::MissingKey, "{wire:?} {key:?}");
            assert_eq!(error.status, None);
            assert!(!error.retryable);
            assert_eq!(out.usage, None);
            assert!(out.chunks.is_empty());
        }
        settle().await;
        assert_eq!(up.request_count(), 0, "{wire:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_shown_to_clients_carry_no_key_and_no_upstream_text() {
    colloquy::install_crypto_provider();
    for wire in WIRES {
        let auth = wire.auth_failure();
        let limited = wire.rate_limited();
        let server = wire.server_error();
        let overloaded = wire.overloaded();
        let (fatal_event, fatal_secret) = wire.error_event(false);
        let (retry_event, retry_secret) = wire.error_event(true);
        let mut after_text = wire.frames(&["Hi"], Ending::Cut);
        after_text.push(retry_event);
        let mut before_text = wire.frames(&[], Ending::Cut);
        before_text.push(fatal_event);
        let scripts = vec![
            Script::error(auth.status, auth.body),
            Script::error(limited.status, limited.body).header("retry-after", "60"),
            Script::error(server.status, server.body).header("retry-after", "60"),
            Script::error(overloaded.status, overloaded.body).header("retry-after", "60"),
            wire.sse(&before_text),
            wire.sse(&after_text),
        ];
        let n = scripts.len();
        let up = FakeUpstream::start(scripts).await;
        let secrets = [
            auth.secret,
            limited.secret,
            server.secret,
            overloaded.secret,
            fatal_secret,
            retry_secret,
            "invalid_api_key",
            "authentication_error",
            "API_KEY_INVALID",
            "rate_limit",
            "RESOURCE_EXHAUSTED",
            "api_error",
            "overloaded",
            "server_error",
            "UNAVAILABLE",
            "INVALID_ARGUMENT",
            "req_011",
            "platform.openai.com",
        ];
        for _ in 0..n {
            let out = run_wire(wire, &up, settings()).await;
            let error = error_of(&out, &secrets);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("provider {}", wire.name())),
                "{error}"
            );
        }
        assert_eq!(up.request_count(), n, "{wire:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_usage_gets_an_estimate() {
    colloquy::install_crypto_provider();
    // Ollama's OpenAI-compatible endpoint: no key, no usage chunk.
    let frames = [
        "data: {\"id\":\"chatcmpl-535\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"llama3.2\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-535\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"llama3.2\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" there, friend.\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"chatcmpl-535\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"llama3.2\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ];
    let up = FakeUpstream::start(vec![Script::sse(200, &frames)]).await;
    let provider = HttpProvider::new(
        "ollama",
        &format!("{}/v1", up.base_url),
        OpenAiWire,
        settings(),
        Tokenizer::Cl100k,
        false,
    )
    .expect("provider");
    let request = chat_request("llama3.2");
    let out = run(&provider, request.clone(), None).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, ["Hello", " there, friend."]);
    assert_eq!(out.finish, Some(FinishReason::Stop));
    let usage = out.usage.expect("usage");
    assert!(usage.estimated);
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
    assert_eq!(
        usage.prompt_tokens as usize,
        Tokenizer::Cl100k.count_prompt(&request.messages)
    );
    assert_eq!(
        usage.completion_tokens as usize,
        Tokenizer::Cl100k.count("Hello there, friend.")
    );
    let requests = up.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization"),
        None,
        "no key, no header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_comments_are_ignored() {
    colloquy::install_crypto_provider();
    // OpenRouter keeps the connection warm with comment lines before the first chunk.
    let wire = Wire::OpenAi;
    let mut frames = vec![": OPENROUTER PROCESSING\n\n".to_owned(); 3];
    frames.extend(wire.frames(ANSWER, Ending::Stop));
    let up = FakeUpstream::start(vec![wire.sse(&frames).gap(Duration::from_millis(30))]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_answer(&out, wire);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_comments_do_not_extend_the_first_token_timeout() {
    colloquy::install_crypto_provider();
    let wire = Wire::OpenAi;
    let s = StreamSettings {
        first_token_timeout: Duration::from_millis(500),
        ..settings()
    };
    let mut frames = vec![": OPENROUTER PROCESSING\n\n".to_owned(); 20];
    frames.extend(wire.frames(ANSWER, Ending::Stop));
    let script = wire.sse(&frames).gap(Duration::from_millis(100));
    let up = FakeUpstream::start(vec![script]).await;
    let out = run_wire(wire, &up, s).await;
    assert_eq!(out.text, "");
    assert_eq!(error_of(&out, &[]).kind, ErrorKind::FirstTokenTimeout);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_slower_than_the_first_token_timeout() {
    colloquy::install_crypto_provider();
    let wire = Wire::OpenAi;
    let s = StreamSettings {
        first_token_timeout: Duration::from_millis(500),
        ..settings()
    };
    let up = FakeUpstream::start(vec![
        wire.answer().first_delay(Duration::from_secs(3)),
        wire.answer(),
    ])
    .await;
    let out = run_wire(wire, &up, s).await;
    let error = error_of(&out, &[]);
    assert_eq!(error.kind, ErrorKind::FirstTokenTimeout);
    assert_eq!(out.usage, None);
    settle().await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_pings_keep_a_slow_answer_alive() {
    colloquy::install_crypto_provider();
    // A 1.3 s pause in the middle of the answer, filled with pings every 100 ms: the idle
    // timeout (500 ms here) is about the gap between events, not between texts.
    let wire = Wire::Anthropic;
    let s = StreamSettings {
        idle_timeout: Duration::from_millis(500),
        ..settings()
    };
    let mut frames = wire.frames(ANSWER, Ending::Stop);
    let middle = frames
        .iter()
        .position(|f| f.contains("\" How\""))
        .expect("a middle text");
    let pings = 12;
    frames.splice(middle..middle, vec![ANTHROPIC_PING.to_owned(); pings]);
    let mut script = wire.sse(&frames);
    for (pause, _) in &mut script.chunks[middle..=middle + pings] {
        *pause = Duration::from_millis(100);
    }
    let up = FakeUpstream::start(vec![script]).await;
    let out = run_wire(wire, &up, s).await;
    assert_answer(&out, wire);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_closes_the_upstream_request() {
    colloquy::install_crypto_provider();
    let wire = Wire::OpenAi;
    let words: Vec<String> = (0..200).map(|i| format!("word{i} ")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    // 200 chunks 50 ms apart: 10 s, were it read to the end.
    let script = wire
        .sse(&wire.frames(&words, Ending::Stop))
        .gap(Duration::from_millis(50));
    let up = FakeUpstream::start(vec![script]).await;
    let provider = wire.provider(&up, settings());
    let mut stream = provider.stream(wire.request(), Some(KEY.to_owned()));
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a first chunk in time");
    assert!(
        matches!(&first, Some(Ok(Chunk::Text(t))) if t == "word0 "),
        "{first:?}"
    );
    drop(stream);
    // The engine notices, drops the response, and the connection closes: the fake
    // upstream sees its body abandoned long before the script would have ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.abandoned() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream request is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_thought_summaries_are_not_part_of_the_answer() {
    colloquy::install_crypto_provider();
    // Gemini 2.5 with `includeThoughts`: thought parts come first and are flagged.
    let frames = [
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"**Greeting the user**\\n\\nA short hello will do.\",\"thought\": true}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 21,\"totalTokenCount\": 61,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}],\"thoughtsTokenCount\": 40},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"kP8GaNXhL8Wgz7IP0pGZkQk\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hello\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 21,\"totalTokenCount\": 61,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}],\"thoughtsTokenCount\": 40},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"kP8GaNXhL8Wgz7IP0pGZkQk\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"! How can I help?\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 21,\"candidatesTokenCount\": 8,\"totalTokenCount\": 69,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}],\"thoughtsTokenCount\": 40},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"kP8GaNXhL8Wgz7IP0pGZkQk\"}\r\n\r\n",
    ];
    let up = FakeUpstream::start(vec![Script::sse(200, &frames)]).await;
    let out = run_wire(Wire::Gemini, &up, settings()).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, ["Hello", "! How can I help?"]);
    assert_eq!(out.finish, Some(FinishReason::Stop));
    // Thinking is billed as output.
    assert_eq!(
        out.usage,
        Some(Usage {
            prompt_tokens: 21,
            completion_tokens: 48,
            estimated: false
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_blocked_prompt_finishes_with_content_filter() {
    colloquy::install_crypto_provider();
    // A blocked prompt: no candidates, a block reason, then the connection closes.
    let frames = [
        "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"},\"usageMetadata\": {\"promptTokenCount\": 21,\"totalTokenCount\": 21,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 21}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"xJ4GaKe1C5y_z7IPx7Kb8Qc\"}\r\n\r\n",
    ];
    let up = FakeUpstream::start(vec![Script::sse(200, &frames)]).await;
    let out = run_wire(Wire::Gemini, &up, settings()).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.text, "");
    assert_eq!(out.finish, Some(FinishReason::ContentFilter));
    let usage = out.usage.expect("usage");
    assert_eq!(usage.prompt_tokens, 21);
    assert_eq!(usage.completion_tokens, 0);
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_forbidden_key_is_not_retried() {
    colloquy::install_crypto_provider();
    let body = r#"{
  "error": {
    "code": 403,
    "message": "Your API key was reported as leaked. Please use another API key.",
    "status": "PERMISSION_DENIED"
  }
}
"#;
    let wire = Wire::Gemini;
    let up = FakeUpstream::start(vec![Script::error(403, body), wire.answer()]).await;
    let out = run_wire(wire, &up, settings()).await;
    let error = error_of(&out, &["reported as leaked", "PERMISSION_DENIED"]);
    assert_eq!(error.kind, ErrorKind::Http);
    assert_eq!(error.status, Some(403));
    assert!(!error.retryable);
    assert!(
        error.to_string().contains("rejected the API key"),
        "{error}"
    );
    settle().await;
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_thinking_is_not_part_of_the_answer() {
    colloquy::install_crypto_provider();
    // Extended thinking: a thinking block (thinking and signature deltas) before the text.
    let wire = Wire::Anthropic;
    let thinking = [
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"The user wants a greeting. Keep it short.\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    ];
    let text_block = [
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    ];
    let mut frames = vec![ANTHROPIC_START.to_owned()];
    frames.extend(thinking.iter().map(|f| (*f).to_owned()));
    frames.extend(text_block.iter().map(|f| (*f).to_owned()));
    frames.push(ANTHROPIC_MESSAGE_DELTA.replace("@REASON@", "end_turn"));
    frames.push(ANTHROPIC_STOP.to_owned());
    let up = FakeUpstream::start(vec![wire.sse(&frames)]).await;
    let out = run_wire(wire, &up, settings()).await;
    assert_eq!(out.error, None, "{out:?}");
    assert_eq!(out.chunks, ["Hello", "!"]);
    assert_eq!(out.finish, Some(FinishReason::Stop));
    assert_eq!(out.usage, Some(wire.reported_usage()));
}

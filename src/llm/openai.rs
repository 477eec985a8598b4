//! OpenAI Chat Completions streaming, and every server that speaks it (OpenRouter, Ollama,
//! vLLM, llama.cpp's server, LM Studio) through a configurable base URL.
//!
//! `POST {base}/chat/completions` with `stream: true` and `stream_options.include_usage`;
//! events are `data: {chat.completion.chunk}` lines ending with `data: [DONE]`. The usage
//! chunk (empty `choices`) comes last when the server supports it; others send none and the
//! engine counts.

use eventsource_stream::Event;
use serde_json::{Value, json};

use crate::llm::stream::{Step, WireError, WireFormat, WireState, event_json};
use crate::llm::{ChatRequest, ChatRole, ErrorKind, FinishReason};

pub struct OpenAiWire;

fn role(role: ChatRole) -> &'static str {
    match role {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
    }
}

pub fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

impl WireFormat for OpenAiWire {
    fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        request: &ChatRequest,
        api_key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| json!({ "role": role(m.role), "content": m.content }))
            .collect();
        let mut body = json!({
            "model": request.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": request.max_output_tokens,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(crate::llm::decimal_f64(t));
        }
        if !request.stop.is_empty() {
            body["stop"] = json!(request.stop);
        }
        let mut builder = client
            .post(format!("{base_url}/chat/completions"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            builder = builder.bearer_auth(key);
        }
        builder
    }

    fn event(
        &self,
        event: &Event,
        state: &mut WireState,
        texts: &mut Vec<String>,
    ) -> Result<Step, WireError> {
        if event.data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let Some(chunk) = event_json(event)? else {
            return Ok(Step::Continue);
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .or_else(|| error.get("type").and_then(Value::as_str))
                .unwrap_or_default();
            return Err(WireError {
                kind: ErrorKind::Upstream,
                retryable: matches!(
                    code,
                    "server_error" | "rate_limit_exceeded" | "overloaded" | "internal_error"
                ),
                detail: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(code)
                    .to_owned(),
            });
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let get = |k: &str| usage.get(k).and_then(Value::as_u64).map(|n| n as u32);
            state.prompt_tokens = get("prompt_tokens").or(state.prompt_tokens);
            state.completion_tokens = get("completion_tokens").or(state.completion_tokens);
        }
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str) {
                texts.push(text.to_owned());
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                state.finish = Some(finish_reason(reason));
            }
        }
        Ok(Step::Continue)
    }
}

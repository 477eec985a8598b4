//! Google Gemini: `POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse` with
//! `x-goog-api-key`. Each event is a whole `GenerateContentResponse`; the last carries a
//! `finishReason` and `usageMetadata`, and the connection then closes (no end marker).

use eventsource_stream::Event;
use serde_json::{Value, json};

use crate::llm::stream::{Step, WireError, WireFormat, WireState, event_json};
use crate::llm::{ChatRequest, ChatRole, ErrorKind, FinishReason, system_and_turns};

pub struct GeminiWire;

impl WireFormat for GeminiWire {
    fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        request: &ChatRequest,
        api_key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let (system, turns) = system_and_turns(&request.messages);
        let mut generation = json!({ "maxOutputTokens": request.max_output_tokens });
        if let Some(t) = request.temperature {
            generation["temperature"] = json!(crate::llm::decimal_f64(t));
        }
        if !request.stop.is_empty() {
            generation["stopSequences"] = json!(request.stop);
        }
        let mut body = json!({
            "contents": turns
                .into_iter()
                .map(|(role, text)| {
                    let role = if role == ChatRole::Assistant { "model" } else { "user" };
                    json!({ "role": role, "parts": [{ "text": text }] })
                })
                .collect::<Vec<_>>(),
            "generationConfig": generation,
        });
        if let Some(system) = system {
            body["systemInstruction"] = json!({ "parts": [{ "text": system }] });
        }
        client
            .post(format!(
                "{base_url}/v1beta/models/{}:streamGenerateContent?alt=sse",
                request.model
            ))
            .header("x-goog-api-key", api_key.unwrap_or_default())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body)
    }

    fn event(
        &self,
        event: &Event,
        state: &mut WireState,
        texts: &mut Vec<String>,
    ) -> Result<Step, WireError> {
        let Some(data) = event_json(event)? else {
            return Ok(Step::Continue);
        };
        if let Some(error) = data.get("error") {
            let status = error
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(WireError {
                kind: ErrorKind::Upstream,
                retryable: matches!(status, "RESOURCE_EXHAUSTED" | "UNAVAILABLE" | "INTERNAL"),
                detail: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or(status)
                    .to_owned(),
            });
        }
        if let Some(candidate) = data.pointer("/candidates/0") {
            for part in candidate
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                // Thought summaries are not part of the answer.
                if part.get("thought").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    texts.push(text.to_owned());
                }
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                state.finish = Some(match reason {
                    "STOP" => FinishReason::Stop,
                    "MAX_TOKENS" => FinishReason::Length,
                    "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
                        FinishReason::ContentFilter
                    }
                    other => FinishReason::Other(other.to_owned()),
                });
            }
        }
        if data.pointer("/promptFeedback/blockReason").is_some() {
            state.finish = Some(FinishReason::ContentFilter);
        }
        if let Some(usage) = data.get("usageMetadata") {
            let get = |k: &str| usage.get(k).and_then(Value::as_u64).map(|n| n as u32);
            if let Some(prompt) = get("promptTokenCount") {
                state.prompt_tokens = Some(prompt);
            }
            if let Some(output) = get("candidatesTokenCount") {
                state.completion_tokens = Some(output + get("thoughtsTokenCount").unwrap_or(0));
            }
        }
        Ok(Step::Continue)
    }
}

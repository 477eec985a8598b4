//! Anthropic Messages streaming: `POST {base}/v1/messages` with `x-api-key` and
//! `anthropic-version`; events `message_start` (input usage), `content_block_delta` (text),
//! `message_delta` (stop reason, output usage), `message_stop`, `ping`, `error`.

use eventsource_stream::Event;
use serde_json::{Value, json};

use crate::llm::stream::{Step, WireError, WireFormat, WireState, event_json};
use crate::llm::{ChatRequest, ChatRole, ErrorKind, FinishReason, system_and_turns};

pub const API_VERSION: &str = "2023-06-01";

pub struct AnthropicWire;

/// Anthropic takes the system prompt apart, wants user/assistant turns that start with the
/// user and alternate, and refuses empty text: merge and drop accordingly.
fn turns(request: &ChatRequest) -> (Option<String>, Vec<Value>) {
    let (system, turns) = system_and_turns(&request.messages);
    let turns = turns
        .into_iter()
        .skip_while(|(role, _)| *role == ChatRole::Assistant)
        .map(|(role, text)| {
            let role = if role == ChatRole::Assistant {
                "assistant"
            } else {
                "user"
            };
            json!({ "role": role, "content": text })
        })
        .collect();
    (system, turns)
}

impl WireFormat for AnthropicWire {
    fn request(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        request: &ChatRequest,
        api_key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let (system, messages) = turns(request);
        let mut body = json!({
            "model": request.model,
            "max_tokens": request.max_output_tokens,
            "messages": messages,
            "stream": true,
        });
        if let Some(system) = system {
            body["system"] = json!(system);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(crate::llm::decimal_f64(t));
        }
        if !request.stop.is_empty() {
            body["stop_sequences"] = json!(request.stop);
        }
        client
            .post(format!("{base_url}/v1/messages"))
            .header("x-api-key", api_key.unwrap_or_default())
            .header("anthropic-version", API_VERSION)
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
        let kind = if event.event.is_empty() || event.event == "message" {
            data.get("type").and_then(Value::as_str).unwrap_or_default()
        } else {
            event.event.as_str()
        };
        let tokens = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as u32);
        match kind {
            "message_start" => {
                state.prompt_tokens = tokens(data.pointer("/message/usage/input_tokens"));
            }
            "content_block_delta" => {
                if let Some(text) = data.pointer("/delta/text").and_then(Value::as_str) {
                    texts.push(text.to_owned());
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    state.finish = Some(match reason {
                        "end_turn" | "stop_sequence" => FinishReason::Stop,
                        "max_tokens" => FinishReason::Length,
                        "refusal" => FinishReason::ContentFilter,
                        other => FinishReason::Other(other.to_owned()),
                    });
                }
                if let Some(output) = tokens(data.pointer("/usage/output_tokens")) {
                    state.completion_tokens = Some(output);
                }
                if let Some(input) = tokens(data.pointer("/usage/input_tokens")) {
                    state.prompt_tokens = Some(input);
                }
            }
            "message_stop" => return Ok(Step::Done),
            "error" => {
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return Err(WireError {
                    kind: ErrorKind::Upstream,
                    retryable: matches!(
                        kind,
                        "overloaded_error" | "api_error" | "rate_limit_error"
                    ),
                    detail: data
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or(kind)
                        .to_owned(),
                });
            }
            // ping, content_block_start, content_block_stop and future event types.
            _ => {}
        }
        Ok(Step::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[test]
    fn turns_are_merged_and_start_with_the_user() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::new(ChatRole::System, "be brief"),
                ChatMessage::new(ChatRole::Assistant, "orphan"),
                ChatMessage::new(ChatRole::User, "a"),
                ChatMessage::new(ChatRole::User, "b"),
                ChatMessage::new(ChatRole::Assistant, ""),
                ChatMessage::new(ChatRole::Assistant, "c"),
            ],
            temperature: None,
            max_output_tokens: 10,
            stop: vec![],
        };
        let (system, turns) = turns(&request);
        assert_eq!(system.as_deref(), Some("be brief"));
        assert_eq!(
            turns,
            vec![
                json!({ "role": "user", "content": "a\n\nb" }),
                json!({ "role": "assistant", "content": "c" })
            ]
        );
    }
}

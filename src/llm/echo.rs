//! `local/echo`: an in-process model for development, tests and benchmarks. No network, no
//! key. It answers `Echo: <the last user message>` word by word, one word per token, with a
//! configurable delay per token; it honours the output-token limit and reports exact usage.
//!
//! A last user message of the form `/words N` gets N numbered words instead
//! (`word1 word2 …`), for long deterministic streams.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::llm::stream::receiver_stream;
use crate::llm::tokens::Tokenizer;
use crate::llm::{ChatRequest, ChatRole, Chunk, ChunkStream, FinishReason, Provider, Usage};

pub struct EchoProvider {
    delay: Duration,
}

impl EchoProvider {
    pub fn new(delay: Duration) -> Self {
        EchoProvider { delay }
    }
}

/// The words the echo model answers `request` with, each with its leading space.
pub fn reply_words(request: &ChatRequest) -> Vec<String> {
    let last = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == ChatRole::User)
        .map(|m| m.content.trim())
        .unwrap_or_default();
    let words: Vec<String> = match last
        .strip_prefix("/words ")
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        Some(n) => (1..=n.min(100_000)).map(|i| format!("word{i}")).collect(),
        None if last.is_empty() => vec!["Echo:".into(), "(nothing)".into()],
        None => std::iter::once("Echo:".to_owned())
            .chain(last.split_whitespace().map(str::to_owned))
            .collect(),
    };
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w } else { format!(" {w}") })
        .collect()
}

impl Provider for EchoProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn stream(&self, request: ChatRequest, _api_key: Option<String>) -> ChunkStream {
        let (tx, rx) = mpsc::channel(64);
        let delay = self.delay;
        tokio::spawn(async move {
            let words = reply_words(&request);
            let limit = request.max_output_tokens as usize;
            let prompt_tokens = Tokenizer::Cl100k.count_prompt(&request.messages) as u32;
            let mut sent = 0u32;
            for word in words.iter().take(limit) {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if tx.send(Ok(Chunk::Text(word.clone()))).await.is_err() {
                    return;
                }
                sent += 1;
            }
            let usage = Usage {
                prompt_tokens,
                completion_tokens: sent,
                estimated: false,
            };
            let finish = if words.len() > limit {
                FinishReason::Length
            } else {
                FinishReason::Stop
            };
            if tx.send(Ok(Chunk::Usage(usage))).await.is_ok() {
                let _ = tx.send(Ok(Chunk::Finish(finish))).await;
            }
        });
        receiver_stream(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, collect};

    fn request(text: &str, max: u32) -> ChatRequest {
        ChatRequest {
            model: "echo".into(),
            messages: vec![ChatMessage::new(ChatRole::User, text)],
            temperature: None,
            max_output_tokens: max,
            stop: vec![],
        }
    }

    #[tokio::test]
    async fn echoes_word_by_word() {
        let p = EchoProvider::new(Duration::ZERO);
        let out = collect(p.stream(request("hello  big world", 100), None)).await;
        assert_eq!(out.text, "Echo: hello big world");
        assert_eq!(out.chunks.len(), 4);
        assert_eq!(out.finish, Some(FinishReason::Stop));
        assert_eq!(out.usage.map(|u| u.completion_tokens), Some(4));
    }

    #[tokio::test]
    async fn honours_max_tokens() {
        let p = EchoProvider::new(Duration::ZERO);
        let out = collect(p.stream(request("/words 10", 3), None)).await;
        assert_eq!(out.text, "word1 word2 word3");
        assert_eq!(out.finish, Some(FinishReason::Length));
        assert_eq!(out.usage.map(|u| u.completion_tokens), Some(3));
    }
}

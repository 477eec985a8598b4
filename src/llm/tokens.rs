//! Token counting with tiktoken: `o200k_base` for OpenAI's current families (GPT-4o, 4.1,
//! o-series), `cl100k_base` for older OpenAI models and as an honest estimate for everyone
//! else (Anthropic, Gemini and open models use their own tokenizers; cl100k is usually
//! within about 10-20% of them). Used for context budgeting and when a provider reports no
//! usage; provider-reported usage always wins.

use serde::{Deserialize, Serialize};

use crate::llm::ChatMessage;

/// Tokens added per message by chat formatting (role markers), per OpenAI's cookbook.
const PER_MESSAGE: usize = 3;
/// Tokens that prime the reply.
const REPLY_PRIMER: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    O200k,
    #[default]
    Cl100k,
}

impl Tokenizer {
    /// The tokenizer that fits an upstream model name.
    pub fn for_model(provider_wire: &str, upstream: &str) -> Tokenizer {
        let m = upstream.to_ascii_lowercase();
        let openai_family = provider_wire == "openai" || m.starts_with("openai/");
        let name = m.rsplit('/').next().unwrap_or(&m);
        if openai_family
            && (name.starts_with("gpt-4o")
                || name.starts_with("gpt-4.1")
                || name.starts_with("gpt-5")
                || name.starts_with("o1")
                || name.starts_with("o3")
                || name.starts_with("o4"))
        {
            Tokenizer::O200k
        } else {
            Tokenizer::Cl100k
        }
    }

    fn bpe(self) -> &'static tiktoken_rs::CoreBPE {
        match self {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    pub fn count(self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_with_special_tokens(text).len()
    }

    /// Tokens a message costs in a prompt.
    pub fn count_message(self, message: &ChatMessage) -> usize {
        PER_MESSAGE + self.count(&message.content)
    }

    /// Tokens of a whole prompt.
    pub fn count_prompt(self, messages: &[ChatMessage]) -> usize {
        messages
            .iter()
            .map(|m| self.count_message(m))
            .sum::<usize>()
            + REPLY_PRIMER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatRole;

    #[test]
    fn families_and_counts() {
        assert_eq!(
            Tokenizer::for_model("openai", "gpt-4o-mini"),
            Tokenizer::O200k
        );
        assert_eq!(
            Tokenizer::for_model("openai", "gpt-3.5-turbo"),
            Tokenizer::Cl100k
        );
        assert_eq!(
            Tokenizer::for_model("openai", "openai/gpt-4o"),
            Tokenizer::O200k
        );
        assert_eq!(
            Tokenizer::for_model("anthropic", "claude-3-5-haiku-latest"),
            Tokenizer::Cl100k
        );
        assert_eq!(Tokenizer::O200k.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100k.count(""), 0);
        let prompt = [ChatMessage::new(ChatRole::User, "hello world")];
        assert_eq!(Tokenizer::O200k.count_prompt(&prompt), 2 + 3 + 3);
    }
}

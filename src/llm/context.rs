//! What of a branch goes to the model: the system prompt (always), then the newest messages
//! that fit in the context window minus the output budget, at most `max_messages` of them,
//! whole messages only, oldest first.

use crate::llm::tokens::Tokenizer;
use crate::llm::{ChatMessage, ChatRole};

#[derive(Debug, PartialEq, Eq)]
pub enum ContextError {
    /// Even the newest message alone (with the system prompt) does not fit.
    TooLong { needed: usize, budget: usize },
}

pub struct Context {
    pub messages: Vec<ChatMessage>,
    /// Prompt tokens as counted by us.
    pub prompt_tokens: usize,
    /// Branch messages left out because they did not fit.
    pub dropped: usize,
}

pub fn build(
    system_prompt: Option<&str>,
    branch: &[ChatMessage],
    context_window: u32,
    max_output_tokens: u32,
    max_messages: usize,
    tokenizer: Tokenizer,
) -> Result<Context, ContextError> {
    let budget = context_window.saturating_sub(max_output_tokens) as usize;
    let system = system_prompt
        .filter(|p| !p.trim().is_empty())
        .map(|p| ChatMessage::new(ChatRole::System, p));
    // Reply priming and the system prompt are always paid for.
    let mut used =
        tokenizer.count_prompt(&[]) + system.as_ref().map_or(0, |s| tokenizer.count_message(s));
    let mut kept = Vec::new();
    for message in branch.iter().rev().take(max_messages.max(1)) {
        let cost = tokenizer.count_message(message);
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(message.clone());
    }
    if kept.is_empty()
        && let Some(newest) = branch.last()
    {
        return Err(ContextError::TooLong {
            needed: used + tokenizer.count_message(newest),
            budget,
        });
    }
    let dropped = branch.len() - kept.len();
    kept.reverse();
    let mut messages = Vec::with_capacity(kept.len() + 1);
    messages.extend(system);
    messages.extend(kept);
    Ok(Context {
        messages,
        prompt_tokens: used,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(n: usize) -> Vec<ChatMessage> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 {
                    ChatRole::User
                } else {
                    ChatRole::Assistant
                };
                ChatMessage::new(role, format!("message number {i} with some words"))
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_that_fit_and_the_system_prompt() {
        let t = Tokenizer::Cl100k;
        let b = branch(10);
        let all = build(Some("sys"), &b, 100_000, 1_000, 50, t).expect("fits");
        assert_eq!(all.messages.len(), 11);
        assert_eq!(all.messages[0].role, ChatRole::System);
        assert_eq!(all.dropped, 0);

        let capped = build(Some("sys"), &b, 100_000, 1_000, 4, t).expect("fits");
        assert_eq!(capped.messages.len(), 5);
        assert_eq!(
            capped.messages[1].content, b[6].content,
            "the newest four, oldest first"
        );

        // A window that holds the system prompt and about three messages.
        let per = t.count_message(&b[0]);
        let window = (t.count_prompt(&[])
            + t.count_message(&ChatMessage::new(ChatRole::System, "sys"))
            + 3 * per
            + per / 2) as u32;
        let tight = build(Some("sys"), &b, window + 100, 100, 50, t).expect("fits");
        assert_eq!(tight.messages.len(), 4);
        assert_eq!(tight.dropped, 7);
        assert_eq!(tight.messages.last(), b.last());
        assert!(tight.prompt_tokens <= window as usize);
    }

    #[test]
    fn a_message_too_long_for_the_window_is_an_error() {
        let b = vec![ChatMessage::new(ChatRole::User, "word ".repeat(500))];
        let err = build(None, &b, 200, 100, 50, Tokenizer::Cl100k).err();
        assert!(
            matches!(err, Some(ContextError::TooLong { budget: 100, .. })),
            "{err:?}"
        );
    }
}

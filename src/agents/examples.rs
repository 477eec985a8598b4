//! The example agents every new workspace starts with (unless `EXAMPLE_AGENTS=false`).
//!
//! Each example names the models it would like, best first. It gets the first one in the
//! catalog whose provider has a server key (or needs none); when none has, `DEFAULT_MODEL`
//! if it is usable, else `local/echo`, so the examples work on a fresh checkout and pick up
//! real models once a key is configured.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::agents::model::{Agent, NewAgent};
use crate::app::App;
use crate::error::AppResult;

/// What a model is chosen for: quick, cheap turns, or harder reasoning.
#[derive(Debug, Clone, Copy)]
enum Tier {
    /// Everyday chat: a capable, inexpensive model.
    Balanced,
    /// Short, mechanical work (summaries, translation): the smallest fast model.
    Fast,
    /// Code and planning: the strongest model.
    Strong,
}

impl Tier {
    fn preferences(self) -> &'static [&'static str] {
        match self {
            Tier::Balanced => &[
                "openai/gpt-4.1-mini",
                "anthropic/claude-sonnet-4-0",
                "google/gemini-2.5-flash",
                "openrouter/openai/gpt-4o-mini",
            ],
            Tier::Fast => &[
                "openai/gpt-4o-mini",
                "anthropic/claude-3-5-haiku-latest",
                "google/gemini-2.0-flash",
                "openrouter/openai/gpt-4o-mini",
            ],
            Tier::Strong => &[
                "openai/gpt-4.1",
                "anthropic/claude-sonnet-4-0",
                "google/gemini-2.5-flash",
                "openrouter/meta-llama/llama-3.3-70b-instruct",
            ],
        }
    }
}

struct Example {
    name: &'static str,
    avatar: &'static str,
    description: &'static str,
    tier: Tier,
    temperature: f32,
    max_output_tokens: Option<i32>,
    system_prompt: &'static str,
}

const EXAMPLES: [Example; 5] = [
    Example {
        name: "General assistant",
        avatar: "🤖",
        description: "Answers questions, drafts and explains, for everyday work.",
        tier: Tier::Balanced,
        temperature: 0.7,
        max_output_tokens: None,
        system_prompt: "You are a helpful, knowledgeable assistant. Answer clearly and \
            directly, starting with the answer, then the detail that matters. Use short \
            paragraphs or lists when they help. If a request is ambiguous, ask one brief \
            clarifying question. Say so when you are unsure; never invent facts, sources or \
            numbers.",
    },
    Example {
        name: "Code helper",
        avatar: "👩‍💻",
        description: "Writes, reviews and debugs code, with working examples.",
        tier: Tier::Strong,
        temperature: 0.2,
        max_output_tokens: None,
        system_prompt: "You are a senior software engineer. Give correct, idiomatic, \
            production-quality code in fenced blocks with the language named. Explain the \
            approach briefly, point out edge cases, errors and security issues, and prefer \
            the standard library and simple designs. When debugging, find the root cause \
            before proposing a fix. If the language, version or constraints matter and are \
            not given, state your assumption.",
    },
    Example {
        name: "Summariser",
        avatar: "📝",
        description: "Turns long text into a short summary with the key points.",
        tier: Tier::Fast,
        temperature: 0.3,
        max_output_tokens: Some(1024),
        system_prompt: "You summarise text. Start with a one-sentence summary, then list \
            the key points, decisions, numbers and action items as short bullets. Keep the \
            author's meaning; add nothing that is not in the text. Unless asked otherwise, \
            keep the summary under a fifth of the original's length, in the original's \
            language.",
    },
    Example {
        name: "Strategist",
        avatar: "🧭",
        description: "Thinks through decisions, plans and trade-offs with you.",
        tier: Tier::Strong,
        temperature: 0.7,
        max_output_tokens: None,
        system_prompt: "You are a pragmatic strategy advisor. Clarify the goal and \
            constraints first, then lay out two or three options with their trade-offs, \
            risks and rough costs, and recommend one with your reasoning. Be concrete: \
            name next steps, owners and how to measure success. Challenge assumptions \
            politely, and ask for missing context that would change the answer.",
    },
    Example {
        name: "Translator",
        avatar: "🌍",
        description: "Translates between languages, keeping tone and formatting.",
        tier: Tier::Fast,
        temperature: 0.2,
        max_output_tokens: None,
        system_prompt: "You are a professional translator. Translate the user's text into \
            the language they ask for; if they name none, translate into English, or from \
            English into the language of their previous messages. Keep meaning, tone, \
            formatting, names and code unchanged in spirit; reply with the translation \
            only, adding a short note only when something cannot be translated faithfully.",
    },
];

/// The model for `tier` on this server: see the module docs.
fn model_for(app: &App, tier: Tier) -> String {
    let usable = |id: &str| {
        app.providers
            .model(id)
            .is_some_and(|spec| app.providers.available(&spec.provider, false))
    };
    let default_model = app.config.chat.default_model.as_str();
    tier.preferences()
        .iter()
        .copied()
        .find(|id| usable(id))
        .or_else(|| usable(default_model).then_some(default_model))
        .or_else(|| usable("local/echo").then_some("local/echo"))
        .unwrap_or(default_model)
        .to_owned()
}

/// The example agents for a new workspace.
pub fn for_workspace(app: &App, workspace_id: Uuid) -> Vec<NewAgent> {
    EXAMPLES
        .iter()
        .map(|e| NewAgent {
            id: Uuid::now_v7(),
            workspace_id,
            name: e.name.to_owned(),
            description: Some(e.description.to_owned()),
            avatar: e.avatar.to_owned(),
            model: model_for(app, e.tier),
            system_prompt: Some(e.system_prompt.to_owned()),
            temperature: Some(e.temperature),
            max_output_tokens: e.max_output_tokens,
            // Nobody made them: ADMINs and OWNERs edit them, members use them.
            created_by: None,
        })
        .collect()
}

/// Adds the example agents to a workspace being created, unless `EXAMPLE_AGENTS` is off.
/// Call inside the transaction that creates the workspace.
pub async fn add(conn: &mut AsyncPgConnection, app: &App, workspace_id: Uuid) -> AppResult<()> {
    if app.config.agents.examples {
        Agent::insert_many(conn, &for_workspace(app, workspace_id)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::service::{normalize_avatar, normalize_description, normalize_name};
    use crate::conversations::service::normalize_system_prompt;

    #[test]
    fn examples_pass_the_rules_of_createagent() {
        for e in &EXAMPLES {
            assert_eq!(normalize_name(e.name).expect("name"), e.name);
            assert_eq!(normalize_avatar(e.avatar).expect("avatar"), e.avatar);
            assert!(normalize_description(e.description).is_ok());
            assert!(normalize_system_prompt(e.system_prompt).is_ok());
            assert!((0.0..=2.0).contains(&e.temperature));
            assert!(!e.system_prompt.contains("  "), "{}", e.name);
        }
    }

    #[test]
    fn preferred_models_are_in_the_catalog() {
        let catalog = crate::llm::catalog::Catalog::builtin();
        for tier in [Tier::Balanced, Tier::Fast, Tier::Strong] {
            for id in tier.preferences() {
                assert!(catalog.model(id).is_some(), "{id}");
            }
        }
    }
}

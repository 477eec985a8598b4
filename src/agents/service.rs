//! Agent rules: who may do what, input checks, and the per-workspace limit.
//!
//! Any member lists agents and creates them; the creator or an ADMIN or OWNER edits and
//! deletes one. To a non-member an agent does not exist (NOT_FOUND).

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::agents::model::{Agent, AgentChanges, NewAgent};
use crate::app::App;
use crate::auth::Viewer;
use crate::conversations::service::{
    normalize_max_output_tokens, normalize_system_prompt, normalize_temperature,
};
use crate::error::{AppError, AppResult};
use crate::llm::keys::ProviderKeyRow;
use crate::validate;
use crate::workspaces::access::require;
use crate::workspaces::model::{Role, Workspace};

/// Most agents one workspace holds.
pub const MAX_AGENTS_PER_WORKSPACE: i64 = 200;
pub const MAX_NAME_CHARS: usize = 80;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// An avatar is one emoji of at most this many bytes.
pub const MAX_AVATAR_BYTES: usize = 16;
/// The avatar of an agent created without one.
pub const DEFAULT_AVATAR: &str = "🤖";

pub fn normalize_name(raw: &str) -> AppResult<String> {
    validate::single_line("name", raw, 1, MAX_NAME_CHARS)
}

/// Trimmed, at most 500 characters; empty means none.
pub fn normalize_description(raw: &str) -> AppResult<Option<String>> {
    let description = validate::long_text("description", raw.trim(), MAX_DESCRIPTION_CHARS)?;
    Ok((!description.is_empty()).then_some(description))
}

/// One emoji (🤖, 👩‍💻, 🇵🇹, 1️⃣), at most 16 bytes once trimmed.
pub fn normalize_avatar(raw: &str) -> AppResult<String> {
    let avatar = raw.trim();
    if avatar.len() > MAX_AVATAR_BYTES || !is_one_emoji(avatar) {
        return Err(AppError::bad_input(
            "avatar",
            format!("avatar must be a single emoji of at most {MAX_AVATAR_BYTES} bytes"),
        ));
    }
    Ok(avatar.to_owned())
}

fn is_pictographic(c: char) -> bool {
    matches!(c as u32,
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139
        | 0x2194..=0x21AA | 0x231A..=0x23FF | 0x24C2 | 0x25AA..=0x27BF
        | 0x2934..=0x2935 | 0x2B05..=0x2B55 | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x1F000..=0x1FAFF)
}

fn is_regional_indicator(c: char) -> bool {
    matches!(c as u32, 0x1F1E6..=0x1F1FF)
}

/// What may follow a pictograph inside one emoji: variation selectors, skin tones, tags.
fn is_modifier(c: char) -> bool {
    matches!(c as u32, 0xFE0E..=0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F)
}

const ZWJ: char = '\u{200D}';
const KEYCAP: char = '\u{20E3}';

/// True when `s` is exactly one emoji: a keycap (`1️⃣`), a flag (two regional indicators),
/// or pictographs joined by zero-width joiners, each with its modifiers. A small subset of
/// Unicode's emoji grammar, enough to tell an emoji from text without a Unicode table.
pub fn is_one_emoji(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let Some(&first) = chars.first() else {
        return false;
    };
    if matches!(first, '0'..='9' | '#' | '*') {
        return matches!(chars[1..], [KEYCAP] | ['\u{FE0F}', KEYCAP]);
    }
    if is_regional_indicator(first) {
        return chars.len() == 2 && is_regional_indicator(chars[1]);
    }
    let mut expect_pictograph = true;
    for c in chars {
        if expect_pictograph {
            if !is_pictographic(c) {
                return false;
            }
            expect_pictograph = false;
        } else if c == ZWJ {
            expect_pictograph = true;
        } else if !is_modifier(c) {
            return false;
        }
    }
    !expect_pictograph
}

/// A model id for an agent of `workspace_id`: in the catalog, and available there (no key
/// needed, a server key, or the workspace's own). BAD_USER_INPUT on `model` otherwise.
pub async fn check_model(
    app: &App,
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    raw: &str,
) -> AppResult<String> {
    let model = crate::conversations::service::normalize_model(app, raw)?;
    let provider = app
        .providers
        .model(&model)
        .map(|spec| spec.provider.clone())
        .unwrap_or_default();
    let workspace_key = ProviderKeyRow::find(conn, workspace_id, &provider)
        .await?
        .is_some();
    if !app.providers.available(&provider, workspace_key) {
        return Err(AppError::bad_input(
            "model",
            format!(
                "model `{model}` is not available: no API key for provider `{provider}` (set one with setProviderKey)"
            ),
        ));
    }
    Ok(model)
}

/// A new agent's fields as given (checked by `create`).
#[derive(Debug, Default)]
pub struct AgentInput {
    pub name: String,
    pub description: Option<String>,
    pub avatar: Option<String>,
    /// None: the server's `DEFAULT_MODEL`.
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<i32>,
}

/// The agent if the viewer is a member of its workspace, with the role held there;
/// NOT_FOUND otherwise, whether or not it exists.
pub async fn require_agent(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<(Agent, Role)> {
    let (agent, role) = Agent::find_for_member(conn, id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("agent"))?;
    Ok((agent, Role::from_db(&role)))
}

/// FORBIDDEN unless the viewer created the agent or is an ADMIN or OWNER.
fn may_edit(viewer: &Viewer, agent: &Agent, role: Role) -> AppResult<()> {
    if agent.created_by != Some(viewer.user_id) && role < Role::Admin {
        return Err(AppError::Forbidden(
            "only its creator or a workspace ADMIN can change an agent".to_owned(),
        ));
    }
    Ok(())
}

/// A workspace's agents, by name (any member).
pub async fn list(app: &App, viewer: &Viewer, workspace_id: Uuid) -> AppResult<Vec<Agent>> {
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, workspace_id, Role::Member).await?;
    Ok(Agent::list(&mut conn, workspace_id).await?)
}

/// Creates an agent (any member), within the workspace's limit.
pub async fn create(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    input: AgentInput,
) -> AppResult<Agent> {
    let name = normalize_name(&input.name)?;
    let description = input
        .description
        .as_deref()
        .map(normalize_description)
        .transpose()?
        .flatten();
    let avatar = match input.avatar.as_deref() {
        Some(raw) => normalize_avatar(raw)?,
        None => DEFAULT_AVATAR.to_owned(),
    };
    let system_prompt = input
        .system_prompt
        .as_deref()
        .map(normalize_system_prompt)
        .transpose()?
        .flatten();
    let temperature = input
        .temperature
        .map(|t| normalize_temperature("temperature", t))
        .transpose()?;
    let max_output_tokens = input
        .max_output_tokens
        .map(|n| normalize_max_output_tokens("maxOutputTokens", n))
        .transpose()?;
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, workspace_id, Role::Member).await?;
    let model = check_model(
        app,
        &mut conn,
        workspace_id,
        input
            .model
            .as_deref()
            .unwrap_or(&app.config.chat.default_model),
    )
    .await?;
    let new = NewAgent {
        id: Uuid::now_v7(),
        workspace_id,
        name,
        description,
        avatar,
        model,
        system_prompt,
        temperature,
        max_output_tokens,
        created_by: Some(viewer.user_id),
    };
    conn.transaction::<_, AppError, _>(async |conn| {
        // Serialises creations in one workspace, so the limit holds under concurrency.
        Workspace::lock(conn, workspace_id).await?;
        if Agent::count(conn, workspace_id).await? >= MAX_AGENTS_PER_WORKSPACE {
            return Err(AppError::Conflict(format!(
                "a workspace holds at most {MAX_AGENTS_PER_WORKSPACE} agents; delete one first"
            )));
        }
        Ok(Agent::insert(conn, &new).await?)
    })
    .await
}

/// Changes an agent (its creator, or an ADMIN or OWNER). `changes` is already checked but
/// for the model, which is checked here against the workspace's keys. Conversations started
/// from the agent keep the settings they copied.
pub async fn update(
    app: &App,
    viewer: &Viewer,
    id: Uuid,
    mut changes: AgentChanges,
) -> AppResult<Agent> {
    let mut conn = app.db.get().await?;
    let (agent, role) = require_agent(&mut conn, viewer, id).await?;
    may_edit(viewer, &agent, role)?;
    if let Some(model) = &changes.model {
        changes.model = Some(check_model(app, &mut conn, agent.workspace_id, model).await?);
    }
    if changes.is_empty() {
        return Ok(agent);
    }
    Ok(Agent::update(&mut conn, id, &changes).await?)
}

/// Deletes an agent (its creator, or an ADMIN or OWNER). Conversations started from it stay,
/// with their settings, and no longer point at it.
pub async fn delete(app: &App, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = app.db.get().await?;
    let (agent, role) = require_agent(&mut conn, viewer, id).await?;
    may_edit(viewer, &agent, role)?;
    Ok(Agent::delete(&mut conn, id).await? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_are_one_emoji() {
        for ok in [
            "🤖",
            "👩‍💻",
            "🇵🇹",
            "1️⃣",
            "#⃣",
            "❤️",
            "👍🏽",
            "🧑🏿‍🚀",
            "☀",
            "⭐",
            " 🦀 ",
        ] {
            assert!(normalize_avatar(ok).is_ok(), "{ok:?} is one emoji");
        }
        for bad in [
            "",
            "a",
            "AI",
            "🤖🤖",
            "🇵",
            "🇵🇹🇵🇹",
            "1",
            "12⃣",
            "🤖a",
            "a🤖",
            "‍🤖",
            "🤖‍",
            "👨‍👩‍👧‍👦",
            "🤖 🤖",
        ] {
            assert!(normalize_avatar(bad).is_err(), "{bad:?} is not one emoji");
        }
    }

    #[test]
    fn descriptions_are_trimmed_and_bounded() {
        assert_eq!(
            normalize_description("  hi ").expect("ok").as_deref(),
            Some("hi")
        );
        assert_eq!(normalize_description("   ").expect("ok"), None);
        assert!(normalize_description(&"x".repeat(501)).is_err());
        assert!(normalize_name(&"x".repeat(81)).is_err());
        assert!(normalize_name("  ").is_err());
    }
}

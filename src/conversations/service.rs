//! Conversation operations, the message tree, branch selection and export.
//!
//! `insert_message` is the one way messages enter the tree: it hands out `seq`, checks the
//! parent, and moves the conversation's active leaf and listing counters in one transaction.

use async_graphql::Enum;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::agents::model::Agent;
use crate::app::App;
use crate::auth::Viewer;
use crate::conversations::model::{
    Conversation, ConversationChanges, Message, NewConversation, NewMessage,
};
use crate::error::{AppError, AppResult};
use crate::validate;
use crate::workspaces::access::require;
use crate::workspaces::model::Role;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 32_000;
/// Highest sampling temperature accepted (the common range of the providers).
pub const MAX_TEMPERATURE: f64 = 2.0;
/// Highest output cap accepted; at generation time it is also capped at the model's own.
pub const MAX_OUTPUT_TOKENS_CAP: i32 = 1_000_000;

/// The conversation if the viewer may see it (a member of its workspace), with the role held
/// there; NOT_FOUND otherwise, whether or not it exists.
pub async fn require_conversation(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    id: Uuid,
) -> AppResult<(Conversation, Role)> {
    let (conversation, role) = Conversation::find_for_member(conn, id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("conversation"))?;
    Ok((conversation, Role::from_db(&role)))
}

/// A title: trimmed, at most 200 characters; empty means none.
pub fn normalize_title(raw: &str) -> AppResult<Option<String>> {
    let title = validate::single_line("title", raw, 0, MAX_TITLE_CHARS)?;
    Ok((!title.is_empty()).then_some(title))
}

pub fn normalize_system_prompt(raw: &str) -> AppResult<Option<String>> {
    let prompt = validate::long_text("systemPrompt", raw, MAX_SYSTEM_PROMPT_CHARS)?;
    Ok((!prompt.trim().is_empty()).then_some(prompt))
}

/// A sampling temperature, 0 to 2.
pub fn normalize_temperature(field: &str, value: f64) -> AppResult<f32> {
    if !value.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&value) {
        return Err(AppError::bad_input(
            field,
            format!("{field} must be between 0 and {MAX_TEMPERATURE}"),
        ));
    }
    Ok(value as f32)
}

/// A cap on a reply's tokens: at least 1 (the model's own maximum still applies).
pub fn normalize_max_output_tokens(field: &str, value: i32) -> AppResult<i32> {
    if !(1..=MAX_OUTPUT_TOKENS_CAP).contains(&value) {
        return Err(AppError::bad_input(
            field,
            format!("{field} must be between 1 and {MAX_OUTPUT_TOKENS_CAP}"),
        ));
    }
    Ok(value)
}

/// A model id such as `openai/gpt-4o-mini`, which must be in the catalog (availability is
/// checked when a generation starts, with the workspace's keys in view).
pub fn normalize_model(app: &App, raw: &str) -> AppResult<String> {
    let model = validate::single_line("model", raw, 1, 200)?;
    if app.providers.model(&model).is_none() {
        return Err(AppError::bad_input(
            "model",
            format!("unknown model `{model}`; the `models` query lists them"),
        ));
    }
    Ok(model)
}

pub struct NewConversationInput<'a> {
    pub workspace_id: Uuid,
    pub title: Option<&'a str>,
    pub system_prompt: Option<&'a str>,
    pub model: Option<&'a str>,
    /// Copy this agent's model, system prompt and generation settings; the other fields
    /// given here win over the agent's.
    pub agent_id: Option<Uuid>,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<i32>,
}

/// Starts a conversation (any member). With an agent, the agent's settings are copied
/// into the conversation: editing the agent later changes no existing conversation.
pub async fn create(
    app: &App,
    viewer: &Viewer,
    input: NewConversationInput<'_>,
) -> AppResult<Conversation> {
    let title = input.title.map(normalize_title).transpose()?.flatten();
    let system_prompt = input
        .system_prompt
        .map(normalize_system_prompt)
        .transpose()?;
    let model = input.model.map(|m| normalize_model(app, m)).transpose()?;
    let temperature = input
        .temperature
        .map(|t| normalize_temperature("temperature", t))
        .transpose()?;
    let max_output_tokens = input
        .max_output_tokens
        .map(|n| normalize_max_output_tokens("maxOutputTokens", n))
        .transpose()?;
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, input.workspace_id, Role::Member).await?;
    let agent = match input.agent_id {
        // An agent of another workspace looks exactly like one that does not exist.
        Some(id) => Some(
            Agent::find_in(&mut conn, id, input.workspace_id)
                .await?
                .ok_or_else(|| AppError::bad_input("agentId", "no such agent in this workspace"))?,
        ),
        None => None,
    };
    let model = match (model, &agent) {
        (Some(model), _) => model,
        // The agent's model may have left the catalog since; it is checked like any other.
        (None, Some(agent)) => normalize_model(app, &agent.model)?,
        (None, None) => normalize_model(app, &app.config.chat.default_model)?,
    };
    let system_prompt = match system_prompt {
        Some(given) => given,
        None => agent.as_ref().and_then(|a| a.system_prompt.clone()),
    };
    Ok(Conversation::insert(
        &mut conn,
        &NewConversation {
            id: Uuid::now_v7(),
            workspace_id: input.workspace_id,
            created_by: Some(viewer.user_id),
            title: title.as_deref(),
            system_prompt: system_prompt.as_deref(),
            model: &model,
            agent_id: agent.as_ref().map(|a| a.id),
            temperature: temperature.or(agent.as_ref().and_then(|a| a.temperature)),
            max_output_tokens: max_output_tokens
                .or(agent.as_ref().and_then(|a| a.max_output_tokens)),
        },
    )
    .await?)
}

/// Any member may edit a conversation of the workspace.
pub async fn update(
    app: &App,
    viewer: &Viewer,
    id: Uuid,
    mut changes: ConversationChanges,
) -> AppResult<Conversation> {
    if let Some(model) = &changes.model {
        changes.model = Some(normalize_model(app, model)?);
    }
    let mut conn = app.db.get().await?;
    require_conversation(&mut conn, viewer, id).await?;
    let no_change = changes.title.is_none()
        && changes.system_prompt.is_none()
        && changes.model.is_none()
        && changes.pinned.is_none()
        && changes.archived.is_none()
        && changes.temperature.is_none()
        && changes.max_output_tokens.is_none();
    if no_change {
        return Conversation::find(&mut conn, id)
            .await?
            .ok_or_else(|| AppError::not_found("conversation"));
    }
    Ok(Conversation::update(&mut conn, id, &changes).await?)
}

/// Deletes a conversation with all its messages: its creator, or an ADMIN or OWNER.
pub async fn delete(app: &App, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = app.db.get().await?;
    let (conversation, role) = require_conversation(&mut conn, viewer, id).await?;
    if conversation.created_by != Some(viewer.user_id) && role < Role::Admin {
        return Err(AppError::Forbidden(
            "only its creator or a workspace ADMIN can delete a conversation".to_owned(),
        ));
    }
    // Answers still streaming stop first; their usage is still charged.
    for message_id in Message::streaming_in(&mut conn, id).await? {
        app.hub
            .stop(message_id, crate::streaming::hub::StopReason::Cancelled)
            .await;
    }
    Conversation::delete(&mut conn, id).await?;
    Ok(true)
}

/// What a message is inserted with.
pub struct MessageInsert<'a> {
    pub conversation_id: Uuid,
    /// None: a new root (the first message, or a sibling of the first one).
    pub parent_id: Option<Uuid>,
    pub role: &'a str,
    pub content: &'a str,
    pub status: &'a str,
    pub model: Option<&'a str>,
    pub created_by: Option<Uuid>,
    /// The client's idempotency key (user messages of `sendMessage`).
    pub client_message_id: Option<&'a str>,
    /// The process that will run the generation (`App::instance_id`): assistant messages
    /// inserted to be generated. None for everything else.
    pub runner_instance: Option<Uuid>,
}

/// Inserts a message into the tree and makes it the conversation's active leaf, updating the
/// listing counters, in one transaction (the caller's when it has one).
/// The caller has checked access. Unknown conversation: NOT_FOUND; a parent from elsewhere:
/// BAD_USER_INPUT.
pub async fn insert_message(
    conn: &mut AsyncPgConnection,
    insert: &MessageInsert<'_>,
) -> AppResult<Message> {
    // Inside the caller's transaction: no savepoint (two more round trips). Every caller
    // ends its transaction on an error from here, so a partial rollback is never needed.
    if crate::db::in_transaction(conn) {
        return insert_message_now(conn, insert).await;
    }
    conn.transaction::<_, AppError, _>(async |conn| insert_message_now(conn, insert).await)
        .await
}

async fn insert_message_now(
    conn: &mut AsyncPgConnection,
    insert: &MessageInsert<'_>,
) -> AppResult<Message> {
    let seq = Conversation::next_seq(conn, insert.conversation_id)
        .await?
        .ok_or_else(|| AppError::not_found("conversation"))?;
    let depth = match insert.parent_id {
        None => 1,
        Some(parent) => {
            Message::depth_in(conn, parent, insert.conversation_id)
                .await?
                .ok_or_else(|| {
                    AppError::bad_input("parentId", "no such message in this conversation")
                })?
                + 1
        }
    };
    let finished = matches!(insert.status, "COMPLETE" | "CANCELLED" | "FAILED");
    let message = Message::insert(
        conn,
        &NewMessage {
            id: Uuid::now_v7(),
            conversation_id: insert.conversation_id,
            parent_id: insert.parent_id,
            seq,
            depth,
            role: insert.role,
            content: insert.content,
            status: insert.status,
            model: insert.model,
            created_by: insert.created_by,
            completed_at: finished.then(chrono::Utc::now),
            client_message_id: insert.client_message_id,
            runner_instance: insert.runner_instance,
        },
    )
    .await?;
    Conversation::set_active_leaf(conn, insert.conversation_id, &message, true).await?;
    Ok(message)
}

/// Makes the newest leaf under `message_id` the active one, so the chat continues from
/// there.
pub async fn select_branch(
    app: &App,
    viewer: &Viewer,
    message_id: Uuid,
) -> AppResult<Conversation> {
    let mut conn = app.db.get().await?;
    let (_, conversation, _) = Message::find_for_member(&mut conn, message_id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("message"))?;
    conn.transaction::<_, AppError, _>(async |conn| {
        // Serialise with inserts into the same conversation.
        Conversation::lock(conn, conversation.id).await?;
        let leaf = Message::newest_leaf_under(conn, message_id)
            .await?
            .ok_or_else(|| AppError::not_found("message"))?;
        Ok(Conversation::set_active_leaf(conn, conversation.id, &leaf, false).await?)
    })
    .await
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Markdown,
}

/// Longest branch an export walks.
const EXPORT_MAX_MESSAGES: i64 = 100_000;

/// The active branch as a JSON document or Markdown.
pub async fn export(
    app: &App,
    viewer: &Viewer,
    id: Uuid,
    format: ExportFormat,
) -> AppResult<String> {
    let mut conn = app.db.get().await?;
    let (conversation, _) = require_conversation(&mut conn, viewer, id).await?;
    let messages = Message::active_branch(&mut conn, id, 0, EXPORT_MAX_MESSAGES).await?;
    Ok(match format {
        ExportFormat::Json => export_json(&conversation, &messages)?,
        ExportFormat::Markdown => export_markdown(&conversation, &messages),
    })
}

fn export_json(conversation: &Conversation, messages: &[Message]) -> AppResult<String> {
    let document = serde_json::json!({
        "id": conversation.id,
        "title": conversation.title,
        "systemPrompt": conversation.system_prompt,
        "model": conversation.model,
        "createdAt": conversation.created_at.to_rfc3339(),
        "messages": messages.iter().map(|m| serde_json::json!({
            "id": m.id,
            "parentId": m.parent_id,
            "role": m.role,
            "content": m.content,
            "status": m.status,
            "model": m.model,
            "createdAt": m.created_at.to_rfc3339(),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&document)
        .map_err(|e| AppError::internal(anyhow::anyhow!("export json: {e}")))
}

fn export_markdown(conversation: &Conversation, messages: &[Message]) -> String {
    let mut out = format!(
        "# {}\n\n",
        conversation
            .title
            .as_deref()
            .unwrap_or("Untitled conversation")
    );
    out.push_str(&format!(
        "_Model: {} · Exported from Colloquy_\n\n",
        conversation.model
    ));
    if let Some(prompt) = &conversation.system_prompt {
        out.push_str("## System\n\n");
        out.push_str(prompt.trim());
        out.push_str("\n\n");
    }
    for m in messages {
        let who = match m.role.as_str() {
            "USER" => "User".to_owned(),
            "ASSISTANT" => format!(
                "Assistant{}",
                m.model
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ),
            _ => "System".to_owned(),
        };
        out.push_str(&format!("## {who}\n\n{}\n\n", m.content.trim_end()));
        if m.status != "COMPLETE" {
            out.push_str(&format!("_({})_\n\n", m.status.to_lowercase()));
        }
    }
    out
}

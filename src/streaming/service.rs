//! The send path: `sendMessage`, `regenerateMessage`, `editMessage`, `stopGeneration`.
//!
//! Checks come first (content, membership, idempotency, model availability, the prompt's
//! size); then one transaction inserts the messages and reserves the quota (a refusal rolls
//! everything back); then the generation is opened on the hub and started in the
//! background. Nothing slow happens before the call returns.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Viewer;
use crate::conversations::model::{Conversation, ConversationChanges, Message};
use crate::conversations::service::{MessageInsert, insert_message, require_conversation};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::llm::catalog::ModelSpec;
use crate::llm::context::{self, ContextError};
use crate::llm::keys::resolve_model;
use crate::llm::{ChatMessage, ChatRole};
use crate::streaming::admission::{AdmissionRequest, Admitted};
use crate::streaming::hub::{ConversationEvent, StopReason};
use crate::streaming::instances::{self, Instance};
use crate::streaming::runner::Generation;

pub const MAX_CONTENT_CHARS: usize = 100_000;

/// How long `stopGeneration` waits for the runner to write the end of the message.
const STOP_WAIT: Duration = Duration::from_secs(5);

pub fn validate_content(content: &str) -> AppResult<()> {
    if content.trim().is_empty() {
        return Err(AppError::bad_input("content", "content must not be empty"));
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(AppError::bad_input(
            "content",
            format!("content must be at most {MAX_CONTENT_CHARS} characters"),
        ));
    }
    Ok(())
}

pub struct SendInput<'a> {
    pub conversation_id: Uuid,
    pub content: &'a str,
    pub model: Option<&'a str>,
    pub parent_id: Option<Uuid>,
    pub client_message_id: Option<&'a str>,
}

/// The user message and the assistant messages answering it: one, or one per model of a
/// comparison (`compare`), in the request's order.
pub struct Sent {
    pub user: Message,
    pub assistants: Vec<Message>,
}

impl Sent {
    fn one(user: Message, assistant: Message) -> Sent {
        Sent {
            user,
            assistants: vec![assistant],
        }
    }
}

/// Our count of the prompt a generation under `parent` (plus `new_content`, when the user
/// message is not stored yet) will send: the context the runner will build. A message too
/// long for the model is BAD_USER_INPUT here, before anything is stored.
pub(crate) async fn estimate_prompt(
    app: &App,
    conn: &mut AsyncPgConnection,
    conversation: &Conversation,
    parent: Option<Uuid>,
    new_content: Option<&str>,
    spec: &ModelSpec,
) -> AppResult<u32> {
    let mut branch: Vec<ChatMessage> = match parent {
        Some(id) => Message::path_to(conn, id)
            .await?
            .into_iter()
            .filter(|m| !m.content.trim().is_empty())
            .map(|m| {
                let role = if m.role == "ASSISTANT" {
                    ChatRole::Assistant
                } else {
                    ChatRole::User
                };
                ChatMessage::new(role, m.content)
            })
            .collect(),
        None => Vec::new(),
    };
    if let Some(content) = new_content {
        branch.push(ChatMessage::new(ChatRole::User, content));
    }
    let tokenizer = app.providers.catalog().tokenizer(spec);
    match context::build(
        conversation.system_prompt.as_deref(),
        &branch,
        spec.context_window,
        spec.max_output_tokens,
        app.config.chat.context_max_messages,
        tokenizer,
    ) {
        Ok(built) => Ok(built.prompt_tokens as u32),
        Err(ContextError::TooLong { needed, budget }) => Err(AppError::bad_input(
            "content",
            format!(
                "the message needs {needed} tokens; model {} takes {budget}",
                spec.id
            ),
        )),
    }
}

/// Reserves quota for the assistant message, in the caller's transaction.
pub(crate) async fn admit(
    app: &App,
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    conversation: &Conversation,
    assistant: &Message,
    spec: &ModelSpec,
    prompt_tokens: u32,
) -> AppResult<Admitted> {
    app.admission
        .admit(
            conn,
            &AdmissionRequest {
                user_id: viewer.user_id,
                workspace_id: conversation.workspace_id,
                conversation_id: conversation.id,
                message_id: assistant.id,
                model: spec.id.clone(),
                estimated_prompt_tokens: prompt_tokens,
                max_output_tokens: conversation.output_limit(spec.max_output_tokens),
            },
        )
        .await
}

/// After the messages are committed: the hub learns of the generation, subscribers hear of
/// the new messages and the changed quota, and the runner starts.
pub(crate) async fn launch(
    app: &Arc<App>,
    conversation: &Conversation,
    created: &[&Message],
    assistant: &Message,
    admitted: Admitted,
) {
    let stop = app.hub.open_generation(assistant.id, conversation.id).await;
    for message in created {
        app.hub
            .publish_conversation(
                conversation.id,
                ConversationEvent::MessageCreated {
                    message_id: message.id,
                },
            )
            .await;
    }
    app.hub.publish_quota(conversation.workspace_id).await;
    app.runners.start(
        app.clone(),
        Generation {
            message_id: assistant.id,
            conversation_id: conversation.id,
            workspace_id: conversation.workspace_id,
            model: assistant.model.clone().unwrap_or_default(),
            admitted,
        },
        stop,
    );
}

/// A user's message (`sendMessage`, `editMessage`), with its idempotency key.
pub(crate) fn user_insert<'a>(
    conversation_id: Uuid,
    parent: Option<Uuid>,
    content: &'a str,
    viewer: &Viewer,
    client_message_id: Option<&'a str>,
) -> MessageInsert<'a> {
    MessageInsert {
        conversation_id,
        parent_id: parent,
        role: "USER",
        content,
        status: "COMPLETE",
        model: None,
        created_by: Some(viewer.user_id),
        client_message_id,
        runner_instance: None,
    }
}

/// The assistant message of a generation this process will run: it records the process, so
/// the others can tell it from an orphan (`streaming::instances`).
pub(crate) fn assistant_insert<'a>(
    app: &App,
    conversation_id: Uuid,
    parent: Uuid,
    model: &'a str,
) -> MessageInsert<'a> {
    MessageInsert {
        conversation_id,
        parent_id: Some(parent),
        role: "ASSISTANT",
        content: "",
        status: "STREAMING",
        model: Some(model),
        created_by: None,
        client_message_id: None,
        runner_instance: Some(app.instance_id),
    }
}

/// An earlier send with the same key: its messages (every answer of a comparison), starting
/// nothing.
pub(crate) async fn replay(
    conn: &mut AsyncPgConnection,
    conversation_id: Uuid,
    key: &str,
) -> AppResult<Option<Sent>> {
    let Some(user) = Message::find_by_client_id(conn, conversation_id, key).await? else {
        return Ok(None);
    };
    let compared = crate::compare::service::answers_of(conn, user.id).await?;
    if !compared.is_empty() {
        return Ok(Some(Sent {
            user,
            assistants: compared,
        }));
    }
    let assistant = Message::first_child(conn, user.id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("idempotent send without a reply")))?;
    Ok(Some(Sent::one(user, assistant)))
}

/// Where a new user message goes.
#[derive(Clone, Copy)]
pub(crate) enum Parent {
    /// After the newest message of the active branch, as it is when the turn is stored.
    Active,
    /// Under this message (None: a new root).
    Under(Option<Uuid>),
}

/// A user message and its answer under `parent`, with the quota reserved, in one
/// transaction.
#[allow(clippy::too_many_arguments)]
async fn insert_turn(
    app: &App,
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    conversation: &Conversation,
    parent: Parent,
    content: &str,
    client_message_id: Option<&str>,
    spec: &ModelSpec,
    prompt: u32,
    switch_model: bool,
) -> AppResult<(Sent, Admitted)> {
    conn.transaction::<_, AppError, _>(async |conn| {
        let parent = turn_parent(conn, conversation.id, parent).await?;
        if switch_model {
            Conversation::update(
                conn,
                conversation.id,
                &ConversationChanges {
                    model: Some(spec.id.clone()),
                    ..Default::default()
                },
            )
            .await?;
        }
        let user = insert_message(
            conn,
            &user_insert(conversation.id, parent, content, viewer, client_message_id),
        )
        .await?;
        let assistant = insert_message(
            conn,
            &assistant_insert(app, conversation.id, user.id, &spec.id),
        )
        .await?;
        let admitted = admit(app, conn, viewer, conversation, &assistant, spec, prompt).await?;
        Ok((Sent::one(user, assistant), admitted))
    })
    .await
}

/// The parent of a new user message, in the caller's transaction. Following the active
/// branch: its leaf is read under the conversation's lock, so two sends at once chain one
/// after the other instead of forking silently.
pub(crate) async fn turn_parent(
    conn: &mut AsyncPgConnection,
    conversation_id: Uuid,
    parent: Parent,
) -> AppResult<Option<Uuid>> {
    Ok(match parent {
        Parent::Active => Conversation::lock_leaf(conn, conversation_id)
            .await?
            .ok_or_else(|| AppError::not_found("conversation"))?,
        Parent::Under(id) => id,
    })
}

pub async fn send(app: &Arc<App>, viewer: &Viewer, input: SendInput<'_>) -> AppResult<Sent> {
    validate_content(input.content)?;
    if let Some(key) = input.client_message_id {
        crate::validate::single_line("clientMessageId", key, 1, 200)?;
    }
    let mut conn = app.db.get().await?;
    let (conversation, _) = require_conversation(&mut conn, viewer, input.conversation_id).await?;
    if let Some(key) = input.client_message_id
        && let Some(sent) = replay(&mut conn, conversation.id, key).await?
    {
        return Ok(sent);
    }
    let model = match input.model {
        Some(m) => crate::conversations::service::normalize_model(app, m)?,
        None => conversation.model.clone(),
    };
    let spec = resolve_model(app, &mut conn, conversation.workspace_id, &model)
        .await?
        .spec;
    // The estimate reads the branch as it is now; the turn re-reads it under a lock.
    let prompt = estimate_prompt(
        app,
        &mut conn,
        &conversation,
        input.parent_id.or(conversation.active_leaf_id),
        Some(input.content),
        &spec,
    )
    .await?;
    let parent = match input.parent_id {
        Some(id) => Parent::Under(Some(id)),
        None => Parent::Active,
    };
    let inserted = insert_turn(
        app,
        &mut conn,
        viewer,
        &conversation,
        parent,
        input.content,
        input.client_message_id,
        &spec,
        prompt,
        model != conversation.model,
    )
    .await;
    let (sent, admitted) = match inserted {
        Ok(done) => done,
        Err(err) => {
            // Two concurrent sends with one key: the loser returns the winner's messages.
            if let (Some(key), AppError::Internal(cause)) = (input.client_message_id, &err)
                && cause
                    .downcast_ref::<diesel::result::Error>()
                    .is_some_and(is_unique_violation)
                && let Some(sent) = replay(&mut conn, conversation.id, key).await?
            {
                return Ok(sent);
            }
            return Err(err);
        }
    };
    launch(
        app,
        &conversation,
        &[&sent.user, &sent.assistants[0]],
        &sent.assistants[0],
        admitted,
    )
    .await;
    Ok(sent)
}

/// A new assistant answer beside `message_id` (or, for a user message, under it).
pub async fn regenerate(
    app: &Arc<App>,
    viewer: &Viewer,
    message_id: Uuid,
    model: Option<&str>,
) -> AppResult<Message> {
    let mut conn = app.db.get().await?;
    let (message, conversation, _) =
        Message::find_for_member(&mut conn, message_id, viewer.user_id)
            .await?
            .ok_or_else(|| AppError::not_found("message"))?;
    let parent = match message.role.as_str() {
        "USER" => message.clone(),
        "ASSISTANT" => {
            let parent_id = message.parent_id.ok_or_else(|| {
                AppError::bad_input("messageId", "this answer has no question to answer again")
            })?;
            Message::find(&mut conn, parent_id)
                .await?
                .ok_or_else(|| AppError::not_found("message"))?
        }
        _ => {
            return Err(AppError::bad_input(
                "messageId",
                "only answers can be regenerated",
            ));
        }
    };
    let model = match model {
        Some(m) => crate::conversations::service::normalize_model(app, m)?,
        None => message
            .model
            .clone()
            .unwrap_or_else(|| conversation.model.clone()),
    };
    let spec = resolve_model(app, &mut conn, conversation.workspace_id, &model)
        .await?
        .spec;
    let prompt =
        estimate_prompt(app, &mut conn, &conversation, Some(parent.id), None, &spec).await?;
    let (assistant, admitted) = conn
        .transaction::<_, AppError, _>(async |conn| {
            let assistant = insert_message(
                conn,
                &assistant_insert(app, conversation.id, parent.id, &spec.id),
            )
            .await?;
            let admitted =
                admit(app, conn, viewer, &conversation, &assistant, &spec, prompt).await?;
            Ok((assistant, admitted))
        })
        .await?;
    launch(app, &conversation, &[&assistant], &assistant, admitted).await;
    Ok(assistant)
}

/// A new version of a user message beside the old one, with a new answer. The old branch
/// stays and `selectBranch` returns to it.
pub async fn edit(
    app: &Arc<App>,
    viewer: &Viewer,
    message_id: Uuid,
    content: &str,
) -> AppResult<Sent> {
    validate_content(content)?;
    let mut conn = app.db.get().await?;
    let (message, conversation, _) =
        Message::find_for_member(&mut conn, message_id, viewer.user_id)
            .await?
            .ok_or_else(|| AppError::not_found("message"))?;
    if message.role != "USER" {
        return Err(AppError::bad_input(
            "messageId",
            "only user messages can be edited",
        ));
    }
    let spec = resolve_model(
        app,
        &mut conn,
        conversation.workspace_id,
        &conversation.model,
    )
    .await?
    .spec;
    let prompt = estimate_prompt(
        app,
        &mut conn,
        &conversation,
        message.parent_id,
        Some(content),
        &spec,
    )
    .await?;
    let (sent, admitted) = insert_turn(
        app,
        &mut conn,
        viewer,
        &conversation,
        Parent::Under(message.parent_id),
        content,
        None,
        &spec,
        prompt,
        false,
    )
    .await?;
    launch(
        app,
        &conversation,
        &[&sent.user, &sent.assistants[0]],
        &sent.assistants[0],
        admitted,
    )
    .await;
    Ok(sent)
}

/// Stops a generation, keeping its text (CANCELLED), whichever process runs it, and returns
/// the message as it ended. Stopping a finished message changes nothing.
///
/// The stop is recorded on the message first (`stop_requested`), so it holds even when no
/// signal reaches the runner: the runner reads the flag at its next flush, or within two
/// seconds while no text flows. Then:
/// - the runner is in this process: the hub signals it; wait for the end it writes;
/// - the runner is another live process: the hub forwards the stop when it can, the flag
///   does otherwise; wait for the end it writes;
/// - no live runner (its process died): end it here, text kept, and settle its reservation
///   as the reaper would.
pub async fn stop(app: &Arc<App>, viewer: &Viewer, message_id: Uuid) -> AppResult<Message> {
    let mut conn = app.db.get().await?;
    let (message, _, _) = Message::find_for_member(&mut conn, message_id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("message"))?;
    if !is_unfinished(&message) {
        return Ok(message);
    }
    let Some(runner) = Message::request_stop(&mut conn, message_id).await? else {
        // It ended meanwhile.
        return found(app, message_id).await;
    };
    drop(conn);
    if app.hub.stop(message_id, StopReason::Cancelled).await {
        if let Some(ended) = wait_for_end(app, message_id).await? {
            return Ok(ended);
        }
        return found(app, message_id).await;
    }
    let timeout = app.config.instances.heartbeat_timeout;
    let runner_live = match runner {
        Some(instance) => {
            let mut conn = app.db.get().await?;
            Instance::is_live(&mut conn, instance, timeout).await?
        }
        None => false,
    };
    if runner_live && let Some(ended) = wait_for_end(app, message_id).await? {
        return Ok(ended);
    }
    // No live runner, or it did not end the message in time: if it has died meanwhile, end
    // the message here (the statement re-checks, so a live runner's message is left alone).
    let mut conn = app.db.get().await?;
    if let Some(ended) = Instance::cancel_orphan(&mut conn, message_id, timeout).await? {
        tracing::info!(%message_id, "stopped a generation whose server is gone");
        crate::metrics::generation_ended(ended.model.as_deref().unwrap_or_default(), "CANCELLED");
        instances::close_orphan(app, &mut conn, &ended).await;
        return Ok(ended);
    }
    drop(conn);
    found(app, message_id).await
}

fn is_unfinished(message: &Message) -> bool {
    matches!(message.status.as_str(), "PENDING" | "STREAMING")
}

async fn found(app: &App, message_id: Uuid) -> AppResult<Message> {
    let mut conn = app.db.get().await?;
    Message::find(&mut conn, message_id)
        .await?
        .ok_or_else(|| AppError::not_found("message"))
}

/// The message once its runner has written its end, polling for up to `STOP_WAIT`; None if
/// it is still unfinished then.
async fn wait_for_end(app: &App, message_id: Uuid) -> AppResult<Option<Message>> {
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    loop {
        let mut conn = app.db.get().await?;
        match Message::find(&mut conn, message_id).await? {
            // Deleted meanwhile (its conversation was).
            None => return Err(AppError::not_found("message")),
            Some(m) if !is_unfinished(&m) => return Ok(Some(m)),
            Some(_) => {}
        }
        drop(conn);
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

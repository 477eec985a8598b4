//! `Conversation`, `Message`, their connections, and the conversation queries and mutations.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Enum, ID, InputObject, MaybeUndefined, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::agents::graphql::AgentNode;
use crate::auth::viewer;
use crate::compare::graphql::Vote;
use crate::conversations::model::{
    self, Conversation, ConversationChanges, ListFilter, ListPosition, Message,
};
use crate::conversations::service::{
    self, ExportFormat, NewConversationInput, normalize_max_output_tokens, normalize_system_prompt,
    normalize_temperature, normalize_title,
};
use crate::error::AppError;
use crate::graphql::loaders::{
    AgentLoader, ConversationLoader, SiblingKey, SiblingsLoader, VoteKey, VoteTally, VotesLoader,
    WorkspaceLoader,
};
use crate::graphql::pagination::{decode, encode, page_size};
use crate::graphql::{app, conn, loader, parse_id};
use crate::llm::decimal_f64;
use crate::users::graphql::{UserNode, user_by_id};
use crate::workspaces::access::require;
use crate::workspaces::graphql::WorkspaceNode;
use crate::workspaces::model::Role;

const LIST_CURSOR: &str = "conversations";
const SEARCH_CURSOR: &str = "search";
const MESSAGE_CURSOR: &str = "messages";

/// Per-edge extras of a conversation connection: set by `searchConversations` only.
#[derive(SimpleObject, Default, Clone)]
pub struct ConversationEdgeFields {
    /// The best match, HTML-escaped, with matches wrapped in `<mark>…</mark>`.
    pub snippet: Option<String>,
    /// Relevance; higher is better.
    pub score: Option<f64>,
}

pub type ConversationConnection =
    Connection<String, ConversationNode, EmptyFields, ConversationEdgeFields>;
pub type MessageConnection = Connection<String, MessageNode>;

#[derive(Debug, Clone)]
pub struct ConversationNode(pub Conversation);

#[Object(name = "Conversation")]
impl ConversationNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn workspace(&self, ctx: &Context<'_>) -> async_graphql::Result<WorkspaceNode> {
        let viewer = viewer(ctx)?;
        let node = loader::<WorkspaceLoader>(ctx)?
            .load_one((self.0.workspace_id, viewer.user_id))
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading workspace: {e}")))?
            .ok_or_else(|| AppError::not_found("workspace"))?;
        Ok(node)
    }

    async fn title(&self) -> Option<&str> {
        self.0.title.as_deref()
    }

    async fn system_prompt(&self) -> Option<&str> {
        self.0.system_prompt.as_deref()
    }

    async fn model(&self) -> &str {
        &self.0.model
    }

    async fn pinned(&self) -> bool {
        self.0.pinned
    }

    async fn archived(&self) -> bool {
        self.0.archived
    }

    /// The agent the conversation was started from; null when none, or when it was deleted.
    /// Its settings were copied at creation: the agent's later edits do not apply here.
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<AgentNode>> {
        let Some(id) = self.0.agent_id else {
            return Ok(None);
        };
        // The agent is in the conversation's workspace, which the viewer already reached.
        let agent = loader::<AgentLoader>(ctx)?
            .load_one(id)
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading agent: {e}")))?;
        Ok(agent.map(AgentNode))
    }

    /// Sampling temperature sent to the provider; null: the provider's default.
    async fn temperature(&self) -> Option<f64> {
        self.0.temperature.map(decimal_f64)
    }

    /// Cap on a reply's tokens (the model's own maximum applies too); null: the model's.
    async fn max_output_tokens(&self) -> Option<i32> {
        self.0.max_output_tokens
    }

    /// Who started the conversation; null when that account is gone.
    async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserNode>> {
        user_by_id(ctx, self.0.created_by).await
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }

    /// When the newest message was written.
    async fn last_message_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_message_at
    }

    /// Messages on the active branch.
    async fn message_count(&self) -> i32 {
        self.0.message_count
    }

    /// The start of the newest message on the active branch.
    async fn preview(&self) -> Option<&str> {
        self.0.preview.as_deref()
    }

    /// The active branch, oldest first. `first` is capped at 100.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<MessageConnection> {
        let limit = page_size(first.unwrap_or(50))?;
        let after_depth = match &after {
            Some(cursor) => decode::<i32>(MESSAGE_CURSOR, cursor)?,
            None => 0,
        };
        let mut conn = conn(ctx).await?;
        let mut rows = Message::active_branch(&mut conn, self.0.id, after_depth, limit + 1)
            .await
            .map_err(AppError::from)?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut connection = Connection::new(after.is_some(), has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|m| Edge::new(encode(MESSAGE_CURSOR, &m.depth), MessageNode(m))),
        );
        Ok(connection)
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRole {
    System,
    User,
    Assistant,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Pending,
    Streaming,
    Complete,
    Cancelled,
    Failed,
}

#[derive(Debug, Clone)]
pub struct MessageNode(pub Message);

impl MessageNode {
    async fn votes(&self, ctx: &Context<'_>) -> async_graphql::Result<VoteTally> {
        let viewer = viewer(ctx)?;
        Ok(loader::<VotesLoader>(ctx)?
            .load_one(VoteKey {
                message_id: self.0.id,
                viewer: viewer.user_id,
            })
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading votes: {e}")))?
            .unwrap_or_default())
    }
}

#[Object(name = "Message")]
impl MessageNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn conversation_id(&self) -> ID {
        ID(self.0.conversation_id.to_string())
    }

    async fn conversation(&self, ctx: &Context<'_>) -> async_graphql::Result<ConversationNode> {
        let conversation = loader::<ConversationLoader>(ctx)?
            .load_one(self.0.conversation_id)
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading conversation: {e}")))?
            .ok_or_else(|| AppError::not_found("conversation"))?;
        Ok(ConversationNode(conversation))
    }

    async fn parent_id(&self) -> Option<ID> {
        self.0.parent_id.map(|id| ID(id.to_string()))
    }

    /// Order of creation within the conversation: 1, 2, 3, …
    async fn seq(&self) -> i32 {
        self.0.seq
    }

    async fn role(&self) -> MessageRole {
        match self.0.role.as_str() {
            "SYSTEM" => MessageRole::System,
            "ASSISTANT" => MessageRole::Assistant,
            _ => MessageRole::User,
        }
    }

    async fn content(&self) -> &str {
        &self.0.content
    }

    /// How many deltas `content` holds: to continue a generation in progress after reading it, subscribe to `messageStream` with `afterSeq: contentSeq`.
    async fn content_seq(&self) -> i32 {
        self.0.content_seq
    }

    async fn status(&self) -> MessageStatus {
        match self.0.status.as_str() {
            "PENDING" => MessageStatus::Pending,
            "STREAMING" => MessageStatus::Streaming,
            "CANCELLED" => MessageStatus::Cancelled,
            "FAILED" => MessageStatus::Failed,
            _ => MessageStatus::Complete,
        }
    }

    async fn model(&self) -> Option<&str> {
        self.0.model.as_deref()
    }

    async fn prompt_tokens(&self) -> Option<i32> {
        self.0.prompt_tokens
    }

    async fn completion_tokens(&self) -> Option<i32> {
        self.0.completion_tokens
    }

    async fn cost_usd(&self) -> Option<f64> {
        self.0
            .cost_micro_usd
            .map(|micros| micros as f64 / 1_000_000.0)
    }

    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }

    /// When the answer's first token arrived; null for other messages.
    async fn first_token_at(&self) -> Option<DateTime<Utc>> {
        self.0.first_token_at
    }

    /// The viewer's vote on this answer (`rateMessage`).
    async fn viewer_vote(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Vote>> {
        Ok(self
            .votes(ctx)
            .await?
            .mine
            .as_deref()
            .and_then(Vote::from_db))
    }

    /// UP votes on this answer, from every member.
    async fn votes_up(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.votes(ctx).await?.up)
    }

    /// DOWN votes on this answer, from every member.
    async fn votes_down(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        Ok(self.votes(ctx).await?.down)
    }

    /// Messages with the same parent, this one included, oldest first.
    async fn siblings(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<MessageNode>> {
        let siblings = loader::<SiblingsLoader>(ctx)?
            .load_one(SiblingKey {
                conversation_id: self.0.conversation_id,
                parent_id: self.0.parent_id,
            })
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading siblings: {e}")))?
            .unwrap_or_default();
        Ok(siblings.into_iter().map(MessageNode).collect())
    }
}

#[derive(InputObject, Default)]
pub struct ConversationFilter {
    /// Archived conversations instead of the others.
    #[graphql(default = false)]
    pub archived: bool,
    pub pinned: Option<bool>,
    pub model: Option<String>,
    pub created_by: Option<ID>,
}

#[derive(InputObject)]
pub struct CreateConversationInput {
    pub workspace_id: ID,
    /// At most 200 characters.
    pub title: Option<String>,
    /// At most 32,000 characters.
    pub system_prompt: Option<String>,
    /// Defaults to the agent's model, else the server's `DEFAULT_MODEL`.
    pub model: Option<String>,
    /// Start from this agent of the workspace: its model, system prompt, temperature and
    /// output cap are copied into the conversation (fields given here win).
    pub agent_id: Option<ID>,
    /// 0 to 2; defaults to the agent's, else the provider's default.
    pub temperature: Option<f64>,
    /// At least 1; defaults to the agent's, else the model's maximum.
    pub max_output_tokens: Option<i32>,
}

#[derive(InputObject)]
pub struct UpdateConversationInput {
    /// Null or empty clears it.
    pub title: MaybeUndefined<String>,
    /// Null or empty clears it.
    pub system_prompt: MaybeUndefined<String>,
    pub model: Option<String>,
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
    /// 0 to 2; null: the provider's default.
    pub temperature: MaybeUndefined<f64>,
    /// At least 1; null: the model's maximum.
    pub max_output_tokens: MaybeUndefined<i32>,
}

fn changes(input: UpdateConversationInput) -> Result<ConversationChanges, AppError> {
    let clearable = |value: MaybeUndefined<String>,
                     normalize: fn(&str) -> Result<Option<String>, AppError>| {
        match value {
            MaybeUndefined::Undefined => Ok(None),
            MaybeUndefined::Null => Ok(Some(None)),
            MaybeUndefined::Value(v) => normalize(&v).map(Some),
        }
    };
    Ok(ConversationChanges {
        title: clearable(input.title, normalize_title)?,
        system_prompt: clearable(input.system_prompt, normalize_system_prompt)?,
        // Checked against the catalog by the service.
        model: input.model,
        pinned: input.pinned,
        archived: input.archived,
        temperature: clear_or(input.temperature, |t| {
            normalize_temperature("temperature", t)
        })?,
        max_output_tokens: clear_or(input.max_output_tokens, |n| {
            normalize_max_output_tokens("maxOutputTokens", n)
        })?,
    })
}

/// An optional, clearable input: undefined leaves the column, null clears it, a value is
/// checked by `normalize`.
pub(crate) fn clear_or<T, U>(
    value: MaybeUndefined<T>,
    normalize: impl FnOnce(T) -> Result<U, AppError>,
) -> Result<Option<Option<U>>, AppError> {
    match value {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Ok(Some(None)),
        MaybeUndefined::Value(v) => normalize(v).map(|v| Some(Some(v))),
    }
}

#[derive(Default)]
pub struct ConversationsQuery;

#[Object]
impl ConversationsQuery {
    /// A conversation in one of the viewer's workspaces; null otherwise.
    async fn conversation(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<ConversationNode>> {
        let viewer = viewer(ctx)?;
        let id = parse_id("id", &id)?;
        let mut conn = conn(ctx).await?;
        let found = Conversation::find_for_member(&mut conn, id, viewer.user_id)
            .await
            .map_err(AppError::from)?;
        Ok(found.map(|(c, _)| ConversationNode(c)))
    }

    /// A workspace's conversations: pinned first, then newest activity. Keyset cursors, so
    /// conversations created while paging never cause a repeat or a gap. `first` is capped at
    /// 100.
    async fn conversations(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
        filter: Option<ConversationFilter>,
    ) -> async_graphql::Result<ConversationConnection> {
        let viewer = viewer(ctx)?;
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let limit = page_size(first.unwrap_or(20))?;
        let position = after
            .as_deref()
            .map(|c| decode::<ListPosition>(LIST_CURSOR, c))
            .transpose()?;
        let filter = filter.unwrap_or_default();
        let filter = ListFilter {
            archived: filter.archived,
            pinned: filter.pinned,
            model: filter.model,
            created_by: filter
                .created_by
                .as_ref()
                .map(|id| parse_id("filter.createdBy", id))
                .transpose()?,
        };
        let mut conn = conn(ctx).await?;
        require(&mut conn, viewer, workspace_id, Role::Member).await?;
        let mut rows = Conversation::list(&mut conn, workspace_id, &filter, position, limit + 1)
            .await
            .map_err(AppError::from)?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut connection = Connection::new(position.is_some(), has_next);
        connection.edges.extend(rows.into_iter().map(|c| {
            Edge::with_additional_fields(
                encode(LIST_CURSOR, &ListPosition::from(&c)),
                ConversationNode(c),
                ConversationEdgeFields::default(),
            )
        }));
        Ok(connection)
    }

    /// Full-text search over titles and messages of a workspace's conversations, best first,
    /// each edge with a highlighted `snippet`. Accepts web-search syntax: `"exact phrase"`,
    /// `or`, `-excluded`.
    async fn search_conversations(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        query: String,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<ConversationConnection> {
        let viewer = viewer(ctx)?;
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let limit = page_size(first.unwrap_or(20))?;
        let query = crate::validate::single_line("query", &query, 1, 200)?;
        let offset = after
            .as_deref()
            .map(|c| decode::<i64>(SEARCH_CURSOR, c))
            .transpose()?
            .unwrap_or(0)
            .max(0);
        let mut conn = conn(ctx).await?;
        require(&mut conn, viewer, workspace_id, Role::Member).await?;
        let hits = model::search(&mut conn, workspace_id, &query, offset, limit + 1)
            .await
            .map_err(AppError::from)?;
        let has_next = hits.len() as i64 > limit;
        let hits: Vec<_> = hits.into_iter().take(limit as usize).collect();
        let ids: Vec<Uuid> = hits.iter().map(|h| h.conversation_id).collect();
        let found = Conversation::find_many(&mut conn, &ids)
            .await
            .map_err(AppError::from)?;
        let mut connection = Connection::new(offset > 0, has_next);
        for (i, hit) in hits.into_iter().enumerate() {
            if let Some(c) = found.iter().find(|c| c.id == hit.conversation_id) {
                connection.edges.push(Edge::with_additional_fields(
                    encode(SEARCH_CURSOR, &(offset + i as i64 + 1)),
                    ConversationNode(c.clone()),
                    ConversationEdgeFields {
                        snippet: hit.snippet,
                        score: Some(hit.score),
                    },
                ));
            }
        }
        Ok(connection)
    }

    /// A message in one of the viewer's workspaces; null otherwise.
    async fn message(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<MessageNode>> {
        let viewer = viewer(ctx)?;
        let id = parse_id("id", &id)?;
        let mut conn = conn(ctx).await?;
        let found = Message::find_for_member(&mut conn, id, viewer.user_id)
            .await
            .map_err(AppError::from)?;
        Ok(found.map(|(m, _, _)| MessageNode(m)))
    }

    /// The active branch as a JSON document or as Markdown.
    async fn export_conversation(
        &self,
        ctx: &Context<'_>,
        id: ID,
        format: ExportFormat,
    ) -> async_graphql::Result<String> {
        let id = parse_id("id", &id)?;
        Ok(service::export(app(ctx)?, viewer(ctx)?, id, format).await?)
    }
}

#[derive(Default)]
pub struct ConversationsMutation;

#[Object]
impl ConversationsMutation {
    /// Starts a conversation in a workspace the viewer belongs to.
    async fn create_conversation(
        &self,
        ctx: &Context<'_>,
        input: CreateConversationInput,
    ) -> async_graphql::Result<ConversationNode> {
        let workspace_id = parse_id("workspaceId", &input.workspace_id)?;
        let conversation = service::create(
            app(ctx)?,
            viewer(ctx)?,
            NewConversationInput {
                workspace_id,
                title: input.title.as_deref(),
                system_prompt: input.system_prompt.as_deref(),
                model: input.model.as_deref(),
                agent_id: input
                    .agent_id
                    .as_ref()
                    .map(|id| parse_id("agentId", id))
                    .transpose()?,
                temperature: input.temperature,
                max_output_tokens: input.max_output_tokens,
            },
        )
        .await?;
        Ok(ConversationNode(conversation))
    }

    /// Changes title, system prompt, model, pinned, archived, temperature or output cap;
    /// omitted fields stay.
    async fn update_conversation(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateConversationInput,
    ) -> async_graphql::Result<ConversationNode> {
        let id = parse_id("id", &id)?;
        let changes = changes(input)?;
        Ok(ConversationNode(
            service::update(app(ctx)?, viewer(ctx)?, id, changes).await?,
        ))
    }

    /// Deletes a conversation and all its messages (its creator, or an ADMIN or OWNER).
    async fn delete_conversation(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let id = parse_id("id", &id)?;
        Ok(service::delete(app(ctx)?, viewer(ctx)?, id).await?)
    }

    /// Continues the conversation from the newest leaf under this message.
    async fn select_branch(
        &self,
        ctx: &Context<'_>,
        message_id: ID,
    ) -> async_graphql::Result<ConversationNode> {
        let message_id = parse_id("messageId", &message_id)?;
        Ok(ConversationNode(
            service::select_branch(app(ctx)?, viewer(ctx)?, message_id).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_input_maps_to_changes() {
        let c = changes(UpdateConversationInput {
            title: MaybeUndefined::Null,
            system_prompt: MaybeUndefined::Undefined,
            model: None,
            pinned: Some(true),
            archived: None,
            temperature: MaybeUndefined::Value(0.5),
            max_output_tokens: MaybeUndefined::Null,
        })
        .expect("valid");
        assert_eq!(c.temperature, Some(Some(0.5)));
        assert_eq!(c.max_output_tokens, Some(None));
        assert_eq!(c.title, Some(None));
        assert_eq!(c.system_prompt, None);
        assert_eq!(c.pinned, Some(true));
        let too_long = changes(UpdateConversationInput {
            title: MaybeUndefined::Value("t".repeat(201)),
            system_prompt: MaybeUndefined::Undefined,
            model: None,
            pinned: None,
            archived: None,
            temperature: MaybeUndefined::Undefined,
            max_output_tokens: MaybeUndefined::Undefined,
        });
        assert!(too_long.is_err());
        let too_hot = changes(UpdateConversationInput {
            title: MaybeUndefined::Undefined,
            system_prompt: MaybeUndefined::Undefined,
            model: None,
            pinned: None,
            archived: None,
            temperature: MaybeUndefined::Value(2.5),
            max_output_tokens: MaybeUndefined::Undefined,
        });
        assert!(too_hot.is_err());
    }
}

//! The `Agent` type, `agents(workspaceId)`, `agent(id)`, and `createAgent`, `updateAgent`,
//! `deleteAgent`.

use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object};
use chrono::{DateTime, Utc};

use crate::agents::model::{Agent, AgentChanges};
use crate::agents::service::{
    self, AgentInput, normalize_avatar, normalize_description, normalize_name,
};
use crate::auth::viewer;
use crate::conversations::graphql::clear_or;
use crate::conversations::service::{
    normalize_max_output_tokens, normalize_system_prompt, normalize_temperature,
};
use crate::error::AppError;
use crate::graphql::{app, conn, parse_id};
use crate::llm::decimal_f64;
use crate::users::graphql::{UserNode, user_by_id};

#[derive(Debug, Clone)]
pub struct AgentNode(pub Agent);

/// A preset for conversations in a workspace: a model, a system prompt and generation
/// settings. `createConversation(input: { agentId })` copies them into the conversation.
#[Object(name = "Agent")]
impl AgentNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn workspace_id(&self) -> ID {
        ID(self.0.workspace_id.to_string())
    }

    /// 1 to 80 characters.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// At most 500 characters.
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }

    /// One emoji.
    async fn avatar(&self) -> &str {
        &self.0.avatar
    }

    /// A catalog model id (`models` lists them).
    async fn model(&self) -> &str {
        &self.0.model
    }

    async fn system_prompt(&self) -> Option<&str> {
        self.0.system_prompt.as_deref()
    }

    /// Sampling temperature, 0 to 2; null: the provider's default.
    async fn temperature(&self) -> Option<f64> {
        self.0.temperature.map(decimal_f64)
    }

    /// Cap on a reply's tokens (the model's own maximum applies too); null: the model's.
    async fn max_output_tokens(&self) -> Option<i32> {
        self.0.max_output_tokens
    }

    /// Who made the agent; null for the examples every workspace starts with, and when that
    /// account is gone.
    async fn created_by(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<UserNode>> {
        user_by_id(ctx, self.0.created_by).await
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

#[derive(InputObject)]
pub struct CreateAgentInput {
    pub workspace_id: ID,
    /// 1 to 80 characters.
    pub name: String,
    /// At most 500 characters.
    pub description: Option<String>,
    /// One emoji of at most 16 bytes (🤖, 👩‍💻, 🇵🇹); defaults to 🤖.
    pub avatar: Option<String>,
    /// A catalog model available to the workspace; defaults to the server's `DEFAULT_MODEL`.
    pub model: Option<String>,
    /// At most 32,000 characters.
    pub system_prompt: Option<String>,
    /// 0 to 2; null: the provider's default.
    pub temperature: Option<f64>,
    /// At least 1; null: the model's maximum.
    pub max_output_tokens: Option<i32>,
}

/// Omitted fields stay; null clears a nullable one.
#[derive(InputObject)]
pub struct UpdateAgentInput {
    pub id: ID,
    pub name: Option<String>,
    /// Null or empty clears it.
    pub description: MaybeUndefined<String>,
    pub avatar: Option<String>,
    pub model: Option<String>,
    /// Null or empty clears it.
    pub system_prompt: MaybeUndefined<String>,
    pub temperature: MaybeUndefined<f64>,
    pub max_output_tokens: MaybeUndefined<i32>,
}

/// The checked changes of an update (the model is checked by the service, which knows the
/// workspace's keys).
fn changes(input: UpdateAgentInput) -> Result<AgentChanges, AppError> {
    let flatten =
        |v: Result<Option<Option<Option<String>>>, AppError>| v.map(|v| v.map(Option::flatten));
    Ok(AgentChanges {
        name: input.name.as_deref().map(normalize_name).transpose()?,
        description: flatten(clear_or(input.description, |d| normalize_description(&d)))?,
        avatar: input.avatar.as_deref().map(normalize_avatar).transpose()?,
        model: input.model,
        system_prompt: flatten(clear_or(input.system_prompt, |p| {
            normalize_system_prompt(&p)
        }))?,
        temperature: clear_or(input.temperature, |t| {
            normalize_temperature("temperature", t)
        })?,
        max_output_tokens: clear_or(input.max_output_tokens, |n| {
            normalize_max_output_tokens("maxOutputTokens", n)
        })?,
    })
}

#[derive(Default)]
pub struct AgentsQuery;

#[Object]
impl AgentsQuery {
    /// A workspace's agents, by name.
    async fn agents(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
    ) -> async_graphql::Result<Vec<AgentNode>> {
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let agents = service::list(app(ctx)?, viewer(ctx)?, workspace_id).await?;
        Ok(agents.into_iter().map(AgentNode).collect())
    }

    /// An agent in one of the viewer's workspaces; null otherwise.
    async fn agent(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<AgentNode>> {
        let viewer = viewer(ctx)?;
        let id = parse_id("id", &id)?;
        let mut conn = conn(ctx).await?;
        let found = Agent::find_for_member(&mut conn, id, viewer.user_id)
            .await
            .map_err(AppError::from)?;
        Ok(found.map(|(a, _)| AgentNode(a)))
    }
}

#[derive(Default)]
pub struct AgentsMutation;

#[Object]
impl AgentsMutation {
    /// Creates an agent in a workspace the viewer belongs to (any member; at most 200 per
    /// workspace).
    async fn create_agent(
        &self,
        ctx: &Context<'_>,
        input: CreateAgentInput,
    ) -> async_graphql::Result<AgentNode> {
        let workspace_id = parse_id("workspaceId", &input.workspace_id)?;
        let agent = service::create(
            app(ctx)?,
            viewer(ctx)?,
            workspace_id,
            AgentInput {
                name: input.name,
                description: input.description,
                avatar: input.avatar,
                model: input.model,
                system_prompt: input.system_prompt,
                temperature: input.temperature,
                max_output_tokens: input.max_output_tokens,
            },
        )
        .await?;
        Ok(AgentNode(agent))
    }

    /// Changes an agent (its creator, or an ADMIN or OWNER). Conversations already started
    /// from it keep the settings they copied.
    async fn update_agent(
        &self,
        ctx: &Context<'_>,
        input: UpdateAgentInput,
    ) -> async_graphql::Result<AgentNode> {
        let id = parse_id("id", &input.id)?;
        let changes = changes(input)?;
        Ok(AgentNode(
            service::update(app(ctx)?, viewer(ctx)?, id, changes).await?,
        ))
    }

    /// Deletes an agent (its creator, or an ADMIN or OWNER). Conversations started from it
    /// stay as they are, with `agent` null.
    async fn delete_agent(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let id = parse_id("id", &id)?;
        Ok(service::delete(app(ctx)?, viewer(ctx)?, id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> UpdateAgentInput {
        UpdateAgentInput {
            id: ID("x".to_owned()),
            name: None,
            description: MaybeUndefined::Undefined,
            avatar: None,
            model: None,
            system_prompt: MaybeUndefined::Undefined,
            temperature: MaybeUndefined::Undefined,
            max_output_tokens: MaybeUndefined::Undefined,
        }
    }

    #[test]
    fn update_input_maps_to_changes() {
        assert!(changes(update()).expect("valid").is_empty());
        let c = changes(UpdateAgentInput {
            description: MaybeUndefined::Value("  ".to_owned()),
            system_prompt: MaybeUndefined::Null,
            temperature: MaybeUndefined::Value(1.5),
            max_output_tokens: MaybeUndefined::Null,
            ..update()
        })
        .expect("valid");
        assert_eq!(c.description, Some(None), "empty clears");
        assert_eq!(c.system_prompt, Some(None));
        assert_eq!(c.temperature, Some(Some(1.5)));
        assert_eq!(c.max_output_tokens, Some(None));
        for bad in [
            UpdateAgentInput {
                name: Some(String::new()),
                ..update()
            },
            UpdateAgentInput {
                avatar: Some("AI".to_owned()),
                ..update()
            },
            UpdateAgentInput {
                temperature: MaybeUndefined::Value(-0.1),
                ..update()
            },
            UpdateAgentInput {
                max_output_tokens: MaybeUndefined::Value(0),
                ..update()
            },
        ] {
            assert!(changes(bad).is_err());
        }
    }
}

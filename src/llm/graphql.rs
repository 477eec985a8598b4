//! `models`, `setProviderKey`, `deleteProviderKey`, and the `Model` and `ProviderKey` types.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use crate::auth::viewer;
use crate::error::AppError;
use crate::graphql::{app, conn, parse_id};
use crate::llm::catalog::ModelSpec;
use crate::llm::keys::{self, ProviderKeyRow};
use crate::workspaces::access::require;
use crate::workspaces::model::Role;

pub struct ModelNode {
    pub spec: ModelSpec,
    pub available: bool,
}

#[Object(name = "Model")]
impl ModelNode {
    /// `provider/name`, as used in `createConversation` and `sendMessage`.
    async fn id(&self) -> ID {
        ID(self.spec.id.clone())
    }
    async fn provider(&self) -> &str {
        &self.spec.provider
    }
    async fn display_name(&self) -> &str {
        if self.spec.display_name.is_empty() {
            &self.spec.id
        } else {
            &self.spec.display_name
        }
    }
    async fn context_window(&self) -> i64 {
        i64::from(self.spec.context_window)
    }
    async fn max_output_tokens(&self) -> i64 {
        i64::from(self.spec.max_output_tokens)
    }
    /// USD per million input tokens.
    #[graphql(name = "inputUsdPerMTok")]
    async fn input_usd_per_mtok(&self) -> Option<f64> {
        self.spec.input_usd_per_mtok
    }
    /// USD per million output tokens.
    #[graphql(name = "outputUsdPerMTok")]
    async fn output_usd_per_mtok(&self) -> Option<f64> {
        self.spec.output_usd_per_mtok
    }
    /// The provider needs no key, the server has one, or (with `workspaceId`) the workspace
    /// brought its own.
    async fn available(&self) -> bool {
        self.available
    }
}

/// A workspace's own key for a provider; the key itself is never shown.
#[derive(SimpleObject)]
pub struct ProviderKey {
    pub provider: String,
    /// The last four characters.
    pub last4: String,
    pub updated_at: DateTime<Utc>,
}

impl From<ProviderKeyRow> for ProviderKey {
    fn from(row: ProviderKeyRow) -> Self {
        ProviderKey {
            provider: row.provider,
            last4: row.last4,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Default)]
pub struct LlmQuery;

#[Object]
impl LlmQuery {
    /// The model catalog. With `workspaceId`, availability counts that workspace's own keys.
    async fn models(
        &self,
        ctx: &Context<'_>,
        workspace_id: Option<ID>,
    ) -> async_graphql::Result<Vec<ModelNode>> {
        let app = app(ctx)?;
        let workspace_keys: Vec<String> = match workspace_id {
            None => Vec::new(),
            Some(id) => {
                let viewer = viewer(ctx)?;
                let id = parse_id("workspaceId", &id)?;
                let mut conn = conn(ctx).await?;
                require(&mut conn, viewer, id, Role::Member).await?;
                ProviderKeyRow::for_workspace(&mut conn, id)
                    .await
                    .map_err(AppError::from)?
                    .into_iter()
                    .map(|k| k.provider)
                    .collect()
            }
        };
        Ok(app
            .providers
            .catalog()
            .models()
            .iter()
            .map(|spec| ModelNode {
                available: app
                    .providers
                    .available(&spec.provider, workspace_keys.contains(&spec.provider)),
                spec: spec.clone(),
            })
            .collect())
    }
}

#[derive(Default)]
pub struct LlmMutation;

#[Object]
impl LlmMutation {
    /// Stores a workspace's own API key for a provider (OWNER or ADMIN). It is used instead of
    /// the server's key for that workspace's generations.
    async fn set_provider_key(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        provider: String,
        api_key: String,
    ) -> async_graphql::Result<ProviderKey> {
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let row = keys::set(
            app(ctx)?,
            viewer(ctx)?,
            workspace_id,
            provider.trim(),
            &api_key,
        )
        .await?;
        Ok(row.into())
    }

    /// Removes a workspace's key for a provider (OWNER or ADMIN); false when there was none.
    async fn delete_provider_key(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        provider: String,
    ) -> async_graphql::Result<bool> {
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        Ok(keys::delete(app(ctx)?, viewer(ctx)?, workspace_id, provider.trim()).await?)
    }
}

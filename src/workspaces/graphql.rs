//! The `Workspace`, `WorkspaceMember` and `Quota` types, `workspaces` and `workspace(id)`.

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Enum, ID, InputObject, Object};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::viewer;
use crate::error::AppError;
use crate::graphql::app;
use crate::graphql::loaders::{MembersLoader, QuotaLoader};
use crate::graphql::{conn, parse_id};
use crate::users::graphql::UserNode;
use crate::workspaces::model::{QuotaRow, Role, Workspace, period_end, period_start};
use crate::workspaces::service;

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "WorkspaceRole")]
pub enum WorkspaceRoleGql {
    Owner,
    Admin,
    Member,
}

impl From<WorkspaceRoleGql> for Role {
    fn from(role: WorkspaceRoleGql) -> Self {
        match role {
            WorkspaceRoleGql::Owner => Role::Owner,
            WorkspaceRoleGql::Admin => Role::Admin,
            WorkspaceRoleGql::Member => Role::Member,
        }
    }
}

impl From<Role> for WorkspaceRoleGql {
    fn from(role: Role) -> Self {
        match role {
            Role::Owner => WorkspaceRoleGql::Owner,
            Role::Admin => WorkspaceRoleGql::Admin,
            Role::Member => WorkspaceRoleGql::Member,
        }
    }
}

/// A workspace as seen by a member (the viewer's role travels with it).
#[derive(Debug, Clone)]
pub struct WorkspaceNode {
    pub row: Workspace,
    pub viewer_role: Role,
}

impl From<(Workspace, String)> for WorkspaceNode {
    fn from((row, role): (Workspace, String)) -> Self {
        WorkspaceNode {
            row,
            viewer_role: Role::from_db(&role),
        }
    }
}

#[Object(name = "Workspace")]
impl WorkspaceNode {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.row.name
    }

    /// The workspace made at registration; it cannot be deleted.
    async fn personal(&self) -> bool {
        self.row.personal
    }

    async fn viewer_role(&self) -> WorkspaceRoleGql {
        self.viewer_role.into()
    }

    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkspaceMemberNode>> {
        let loader = ctx.data::<DataLoader<MembersLoader>>().map_err(|_| {
            AppError::internal(anyhow::anyhow!("members loader missing from schema data"))
        })?;
        let members = loader
            .load_one(self.row.id)
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading members: {e}")))?
            .unwrap_or_default();
        Ok(members)
    }

    async fn quota(&self, ctx: &Context<'_>) -> async_graphql::Result<QuotaNode> {
        let loader = ctx.data::<DataLoader<QuotaLoader>>().map_err(|_| {
            AppError::internal(anyhow::anyhow!("quota loader missing from schema data"))
        })?;
        let row = loader
            .load_one(self.row.id)
            .await
            .map_err(|e| AppError::internal(anyhow::anyhow!("loading quota: {e}")))?
            .ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "workspace {} has no quota row",
                    self.row.id
                ))
            })?;
        Ok(QuotaNode::current(row, Utc::now()))
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// The workspace's own provider keys (last four characters only).
    async fn provider_keys(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::llm::graphql::ProviderKey>> {
        let mut conn = conn(ctx).await?;
        let rows = crate::llm::keys::ProviderKeyRow::for_workspace(&mut conn, self.row.id)
            .await
            .map_err(AppError::from)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[derive(Debug, Clone)]
pub struct WorkspaceMemberNode {
    pub user: UserNode,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[Object(name = "WorkspaceMember")]
impl WorkspaceMemberNode {
    async fn user(&self) -> &UserNode {
        &self.user
    }

    async fn role(&self) -> WorkspaceRoleGql {
        self.role.into()
    }

    async fn joined_at(&self) -> DateTime<Utc> {
        self.joined_at
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "QuotaPeriod")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// A workspace's budget for the current UTC calendar period.
#[derive(Debug, Clone)]
pub struct QuotaNode {
    pub workspace_id: Uuid,
    pub period: QuotaPeriod,
    pub period_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    pub token_limit: Option<i64>,
    pub tokens_used: i64,
    pub tokens_reserved: i64,
    pub message_limit: Option<i64>,
    pub messages_used: i64,
}

impl QuotaNode {
    /// The row as of `now`: when a new period has begun since the row was last written, the
    /// counters of the old period no longer apply.
    pub fn current(row: QuotaRow, now: DateTime<Utc>) -> QuotaNode {
        let start = period_start(&row.period, now);
        let stale = row.period_start < start;
        QuotaNode {
            workspace_id: row.workspace_id,
            period: if row.period == "DAY" {
                QuotaPeriod::Day
            } else {
                QuotaPeriod::Month
            },
            period_start: start,
            resets_at: period_end(&row.period, start),
            token_limit: row.token_limit,
            tokens_used: if stale { 0 } else { row.tokens_used },
            tokens_reserved: row.tokens_reserved,
            message_limit: row.message_limit,
            messages_used: if stale { 0 } else { row.messages_used },
        }
    }
}

#[Object(name = "Quota")]
impl QuotaNode {
    async fn workspace_id(&self) -> ID {
        ID(self.workspace_id.to_string())
    }
    async fn period(&self) -> QuotaPeriod {
        self.period
    }
    async fn period_start(&self) -> DateTime<Utc> {
        self.period_start
    }
    async fn resets_at(&self) -> DateTime<Utc> {
        self.resets_at
    }
    /// Null: unlimited.
    async fn token_limit(&self) -> Option<i64> {
        self.token_limit
    }
    async fn tokens_used(&self) -> i64 {
        self.tokens_used
    }
    /// Held by generations in progress.
    async fn tokens_reserved(&self) -> i64 {
        self.tokens_reserved
    }
    /// Null: unlimited.
    async fn message_limit(&self) -> Option<i64> {
        self.message_limit
    }
    async fn messages_used(&self) -> i64 {
        self.messages_used
    }
}

#[derive(Default)]
pub struct WorkspacesQuery;

#[Object]
impl WorkspacesQuery {
    /// The viewer's workspaces, oldest first.
    async fn workspaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkspaceNode>> {
        let viewer = viewer(ctx)?;
        let mut conn = conn(ctx).await?;
        let rows = Workspace::for_member(&mut conn, viewer.user_id)
            .await
            .map_err(AppError::from)?;
        Ok(rows.into_iter().map(WorkspaceNode::from).collect())
    }

    /// A workspace the viewer belongs to; null when it does not exist or the viewer is not a
    /// member (the two are indistinguishable).
    async fn workspace(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<WorkspaceNode>> {
        let viewer = viewer(ctx)?;
        let id = parse_id("id", &id)?;
        let mut conn = conn(ctx).await?;
        let row = Workspace::find_for_member(&mut conn, id, viewer.user_id)
            .await
            .map_err(AppError::from)?;
        Ok(row.map(WorkspaceNode::from))
    }
}

#[derive(InputObject)]
pub struct CreateWorkspaceInput {
    /// 1 to 100 characters.
    pub name: String,
}

#[derive(InputObject)]
pub struct UpdateWorkspaceInput {
    /// 1 to 100 characters.
    pub name: String,
}

#[derive(InputObject)]
pub struct AddWorkspaceMemberInput {
    pub workspace_id: ID,
    /// The email of an existing account.
    pub email: String,
    /// ADMIN or MEMBER.
    pub role: WorkspaceRoleGql,
}

#[derive(InputObject)]
pub struct UpdateWorkspaceMemberInput {
    pub workspace_id: ID,
    pub user_id: ID,
    pub role: WorkspaceRoleGql,
}

fn member_node(
    membership: crate::workspaces::model::Membership,
    user: crate::users::model::User,
) -> WorkspaceMemberNode {
    WorkspaceMemberNode {
        role: Role::from_db(&membership.role),
        joined_at: membership.joined_at,
        user: user.into(),
    }
}

#[derive(Default)]
pub struct WorkspacesMutation;

#[Object]
impl WorkspacesMutation {
    /// Creates a workspace with the viewer as OWNER.
    async fn create_workspace(
        &self,
        ctx: &Context<'_>,
        input: CreateWorkspaceInput,
    ) -> async_graphql::Result<WorkspaceNode> {
        let (row, viewer_role) = service::create(app(ctx)?, viewer(ctx)?, &input.name).await?;
        Ok(WorkspaceNode { row, viewer_role })
    }

    /// Renames a workspace (ADMIN or OWNER).
    async fn update_workspace(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWorkspaceInput,
    ) -> async_graphql::Result<WorkspaceNode> {
        let id = parse_id("id", &id)?;
        let (row, viewer_role) = service::rename(app(ctx)?, viewer(ctx)?, id, &input.name).await?;
        Ok(WorkspaceNode { row, viewer_role })
    }

    /// Deletes a workspace with its conversations (OWNER only; not a personal workspace).
    async fn delete_workspace(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let id = parse_id("id", &id)?;
        Ok(service::delete(app(ctx)?, viewer(ctx)?, id).await?)
    }

    /// Adds an existing user as ADMIN or MEMBER (ADMIN or OWNER).
    async fn add_workspace_member(
        &self,
        ctx: &Context<'_>,
        input: AddWorkspaceMemberInput,
    ) -> async_graphql::Result<WorkspaceMemberNode> {
        let workspace_id = parse_id("workspaceId", &input.workspace_id)?;
        let (membership, user) = service::add_member(
            app(ctx)?,
            viewer(ctx)?,
            workspace_id,
            &input.email,
            input.role.into(),
        )
        .await?;
        Ok(member_node(membership, user))
    }

    /// Changes a member's role. ADMIN manages members below OWNER; the last OWNER cannot be
    /// demoted.
    async fn update_workspace_member(
        &self,
        ctx: &Context<'_>,
        input: UpdateWorkspaceMemberInput,
    ) -> async_graphql::Result<WorkspaceMemberNode> {
        let workspace_id = parse_id("workspaceId", &input.workspace_id)?;
        let user_id = parse_id("userId", &input.user_id)?;
        let (membership, user) = service::update_member(
            app(ctx)?,
            viewer(ctx)?,
            workspace_id,
            user_id,
            input.role.into(),
        )
        .await?;
        Ok(member_node(membership, user))
    }

    /// Removes a member, or leaves when `userId` is the viewer. The last OWNER cannot go.
    async fn remove_workspace_member(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        user_id: ID,
    ) -> async_graphql::Result<bool> {
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let user_id = parse_id("userId", &user_id)?;
        Ok(service::remove_member(app(ctx)?, viewer(ctx)?, workspace_id, user_id).await?)
    }
}

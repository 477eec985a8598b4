//! The `User` type, `me` and `updateProfile`.

use async_graphql::{Context, ID, InputObject, Object};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::{service, viewer};
use crate::error::AppError;
use crate::graphql::{app, conn};
use crate::users::model::User;
use crate::workspaces::graphql::WorkspaceNode;
use crate::workspaces::model::Workspace;

/// A user as the API shows it: never the password hash.
#[derive(Debug, Clone)]
pub struct UserNode {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
    /// True when this node is the caller's own account, proven by the operation that produced
    /// it (`me`, `register`, `login`, ...): its private fields resolve even in a request that
    /// carried no access token, as `register { user { workspaces } }` does.
    pub is_caller: bool,
}

impl UserNode {
    /// The caller's own account.
    pub fn caller(user: User) -> Self {
        UserNode {
            is_caller: true,
            ..UserNode::from(user)
        }
    }
}

/// The user with this id, through the request's `UserLoader`; None for no id, or an account
/// that is gone (the `createdBy` of agents, conversations, ...).
pub async fn user_by_id(
    ctx: &Context<'_>,
    id: Option<Uuid>,
) -> async_graphql::Result<Option<UserNode>> {
    let Some(id) = id else {
        return Ok(None);
    };
    let user = crate::graphql::loader::<crate::graphql::loaders::UserLoader>(ctx)?
        .load_one(id)
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("loading user: {e}")))?;
    Ok(user.map(UserNode::from))
}

impl From<User> for UserNode {
    fn from(user: User) -> Self {
        UserNode {
            id: user.id,
            email: user.email,
            display_name: user.display_name,
            created_at: user.created_at,
            is_caller: false,
        }
    }
}

#[Object(name = "User")]
impl UserNode {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    async fn email(&self) -> &str {
        &self.email
    }

    async fn display_name(&self) -> &str {
        &self.display_name
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// The viewer's own workspaces; for another user, only those shared with the viewer.
    async fn workspaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkspaceNode>> {
        let own = self.is_caller || viewer(ctx)?.user_id == self.id;
        let mut conn = conn(ctx).await?;
        let rows = if own {
            Workspace::for_member(&mut conn, self.id).await
        } else {
            Workspace::shared_with(&mut conn, self.id, viewer(ctx)?.user_id).await
        }
        .map_err(AppError::from)?;
        Ok(rows.into_iter().map(WorkspaceNode::from).collect())
    }
}

#[derive(InputObject)]
pub struct UpdateProfileInput {
    /// 1 to 100 characters.
    pub display_name: String,
}

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<UserNode> {
        let viewer = viewer(ctx)?;
        let mut conn = conn(ctx).await?;
        let user = User::find(&mut conn, viewer.user_id)
            .await
            .map_err(AppError::from)?
            .ok_or_else(|| AppError::unauthenticated("account no longer exists"))?;
        Ok(UserNode::caller(user))
    }
}

#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        input: UpdateProfileInput,
    ) -> async_graphql::Result<UserNode> {
        let viewer = viewer(ctx)?;
        let user = service::update_profile(app(ctx)?, viewer, &input.display_name).await?;
        Ok(UserNode::caller(user))
    }
}

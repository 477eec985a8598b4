//! `usageUpdated`: kept apart from the query code (a module-level `RunQueryDsl` import
//! breaks the `#[Subscription]` macro).

use async_graphql::{Context, ID, Subscription};
use chrono::Utc;
use futures_util::stream::{BoxStream, StreamExt};

use crate::auth::viewer;
use crate::error::AppError;
use crate::graphql::{app, parse_id};
use crate::streaming::guard::{Scope, guarded};
use crate::usage::quota;
use crate::workspaces::access::require;
use crate::workspaces::graphql::QuotaNode;
use crate::workspaces::model::Role;

#[derive(Default)]
pub struct UsageSubscription;

#[Subscription]
impl UsageSubscription {
    /// The workspace's quota, now and after every reservation and settlement.
    async fn usage_updated(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<QuotaNode>>> {
        let viewer = *viewer(ctx)?;
        let app = app(ctx)?.clone();
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        {
            let mut conn = app.db.get().await.map_err(AppError::from)?;
            require(&mut conn, &viewer, workspace_id, Role::Member).await?;
        }
        let changes = app.hub.subscribe_quota(workspace_id).await;
        let signals = futures_util::stream::once(async {}).chain(changes);
        let guard_app = app.clone();
        let quotas = signals
            .then(move |()| {
                let app = app.clone();
                async move {
                    let mut conn = app.db.get().await.ok()?;
                    let row = quota::row(&mut conn, workspace_id).await.ok()??;
                    Some(QuotaNode::current(row, Utc::now()))
                }
            })
            .filter_map(std::future::ready)
            .map(Ok)
            .boxed();
        Ok(guarded(
            quotas,
            guard_app,
            viewer,
            Scope::Workspace(workspace_id),
        ))
    }
}

//! `usage`, `setWorkspaceQuota`, `setMemberTokenLimit` and the `usageUpdated` subscription.

use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::auth::viewer;
use crate::db::schema::{users, workspace_members, workspace_quotas};
use crate::error::AppError;
use crate::graphql::{app, conn, parse_id};
use crate::usage::report::{self, Grouping};
use crate::workspaces::access::require;
use crate::workspaces::graphql::{QuotaNode, QuotaPeriod};
use crate::workspaces::model::{QuotaRow, Role, period_start};

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    Day,
    Model,
    User,
}

#[derive(SimpleObject)]
pub struct UsageRow {
    /// A day (`YYYY-MM-DD`, UTC), a model id or a user id.
    pub key: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub messages: i64,
}

#[derive(SimpleObject)]
pub struct UsageReport {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub messages: i64,
    pub rows: Vec<UsageRow>,
}

fn usd(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

#[derive(InputObject)]
pub struct SetWorkspaceQuotaInput {
    pub workspace_id: ID,
    pub period: QuotaPeriod,
    /// Tokens per period; null for unlimited.
    pub token_limit: Option<i64>,
    /// Generations per period; null for unlimited.
    pub message_limit: Option<i64>,
}

#[derive(Default)]
pub struct UsageQuery;

#[Object]
impl UsageQuery {
    /// What a workspace used, from its ledger (one row per generation), in `[from, to)`.
    async fn usage(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        group_by: Option<UsageGrouping>,
    ) -> async_graphql::Result<UsageReport> {
        let viewer = viewer(ctx)?;
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(AppError::bad_input("from", "from must not be after to").into());
        }
        let mut conn = conn(ctx).await?;
        require(&mut conn, viewer, workspace_id, Role::Member).await?;
        let total = report::sums(&mut conn, workspace_id, from, to, None)
            .await
            .map_err(AppError::from)?;
        let grouping = group_by.map(|g| match g {
            UsageGrouping::Day => Grouping::Day,
            UsageGrouping::Model => Grouping::Model,
            UsageGrouping::User => Grouping::User,
        });
        let rows = match grouping {
            Some(g) => report::sums(&mut conn, workspace_id, from, to, Some(g))
                .await
                .map_err(AppError::from)?,
            None => Vec::new(),
        };
        let total = total.into_iter().next();
        Ok(UsageReport {
            prompt_tokens: total.as_ref().map_or(0, |t| t.prompt_tokens),
            completion_tokens: total.as_ref().map_or(0, |t| t.completion_tokens),
            cost_usd: usd(total.as_ref().map_or(0, |t| t.cost_micro_usd)),
            messages: total.as_ref().map_or(0, |t| t.messages),
            rows: rows
                .into_iter()
                .map(|r| UsageRow {
                    key: r.key,
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                    cost_usd: usd(r.cost_micro_usd),
                    messages: r.messages,
                })
                .collect(),
        })
    }
}

#[derive(Default)]
pub struct UsageMutation;

#[Object]
impl UsageMutation {
    /// Sets a workspace's period and limits: instance administrators only (`ADMIN_EMAILS`).
    /// Changing the period starts a fresh one.
    async fn set_workspace_quota(
        &self,
        ctx: &Context<'_>,
        input: SetWorkspaceQuotaInput,
    ) -> async_graphql::Result<QuotaNode> {
        let viewer = viewer(ctx)?;
        let app = app(ctx)?;
        let workspace_id = parse_id("workspaceId", &input.workspace_id)?;
        for (field, value) in [
            ("tokenLimit", input.token_limit),
            ("messageLimit", input.message_limit),
        ] {
            if value.is_some_and(|v| v < 0) {
                return Err(AppError::bad_input(field, "limits must not be negative").into());
            }
        }
        let mut conn = conn(ctx).await?;
        let email: Option<String> = users::table
            .find(viewer.user_id)
            .select(users::email)
            .first(&mut conn)
            .await
            .optional()
            .map_err(AppError::from)?;
        if !email.is_some_and(|e| app.config.admin_emails.contains(&e)) {
            return Err(
                AppError::Forbidden("only instance administrators set quotas".to_owned()).into(),
            );
        }
        let period = match input.period {
            QuotaPeriod::Day => "DAY",
            QuotaPeriod::Month => "MONTH",
        };
        let current: Option<QuotaRow> = workspace_quotas::table
            .find(workspace_id)
            .select(QuotaRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(AppError::from)?;
        let current = current.ok_or_else(|| AppError::not_found("workspace"))?;
        let restart = current.period != period;
        let row: QuotaRow = if restart {
            diesel::update(workspace_quotas::table.find(workspace_id))
                .set((
                    workspace_quotas::period.eq(period),
                    workspace_quotas::token_limit.eq(input.token_limit),
                    workspace_quotas::message_limit.eq(input.message_limit),
                    workspace_quotas::tokens_used.eq(0),
                    workspace_quotas::messages_used.eq(0),
                    workspace_quotas::period_start.eq(period_start(period, Utc::now())),
                    workspace_quotas::updated_at.eq(diesel::dsl::now),
                ))
                .returning(QuotaRow::as_returning())
                .get_result(&mut conn)
                .await
        } else {
            diesel::update(workspace_quotas::table.find(workspace_id))
                .set((
                    workspace_quotas::token_limit.eq(input.token_limit),
                    workspace_quotas::message_limit.eq(input.message_limit),
                    workspace_quotas::updated_at.eq(diesel::dsl::now),
                ))
                .returning(QuotaRow::as_returning())
                .get_result(&mut conn)
                .await
        }
        .map_err(AppError::from)?;
        app.hub.publish_quota(workspace_id).await;
        Ok(QuotaNode::current(row, Utc::now()))
    }

    /// Caps one member's tokens per period within the workspace (OWNER or ADMIN); null
    /// removes the cap.
    async fn set_member_token_limit(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
        user_id: ID,
        token_limit: Option<i64>,
    ) -> async_graphql::Result<bool> {
        let viewer = viewer(ctx)?;
        let workspace_id = parse_id("workspaceId", &workspace_id)?;
        let user_id = parse_id("userId", &user_id)?;
        if token_limit.is_some_and(|v| v < 0) {
            return Err(AppError::bad_input("tokenLimit", "limits must not be negative").into());
        }
        let mut conn = conn(ctx).await?;
        let access = require(&mut conn, viewer, workspace_id, Role::Admin).await?;
        let target: Option<String> = workspace_members::table
            .find((workspace_id, user_id))
            .select(workspace_members::role)
            .first(&mut conn)
            .await
            .optional()
            .map_err(AppError::from)?;
        let target = target.ok_or_else(|| AppError::not_found("member"))?;
        if Role::from_db(&target) == Role::Owner && access.role != Role::Owner {
            return Err(AppError::Forbidden("only an OWNER can limit an OWNER".to_owned()).into());
        }
        let n = diesel::update(workspace_members::table.find((workspace_id, user_id)))
            .set(workspace_members::token_limit.eq(token_limit))
            .execute(&mut conn)
            .await
            .map_err(AppError::from)?;
        if n == 0 {
            return Err(AppError::not_found("member").into());
        }
        Ok(true)
    }
}

//! Workspace, membership and quota rows.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::config::{QuotaDefaults, QuotaPeriodSetting};
use crate::db::schema::{users, workspace_members, workspace_quotas, workspaces};
use crate::users::model::User;

/// A member's role, stored as text (`OWNER`, `ADMIN`, `MEMBER`) with a CHECK constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Member => "MEMBER",
        }
    }

    /// Rows are constrained by the database, so an unknown value means a corrupted row; it is
    /// read as the least privileged role rather than failing the request.
    pub fn from_db(value: &str) -> Role {
        match value {
            "OWNER" => Role::Owner,
            "ADMIN" => Role::Admin,
            _ => Role::Member,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = workspaces, check_for_backend(diesel::pg::Pg))]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub personal: bool,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = workspaces)]
pub struct NewWorkspace<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub personal: bool,
    pub created_by: Option<Uuid>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = workspace_members, check_for_backend(diesel::pg::Pg))]
pub struct Membership {
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub role: String,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = workspace_members)]
pub struct NewMembership<'a> {
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub role: &'a str,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = workspace_quotas, check_for_backend(diesel::pg::Pg))]
pub struct QuotaRow {
    pub workspace_id: Uuid,
    pub period: String,
    pub token_limit: Option<i64>,
    pub message_limit: Option<i64>,
    pub tokens_used: i64,
    pub tokens_reserved: i64,
    pub messages_used: i64,
    pub period_start: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = workspace_quotas)]
pub struct NewQuota<'a> {
    pub workspace_id: Uuid,
    pub period: &'a str,
    pub token_limit: Option<i64>,
    pub message_limit: Option<i64>,
    pub period_start: DateTime<Utc>,
}

/// The start of the UTC calendar period containing `at`.
pub fn period_start(period: &str, at: DateTime<Utc>) -> DateTime<Utc> {
    let day = at.date_naive();
    let first = if period == "DAY" {
        day
    } else {
        day.with_day(1).unwrap_or(day)
    };
    Utc.from_utc_datetime(&first.and_time(chrono::NaiveTime::MIN))
}

/// The end of the period that starts at `start` (the next period's start).
pub fn period_end(period: &str, start: DateTime<Utc>) -> DateTime<Utc> {
    if period == "DAY" {
        start + chrono::Duration::days(1)
    } else {
        start
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(start + chrono::Duration::days(31))
    }
}

impl Workspace {
    /// Creates the workspace made at registration. Call inside the registration transaction.
    pub async fn create_personal(
        conn: &mut AsyncPgConnection,
        owner: &User,
        defaults: &QuotaDefaults,
    ) -> QueryResult<Workspace> {
        let name: String = format!("{}'s workspace", owner.display_name)
            .chars()
            .take(100)
            .collect();
        Workspace::create(conn, &name, true, owner.id, defaults).await
    }

    /// Creates a workspace, its OWNER membership and its quota row from the configured
    /// defaults. Call inside a transaction.
    pub async fn create(
        conn: &mut AsyncPgConnection,
        name: &str,
        personal: bool,
        owner_id: Uuid,
        defaults: &QuotaDefaults,
    ) -> QueryResult<Workspace> {
        let workspace = diesel::insert_into(workspaces::table)
            .values(&NewWorkspace {
                id: Uuid::now_v7(),
                name,
                personal,
                created_by: Some(owner_id),
            })
            .returning(Workspace::as_returning())
            .get_result(conn)
            .await?;
        Membership::insert(conn, workspace.id, owner_id, Role::Owner).await?;
        let period = match defaults.period {
            QuotaPeriodSetting::Day => "DAY",
            QuotaPeriodSetting::Month => "MONTH",
        };
        diesel::insert_into(workspace_quotas::table)
            .values(&NewQuota {
                workspace_id: workspace.id,
                period,
                token_limit: defaults.token_limit,
                message_limit: defaults.message_limit,
                period_start: period_start(period, Utc::now()),
            })
            .execute(conn)
            .await?;
        Ok(workspace)
    }

    pub async fn rename(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        name: &str,
    ) -> QueryResult<Workspace> {
        diesel::update(workspaces::table.find(id))
            .set((
                workspaces::name.eq(name),
                workspaces::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Workspace::as_returning())
            .get_result(conn)
            .await
    }

    /// Deletes the workspace; memberships, quota and conversations go with it.
    pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
        diesel::delete(workspaces::table.find(id))
            .execute(conn)
            .await
    }

    /// Locks the workspace row until the transaction ends: membership changes that must
    /// keep an OWNER take it first, so two of them cannot both remove "the other" owner.
    pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Uuid>> {
        workspaces::table
            .find(id)
            .select(workspaces::id)
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    /// Workspaces by id with the role `viewer_id` holds in each (those it is not a member
    /// of are absent), for the workspace loader.
    pub async fn many_for_member(
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
        viewer_id: Uuid,
    ) -> QueryResult<Vec<(Workspace, String)>> {
        workspaces::table
            .inner_join(workspace_members::table)
            .filter(workspaces::id.eq_any(ids))
            .filter(workspace_members::user_id.eq(viewer_id))
            .select((Workspace::as_select(), workspace_members::role))
            .load(conn)
            .await
    }

    /// The workspaces `user_id` belongs to, with the role held in each, oldest first.
    pub async fn for_member(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
    ) -> QueryResult<Vec<(Workspace, String)>> {
        workspaces::table
            .inner_join(workspace_members::table)
            .filter(workspace_members::user_id.eq(user_id))
            .order((workspaces::created_at.asc(), workspaces::id.asc()))
            .select((Workspace::as_select(), workspace_members::role))
            .load(conn)
            .await
    }

    /// The workspace with `id` if `user_id` is a member, with the member's role. This is the
    /// one membership check every workspace-scoped resolver goes through.
    pub async fn find_for_member(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<Option<(Workspace, String)>> {
        workspaces::table
            .inner_join(workspace_members::table)
            .filter(workspaces::id.eq(id))
            .filter(workspace_members::user_id.eq(user_id))
            .select((Workspace::as_select(), workspace_members::role))
            .first(conn)
            .await
            .optional()
    }

    /// The workspaces shared by `user_id` and `viewer_id`, with the role `viewer_id` holds.
    pub async fn shared_with(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        viewer_id: Uuid,
    ) -> QueryResult<Vec<(Workspace, String)>> {
        let theirs: Vec<Uuid> = workspace_members::table
            .filter(workspace_members::user_id.eq(user_id))
            .select(workspace_members::workspace_id)
            .load(conn)
            .await?;
        workspaces::table
            .inner_join(workspace_members::table)
            .filter(workspace_members::user_id.eq(viewer_id))
            .filter(workspaces::id.eq_any(theirs))
            .order((workspaces::created_at.asc(), workspaces::id.asc()))
            .select((Workspace::as_select(), workspace_members::role))
            .load(conn)
            .await
    }
}

impl Membership {
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        user_id: Uuid,
        role: Role,
    ) -> QueryResult<Membership> {
        diesel::insert_into(workspace_members::table)
            .values(&NewMembership {
                workspace_id,
                user_id,
                role: role.as_str(),
            })
            .returning(Membership::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn find(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<Option<Membership>> {
        workspace_members::table
            .find((workspace_id, user_id))
            .select(Membership::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn set_role(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        user_id: Uuid,
        role: Role,
    ) -> QueryResult<Membership> {
        diesel::update(workspace_members::table.find((workspace_id, user_id)))
            .set(workspace_members::role.eq(role.as_str()))
            .returning(Membership::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn delete(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<usize> {
        diesel::delete(workspace_members::table.find((workspace_id, user_id)))
            .execute(conn)
            .await
    }

    pub async fn count_owners(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
    ) -> QueryResult<i64> {
        workspace_members::table
            .filter(workspace_members::workspace_id.eq(workspace_id))
            .filter(workspace_members::role.eq(Role::Owner.as_str()))
            .count()
            .get_result(conn)
            .await
    }

    /// Members of each workspace in `ids`, with their users, for the members loader.
    pub async fn with_users(
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
    ) -> QueryResult<Vec<(Membership, User)>> {
        workspace_members::table
            .inner_join(users::table)
            .filter(workspace_members::workspace_id.eq_any(ids))
            .order((workspace_members::joined_at.asc(), users::id.asc()))
            .select((Membership::as_select(), User::as_select()))
            .load(conn)
            .await
    }
}

impl QuotaRow {
    pub async fn for_workspaces(
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
    ) -> QueryResult<Vec<QuotaRow>> {
        workspace_quotas::table
            .filter(workspace_quotas::workspace_id.eq_any(ids))
            .select(QuotaRow::as_select())
            .load(conn)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_calendar() {
        let at = Utc
            .with_ymd_and_hms(2026, 1, 31, 23, 59, 0)
            .single()
            .expect("date");
        let month = period_start("MONTH", at);
        assert_eq!(month.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(
            period_end("MONTH", month).to_rfc3339(),
            "2026-02-01T00:00:00+00:00"
        );
        let day = period_start("DAY", at);
        assert_eq!(day.to_rfc3339(), "2026-01-31T00:00:00+00:00");
        assert_eq!(
            period_end("DAY", day).to_rfc3339(),
            "2026-02-01T00:00:00+00:00"
        );
    }
}

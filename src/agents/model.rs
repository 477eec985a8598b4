//! Agent rows and their queries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{agents, workspace_members};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = agents, check_for_backend(diesel::pg::Pg))]
pub struct Agent {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub avatar: String,
    pub model: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = agents)]
pub struct NewAgent {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub avatar: String,
    pub model: String,
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
    pub created_by: Option<Uuid>,
}

/// A partial update; `None` leaves a column as it is, `Some(None)` clears it.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = agents)]
pub struct AgentChanges {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub avatar: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<Option<String>>,
    pub temperature: Option<Option<f32>>,
    pub max_output_tokens: Option<Option<i32>>,
}

impl AgentChanges {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.avatar.is_none()
            && self.model.is_none()
            && self.system_prompt.is_none()
            && self.temperature.is_none()
            && self.max_output_tokens.is_none()
    }
}

impl Agent {
    pub async fn insert_many(
        conn: &mut AsyncPgConnection,
        new: &[NewAgent],
    ) -> QueryResult<Vec<Agent>> {
        diesel::insert_into(agents::table)
            .values(new)
            .returning(Agent::as_returning())
            .get_results(conn)
            .await
    }

    pub async fn insert(conn: &mut AsyncPgConnection, new: &NewAgent) -> QueryResult<Agent> {
        diesel::insert_into(agents::table)
            .values(new)
            .returning(Agent::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Agent>> {
        agents::table
            .filter(agents::id.eq_any(ids))
            .select(Agent::as_select())
            .load(conn)
            .await
    }

    /// The agent if it belongs to `workspace_id`.
    pub async fn find_in(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        workspace_id: Uuid,
    ) -> QueryResult<Option<Agent>> {
        agents::table
            .find(id)
            .filter(agents::workspace_id.eq(workspace_id))
            .select(Agent::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The agent if `user_id` is a member of its workspace, with the member's role.
    pub async fn find_for_member(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<Option<(Agent, String)>> {
        agents::table
            .inner_join(
                workspace_members::table
                    .on(workspace_members::workspace_id.eq(agents::workspace_id)),
            )
            .filter(agents::id.eq(id))
            .filter(workspace_members::user_id.eq(user_id))
            .select((Agent::as_select(), workspace_members::role))
            .first(conn)
            .await
            .optional()
    }

    /// A workspace's agents by name (then id, so equal names keep a stable order).
    pub async fn list(conn: &mut AsyncPgConnection, workspace_id: Uuid) -> QueryResult<Vec<Agent>> {
        agents::table
            .filter(agents::workspace_id.eq(workspace_id))
            .order((agents::name.asc(), agents::id.asc()))
            .select(Agent::as_select())
            .load(conn)
            .await
    }

    pub async fn count(conn: &mut AsyncPgConnection, workspace_id: Uuid) -> QueryResult<i64> {
        agents::table
            .filter(agents::workspace_id.eq(workspace_id))
            .count()
            .get_result(conn)
            .await
    }

    pub async fn update(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        changes: &AgentChanges,
    ) -> QueryResult<Agent> {
        diesel::update(agents::table.find(id))
            .set((changes, agents::updated_at.eq(diesel::dsl::now)))
            .returning(Agent::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
        diesel::delete(agents::table.find(id)).execute(conn).await
    }
}

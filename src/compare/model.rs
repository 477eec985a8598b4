//! Comparison, entry and vote rows and their queries.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use crate::conversations::model::Message;
use crate::db::schema::{comparison_entries, comparisons, message_votes, messages};
use crate::streaming::jobs;

type SqlUuid = diesel::sql_types::Uuid;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = comparisons, check_for_backend(diesel::pg::Pg))]
pub struct Comparison {
    pub id: Uuid,
    pub user_message_id: Uuid,
    pub conversation_id: Uuid,
    pub workspace_id: Uuid,
    /// PENDING (answers being generated), JUDGING (the judge job is queued), READY.
    pub status: String,
    pub judge_model: Option<String>,
    /// The judge model's id, or `heuristic`.
    pub judged_by: Option<String>,
    pub judged_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What `judged_by` holds when the results come from the local heuristic.
pub const HEURISTIC: &str = "heuristic";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = comparison_entries, check_for_backend(diesel::pg::Pg))]
pub struct Entry {
    pub comparison_id: Uuid,
    /// The model's place in the request's `models`, from 0.
    pub position: i32,
    pub message_id: Uuid,
    pub model: String,
    pub summary: Option<String>,
    pub reasoning: Option<String>,
    pub score: Option<f64>,
    pub rank: Option<i32>,
}

/// The judge's results for one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub summary: String,
    pub reasoning: Option<String>,
    pub score: f64,
    pub rank: i32,
}

/// A vote as the leaderboard reads it.
#[derive(Debug, Clone, Queryable)]
pub struct VoteRow {
    pub message_id: Uuid,
    pub user_id: Uuid,
    pub vote: String,
    pub updated_at: DateTime<Utc>,
}

/// Votes per model in a workspace.
#[derive(Debug, Clone, QueryableByName)]
pub struct ModelVotes {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub model: String,
    #[diesel(sql_type = BigInt)]
    pub up: i64,
    #[diesel(sql_type = BigInt)]
    pub down: i64,
}

impl Comparison {
    /// Stores a comparison of `answers` (in the request's order) to `user_message`, in the
    /// caller's transaction.
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        user_message: &Message,
        workspace_id: Uuid,
        answers: &[Message],
    ) -> QueryResult<Comparison> {
        let comparison: Comparison = diesel::insert_into(comparisons::table)
            .values((
                comparisons::id.eq(Uuid::now_v7()),
                comparisons::user_message_id.eq(user_message.id),
                comparisons::conversation_id.eq(user_message.conversation_id),
                comparisons::workspace_id.eq(workspace_id),
            ))
            .returning(Comparison::as_returning())
            .get_result(conn)
            .await?;
        let rows: Vec<_> = answers
            .iter()
            .enumerate()
            .map(|(position, answer)| {
                (
                    comparison_entries::comparison_id.eq(comparison.id),
                    comparison_entries::position.eq(position as i32),
                    comparison_entries::message_id.eq(answer.id),
                    comparison_entries::model.eq(answer.model.clone().unwrap_or_default()),
                )
            })
            .collect();
        diesel::insert_into(comparison_entries::table)
            .values(rows)
            .execute(conn)
            .await?;
        Ok(comparison)
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Comparison>> {
        comparisons::table
            .find(id)
            .select(Comparison::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn of_user_message(
        conn: &mut AsyncPgConnection,
        user_message_id: Uuid,
    ) -> QueryResult<Option<Comparison>> {
        comparisons::table
            .filter(comparisons::user_message_id.eq(user_message_id))
            .select(Comparison::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The entries with their messages, in the request's order.
    pub async fn entries(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Vec<(Entry, Message)>> {
        comparison_entries::table
            .inner_join(messages::table)
            .filter(comparison_entries::comparison_id.eq(id))
            .order(comparison_entries::position)
            .select((Entry::as_select(), Message::as_select()))
            .load(conn)
            .await
    }

    /// Called whenever an answer ends: if it belongs to a comparison whose answers have all
    /// ended, moves it to JUDGING and queues the judge job, in one transaction. The status
    /// moves once, so the job is queued once however many answers end together; and the
    /// last answer to end always sees every other one ended (its own end was committed
    /// before this runs). Returns whether a job was queued.
    pub async fn queue_judging_if_done(
        conn: &mut AsyncPgConnection,
        answer_id: Uuid,
    ) -> QueryResult<bool> {
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            #[derive(QueryableByName)]
            struct Queued {
                #[diesel(sql_type = SqlUuid)]
                id: Uuid,
            }
            let queued: Option<Queued> = diesel::sql_query(
                "UPDATE comparisons c SET status = 'JUDGING' \
                 WHERE c.id = (SELECT e.comparison_id FROM comparison_entries e WHERE e.message_id = $1) \
                   AND c.status = 'PENDING' \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM comparison_entries e JOIN messages m ON m.id = e.message_id \
                       WHERE e.comparison_id = c.id AND m.status IN ('PENDING', 'STREAMING')) \
                 RETURNING c.id",
            )
            .bind::<SqlUuid, _>(answer_id)
            .get_result(conn)
            .await
            .optional()?;
            let Some(queued) = queued else {
                return Ok(false);
            };
            jobs::enqueue(
                conn,
                jobs::COMPARE_JUDGE,
                &queued.id.to_string(),
                json!({ "comparisonId": queued.id }),
            )
            .await?;
            Ok(true)
        })
        .await
    }

    /// Writes the judge's results (index-aligned with the entries' positions) and makes the
    /// comparison READY, once: a comparison already READY is left alone. Returns whether
    /// this call wrote them.
    pub async fn record(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        judge_model: &str,
        judged_by: &str,
        results: &[Judged],
    ) -> QueryResult<bool> {
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            let updated = diesel::update(comparisons::table.find(id))
                .filter(comparisons::status.ne("READY"))
                .set((
                    comparisons::status.eq("READY"),
                    comparisons::judge_model.eq(judge_model),
                    comparisons::judged_by.eq(judged_by),
                    comparisons::judged_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if updated == 0 {
                return Ok(false);
            }
            for (position, judged) in results.iter().enumerate() {
                diesel::update(comparison_entries::table.find((id, position as i32)))
                    .set((
                        comparison_entries::summary.eq(&judged.summary),
                        comparison_entries::reasoning.eq(&judged.reasoning),
                        comparison_entries::score.eq(judged.score),
                        comparison_entries::rank.eq(judged.rank),
                    ))
                    .execute(conn)
                    .await?;
            }
            Ok(true)
        })
        .await
    }

    /// A workspace's newest comparisons, at most `limit`.
    pub async fn newest_in(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        limit: i64,
    ) -> QueryResult<Vec<Comparison>> {
        comparisons::table
            .filter(comparisons::workspace_id.eq(workspace_id))
            .order((comparisons::created_at.desc(), comparisons::id.desc()))
            .limit(limit)
            .select(Comparison::as_select())
            .load(conn)
            .await
    }

    /// The entries of these comparisons.
    pub async fn entries_of(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Entry>> {
        comparison_entries::table
            .filter(comparison_entries::comparison_id.eq_any(ids))
            .order((
                comparison_entries::comparison_id,
                comparison_entries::position,
            ))
            .select(Entry::as_select())
            .load(conn)
            .await
    }
}

/// Votes on answers.
pub struct Votes;

impl Votes {
    /// Records `user_id`'s vote on a message, replacing an earlier one.
    pub async fn set(
        conn: &mut AsyncPgConnection,
        message_id: Uuid,
        user_id: Uuid,
        vote: &str,
    ) -> QueryResult<()> {
        diesel::insert_into(message_votes::table)
            .values((
                message_votes::message_id.eq(message_id),
                message_votes::user_id.eq(user_id),
                message_votes::vote.eq(vote),
            ))
            .on_conflict((message_votes::message_id, message_votes::user_id))
            .do_update()
            .set((
                message_votes::vote.eq(vote),
                message_votes::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await
            .map(drop)
    }

    pub async fn clear(
        conn: &mut AsyncPgConnection,
        message_id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<()> {
        diesel::delete(message_votes::table.find((message_id, user_id)))
            .execute(conn)
            .await
            .map(drop)
    }

    /// Every vote on these messages.
    pub async fn on(
        conn: &mut AsyncPgConnection,
        message_ids: &[Uuid],
    ) -> QueryResult<Vec<VoteRow>> {
        message_votes::table
            .filter(message_votes::message_id.eq_any(message_ids))
            .select((
                message_votes::message_id,
                message_votes::user_id,
                message_votes::vote,
                message_votes::updated_at,
            ))
            .load(conn)
            .await
    }

    /// UP and DOWN votes per model on a workspace's answers.
    pub async fn per_model(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
    ) -> QueryResult<Vec<ModelVotes>> {
        diesel::sql_query(
            "SELECT m.model AS model, \
                    count(*) FILTER (WHERE v.vote = 'UP') AS up, \
                    count(*) FILTER (WHERE v.vote = 'DOWN') AS down \
             FROM message_votes v \
             JOIN messages m ON m.id = v.message_id \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.workspace_id = $1 AND m.model IS NOT NULL \
             GROUP BY m.model",
        )
        .bind::<SqlUuid, _>(workspace_id)
        .load(conn)
        .await
    }
}

//! Quota reservation and settlement, race-free in SQL.
//!
//! `reserve` is one conditional `UPDATE … WHERE used + reserved + n <= limit` on the
//! workspace's quota row (and the member's row when the member has a budget): concurrent
//! reservations serialise on the row lock and each re-checks the condition, so the limit
//! cannot be overspent. Counters roll over when a new UTC calendar period has begun.
//! `settle` releases the reservation and adds the actual usage, in every outcome, and writes
//! the ledger row. Reservations expire, and `sweep` releases those whose settlement never
//! came.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{quota_reservations, workspace_quotas};
use crate::error::{AppError, AppResult};
use crate::workspaces::model::{QuotaRow, period_end, period_start};

type SqlUuid = diesel::sql_types::Uuid;

/// The start of the row's current period, in SQL.
const CURRENT: &str =
    "date_trunc(CASE q.period WHEN 'DAY' THEN 'day' ELSE 'month' END, now(), 'UTC')";

#[derive(QueryableByName)]
struct Started {
    #[diesel(sql_type = Timestamptz)]
    period_start: DateTime<Utc>,
}

pub struct ReserveRequest<'a> {
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub message_id: Uuid,
    pub model: &'a str,
    pub prompt_tokens: i64,
    pub max_output_tokens: i64,
    pub ttl: std::time::Duration,
}

/// Reserves prompt + max output tokens and one message for a generation; QUOTA_EXCEEDED
/// (with `resetsAt`) when the workspace or the member has not that much left. Runs in a
/// transaction (the caller's when it has one). Returns the reservation id.
pub async fn reserve(
    conn: &mut AsyncPgConnection,
    request: &ReserveRequest<'_>,
) -> AppResult<Uuid> {
    let tokens = request.prompt_tokens + request.max_output_tokens;
    // Inside the caller's transaction: no savepoint (two more round trips). Every caller
    // ends its transaction on an error from here, so a partial rollback is never needed.
    if crate::db::in_transaction(conn) {
        return reserve_now(conn, request, tokens).await;
    }
    conn.transaction::<_, AppError, _>(async |conn| reserve_now(conn, request, tokens).await)
        .await
}

async fn reserve_now(
    conn: &mut AsyncPgConnection,
    request: &ReserveRequest<'_>,
    tokens: i64,
) -> AppResult<Uuid> {
    let started: Option<Started> = diesel::sql_query(format!(
        "UPDATE workspace_quotas q SET \
             tokens_used = CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.tokens_used END, \
             messages_used = CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.messages_used END + 1, \
             period_start = GREATEST(q.period_start, {CURRENT}), \
             tokens_reserved = q.tokens_reserved + $2, \
             updated_at = now() \
         WHERE q.workspace_id = $1 \
           AND (q.token_limit IS NULL OR \
                (CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.tokens_used END) \
                + q.tokens_reserved + $2 <= q.token_limit) \
           AND (q.message_limit IS NULL OR \
                (CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.messages_used END) \
                + 1 <= q.message_limit) \
         RETURNING q.period_start"
    ))
    .bind::<SqlUuid, _>(request.workspace_id)
    .bind::<BigInt, _>(tokens)
    .get_result(conn)
    .await
    .optional()?;
    let Some(started) = started else {
        return Err(exceeded(conn, request.workspace_id, tokens, "the workspace").await);
    };
    let member: Option<Started> = diesel::sql_query(
        "UPDATE workspace_members m SET \
             tokens_used = CASE WHEN m.period_start IS NULL OR m.period_start < $3 THEN 0 ELSE m.tokens_used END, \
             period_start = $3, \
             tokens_reserved = m.tokens_reserved + $4 \
         WHERE m.workspace_id = $1 AND m.user_id = $2 \
           AND (m.token_limit IS NULL OR \
                (CASE WHEN m.period_start IS NULL OR m.period_start < $3 THEN 0 ELSE m.tokens_used END) \
                + m.tokens_reserved + $4 <= m.token_limit) \
         RETURNING m.period_start",
    )
    .bind::<SqlUuid, _>(request.workspace_id)
    .bind::<SqlUuid, _>(request.user_id)
    .bind::<Timestamptz, _>(started.period_start)
    .bind::<BigInt, _>(tokens)
    .get_result(conn)
    .await
    .optional()?;
    if member.is_none() {
        return Err(exceeded(
            conn,
            request.workspace_id,
            tokens,
            "your budget in this workspace",
        )
        .await);
    }
    let id = Uuid::now_v7();
    let expires_at = Utc::now()
        + chrono::Duration::from_std(request.ttl).unwrap_or_else(|_| chrono::Duration::minutes(30));
    diesel::insert_into(quota_reservations::table)
        .values((
            quota_reservations::id.eq(id),
            quota_reservations::workspace_id.eq(request.workspace_id),
            quota_reservations::user_id.eq(Some(request.user_id)),
            quota_reservations::message_id.eq(Some(request.message_id)),
            quota_reservations::model.eq(request.model),
            quota_reservations::tokens.eq(tokens),
            quota_reservations::prompt_tokens.eq(request.prompt_tokens),
            quota_reservations::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(id)
}

/// The QUOTA_EXCEEDED error, with when the period resets.
async fn exceeded(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    tokens: i64,
    whose: &str,
) -> AppError {
    let row = workspace_quotas::table
        .find(workspace_id)
        .select(QuotaRow::as_select())
        .first(conn)
        .await
        .optional();
    let Ok(Some(row)) = row else {
        return AppError::internal(anyhow::anyhow!("workspace {workspace_id} has no quota row"));
    };
    crate::metrics::quota_rejected();
    let resets_at = period_end(&row.period, period_start(&row.period, Utc::now()));
    AppError::QuotaExceeded {
        message: format!(
            "this generation needs up to {tokens} tokens and {whose} has not that many left this period"
        ),
        resets_at,
    }
}

/// What a settled generation used.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub workspace_id: Uuid,
    pub user_id: Option<Uuid>,
    pub conversation_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub model: String,
    /// None: nothing was generated (the request never reached a provider).
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: i64,
    pub cost_micro_usd: i64,
    pub estimated: bool,
}

#[derive(QueryableByName)]
struct Released {
    #[diesel(sql_type = BigInt)]
    tokens: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Releases reservation `reservation_id` (if the sweeper has not already) and adds the actual
/// usage to the workspace and the member, with the ledger row, once: a settlement that finds
/// the generation's ledger row already there changes nothing (retries, double settlement).
/// The ledger keeps its references only while they exist (a conversation deleted mid-stream
/// does not void the charge).
pub async fn settle(
    conn: &mut AsyncPgConnection,
    reservation_id: Option<Uuid>,
    s: &Settlement,
) -> AppResult<()> {
    conn.transaction::<_, AppError, _>(async |conn| {
        let generated = s.prompt_tokens.is_some();
        if generated {
            let inserted: Count = diesel::sql_query(
                "WITH row AS ( \
                     INSERT INTO usage_records (id, workspace_id, user_id, conversation_id, message_id, \
                         model, prompt_tokens, completion_tokens, cost_micro_usd, estimated) \
                     SELECT $1, w.id, (SELECT id FROM users WHERE id = $3), \
                            (SELECT id FROM conversations WHERE id = $4), \
                            (SELECT id FROM messages WHERE id = $5), \
                            $6, $7, $8, $9, $10 \
                     FROM workspaces w WHERE w.id = $2 \
                     ON CONFLICT (message_id) DO NOTHING \
                     RETURNING 1 \
                 ) SELECT count(*)::bigint AS n FROM row",
            )
            .bind::<SqlUuid, _>(Uuid::now_v7())
            .bind::<SqlUuid, _>(s.workspace_id)
            .bind::<Nullable<SqlUuid>, _>(s.user_id)
            .bind::<Nullable<SqlUuid>, _>(s.conversation_id)
            .bind::<Nullable<SqlUuid>, _>(s.message_id)
            .bind::<Text, _>(&s.model)
            .bind::<BigInt, _>(s.prompt_tokens.unwrap_or(0))
            .bind::<BigInt, _>(s.completion_tokens)
            .bind::<BigInt, _>(s.cost_micro_usd)
            .bind::<Bool, _>(s.estimated)
            .get_result(conn)
            .await?;
            if inserted.n == 0 {
                // Settled before (or the workspace is gone): only the reservation may remain.
                diesel::sql_query("DELETE FROM quota_reservations WHERE id = $1")
                    .bind::<Nullable<SqlUuid>, _>(reservation_id)
                    .execute(conn)
                    .await?;
                return Ok(());
            }
        }
        let released: i64 = match reservation_id {
            Some(id) => diesel::sql_query("DELETE FROM quota_reservations WHERE id = $1 RETURNING tokens")
                .bind::<SqlUuid, _>(id)
                .get_result::<Released>(conn)
                .await
                .optional()?
                .map_or(0, |r| r.tokens),
            None => 0,
        };
        let used = s.prompt_tokens.unwrap_or(0) + s.completion_tokens;
        diesel::sql_query(format!(
            "UPDATE workspace_quotas q SET \
                 tokens_used = CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.tokens_used END + $2, \
                 messages_used = GREATEST(CASE WHEN q.period_start < {CURRENT} THEN 0 ELSE q.messages_used END \
                                 - CASE WHEN $4 THEN 0 ELSE 1 END, 0), \
                 period_start = GREATEST(q.period_start, {CURRENT}), \
                 tokens_reserved = GREATEST(q.tokens_reserved - $3, 0), \
                 updated_at = now() \
             WHERE q.workspace_id = $1"
        ))
        .bind::<SqlUuid, _>(s.workspace_id)
        .bind::<BigInt, _>(used)
        .bind::<BigInt, _>(released)
        .bind::<Bool, _>(generated)
        .execute(conn)
        .await?;
        if let Some(user_id) = s.user_id {
            diesel::sql_query(format!(
                "UPDATE workspace_members m SET \
                     tokens_used = CASE WHEN m.period_start IS NULL OR m.period_start < p.cur THEN 0 ELSE m.tokens_used END + $3, \
                     period_start = p.cur, \
                     tokens_reserved = GREATEST(m.tokens_reserved - $4, 0) \
                 FROM (SELECT {CURRENT} AS cur FROM workspace_quotas q WHERE q.workspace_id = $1) p \
                 WHERE m.workspace_id = $1 AND m.user_id = $2"
            ))
            .bind::<SqlUuid, _>(s.workspace_id)
            .bind::<SqlUuid, _>(user_id)
            .bind::<BigInt, _>(used)
            .bind::<BigInt, _>(released)
            .execute(conn)
            .await?;
        }
        Ok(())
    })
    .await
}

/// Releases reservations past their expiry (their settlement never came). Returns how many.
pub async fn sweep(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    let swept: Count = diesel::sql_query(
        "WITH expired AS ( \
             DELETE FROM quota_reservations WHERE expires_at < now() \
             RETURNING workspace_id, user_id, tokens \
         ), by_workspace AS ( \
             UPDATE workspace_quotas q SET tokens_reserved = GREATEST(q.tokens_reserved - e.t, 0) \
             FROM (SELECT workspace_id, sum(tokens)::bigint AS t FROM expired GROUP BY 1) e \
             WHERE q.workspace_id = e.workspace_id \
         ), by_member AS ( \
             UPDATE workspace_members m SET tokens_reserved = GREATEST(m.tokens_reserved - e.t, 0) \
             FROM (SELECT workspace_id, user_id, sum(tokens)::bigint AS t FROM expired \
                   WHERE user_id IS NOT NULL GROUP BY 1, 2) e \
             WHERE m.workspace_id = e.workspace_id AND m.user_id = e.user_id \
         ) \
         SELECT count(*)::bigint AS n FROM expired",
    )
    .get_result(conn)
    .await?;
    Ok(swept.n as usize)
}

/// A workspace's quota row.
pub async fn row(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
) -> QueryResult<Option<QuotaRow>> {
    workspace_quotas::table
        .find(workspace_id)
        .select(QuotaRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The reservation of a message, for settling generations recovered after a crash.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = quota_reservations, check_for_backend(diesel::pg::Pg))]
pub struct Reservation {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub user_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub model: String,
    pub tokens: i64,
    pub prompt_tokens: i64,
}

pub async fn reservation_of(
    conn: &mut AsyncPgConnection,
    message_id: Uuid,
) -> QueryResult<Option<Reservation>> {
    quota_reservations::table
        .filter(quota_reservations::message_id.eq(message_id))
        .select(Reservation::as_select())
        .first(conn)
        .await
        .optional()
}

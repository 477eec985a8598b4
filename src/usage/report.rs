//! The `usage` report: sums over the ledger, optionally grouped by day, model or user.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Day,
    Model,
    User,
}

#[derive(Debug, Clone, QueryableByName, PartialEq, Eq)]
pub struct UsageSum {
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub prompt_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub completion_tokens: i64,
    #[diesel(sql_type = BigInt)]
    pub cost_micro_usd: i64,
    #[diesel(sql_type = BigInt)]
    pub messages: i64,
}

/// Sums of `workspace_id`'s ledger in `[from, to)`: one row keyed `total` without grouping,
/// else one row per day (`YYYY-MM-DD`, UTC), model id or user id, largest cost first.
pub async fn sums(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    grouping: Option<Grouping>,
) -> diesel::QueryResult<Vec<UsageSum>> {
    let key = match grouping {
        None => "'total'",
        Some(Grouping::Day) => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        Some(Grouping::Model) => "model",
        Some(Grouping::User) => "coalesce(user_id::text, 'deleted')",
    };
    let order = if grouping == Some(Grouping::Day) {
        "key"
    } else {
        "cost_micro_usd DESC, key"
    };
    diesel::sql_query(format!(
        "SELECT {key} AS key, \
                coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens, \
                coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens, \
                coalesce(sum(cost_micro_usd), 0)::bigint AS cost_micro_usd, \
                count(*)::bigint AS messages \
         FROM usage_records \
         WHERE workspace_id = $1 \
           AND ($2::timestamptz IS NULL OR created_at >= $2) \
           AND ($3::timestamptz IS NULL OR created_at < $3) \
         GROUP BY 1 ORDER BY {order}"
    ))
    .bind::<diesel::sql_types::Uuid, _>(workspace_id)
    .bind::<Nullable<Timestamptz>, _>(from)
    .bind::<Nullable<Timestamptz>, _>(to)
    .load(conn)
    .await
}

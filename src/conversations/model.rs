//! Conversation and message rows and their queries.
//!
//! Messages form a tree per conversation (`parent_id`, `depth`, per-conversation `seq`); the
//! conversation row points at its active leaf and keeps the listing's counters
//! (`message_count`, `preview`, `last_message_at`, `sort_at`) up to date on every write.

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Float8, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{conversations, messages, workspace_members};

/// Characters of the active leaf shown as a conversation's preview.
pub const PREVIEW_CHARS: usize = 200;

/// Field order follows the table: the boxed listing query loads whole rows positionally.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = conversations, check_for_backend(diesel::pg::Pg))]
pub struct Conversation {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub created_by: Option<Uuid>,
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: String,
    pub pinned: bool,
    pub archived: bool,
    pub active_leaf_id: Option<Uuid>,
    pub message_count: i32,
    pub preview: Option<String>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub sort_at: DateTime<Utc>,
    pub last_seq: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The agent the conversation was started from (its settings were copied at creation).
    pub agent_id: Option<Uuid>,
    /// Sampling temperature sent to the provider; None: the provider's default.
    pub temperature: Option<f32>,
    /// Cap on a reply's tokens, below the model's own maximum; None: the model's maximum.
    pub max_output_tokens: Option<i32>,
}

impl Conversation {
    /// The most tokens a reply may have on a model whose own maximum is `model_max`: the
    /// conversation's cap when it is lower. Used for the request and the quota reservation.
    pub fn output_limit(&self, model_max: u32) -> u32 {
        self.max_output_tokens
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .map_or(model_max, |n| n.min(model_max))
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = conversations)]
pub struct NewConversation<'a> {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub created_by: Option<Uuid>,
    pub title: Option<&'a str>,
    pub system_prompt: Option<&'a str>,
    pub model: &'a str,
    pub agent_id: Option<Uuid>,
    pub temperature: Option<f32>,
    pub max_output_tokens: Option<i32>,
}

/// A partial update; `None` leaves a column as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = conversations)]
pub struct ConversationChanges {
    pub title: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
    pub model: Option<String>,
    pub pinned: Option<bool>,
    pub archived: Option<bool>,
    pub temperature: Option<Option<f32>>,
    pub max_output_tokens: Option<Option<i32>>,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable, QueryableByName)]
#[diesel(table_name = messages, check_for_backend(diesel::pg::Pg))]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub seq: i32,
    pub depth: i32,
    pub role: String,
    pub content: String,
    pub status: String,
    pub model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub cost_micro_usd: Option<i64>,
    pub error: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub client_message_id: Option<String>,
    /// The process running the generation (`instances.id`); None for other messages.
    pub runner_instance: Option<Uuid>,
    /// How many deltas `content` holds (written together with it).
    pub content_seq: i32,
    /// When the first token of a generated answer arrived.
    pub first_token_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = messages)]
pub struct NewMessage<'a> {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub seq: i32,
    pub depth: i32,
    pub role: &'a str,
    pub content: &'a str,
    pub status: &'a str,
    pub model: Option<&'a str>,
    pub created_by: Option<Uuid>,
    pub completed_at: Option<DateTime<Utc>>,
    pub client_message_id: Option<&'a str>,
    pub runner_instance: Option<Uuid>,
}

/// Which conversations a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub archived: bool,
    pub pinned: Option<bool>,
    pub model: Option<String>,
    pub created_by: Option<Uuid>,
}

/// A position in the listing order (pinned first, newest activity first, id last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListPosition {
    pub pinned: bool,
    pub sort_at: DateTime<Utc>,
    pub id: Uuid,
}

impl From<&Conversation> for ListPosition {
    fn from(c: &Conversation) -> Self {
        ListPosition {
            pinned: c.pinned,
            sort_at: c.sort_at,
            id: c.id,
        }
    }
}

/// The start of `content`, whitespace collapsed, for previews.
pub fn preview_of(content: &str) -> Option<String> {
    let collapsed = content.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return None;
    }
    Some(collapsed.chars().take(PREVIEW_CHARS).collect())
}

type ListingQuery<'a> = conversations::BoxedQuery<'a, diesel::pg::Pg>;

impl Conversation {
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        new: &NewConversation<'_>,
    ) -> QueryResult<Conversation> {
        diesel::insert_into(conversations::table)
            .values(new)
            .returning(Conversation::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Conversation>> {
        conversations::table
            .find(id)
            .select(Conversation::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn find_many(
        conn: &mut AsyncPgConnection,
        ids: &[Uuid],
    ) -> QueryResult<Vec<Conversation>> {
        conversations::table
            .filter(conversations::id.eq_any(ids))
            .select(Conversation::as_select())
            .load(conn)
            .await
    }

    /// The conversation if `user_id` is a member of its workspace, with the member's role.
    pub async fn find_for_member(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<Option<(Conversation, String)>> {
        conversations::table
            .inner_join(
                workspace_members::table
                    .on(workspace_members::workspace_id.eq(conversations::workspace_id)),
            )
            .filter(conversations::id.eq(id))
            .filter(workspace_members::user_id.eq(user_id))
            .select((Conversation::as_select(), workspace_members::role))
            .first(conn)
            .await
            .optional()
    }

    pub async fn update(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        changes: &ConversationChanges,
    ) -> QueryResult<Conversation> {
        diesel::update(conversations::table.find(id))
            .set((changes, conversations::updated_at.eq(diesel::dsl::now)))
            .returning(Conversation::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
        diesel::delete(conversations::table.find(id))
            .execute(conn)
            .await
    }

    /// The listing query: `workspace_id`'s conversations matching `filter`, in listing order,
    /// strictly after `after`. Served by `conversations_listing_idx`.
    pub fn listing(
        workspace_id: Uuid,
        filter: &ListFilter,
        after: Option<ListPosition>,
    ) -> ListingQuery<'static> {
        let mut query = conversations::table
            .filter(conversations::workspace_id.eq(workspace_id))
            .filter(conversations::archived.eq(filter.archived))
            .order((
                conversations::pinned.desc(),
                conversations::sort_at.desc(),
                conversations::id.desc(),
            ))
            .into_boxed();
        if let Some(pinned) = filter.pinned {
            query = query.filter(conversations::pinned.eq(pinned));
        }
        if let Some(model) = &filter.model {
            query = query.filter(conversations::model.eq(model.clone()));
        }
        if let Some(created_by) = filter.created_by {
            query = query.filter(conversations::created_by.eq(created_by));
        }
        if let Some(after) = after {
            // Every key is descending, so "after" is a plain row comparison, which the
            // index serves as a range.
            query = query.filter(
                sql::<Bool>("(conversations.pinned, conversations.sort_at, conversations.id) < (")
                    .bind::<Bool, _>(after.pinned)
                    .sql(", ")
                    .bind::<Timestamptz, _>(after.sort_at)
                    .sql(", ")
                    .bind::<diesel::sql_types::Uuid, _>(after.id)
                    .sql(")"),
            );
        }
        query
    }

    pub async fn list(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        filter: &ListFilter,
        after: Option<ListPosition>,
        limit: i64,
    ) -> QueryResult<Vec<Conversation>> {
        Self::listing(workspace_id, filter, after)
            .limit(limit)
            .load(conn)
            .await
    }

    /// Hands out the next message `seq`, locking the conversation row until the transaction
    /// ends (so concurrent inserts are serialised). None when the conversation is gone.
    pub async fn next_seq(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<i32>> {
        diesel::update(conversations::table.find(id))
            .set(conversations::last_seq.eq(conversations::last_seq + 1))
            .returning(conversations::last_seq)
            .get_result(conn)
            .await
            .optional()
    }

    /// Locks the conversation row until the transaction ends, serialising with inserts.
    pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Uuid>> {
        conversations::table
            .find(id)
            .select(conversations::id)
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    /// Locks the conversation row until the transaction ends and returns its active leaf
    /// (None: no such conversation).
    pub async fn lock_leaf(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Option<Option<Uuid>>> {
        conversations::table
            .find(id)
            .select(conversations::active_leaf_id)
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    /// Points the conversation at `leaf` and refreshes the counters that follow from it.
    /// `touched` also moves its activity time (a new message, not a branch switch).
    pub async fn set_active_leaf(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        leaf: &Message,
        touched: bool,
    ) -> QueryResult<Conversation> {
        let target = conversations::table.find(id);
        let leaf_fields = (
            conversations::active_leaf_id.eq(Some(leaf.id)),
            conversations::message_count.eq(leaf.depth),
            conversations::preview.eq(preview_of(&leaf.content)),
            conversations::updated_at.eq(diesel::dsl::now),
        );
        if touched {
            diesel::update(target)
                .set((
                    leaf_fields,
                    conversations::last_message_at.eq(Some(leaf.created_at)),
                    conversations::sort_at.eq(leaf.created_at),
                ))
                .returning(Conversation::as_returning())
                .get_result(conn)
                .await
        } else {
            diesel::update(target)
                .set(leaf_fields)
                .returning(Conversation::as_returning())
                .get_result(conn)
                .await
        }
    }
}

/// Columns of `messages` in `Message` order, for raw-SQL queries returning messages.
pub(crate) const MESSAGE_COLUMNS: &str = "id, conversation_id, parent_id, seq, depth, role, content, \
    status, model, prompt_tokens, completion_tokens, cost_micro_usd, error, created_by, \
    created_at, updated_at, completed_at, client_message_id, runner_instance, content_seq, \
    first_token_at";

define_sql_function! {
    /// The first of its arguments that is not null.
    fn coalesce(x: Nullable<Timestamptz>, y: Nullable<Timestamptz>) -> Nullable<Timestamptz>;
}

/// The new `first_token_at` of a generation whose first token arrived `age` ago (None: not
/// yet): by the database's clock, like `created_at` and `completed_at`, so latencies never
/// mix two machines' clocks. Once written it stays. (A macro: the expression's type is
/// Diesel's to name.)
macro_rules! first_token_at {
    ($age:expr) => {
        coalesce(
            messages::first_token_at,
            sql::<Nullable<Timestamptz>>("now() - make_interval(secs => ")
                .bind::<Nullable<Float8>, _>($age.map(|a: std::time::Duration| a.as_secs_f64()))
                .sql(")"),
        )
    };
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

impl Message {
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        new: &NewMessage<'_>,
    ) -> QueryResult<Message> {
        diesel::insert_into(messages::table)
            .values(new)
            .returning(Message::as_returning())
            .get_result(conn)
            .await
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Message>> {
        messages::table
            .find(id)
            .select(Message::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The message if `user_id` is a member of its conversation's workspace.
    pub async fn find_for_member(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<Option<(Message, Conversation, String)>> {
        messages::table
            .inner_join(conversations::table)
            .inner_join(
                workspace_members::table
                    .on(workspace_members::workspace_id.eq(conversations::workspace_id)),
            )
            .filter(messages::id.eq(id))
            .filter(workspace_members::user_id.eq(user_id))
            .select((
                Message::as_select(),
                Conversation::as_select(),
                workspace_members::role,
            ))
            .first(conn)
            .await
            .optional()
    }

    /// The active branch from its root, oldest first: messages deeper than `after_depth`, at
    /// most `limit` of them. A recursive walk up from the active leaf.
    pub async fn active_branch(
        conn: &mut AsyncPgConnection,
        conversation_id: Uuid,
        after_depth: i32,
        limit: i64,
    ) -> QueryResult<Vec<Message>> {
        diesel::sql_query(format!(
            "WITH RECURSIVE branch AS ( \
                 SELECT m.* FROM messages m \
                 JOIN conversations c ON c.active_leaf_id = m.id \
                 WHERE c.id = $1 \
               UNION ALL \
                 SELECT p.* FROM messages p JOIN branch b ON p.id = b.parent_id \
             ) \
             SELECT {MESSAGE_COLUMNS} FROM branch WHERE depth > $2 ORDER BY depth LIMIT $3"
        ))
        .bind::<diesel::sql_types::Uuid, _>(conversation_id)
        .bind::<Integer, _>(after_depth)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
    }

    /// The path from the root to `id` (itself included), oldest first.
    pub async fn path_to(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Vec<Message>> {
        diesel::sql_query(format!(
            "WITH RECURSIVE path AS ( \
                 SELECT m.* FROM messages m WHERE m.id = $1 \
               UNION ALL \
                 SELECT p.* FROM messages p JOIN path c ON p.id = c.parent_id \
             ) \
             SELECT {MESSAGE_COLUMNS} FROM path ORDER BY depth"
        ))
        .bind::<diesel::sql_types::Uuid, _>(id)
        .load(conn)
        .await
    }

    /// The user message a client sent with this idempotency key, if any.
    pub async fn find_by_client_id(
        conn: &mut AsyncPgConnection,
        conversation_id: Uuid,
        client_message_id: &str,
    ) -> QueryResult<Option<Message>> {
        messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::client_message_id.eq(client_message_id))
            .select(Message::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The messages of a conversation still being generated.
    pub async fn streaming_in(
        conn: &mut AsyncPgConnection,
        conversation_id: Uuid,
    ) -> QueryResult<Vec<Uuid>> {
        messages::table
            .filter(messages::conversation_id.eq(conversation_id))
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .select(messages::id)
            .load(conn)
            .await
    }

    /// The first reply under a message.
    pub async fn first_child(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Option<Message>> {
        messages::table
            .filter(messages::parent_id.eq(id))
            .order(messages::seq)
            .select(Message::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Writes the partial content of a generation in progress, with `content_seq`, the
    /// number of deltas it holds, so a reader knows where the live stream continues. Returns
    /// whether a stop was requested (`stopGeneration` from any process), or None when the
    /// message is no longer in progress (ended elsewhere, say by the reaper, or deleted):
    /// either way the runner should stop.
    pub async fn flush_content(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        content: &str,
        content_seq: i32,
        first_token_age: Option<std::time::Duration>,
    ) -> QueryResult<Option<bool>> {
        diesel::update(messages::table.find(id))
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .set((
                messages::content.eq(content),
                messages::content_seq.eq(content_seq),
                messages::first_token_at.eq(first_token_at!(first_token_age)),
                messages::updated_at.eq(diesel::dsl::now),
            ))
            .returning(messages::stop_requested)
            .get_result(conn)
            .await
            .optional()
    }

    /// Whether a stop was requested for a generation in progress; None when it is no longer
    /// in progress. The runner's check while no text flows (nothing to flush).
    pub async fn stop_requested(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Option<bool>> {
        messages::table
            .find(id)
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .select(messages::stop_requested)
            .first(conn)
            .await
            .optional()
    }

    /// Records a stop request on a generation in progress, for whichever process runs it.
    /// Returns its runner (`Some(None)`: none recorded), or None when it already ended.
    pub async fn request_stop(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Option<Option<Uuid>>> {
        diesel::update(messages::table.find(id))
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .set(messages::stop_requested.eq(true))
            .returning(messages::runner_instance)
            .get_result(conn)
            .await
            .optional()
    }

    /// Writes the final state of a generation, once: a message already finished (say,
    /// cancelled by another path, or reaped) is left alone. `content_seq` is the number of
    /// deltas `content` holds; `first_token_age`, how long ago its first token arrived (see
    /// `first_token_at`). Refreshes the conversation's preview when the message is its active
    /// leaf. Returns whether this call finished it.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        status: &str,
        content: &str,
        content_seq: i32,
        first_token_age: Option<std::time::Duration>,
        prompt_tokens: Option<i32>,
        completion_tokens: Option<i32>,
        cost_micro_usd: Option<i64>,
        error: Option<&str>,
    ) -> QueryResult<bool> {
        let updated: Option<Message> = diesel::update(messages::table.find(id))
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .set((
                messages::status.eq(status),
                messages::content.eq(content),
                messages::content_seq.eq(content_seq),
                messages::first_token_at.eq(first_token_at!(first_token_age)),
                messages::prompt_tokens.eq(prompt_tokens),
                messages::completion_tokens.eq(completion_tokens),
                messages::cost_micro_usd.eq(cost_micro_usd),
                messages::error.eq(error),
                messages::completed_at.eq(diesel::dsl::now),
                messages::updated_at.eq(diesel::dsl::now),
            ))
            .returning(Message::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(message) = updated else {
            return Ok(false);
        };
        message.refresh_preview(conn).await?;
        Ok(true)
    }

    /// Shows this message's (final) content as its conversation's preview when it is the
    /// active leaf. Partial flushes do not touch the preview; the end of a generation does.
    pub async fn refresh_preview(&self, conn: &mut AsyncPgConnection) -> QueryResult<()> {
        diesel::update(conversations::table.find(self.conversation_id))
            .filter(conversations::active_leaf_id.eq(self.id))
            .set(conversations::preview.eq(preview_of(&self.content)))
            .execute(conn)
            .await
            .map(drop)
    }

    /// Messages sharing a parent, for each `(conversation, parent)` asked: roots when the
    /// parent is None. Oldest first.
    pub async fn children_of(
        conn: &mut AsyncPgConnection,
        conversation_ids: &[Uuid],
        parent_ids: &[Uuid],
        want_roots: bool,
    ) -> QueryResult<Vec<Message>> {
        let mut query = messages::table
            .filter(messages::conversation_id.eq_any(conversation_ids))
            .select(Message::as_select())
            .order((messages::conversation_id, messages::seq))
            .into_boxed();
        query = if want_roots {
            query.filter(
                messages::parent_id
                    .eq_any(parent_ids.to_vec())
                    .or(messages::parent_id.is_null()),
            )
        } else {
            query.filter(messages::parent_id.eq_any(parent_ids.to_vec()))
        };
        query.load(conn).await
    }

    /// The newest leaf under `id` (itself included). A child is always newer than its
    /// parent, so the newest descendant is a leaf.
    pub async fn newest_leaf_under(
        conn: &mut AsyncPgConnection,
        id: Uuid,
    ) -> QueryResult<Option<Message>> {
        let leaf: Option<IdRow> = diesel::sql_query(
            "WITH RECURSIVE sub AS ( \
                 SELECT id, seq FROM messages WHERE id = $1 \
               UNION ALL \
                 SELECT m.id, m.seq FROM messages m JOIN sub s ON m.parent_id = s.id \
             ) \
             SELECT id FROM sub ORDER BY seq DESC LIMIT 1",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .get_result(conn)
        .await
        .optional()?;
        match leaf {
            Some(row) => Message::find(conn, row.id).await,
            None => Ok(None),
        }
    }

    /// `(depth)` of a message in a conversation, for validating a parent.
    pub async fn depth_in(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        conversation_id: Uuid,
    ) -> QueryResult<Option<i32>> {
        messages::table
            .filter(messages::id.eq(id))
            .filter(messages::conversation_id.eq(conversation_id))
            .select(messages::depth)
            .first(conn)
            .await
            .optional()
    }
}

/// One conversation matching a search, with its score and a highlighted snippet.
#[derive(Debug, Clone, QueryableByName)]
pub struct SearchHit {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub conversation_id: Uuid,
    #[diesel(sql_type = Float8)]
    pub score: f64,
    /// HTML-escaped text with matches in `<mark>…</mark>`.
    #[diesel(sql_type = Nullable<Text>)]
    pub snippet: Option<String>,
}

/// Full-text search over titles and message contents of a workspace's conversations
/// (`websearch_to_tsquery`, English stemming). A conversation's score adds up the ranks of its
/// matching title (counted double) and messages; its snippet comes from the best match.
pub async fn search(
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    query: &str,
    offset: i64,
    limit: i64,
) -> QueryResult<Vec<SearchHit>> {
    // Snippets are built only for the page, after ranking and LIMIT.
    diesel::sql_query(
        "WITH q AS (SELECT websearch_to_tsquery('english', $2) AS query), \
         hits AS ( \
             SELECT c.id AS conversation_id, NULL::uuid AS message_id, \
                    2 * ts_rank(c.title_search, q.query) AS rank \
             FROM conversations c, q \
             WHERE c.workspace_id = $1 AND c.title_search @@ q.query \
           UNION ALL \
             SELECT m.conversation_id, m.id, ts_rank(m.content_search, q.query) \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id, q \
             WHERE c.workspace_id = $1 AND m.content_search @@ q.query \
         ), \
         ranked AS ( \
             SELECT DISTINCT ON (conversation_id) conversation_id, message_id, \
                    sum(rank) OVER (PARTITION BY conversation_id) AS score \
             FROM hits ORDER BY conversation_id, rank DESC \
         ), \
         page AS ( \
             SELECT * FROM ranked ORDER BY score DESC, conversation_id DESC LIMIT $3 OFFSET $4 \
         ) \
         SELECT page.conversation_id, page.score::float8 AS score, \
                ts_headline('english', \
                    replace(replace(replace(coalesce(m.content, c.title, ''), \
                        '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), \
                    q.query, \
                    'StartSel=<mark>, StopSel=</mark>, MaxWords=30, MinWords=8, MaxFragments=2') \
                    AS snippet \
         FROM page \
         JOIN conversations c ON c.id = page.conversation_id \
         LEFT JOIN messages m ON m.id = page.message_id \
         CROSS JOIN q \
         ORDER BY page.score DESC, page.conversation_id DESC",
    )
    .bind::<diesel::sql_types::Uuid, _>(workspace_id)
    .bind::<Text, _>(query)
    .bind::<BigInt, _>(limit)
    .bind::<BigInt, _>(offset)
    .load(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::{Conversation, preview_of};

    #[test]
    fn the_lower_output_cap_wins() {
        let now = chrono::Utc::now();
        let mut c = Conversation {
            id: uuid::Uuid::nil(),
            workspace_id: uuid::Uuid::nil(),
            created_by: None,
            title: None,
            system_prompt: None,
            model: "local/echo".to_owned(),
            pinned: false,
            archived: false,
            active_leaf_id: None,
            message_count: 0,
            preview: None,
            last_message_at: None,
            sort_at: now,
            last_seq: 0,
            created_at: now,
            updated_at: now,
            agent_id: None,
            temperature: None,
            max_output_tokens: None,
        };
        assert_eq!(c.output_limit(4096), 4096);
        c.max_output_tokens = Some(100);
        assert_eq!(c.output_limit(4096), 100);
        c.max_output_tokens = Some(10_000);
        assert_eq!(c.output_limit(4096), 4096);
    }

    #[test]
    fn previews_collapse_whitespace_and_truncate() {
        assert_eq!(
            preview_of("  hello \n\n world  ").as_deref(),
            Some("hello world")
        );
        assert_eq!(preview_of("   "), None);
        assert_eq!(
            preview_of(&"é".repeat(300)).map(|p| p.chars().count()),
            Some(200)
        );
    }
}

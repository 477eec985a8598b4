//! Durable background jobs in Postgres: claimed with `FOR UPDATE SKIP LOCKED` under a lease,
//! retried with exponential backoff, surviving restarts (a lapsed lease is claimed again).
//! Kinds: a conversation's title after its first reply (`TITLE`), and the judging of a
//! comparison once its last answer ended (`COMPARE_JUDGE`, in `compare::judge`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use crate::app::App;
use crate::conversations::model::{Conversation, Message};
use crate::db::schema::{conversations, jobs};
use crate::error::{AppError, AppResult};
use crate::llm::{ChatMessage, ChatRequest, ChatRole, collect};
use crate::streaming::hub::ConversationEvent;

pub const TITLE: &str = "conversation_title";
pub const COMPARE_JUDGE: &str = "compare_judge";
/// How long a claimed job is held before another worker may take it.
const LEASE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
const MAX_ATTEMPTS: i32 = 5;

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::pg::Pg))]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
}

/// Queues the title job of a conversation (once: a pending one is not duplicated).
pub async fn enqueue_title(app: &App, conversation_id: Uuid) -> AppResult<()> {
    let mut conn = app.db.get().await?;
    let untitled: bool = diesel::select(diesel::dsl::exists(
        conversations::table
            .filter(conversations::id.eq(conversation_id))
            .filter(conversations::title.is_null()),
    ))
    .get_result(&mut conn)
    .await?;
    if !untitled {
        return Ok(());
    }
    diesel::insert_into(jobs::table)
        .values((
            jobs::id.eq(Uuid::now_v7()),
            jobs::kind.eq(TITLE),
            jobs::dedupe_key.eq(conversation_id.to_string()),
            jobs::payload.eq(json!({ "conversationId": conversation_id })),
            jobs::max_attempts.eq(MAX_ATTEMPTS),
        ))
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await?;
    app.jobs_wakeup.notify_one();
    Ok(())
}

/// Queues a job in the caller's transaction (so it exists exactly when what it follows was
/// committed); one pending job per `(kind, dedupe_key)`. The caller wakes the worker
/// (`App::jobs_wakeup`) after its commit.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    kind: &str,
    dedupe_key: &str,
    payload: serde_json::Value,
) -> QueryResult<()> {
    diesel::insert_into(jobs::table)
        .values((
            jobs::id.eq(Uuid::now_v7()),
            jobs::kind.eq(kind),
            jobs::dedupe_key.eq(dedupe_key),
            jobs::payload.eq(payload),
            jobs::max_attempts.eq(MAX_ATTEMPTS),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(drop)
}

/// Claims the next due job, leasing it.
async fn claim(app: &App) -> AppResult<Option<Job>> {
    let mut conn = app.db.get().await?;
    conn.transaction::<_, AppError, _>(async |conn| {
        let job: Option<Job> = jobs::table
            .filter(jobs::run_at.le(diesel::dsl::now))
            .filter(
                jobs::locked_until
                    .is_null()
                    .or(jobs::locked_until.lt(diesel::dsl::now)),
            )
            .order(jobs::run_at)
            .select(Job::as_select())
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        if let Some(job) = &job {
            let lease = Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default();
            diesel::update(jobs::table.find(job.id))
                .set((
                    jobs::locked_until.eq(Some(lease)),
                    jobs::attempts.eq(jobs::attempts + 1),
                ))
                .execute(conn)
                .await?;
        }
        Ok(job)
    })
    .await
}

async fn complete(app: &App, job: &Job, result: Result<(), String>) -> AppResult<()> {
    let mut conn = app.db.get().await?;
    let attempts = job.attempts + 1;
    match result {
        Ok(()) => {
            diesel::delete(jobs::table.find(job.id))
                .execute(&mut conn)
                .await?;
        }
        Err(error) if attempts >= job.max_attempts => {
            tracing::error!(job_id = %job.id, kind = %job.kind, %error, attempts, "job failed for good");
            diesel::delete(jobs::table.find(job.id))
                .execute(&mut conn)
                .await?;
        }
        Err(error) => {
            let backoff = Duration::from_secs(2u64.saturating_pow(attempts as u32))
                .min(Duration::from_secs(300));
            tracing::warn!(job_id = %job.id, kind = %job.kind, %error, attempts, ?backoff, "job failed; will retry");
            let run_at = Utc::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
            diesel::update(jobs::table.find(job.id))
                .set((
                    jobs::run_at.eq(run_at),
                    jobs::locked_until.eq(None::<chrono::DateTime<Utc>>),
                    jobs::last_error.eq(Some(error)),
                ))
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(())
}

/// Runs jobs until the task is dropped: polls, and wakes early when a job is queued here.
pub async fn worker(app: Arc<App>) {
    loop {
        match claim(&app).await {
            Ok(Some(job)) => {
                let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind);
                async {
                    let result = match job.kind.as_str() {
                        TITLE => title(&app, &job).await,
                        COMPARE_JUDGE => crate::compare::judge::run(&app, &job).await,
                        other => Err(format!("unknown job kind {other}")),
                    };
                    if let Err(err) = complete(&app, &job, result).await {
                        tracing::error!(?err, "cannot record a job's result");
                    }
                }
                .instrument(span)
                .await;
                continue;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(?err, "cannot claim jobs"),
        }
        tokio::select! {
            () = app.jobs_wakeup.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// At most 8 words, one line, without quotes, a trailing period or a "Title:" label.
pub fn clean_title(raw: &str) -> Option<String> {
    let line = raw.lines().find(|l| !l.trim().is_empty())?.trim();
    let line = line
        .strip_prefix("Title:")
        .or_else(|| line.strip_prefix("title:"))
        .unwrap_or(line);
    let words: Vec<&str> = line
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#'))
        .filter(|w| !w.is_empty())
        .take(8)
        .collect();
    let title = words.join(" ");
    let title = title.trim_end_matches(['.', ':', ';', ',']).trim();
    (!title.is_empty()).then(|| title.chars().take(200).collect())
}

async fn title(app: &App, job: &Job) -> Result<(), String> {
    let conversation_id: Uuid = job
        .payload
        .get("conversationId")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or("payload has no conversationId")?;
    let mut conn = app.db.get().await.map_err(|e| e.to_string())?;
    let Some(conversation) = Conversation::find(&mut conn, conversation_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(()); // deleted meanwhile
    };
    if conversation.title.is_some() {
        return Ok(());
    }
    let Some(leaf) = conversation.active_leaf_id else {
        return Ok(());
    };
    let path = Message::path_to(&mut conn, leaf)
        .await
        .map_err(|e| e.to_string())?;
    let excerpt: String = path
        .iter()
        .take(2)
        .map(|m| {
            format!(
                "{}: {}",
                m.role.to_lowercase(),
                m.content.chars().take(2_000).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n");
    let model_id = app
        .config
        .chat
        .title_model
        .clone()
        .unwrap_or_else(|| conversation.model.clone());
    let resolved =
        crate::llm::keys::resolve_model(app, &mut conn, conversation.workspace_id, &model_id)
            .await
            .map_err(|e| format!("{e:?}"))?;
    drop(conn);
    let client = app
        .providers
        .client(&resolved.spec.provider)
        .ok_or("provider not configured")?;
    let request = ChatRequest {
        model: resolved.spec.upstream.clone(),
        messages: vec![
            ChatMessage::new(
                ChatRole::System,
                "You name conversations. Reply with a title of at most 8 words for the conversation \
                 below, in its language, without quotes or a final period.",
            ),
            ChatMessage::new(ChatRole::User, excerpt),
        ],
        temperature: Some(0.2),
        max_output_tokens: 32,
        stop: Vec::new(),
    };
    let out = collect(client.stream(request, resolved.api_key)).await;
    if let Some(err) = out.error {
        return Err(err.to_string());
    }
    let title = clean_title(&out.text).ok_or("the model returned no title")?;
    let mut conn = app.db.get().await.map_err(|e| e.to_string())?;
    let updated = diesel::update(conversations::table.find(conversation_id))
        .filter(conversations::title.is_null())
        .set((
            conversations::title.eq(&title),
            conversations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if updated > 0 {
        app.hub
            .publish_conversation(conversation_id, ConversationEvent::ConversationUpdated)
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::clean_title;

    #[test]
    fn titles_are_cleaned() {
        assert_eq!(
            clean_title("\"Rust lifetimes explained.\"\n").as_deref(),
            Some("Rust lifetimes explained")
        );
        assert_eq!(
            clean_title("Title: one two three four five six seven eight nine ten").as_deref(),
            Some("one two three four five six seven eight")
        );
        assert_eq!(clean_title("  \n  "), None);
    }
}

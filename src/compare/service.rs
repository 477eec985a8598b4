//! The compare operations: the fan-out `sendMessage(models: …)`, the end of each answer,
//! votes, a comparison's results and the leaderboard.
//!
//! The fan-out follows the send path: every check first (content, the model list, the
//! conversation, idempotency, each model's availability and the prompt's size for it);
//! then one transaction stores the user message, one assistant answer per model (siblings
//! under the user message), the comparison and its entries, and reserves quota for every
//! answer. Each answer keeps a reservation of its own, so each settles its own part, but
//! they are taken in that one transaction: the first refusal rolls everything back, and the
//! fan-out is admitted whole or not at all. Then each answer is launched as its own
//! generation (its own `messageStream`, its own stop).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Viewer;
use crate::compare::elo::{self, Answer, Event, Opinion};
use crate::compare::model::{Comparison, Entry, HEURISTIC, VoteRow, Votes};
use crate::conversations::model::{Conversation, Message};
use crate::conversations::service::{insert_message, require_conversation};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::llm::catalog::ModelSpec;
use crate::llm::keys::resolve_model;
use crate::streaming::admission::Admitted;
use crate::streaming::service::{
    Parent, Sent, admit, assistant_insert, estimate_prompt, launch, replay, turn_parent,
    user_insert, validate_content,
};
use crate::workspaces::access::require;
use crate::workspaces::model::Role;

/// How many models one comparison takes.
pub const MIN_MODELS: usize = 2;
pub const MAX_MODELS: usize = 6;

/// How many of a workspace's newest comparisons the leaderboard replays.
pub const LEADERBOARD_MAX_COMPARISONS: i64 = 5_000;

pub struct CompareInput<'a> {
    pub conversation_id: Uuid,
    pub content: &'a str,
    pub models: &'a [String],
    pub parent_id: Option<Uuid>,
    pub client_message_id: Option<&'a str>,
}

/// 2 to 6 distinct model ids, each in the catalog (availability is checked with the
/// workspace's keys in view, later). BAD_USER_INPUT on `models` otherwise.
pub fn validate_models(app: &App, models: &[String]) -> AppResult<Vec<String>> {
    if models.len() < MIN_MODELS || models.len() > MAX_MODELS {
        return Err(AppError::bad_input(
            "models",
            format!(
                "a comparison takes {MIN_MODELS} to {MAX_MODELS} models; {} given",
                models.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(models.len());
    for raw in models {
        let model = crate::validate::single_line("models", raw, 1, 200)?;
        if !seen.insert(model.clone()) {
            return Err(AppError::bad_input(
                "models",
                format!("model `{model}` is listed twice"),
            ));
        }
        if app.providers.model(&model).is_none() {
            return Err(AppError::bad_input(
                "models",
                format!("unknown model `{model}`; the `models` query lists them"),
            ));
        }
        out.push(model);
    }
    Ok(out)
}

/// A model's check failing for one of the compared models names the `models` field.
fn on_models(err: AppError) -> AppError {
    match err {
        AppError::BadUserInput { message, .. } => AppError::bad_input("models", message),
        other => other,
    }
}

/// Sends one user message answered by every model of `input.models`, concurrently. The
/// active branch follows the first model's answer; `selectBranch` moves to another.
pub async fn send(app: &Arc<App>, viewer: &Viewer, input: CompareInput<'_>) -> AppResult<Sent> {
    validate_content(input.content)?;
    if let Some(key) = input.client_message_id {
        crate::validate::single_line("clientMessageId", key, 1, 200)?;
    }
    let models = validate_models(app, input.models)?;
    let mut conn = app.db.get().await?;
    let (conversation, _) = require_conversation(&mut conn, viewer, input.conversation_id).await?;
    if let Some(key) = input.client_message_id
        && let Some(sent) = replay(&mut conn, conversation.id, key).await?
    {
        return Ok(sent);
    }
    let mut specs = Vec::with_capacity(models.len());
    for model in &models {
        let resolved = resolve_model(app, &mut conn, conversation.workspace_id, model)
            .await
            .map_err(on_models)?;
        specs.push(resolved.spec);
    }
    // The estimates read the branch as it is now; the turn re-reads it under a lock.
    let base = input.parent_id.or(conversation.active_leaf_id);
    let mut prompts = Vec::with_capacity(specs.len());
    for spec in &specs {
        prompts.push(
            estimate_prompt(
                app,
                &mut conn,
                &conversation,
                base,
                Some(input.content),
                spec,
            )
            .await?,
        );
    }
    let parent = match input.parent_id {
        Some(id) => Parent::Under(Some(id)),
        None => Parent::Active,
    };
    let inserted = insert_fan_out(
        app,
        &mut conn,
        viewer,
        &conversation,
        parent,
        input.content,
        input.client_message_id,
        &specs,
        &prompts,
    )
    .await;
    let (sent, admitted) = match inserted {
        Ok(done) => done,
        Err(err) => {
            // Two concurrent sends with one key: the loser returns the winner's messages.
            if let (Some(key), AppError::Internal(cause)) = (input.client_message_id, &err)
                && cause
                    .downcast_ref::<diesel::result::Error>()
                    .is_some_and(is_unique_violation)
                && let Some(sent) = replay(&mut conn, conversation.id, key).await?
            {
                return Ok(sent);
            }
            return Err(match err {
                AppError::QuotaExceeded { message, resets_at } => AppError::QuotaExceeded {
                    message: format!(
                        "a comparison reserves quota for all of its {} answers at once, and they do not fit: {message}",
                        specs.len()
                    ),
                    resets_at,
                },
                other => other,
            });
        }
    };
    drop(conn);
    for (i, (assistant, admitted)) in sent.assistants.iter().zip(admitted).enumerate() {
        let created: Vec<&Message> = if i == 0 {
            vec![&sent.user, assistant]
        } else {
            vec![assistant]
        };
        launch(app, &conversation, &created, assistant, admitted).await;
    }
    Ok(sent)
}

/// The user message, one answer per model, the comparison, and a reservation per answer,
/// in one transaction.
#[allow(clippy::too_many_arguments)]
async fn insert_fan_out(
    app: &App,
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    conversation: &Conversation,
    parent: Parent,
    content: &str,
    client_message_id: Option<&str>,
    specs: &[ModelSpec],
    prompts: &[u32],
) -> AppResult<(Sent, Vec<Admitted>)> {
    conn.transaction::<_, AppError, _>(async |conn| {
        let parent = turn_parent(conn, conversation.id, parent).await?;
        let user = insert_message(
            conn,
            &user_insert(conversation.id, parent, content, viewer, client_message_id),
        )
        .await?;
        let mut assistants = Vec::with_capacity(specs.len());
        for spec in specs {
            assistants.push(
                insert_message(
                    conn,
                    &assistant_insert(app, conversation.id, user.id, &spec.id),
                )
                .await?,
            );
        }
        // Each insert moved the active leaf; the branch continues from the first model's
        // answer (the conversation's activity time stays the newest message's).
        Conversation::set_active_leaf(conn, conversation.id, &assistants[0], false).await?;
        Comparison::insert(conn, &user, conversation.workspace_id, &assistants).await?;
        let mut admitted = Vec::with_capacity(specs.len());
        for ((assistant, spec), prompt) in assistants.iter().zip(specs).zip(prompts) {
            admitted.push(admit(app, conn, viewer, conversation, assistant, spec, *prompt).await?);
        }
        Ok((Sent { user, assistants }, admitted))
    })
    .await
}

/// The answers of the comparison of `user_message_id`, in the request's order (empty when
/// it was not a comparison).
pub async fn answers_of(
    conn: &mut AsyncPgConnection,
    user_message_id: Uuid,
) -> AppResult<Vec<Message>> {
    let Some(comparison) = Comparison::of_user_message(conn, user_message_id).await? else {
        return Ok(Vec::new());
    };
    Ok(Comparison::entries(conn, comparison.id)
        .await?
        .into_iter()
        .map(|(_, m)| m)
        .collect())
}

/// Called after any answer ended (its runner, the reaper, or a stop without a runner):
/// when it was the last unfinished answer of a comparison, the judge job is queued.
pub async fn answer_ended(app: &App, message_id: Uuid) {
    for attempt in 0..3u32 {
        let result = async {
            let mut conn = app.db.get().await?;
            Ok::<_, AppError>(Comparison::queue_judging_if_done(&mut conn, message_id).await?)
        }
        .await;
        match result {
            Ok(true) => {
                app.jobs_wakeup.notify_one();
                return;
            }
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(?err, %message_id, attempt, "cannot check whether a comparison is complete");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
        }
    }
}

/// A comparison with its entries and their answers.
#[derive(Debug, Clone)]
pub struct Compared {
    pub comparison: Comparison,
    pub user_message: Message,
    pub entries: Vec<(Entry, Message)>,
}

/// The comparison of a user message, if it has one. NOT_FOUND when the viewer cannot see
/// the message.
pub async fn comparison(
    app: &App,
    viewer: &Viewer,
    user_message_id: Uuid,
) -> AppResult<Option<Compared>> {
    let mut conn = app.db.get().await?;
    let (user_message, _, _) = Message::find_for_member(&mut conn, user_message_id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("message"))?;
    let Some(comparison) = Comparison::of_user_message(&mut conn, user_message_id).await? else {
        return Ok(None);
    };
    let entries = Comparison::entries(&mut conn, comparison.id).await?;
    Ok(Some(Compared {
        comparison,
        user_message,
        entries,
    }))
}

/// The comparison of a user message, without an access check (the caller has done it).
pub async fn load(
    conn: &mut AsyncPgConnection,
    user_message_id: Uuid,
) -> AppResult<Option<Compared>> {
    let Some(comparison) = Comparison::of_user_message(conn, user_message_id).await? else {
        return Ok(None);
    };
    let Some(user_message) = Message::find(conn, user_message_id).await? else {
        return Ok(None);
    };
    let entries = Comparison::entries(conn, comparison.id).await?;
    Ok(Some(Compared {
        comparison,
        user_message,
        entries,
    }))
}

/// A vote on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteKind {
    Up,
    Down,
}

impl VoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteKind::Up => "UP",
            VoteKind::Down => "DOWN",
        }
    }
}

/// Records the viewer's vote on an answer (any member of its workspace may vote; voting
/// again replaces the vote; None removes it). Returns the answer.
pub async fn rate(
    app: &App,
    viewer: &Viewer,
    message_id: Uuid,
    vote: Option<VoteKind>,
) -> AppResult<Message> {
    let mut conn = app.db.get().await?;
    let (message, _, _) = Message::find_for_member(&mut conn, message_id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("message"))?;
    if message.role != "ASSISTANT" {
        return Err(AppError::bad_input(
            "messageId",
            "only assistant answers can be rated",
        ));
    }
    match vote {
        Some(vote) => Votes::set(&mut conn, message_id, viewer.user_id, vote.as_str()).await?,
        None => Votes::clear(&mut conn, message_id, viewer.user_id).await?,
    }
    Ok(message)
}

/// One row of the leaderboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub model: String,
    pub votes_up: i64,
    pub votes_down: i64,
    pub wins: u32,
    pub losses: u32,
    /// Two decimals.
    pub elo: f64,
}

/// Every model with a vote or a comparison in the workspace, best Elo first (ties by
/// model id). See `compare::elo` for how the games are made.
pub async fn leaderboard(app: &App, viewer: &Viewer, workspace_id: Uuid) -> AppResult<Vec<Ranked>> {
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, workspace_id, Role::Member).await?;
    let votes = Votes::per_model(&mut conn, workspace_id).await?;
    let comparisons =
        Comparison::newest_in(&mut conn, workspace_id, LEADERBOARD_MAX_COMPARISONS).await?;
    let ids: Vec<Uuid> = comparisons.iter().map(|c| c.id).collect();
    let entries = Comparison::entries_of(&mut conn, &ids).await?;
    let answer_ids: Vec<Uuid> = entries.iter().map(|e| e.message_id).collect();
    let ballots = Votes::on(&mut conn, &answer_ids).await?;
    drop(conn);

    let models = entries
        .iter()
        .map(|e| e.model.as_str())
        .chain(votes.iter().map(|v| v.model.as_str()));
    let table = elo::standings(events(&comparisons, &entries, &ballots), models);
    let counts: HashMap<&str, (i64, i64)> = votes
        .iter()
        .map(|v| (v.model.as_str(), (v.up, v.down)))
        .collect();
    let mut rows: Vec<Ranked> = table
        .into_iter()
        .map(|(model, standing)| {
            let (up, down) = counts.get(model.as_str()).copied().unwrap_or((0, 0));
            Ranked {
                votes_up: up,
                votes_down: down,
                wins: standing.wins,
                losses: standing.losses,
                elo: elo::shown(standing.elo),
                model,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.elo.total_cmp(&a.elo).then_with(|| a.model.cmp(&b.model)));
    Ok(rows)
}

/// One voter's votes on one comparison.
struct Ballot {
    /// The latest of them.
    at: DateTime<Utc>,
    /// Index-aligned with the comparison's entries.
    opinions: Vec<Opinion>,
}

/// The Elo events of these comparisons: one per judge ranking (not the heuristic's), one
/// per voter and comparison. `entries` are ordered by comparison and position.
fn events(comparisons: &[Comparison], entries: &[Entry], votes: &[VoteRow]) -> Vec<Event> {
    let mut answers: HashMap<Uuid, Vec<Answer>> = HashMap::new();
    // Where each answer sits: its comparison and index there.
    let mut place: HashMap<Uuid, (Uuid, usize)> = HashMap::new();
    for entry in entries {
        let list = answers.entry(entry.comparison_id).or_default();
        place.insert(entry.message_id, (entry.comparison_id, list.len()));
        list.push(Answer {
            model: entry.model.clone(),
            rank: entry.rank,
        });
    }
    let mut events = Vec::new();
    for comparison in comparisons {
        let judged = comparison.status == "READY"
            && comparison
                .judged_by
                .as_deref()
                .is_some_and(|j| j != HEURISTIC);
        if let (true, Some(at), Some(list)) =
            (judged, comparison.judged_at, answers.get(&comparison.id))
        {
            events.push(Event {
                at,
                comparison_id: comparison.id,
                voter: None,
                games: elo::ranking_games(list),
            });
        }
    }
    let mut ballots: BTreeMap<(Uuid, Uuid), Ballot> = BTreeMap::new();
    for vote in votes {
        let Some((comparison_id, index)) = place.get(&vote.message_id) else {
            continue;
        };
        let size = answers.get(comparison_id).map_or(0, Vec::len);
        let ballot = ballots
            .entry((*comparison_id, vote.user_id))
            .or_insert_with(|| Ballot {
                at: vote.updated_at,
                opinions: vec![Opinion::None; size],
            });
        ballot.at = ballot.at.max(vote.updated_at);
        ballot.opinions[*index] = if vote.vote == "UP" {
            Opinion::Up
        } else {
            Opinion::Down
        };
    }
    for ((comparison_id, voter), ballot) in ballots {
        if let Some(list) = answers.get(&comparison_id) {
            events.push(Event {
                at: ballot.at,
                comparison_id,
                voter: Some(voter),
                games: elo::vote_games(list, &ballot.opinions),
            });
        }
    }
    events
}

//! `comparison`, `leaderboard`, `rateMessage`, and the `Comparison`, `ComparisonEntry` and
//! `LeaderboardEntry` types.

use async_graphql::{Context, Enum, ID, MaybeUndefined, Object, SimpleObject};
use chrono::{DateTime, Utc};

use crate::auth::viewer;
use crate::compare::model::Entry;
use crate::compare::service::{self, Compared, VoteKind};
use crate::conversations::graphql::MessageNode;
use crate::conversations::model::Message;
use crate::error::AppError;
use crate::graphql::{app, parse_id};

/// A vote on an answer.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Up,
    Down,
}

impl From<Vote> for VoteKind {
    fn from(vote: Vote) -> Self {
        match vote {
            Vote::Up => VoteKind::Up,
            Vote::Down => VoteKind::Down,
        }
    }
}

impl Vote {
    pub fn from_db(value: &str) -> Option<Vote> {
        match value {
            "UP" => Some(Vote::Up),
            "DOWN" => Some(Vote::Down),
            _ => None,
        }
    }
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComparisonStatus {
    /// Answers are still being generated, or judged.
    Pending,
    /// Every entry carries its summary, reasoning, score and rank.
    Ready,
}

/// The answers of several models to one user message, side by side.
pub struct ComparisonNode(pub Compared);

#[Object(name = "Comparison")]
impl ComparisonNode {
    async fn id(&self) -> ID {
        ID(self.0.comparison.id.to_string())
    }

    /// The question every entry answers.
    async fn user_message(&self) -> MessageNode {
        MessageNode(self.0.user_message.clone())
    }

    async fn status(&self) -> ComparisonStatus {
        if self.0.comparison.status == "READY" {
            ComparisonStatus::Ready
        } else {
            ComparisonStatus::Pending
        }
    }

    /// The model asked to judge (`COMPARE_JUDGE_MODEL`, else the conversation's model);
    /// null until judged.
    async fn judge_model(&self) -> Option<&str> {
        self.0.comparison.judge_model.as_deref()
    }

    /// What the results come from: the judge model's id, or `heuristic` when its verdict was
    /// unusable (completion status, then length); null until judged.
    async fn judged_by(&self) -> Option<&str> {
        self.0.comparison.judged_by.as_deref()
    }

    async fn judged_at(&self) -> Option<DateTime<Utc>> {
        self.0.comparison.judged_at
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.comparison.created_at
    }

    /// One per model, in the order the models were asked for (`rank` gives the ranking).
    async fn entries(&self) -> Vec<ComparisonEntryNode> {
        self.0
            .entries
            .iter()
            .map(|(entry, message)| ComparisonEntryNode {
                entry: entry.clone(),
                message: message.clone(),
            })
            .collect()
    }
}

/// One model's answer in a comparison, with the judge's results once READY.
pub struct ComparisonEntryNode {
    entry: Entry,
    message: Message,
}

fn millis(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Option<i32> {
    let ms = (to? - from).num_milliseconds().max(0);
    Some(i32::try_from(ms).unwrap_or(i32::MAX))
}

#[Object(name = "ComparisonEntry")]
impl ComparisonEntryNode {
    async fn message(&self) -> MessageNode {
        MessageNode(self.message.clone())
    }

    async fn model(&self) -> &str {
        &self.entry.model
    }

    /// What the answer says, in at most 50 words.
    async fn summary(&self) -> Option<&str> {
        self.entry.summary.as_deref()
    }

    /// Why it got its score, in at most 20 words.
    async fn reasoning(&self) -> Option<&str> {
        self.entry.reasoning.as_deref()
    }

    /// 0 (useless) to 10 (excellent).
    async fn score(&self) -> Option<f64> {
        self.entry.score
    }

    /// 1 for the best answer.
    async fn rank(&self) -> Option<i32> {
        self.entry.rank
    }

    /// From the answer's creation to its first token; null when none arrived.
    async fn latency_to_first_token_ms(&self) -> Option<i32> {
        millis(self.message.created_at, self.message.first_token_at)
    }

    /// From the answer's creation to its end; null while it runs.
    async fn total_time_ms(&self) -> Option<i32> {
        millis(self.message.created_at, self.message.completed_at)
    }

    async fn prompt_tokens(&self) -> Option<i32> {
        self.message.prompt_tokens
    }

    async fn completion_tokens(&self) -> Option<i32> {
        self.message.completion_tokens
    }

    /// In USD, as `Message.costUsd`.
    async fn cost_usd(&self) -> Option<f64> {
        self.message
            .cost_micro_usd
            .map(|micros| micros as f64 / 1_000_000.0)
    }
}

/// A model's standing in a workspace.
#[derive(SimpleObject)]
pub struct LeaderboardEntry {
    pub model: String,
    /// Votes on the model's answers in the workspace (compared or not).
    pub votes_up: i64,
    pub votes_down: i64,
    /// Games won and lost in comparisons (judge rankings and votes).
    pub wins: i32,
    pub losses: i32,
    /// wins / (wins + losses); null before the first game.
    pub win_rate: Option<f64>,
    /// Starts at 1000; K = 32; two decimals.
    pub elo: f64,
}

impl From<service::Ranked> for LeaderboardEntry {
    fn from(r: service::Ranked) -> Self {
        let games = r.wins + r.losses;
        LeaderboardEntry {
            model: r.model,
            votes_up: r.votes_up,
            votes_down: r.votes_down,
            wins: i32::try_from(r.wins).unwrap_or(i32::MAX),
            losses: i32::try_from(r.losses).unwrap_or(i32::MAX),
            win_rate: (games > 0).then(|| f64::from(r.wins) / f64::from(games)),
            elo: r.elo,
        }
    }
}

#[derive(Default)]
pub struct CompareQuery;

#[Object]
impl CompareQuery {
    /// The comparison started by a user message (`sendMessage` with `models`); null when
    /// the message started none.
    async fn comparison(
        &self,
        ctx: &Context<'_>,
        user_message_id: ID,
    ) -> async_graphql::Result<Option<ComparisonNode>> {
        let id = parse_id("userMessageId", &user_message_id)?;
        Ok(service::comparison(app(ctx)?, viewer(ctx)?, id)
            .await?
            .map(ComparisonNode))
    }

    /// Every model with a vote or a comparison in the workspace, best Elo rating first.
    /// Ratings are replayed from the judge's rankings and the votes of the newest 5,000
    /// comparisons (the README's "Compare" section defines the games).
    async fn leaderboard(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
    ) -> async_graphql::Result<Vec<LeaderboardEntry>> {
        let id = parse_id("workspaceId", &workspace_id)?;
        Ok(service::leaderboard(app(ctx)?, viewer(ctx)?, id)
            .await?
            .into_iter()
            .map(LeaderboardEntry::from)
            .collect())
    }
}

#[derive(Default)]
pub struct CompareMutation;

#[Object]
impl CompareMutation {
    /// The viewer's vote on an answer: one per member and answer, a new vote replaces the
    /// old one, and `vote: null` removes it. Votes feed the leaderboard.
    async fn rate_message(
        &self,
        ctx: &Context<'_>,
        message_id: ID,
        vote: MaybeUndefined<Vote>,
    ) -> async_graphql::Result<MessageNode> {
        let message_id = parse_id("messageId", &message_id)?;
        let vote = match vote {
            MaybeUndefined::Undefined => {
                return Err(AppError::bad_input(
                    "vote",
                    "vote is required: UP, DOWN, or null to remove your vote",
                )
                .into());
            }
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(v) => Some(v.into()),
        };
        Ok(MessageNode(
            service::rate(app(ctx)?, viewer(ctx)?, message_id, vote).await?,
        ))
    }
}

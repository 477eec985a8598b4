//! The leaderboard's Elo ratings, computed from scratch on every read.
//!
//! Every model starts at 1000 and each game moves both players by K = 32 times the
//! surprise of the result: with `E = 1 / (1 + 10^((Rb - Ra) / 400))`, the winner gains
//! `K (1 - E_winner)` and the loser loses as much. Games come from two sources, both within
//! one comparison (answers to the same question, so the models are judged on equal terms):
//!
//! - **The judge's ranking.** A comparison ranked by a judge model is one event: every pair
//!   of its answers is a game won by the better-ranked one. Rankings from the local
//!   heuristic (no judge verdict) are not games: they say nothing about quality.
//! - **Votes.** Each voter's votes on one comparison's answers are one event. Answers fall
//!   into three groups, UP > not voted > DOWN, and every pair of answers in different groups
//!   is a game won by the answer in the better group. An UP therefore beats every sibling
//!   not voted UP, and a DOWN loses to every sibling not voted DOWN; answers in the same
//!   group play no game. Changing a vote replaces it (the event moves to the new time);
//!   removing every vote removes the event.
//!
//! Events are played in a fixed order: by time (the judging time, or the voter's latest
//! vote on that comparison), then by comparison id, then by voter id (the judge's event
//! first); within an event, pairs go in order (by rank for the judge, by the models' order
//! in the request for votes). Replaying the stored events in this order always gives the
//! same figures, so nothing is kept between reads and the ratings are never out of step
//! with the votes. Ratings are shown rounded to two decimals.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The rating of a model that has played no game.
pub const START: f64 = 1000.0;
/// How far one game can move a rating.
pub const K: f64 = 32.0;

/// One game: the winner's and the loser's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Game {
    pub winner: String,
    pub loser: String,
}

/// A set of games played at one moment.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub comparison_id: Uuid,
    /// The voter; None for the judge's ranking (played before votes of the same moment).
    pub voter: Option<Uuid>,
    pub games: Vec<Game>,
}

/// A model's standing after every game.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub elo: f64,
    pub wins: u32,
    pub losses: u32,
}

impl Default for Standing {
    fn default() -> Self {
        Standing {
            elo: START,
            wins: 0,
            losses: 0,
        }
    }
}

/// An answer of a comparison as the games see it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub model: String,
    /// The judge's rank (1 = best), when ranked.
    pub rank: Option<i32>,
}

/// A voter's opinion of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opinion {
    Up,
    None,
    Down,
}

impl Opinion {
    fn group(self) -> u8 {
        match self {
            Opinion::Up => 2,
            Opinion::None => 1,
            Opinion::Down => 0,
        }
    }
}

/// The judge's games of one comparison: every pair of ranked answers, the better rank
/// winning, in rank order ((1, 2), (1, 3), …, (2, 3), …).
pub fn ranking_games(answers: &[Answer]) -> Vec<Game> {
    let mut ranked: Vec<(i32, &str)> = answers
        .iter()
        .filter_map(|a| a.rank.map(|r| (r, a.model.as_str())))
        .collect();
    ranked.sort();
    let mut games = Vec::new();
    for (i, (better_rank, better)) in ranked.iter().enumerate() {
        for (worse_rank, worse) in &ranked[i + 1..] {
            if better_rank < worse_rank {
                games.push(Game {
                    winner: (*better).to_owned(),
                    loser: (*worse).to_owned(),
                });
            }
        }
    }
    games
}

/// One voter's games on one comparison: `opinions` is index-aligned with `answers` (in the
/// request's order); every pair in different groups, in that order.
pub fn vote_games(answers: &[Answer], opinions: &[Opinion]) -> Vec<Game> {
    let mut games = Vec::new();
    for i in 0..answers.len() {
        for j in i + 1..answers.len() {
            let (a, b) = (opinions[i].group(), opinions[j].group());
            if a == b {
                continue;
            }
            let (winner, loser) = if a > b { (i, j) } else { (j, i) };
            games.push(Game {
                winner: answers[winner].model.clone(),
                loser: answers[loser].model.clone(),
            });
        }
    }
    games
}

/// The probability that a player rated `rating` beats one rated `other`.
pub fn expected(rating: f64, other: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((other - rating) / 400.0))
}

/// Plays every event in the fixed order; the standings of every model seen (`models`
/// are included at the start rating even without a game).
pub fn standings<'a>(
    mut events: Vec<Event>,
    models: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, Standing> {
    let mut table: BTreeMap<String, Standing> = models
        .into_iter()
        .map(|m| (m.to_owned(), Standing::default()))
        .collect();
    events.sort_by_key(|e| (e.at, e.comparison_id, e.voter));
    for event in &events {
        for game in &event.games {
            let winner = table.entry(game.winner.clone()).or_default().elo;
            let loser = table.entry(game.loser.clone()).or_default().elo;
            let gain = K * (1.0 - expected(winner, loser));
            if let Some(w) = table.get_mut(&game.winner) {
                w.elo += gain;
                w.wins += 1;
            }
            if let Some(l) = table.get_mut(&game.loser) {
                l.elo -= gain;
                l.losses += 1;
            }
        }
    }
    table
}

/// A rating as shown: two decimals.
pub fn shown(elo: f64) -> f64 {
    (elo * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(models: &[&str]) -> Vec<Answer> {
        models
            .iter()
            .map(|m| Answer {
                model: (*m).to_owned(),
                rank: None,
            })
            .collect()
    }

    fn game(w: &str, l: &str) -> Game {
        Game {
            winner: w.to_owned(),
            loser: l.to_owned(),
        }
    }

    #[test]
    fn an_up_beats_every_sibling_not_voted_up_and_a_down_loses_to_the_rest() {
        let a = answers(&["a", "b", "c"]);
        assert_eq!(
            vote_games(&a, &[Opinion::Up, Opinion::None, Opinion::None]),
            vec![game("a", "b"), game("a", "c")]
        );
        assert_eq!(
            vote_games(&a, &[Opinion::Down, Opinion::None, Opinion::Up]),
            vec![game("b", "a"), game("c", "a"), game("c", "b")]
        );
        assert!(vote_games(&a, &[Opinion::Up, Opinion::Up, Opinion::Up]).is_empty());
    }

    #[test]
    fn the_ranking_plays_every_pair_in_rank_order() {
        let mut a = answers(&["a", "b", "c"]);
        a[0].rank = Some(3);
        a[1].rank = Some(1);
        a[2].rank = Some(2);
        assert_eq!(
            ranking_games(&a),
            vec![game("b", "c"), game("b", "a"), game("c", "a")]
        );
    }

    #[test]
    fn ratings_follow_the_formula_in_time_order() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let event = |secs: i64, games: Vec<Game>| Event {
            at: t0 + chrono::Duration::seconds(secs),
            comparison_id: Uuid::nil(),
            voter: None,
            games,
        };
        // Given out of order: sorted by time before playing.
        let table = standings(
            vec![
                event(2, vec![game("a", "c")]),
                event(1, vec![game("a", "b")]),
            ],
            ["d"],
        );
        assert_eq!(shown(table["a"].elo), 1031.26);
        assert_eq!(shown(table["b"].elo), 984.0);
        assert_eq!(shown(table["c"].elo), 984.74);
        assert_eq!(table["d"], Standing::default());
        assert_eq!((table["a"].wins, table["a"].losses), (2, 0));
        let total: f64 = table.values().map(|s| s.elo).sum();
        assert!((total - 4.0 * START).abs() < 1e-9, "Elo is zero-sum");
    }
}

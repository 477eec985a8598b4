//! N-way compare: one user message answered by 2 to 6 models side by side, judged and
//! ranked once they have all ended, votes on answers, and a per-workspace leaderboard.
//!
//! - `model`: comparisons, their entries, votes (rows and queries)
//! - `service`: the fan-out send, the end of an answer, votes, results, the leaderboard
//! - `judge`: the durable job that summarises and ranks the answers
//! - `elo`: the leaderboard's ratings, replayed from judgements and votes
//! - `graphql`: `comparison`, `leaderboard`, `rateMessage` and their types

pub mod elo;
pub mod graphql;
pub mod judge;
pub mod model;
pub mod service;

//! Colloquy: a GraphQL API server for AI chat products.
//!
//! - `config`: configuration from the environment
//! - `app`: shared state, router, `serve` with graceful shutdown
//! - `error`: `AppError`, the closed set of client-visible failures and their codes
//! - `db`: pool, database creation, embedded migrations, Diesel schema
//! - `graphql`: schema builder, HTTP/WebSocket transport, limits, loaders, GraphiQL
//! - `auth`: passwords, tokens, viewer, account operations
//! - `users`, `workspaces`, `conversations`, `agents`: domains (rows in `model`,
//!   operations in `service`, API in `graphql`)
//! - `llm`: providers, wire formats, model catalog, tokens, context, provider keys
//! - `ratelimit`: brute-force limits
//! - `streaming`: send path, generation runner, event hub, jobs, subscriptions
//! - `compare`: N-way compare (one message, several models), judging, votes, leaderboard
//! - `usage`: quota reservation and settlement, the usage ledger and report
//! - `mail`: outgoing mail
//! - `metrics`: the Prometheus recorder, `/metrics`, and one-line helpers for call sites
//! - `validate`: input checks shared by the domains

pub mod agents;
pub mod app;
pub mod auth;
pub mod compare;
pub mod config;
pub mod conversations;
pub mod db;
pub mod error;
pub mod graphql;
pub mod llm;
pub mod mail;
pub mod metrics;
pub mod ratelimit;
pub mod streaming;
pub mod usage;
pub mod users;
pub mod validate;
pub mod workspaces;

/// reqwest and lettre use rustls without a built-in crypto provider; install ring once per
/// process before the first TLS client is built. Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

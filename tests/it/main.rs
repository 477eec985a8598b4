//! Integration tests: the real server on loopback, a database per test, real Redis.

mod common;

mod accounts;
mod agents;
mod compare;
mod conversations;
mod fake_upstream;
mod instances;
mod limits;
mod llm;
mod metrics;
mod processes;
mod providers;
mod quotas;
mod ratelimit;
mod server;
mod streaming;
mod tokens;
mod websocket;
mod workspaces;

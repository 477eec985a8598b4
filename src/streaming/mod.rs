//! Streaming chat: the send path, the generation runner, the event hub, durable jobs, and
//! the subscriptions that carry answers to clients.
//!
//! - `service`: sendMessage, regenerateMessage, editMessage, stopGeneration
//! - `runner`: one task per generation (context, provider stream, deltas, flushes, end)
//! - `hub`: the `EventHub` trait and its in-process implementation
//! - `instances`: the registry of server processes (heartbeats) and the reaper of the
//!   generations of dead ones
//! - `redis_hub`: the hub across processes (Redis Streams and pub/sub)
//! - `admission`: the rate-limit and quota interface of the send path
//! - `jobs`: durable background jobs (conversation titles)
//! - `guard`: long-lived streams re-check access while they run
//! - `graphql`: mutations, subscriptions and event types

pub mod admission;
pub mod graphql;
pub mod guard;
pub mod hub;
pub mod instances;
pub mod jobs;
pub mod redis_hub;
pub mod runner;
pub mod service;
pub mod shared;

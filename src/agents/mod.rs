//! Agents: named presets of a model, a system prompt and generation settings, scoped to a
//! workspace. `createConversation(agentId)` copies an agent's settings into the new
//! conversation; every new workspace gets a few example agents (`examples`).

pub mod examples;
pub mod graphql;
pub mod model;
pub mod service;

//! Conversations and their messages, stored as a tree with an active branch.

pub mod graphql;
pub mod model;
pub mod service;

//! Workspaces, memberships and roles, and the quota row each workspace has.

pub mod access;
pub mod graphql;
pub mod model;
pub mod service;

//! Workspaces, memberships and the quota row each workspace has.

pub mod graphql;
pub mod model;

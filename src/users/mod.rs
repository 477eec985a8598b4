//! Users: rows and the `me` / `updateProfile` operations.

pub mod graphql;
pub mod model;

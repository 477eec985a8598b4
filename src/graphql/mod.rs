//! The GraphQL schema: per-domain roots merged into one, built in one place (`build_schema`)
//! for the server, the tests and the `schema` CLI command.

pub mod graphiql;
pub mod http;
pub mod limits;
pub mod loaders;
pub mod pagination;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, MergedObject, MergedSubscription, Schema, SchemaBuilder};
use uuid::Uuid;

use crate::agents::graphql::{AgentsMutation, AgentsQuery};
use crate::app::App;
use crate::auth::graphql::AuthMutation;
use crate::compare::graphql::{CompareMutation, CompareQuery};
use crate::config::GraphqlLimits;
use crate::conversations::graphql::{ConversationsMutation, ConversationsQuery};
use crate::db::DbConn;
use crate::error::{AppError, AppResult};
use crate::llm::graphql::{LlmMutation, LlmQuery};
use crate::streaming::graphql::{StreamingMutation, StreamingSubscription};
use crate::usage::graphql::{UsageMutation, UsageQuery};
use crate::usage::subscription::UsageSubscription;
use crate::users::graphql::{UsersMutation, UsersQuery};
use crate::workspaces::graphql::{WorkspacesMutation, WorkspacesQuery};

#[derive(MergedObject, Default)]
pub struct Query(
    UsersQuery,
    WorkspacesQuery,
    ConversationsQuery,
    AgentsQuery,
    LlmQuery,
    UsageQuery,
    CompareQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    AuthMutation,
    UsersMutation,
    WorkspacesMutation,
    ConversationsMutation,
    AgentsMutation,
    StreamingMutation,
    LlmMutation,
    UsageMutation,
    CompareMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(StreamingSubscription, UsageSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

fn builder(limits: &GraphqlLimits) -> SchemaBuilder<Query, Mutation, Subscription> {
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_complexity(limits.max_complexity)
    .extension(limits::QueryLimits {
        max_query_bytes: limits.max_query_bytes,
        max_depth: limits.max_depth,
        max_aliases: limits.max_aliases,
        introspection: limits.introspection,
    })
    .extension(limits::ErrorCodes);
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    if !limits.suggestions {
        builder = builder.disable_suggestions();
    }
    builder
}

/// The schema the server runs, with the shared state and the loaders as data.
pub fn build_schema(app: Arc<App>) -> AppSchema {
    let db = || app.db.clone();
    builder(&app.config.graphql)
        .data(DataLoader::new(
            loaders::MembersLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::QuotaLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::UserLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::WorkspaceLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::ConversationLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::SiblingsLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::AgentLoader { db: db() },
            tokio::spawn,
        ))
        .data(DataLoader::new(
            loaders::VotesLoader { db: db() },
            tokio::spawn,
        ))
        .data(app)
        .finish()
}

/// A DataLoader from the schema data.
pub fn loader<'a, T: Send + Sync + 'static>(ctx: &Context<'a>) -> AppResult<&'a DataLoader<T>> {
    ctx.data::<DataLoader<T>>()
        .map_err(|_| AppError::internal(anyhow::anyhow!("a loader is missing from schema data")))
}

/// The SDL of the schema, as written to `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
    .sdl()
}

/// The shared state, from the schema data.
pub fn app<'a>(ctx: &Context<'a>) -> AppResult<&'a Arc<App>> {
    ctx.data::<Arc<App>>()
        .map_err(|_| AppError::internal(anyhow::anyhow!("App missing from schema data")))
}

/// A pooled connection for a resolver.
pub async fn conn(ctx: &Context<'_>) -> AppResult<DbConn> {
    Ok(app(ctx)?.db.get().await?)
}

/// Parses an ID argument; a malformed one is BAD_USER_INPUT naming the argument.
pub fn parse_id(field: &str, id: &ID) -> AppResult<Uuid> {
    Uuid::parse_str(id.as_str()).map_err(|_| AppError::bad_input(field, "not a valid ID"))
}

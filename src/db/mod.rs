//! Postgres: the pool, database creation at start, and the embedded migrations.
//!
//! No libpq: connections are diesel-async's (tokio-postgres underneath), and migrations run
//! through `AsyncMigrationHarness`, which needs the multi-threaded tokio runtime.

pub mod schema;

use std::time::Duration;

use anyhow::{Context, anyhow};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseConfig;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialises migrations when several processes start at once.
const MIGRATION_LOCK_KEY: i64 = 0x636f_6c6c_6f71_7579; // "colloquy"

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

/// Builds the pool. Connections are opened lazily; `wait_timeout` bounds how long a request
/// waits for one, so an exhausted or unreachable database fails a request instead of hanging.
pub fn pool(config: &DatabaseConfig) -> anyhow::Result<DbPool> {
    // Fast recycling: a pooled connection is handed out as it is, without a `SELECT 1` first
    // (a round trip on every checkout). One whose socket closed, or left in a broken
    // transaction, is still discarded.
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.clone(),
        manager_config,
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(config.pool_timeout))
        .create_timeout(Some(config.pool_timeout))
        .recycle_timeout(Some(config.pool_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("cannot build the database pool")
}

/// Whether `conn` is inside a transaction (begun with `AsyncConnection::transaction`).
pub fn in_transaction(conn: &mut AsyncPgConnection) -> bool {
    use diesel_async::{AnsiTransactionManager, TransactionManager};
    matches!(
        AnsiTransactionManager::transaction_manager_status_mut(conn).transaction_depth(),
        Ok(Some(_))
    )
}

/// Creates the database named in `url` when it does not exist yet, then runs every pending
/// migration. Fails with one sentence naming `DATABASE_URL` and the address tried when
/// Postgres cannot be reached.
pub async fn prepare(url: &str) -> anyhow::Result<()> {
    create_database_if_missing(url).await?;
    migrate(url).await
}

/// Runs the pending embedded migrations, holding an advisory lock so that processes starting
/// together do not race.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let mut conn = connect(url).await?;
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn)
        .await
        .context("cannot take the migration lock")?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied: anyhow::Result<Vec<String>> = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| anyhow!("migration failed: {e}"));
    let mut conn = harness.into_inner();
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
        .execute(&mut conn)
        .await
        .context("cannot release the migration lock")?;
    for version in applied? {
        tracing::info!(%version, "applied migration");
    }
    Ok(())
}

/// A connection outside the pool (migrations; the heartbeat, which must not wait behind
/// requests), failing with a sentence naming `DATABASE_URL`.
pub(crate) async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(anyhow!(
            "cannot connect to Postgres at {} (DATABASE_URL): {e}",
            describe(url)
        )),
        Err(_) => Err(anyhow!(
            "cannot connect to Postgres at {} (DATABASE_URL): no answer within {}s",
            describe(url),
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let err = match tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => String::from("no answer"),
    };
    if !err.contains("does not exist") {
        return Err(anyhow!(
            "cannot connect to Postgres at {} (DATABASE_URL): {err}",
            describe(url)
        ));
    }
    let parsed = url::Url::parse(url).context("DATABASE_URL is not a valid URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if name.is_empty() {
        return Err(anyhow!("DATABASE_URL names no database"));
    }
    let mut admin = None;
    for maintenance in ["postgres", "template1"] {
        let mut admin_url = parsed.clone();
        admin_url.set_path(maintenance);
        if let Ok(conn) = connect(admin_url.as_str()).await {
            admin = Some(conn);
            break;
        }
    }
    let mut admin = admin.ok_or_else(|| {
        anyhow!(
            "database `{name}` does not exist and no maintenance database on {} lets us create it (DATABASE_URL)",
            describe(url)
        )
    })?;
    let created = diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(&name)))
        .execute(&mut admin)
        .await;
    match created {
        Ok(_) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!("cannot create database `{name}`: {e}")),
    }
}

/// `host:port/database` for messages: never the password.
pub fn describe(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "an unparsable address".to_owned(),
    }
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A cheap round trip for readiness checks.
pub async fn ping(pool: &DbPool) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("no database connection")?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .context("database did not answer")?;
    Ok(())
}

/// `EXPLAIN` of a Diesel query, one plan line per row: lets tests check that a query the
/// code really runs is served by an index.
pub struct Explain<Q>(pub Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Explain<Q>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("EXPLAIN ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> diesel::query_builder::QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<Q> {
    type SqlType = diesel::sql_types::Text;
}

impl<Q, Conn> diesel::query_dsl::RunQueryDsl<Conn> for Explain<Q> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_hides_the_password() {
        let d = describe("postgres://me:secret@db.internal:6543/app");
        assert_eq!(d, "db.internal:6543/app");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

//! The instance registry and the reaper: how server processes sharing one Postgres tell a
//! generation in progress from one whose process died.
//!
//! Every process has a random id (`App::instance_id`) and a row in `instances`, whose
//! `heartbeat_at` it refreshes every `HEARTBEAT_INTERVAL_SECS` on a connection of its own (so
//! a busy pool never delays it). A process is live while its heartbeat is younger than
//! `HEARTBEAT_TIMEOUT_SECS`; every time here is Postgres' `now()`, so the clocks of the
//! machines never matter. A process that shuts down cleanly deletes its row; rows dead for
//! over an hour are deleted by whoever reaps.
//!
//! An assistant message records the process running it (`messages.runner_instance`). The
//! reaper, run by every process at start and then every heartbeat interval, ends FAILED each
//! unfinished generation whose runner is unknown or not live, its partial text kept, and
//! settles its quota reservation to what that text counts. Its single `UPDATE … RETURNING` is
//! the claim: with several reapers at once, each message is reaped (and settled) by one.
//! A process that was only slow, not dead, finds its messages ended when it next flushes or
//! writes the end, and stops (both writes only touch unfinished messages).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Float8, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::watch;
use uuid::Uuid;

use crate::app::App;
use crate::conversations::model::{MESSAGE_COLUMNS, Message};
use crate::db::schema::instances;
use crate::usage::quota;

type SqlUuid = diesel::sql_types::Uuid;

/// The error a reaped generation ends with.
pub const REAPED_ERROR: &str = "the server running the generation stopped";

/// How long a dead instance's row is kept (for operators looking at what ran where).
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(3600);

/// A server process, as registered.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = instances, check_for_backend(diesel::pg::Pg))]
pub struct Instance {
    pub id: Uuid,
    pub hostname: String,
    pub pid: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
}

#[derive(QueryableByName)]
struct Live {
    #[diesel(sql_type = Bool)]
    live: bool,
}

/// SQL true when the runner of message `m` is unknown or not live; `$2` is the heartbeat
/// timeout in seconds.
const RUNNER_GONE: &str = "(m.runner_instance IS NULL OR NOT EXISTS ( \
         SELECT 1 FROM instances i WHERE i.id = m.runner_instance \
           AND i.heartbeat_at >= now() - make_interval(secs => $2)))";

impl Instance {
    /// Registers the instance, or refreshes its heartbeat: one upsert serves both, so a row
    /// deleted meanwhile (forgotten as dead) comes back.
    pub async fn beat(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        hostname: &str,
        pid: i32,
    ) -> QueryResult<()> {
        diesel::insert_into(instances::table)
            .values((
                instances::id.eq(id),
                instances::hostname.eq(hostname),
                instances::pid.eq(pid),
            ))
            .on_conflict(instances::id)
            .do_update()
            .set(instances::heartbeat_at.eq(diesel::dsl::now))
            .execute(conn)
            .await
            .map(drop)
    }

    pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Instance>> {
        instances::table
            .find(id)
            .select(Instance::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Whether instance `id` has a heartbeat younger than `timeout`.
    pub async fn is_live(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        timeout: Duration,
    ) -> QueryResult<bool> {
        let row: Live = diesel::sql_query(
            "SELECT EXISTS (SELECT 1 FROM instances \
                 WHERE id = $1 AND heartbeat_at >= now() - make_interval(secs => $2)) AS live",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Float8, _>(timeout.as_secs_f64())
        .get_result(conn)
        .await?;
        Ok(row.live)
    }

    /// Removes the instance's row (clean shutdown: its generations are over).
    pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
        diesel::delete(instances::table.find(id))
            .execute(conn)
            .await
    }

    /// Deletes the rows of instances silent for longer than `age`. Returns how many.
    pub async fn forget_dead(conn: &mut AsyncPgConnection, age: Duration) -> QueryResult<usize> {
        diesel::sql_query(
            "DELETE FROM instances WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind::<Float8, _>(age.as_secs_f64())
        .execute(conn)
        .await
    }

    /// Ends FAILED (text kept, `completed_at` set) every unfinished generation whose runner is
    /// unknown or silent for longer than `timeout`, and returns them as they ended. One
    /// statement: concurrent callers each get a disjoint set (a row another caller ended no
    /// longer matches the status filter once its lock is released).
    pub async fn fail_orphans(
        conn: &mut AsyncPgConnection,
        timeout: Duration,
    ) -> QueryResult<Vec<Message>> {
        diesel::sql_query(format!(
            "UPDATE messages m SET status = 'FAILED', error = $1, \
                 completed_at = now(), updated_at = now() \
             WHERE m.status IN ('PENDING', 'STREAMING') AND {RUNNER_GONE} \
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind::<Text, _>(REAPED_ERROR)
        .bind::<Float8, _>(timeout.as_secs_f64())
        .load(conn)
        .await
    }

    /// Ends generation `message_id` CANCELLED, text kept, if it is unfinished and its runner
    /// is unknown or not live (checked in the same statement, so a live runner's message is
    /// never taken from it). Returns it as it ended.
    pub async fn cancel_orphan(
        conn: &mut AsyncPgConnection,
        message_id: Uuid,
        timeout: Duration,
    ) -> QueryResult<Option<Message>> {
        diesel::sql_query(format!(
            "UPDATE messages m SET status = 'CANCELLED', completed_at = now(), updated_at = now() \
             WHERE m.id = $1 AND m.status IN ('PENDING', 'STREAMING') AND {RUNNER_GONE} \
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind::<SqlUuid, _>(message_id)
        .bind::<Float8, _>(timeout.as_secs_f64())
        .get_result(conn)
        .await
        .optional()
    }
}

/// This machine's name, for operators reading `instances`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Registers this process (before it reaps or starts any generation: its own messages must
/// never look orphaned to the other processes).
pub async fn register(app: &App) -> anyhow::Result<()> {
    let mut conn = app.db.get().await.context("no database connection")?;
    Instance::beat(&mut conn, app.instance_id, &hostname(), pid())
        .await
        .context("cannot register this server in `instances`")?;
    tracing::info!(instance_id = %app.instance_id, "registered server instance");
    Ok(())
}

/// Deletes this process's row at a clean shutdown, so its leftovers (if any generation
/// outlived the grace period) are reaped at once rather than after the timeout.
pub async fn deregister(app: &App) {
    let result = async {
        let mut conn = app.db.get().await?;
        Ok::<_, crate::error::AppError>(Instance::delete(&mut conn, app.instance_id).await?)
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(?err, "cannot remove this server from `instances`");
    }
}

/// Refreshes the heartbeat every interval, forever (aborted at shutdown). Registers the
/// instance on its first beat, at once.
pub async fn heartbeat(app: Arc<App>) {
    let interval = app.config.instances.heartbeat_interval;
    let (host, pid) = (hostname(), pid());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<AsyncPgConnection> = None;
    loop {
        tick.tick().await;
        let beat = async {
            // A connection of its own: a pool exhausted by requests must not make this
            // process look dead. Dropped on any failure and opened again at the next beat.
            let mut c = match conn.take() {
                Some(c) => c,
                None => crate::db::connect(&app.config.database.url).await?,
            };
            Instance::beat(&mut c, app.instance_id, &host, pid).await?;
            conn = Some(c);
            Ok::<_, anyhow::Error>(())
        };
        match tokio::time::timeout(interval, beat).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(?err, "cannot write the heartbeat"),
            Err(_) => tracing::warn!(?interval, "the heartbeat took longer than its interval"),
        }
    }
}

/// Reaps every heartbeat interval until `stop` turns true (or its sender is gone); the first
/// run is one interval after the start, which reaped already. A run in progress is never
/// cut short: the generations it ended would stay unsettled and their subscribers waiting.
pub async fn reaper(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let interval = app.config.instances.heartbeat_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Err(err) = reap(&app).await {
            tracing::warn!(?err, "cannot reap orphaned generations");
        }
    }
}

/// Ends FAILED every unfinished generation whose process is unknown or dead, its partial
/// text kept; settles each one's reservation to that text (counted with the model's
/// tokenizer), and tells its subscribers and its workspace's `usageUpdated` subscribers.
/// Also forgets instances dead for over an hour. Returns how many generations it reaped.
pub async fn reap(app: &App) -> anyhow::Result<usize> {
    let mut conn = app.db.get().await.context("no database connection")?;
    let timeout = app.config.instances.heartbeat_timeout;
    let reaped = Instance::fail_orphans(&mut conn, timeout)
        .await
        .context("cannot reap orphaned generations")?;
    if let Err(err) = Instance::forget_dead(&mut conn, FORGET_DEAD_AFTER).await {
        tracing::warn!(?err, "cannot delete the rows of long-dead instances");
    }
    if reaped.is_empty() {
        return Ok(0);
    }
    tracing::warn!(
        reaped = reaped.len(),
        "ended FAILED the generations of servers that stopped"
    );
    for message in &reaped {
        crate::metrics::generation_ended(message.model.as_deref().unwrap_or_default(), "FAILED");
        close_orphan(app, &mut conn, message).await;
    }
    Ok(reaped.len())
}

/// After a generation was ended without its runner (reaped, or stopped with no live
/// runner): the conversation's preview, the reservation settled to the partial text (at
/// most once per message, however many paths try), the generation's subscribers told, and
/// the workspace's quota published. Failures are logged: the message has ended either way,
/// and the sweeper releases a reservation left behind.
pub(crate) async fn close_orphan(app: &App, conn: &mut AsyncPgConnection, message: &Message) {
    if let Err(err) = message.refresh_preview(conn).await {
        tracing::warn!(?err, message_id = %message.id, "cannot refresh the conversation preview");
    }
    let workspace = match settle_partial(app, conn, message).await {
        Ok(workspace) => workspace,
        Err(err) => {
            tracing::error!(?err, message_id = %message.id, "cannot settle an orphaned generation");
            None
        }
    };
    app.hub
        .finish_generation(message.id, message.conversation_id)
        .await;
    if let Some(workspace_id) = workspace {
        app.hub.publish_quota(workspace_id).await;
    }
    crate::compare::service::answer_ended(app, message.id).await;
}

/// Settles the message's reservation to its partial text. Returns the workspace whose quota
/// changed (None when there was no reservation left to settle).
async fn settle_partial(
    app: &App,
    conn: &mut AsyncPgConnection,
    message: &Message,
) -> crate::error::AppResult<Option<Uuid>> {
    let Some(reservation) = quota::reservation_of(conn, message.id).await? else {
        return Ok(None);
    };
    let spec = app.providers.model(&reservation.model);
    let completion = spec
        .map(|s| app.providers.catalog().tokenizer(s))
        .unwrap_or_default()
        .count(&message.content) as i64;
    let cost = spec.map_or(0, |s| {
        s.cost_micro_usd(reservation.prompt_tokens as u32, completion as u32)
    });
    let settlement = quota::Settlement {
        workspace_id: reservation.workspace_id,
        user_id: reservation.user_id,
        conversation_id: Some(message.conversation_id),
        message_id: Some(message.id),
        model: reservation.model.clone(),
        prompt_tokens: Some(reservation.prompt_tokens),
        completion_tokens: completion,
        cost_micro_usd: cost,
        estimated: true,
    };
    quota::settle(conn, Some(reservation.id), &settlement).await?;
    Ok(Some(reservation.workspace_id))
}

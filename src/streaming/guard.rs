//! Long-lived streams (subscriptions over WebSocket and SSE) re-check access while they run:
//! before delivering an event, the viewer's access token must not have expired and, at most
//! every few seconds, its session must be live and its membership intact. Logging out,
//! a password reset or removal from the workspace ends the stream with an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use uuid::Uuid;

use crate::app::App;
use crate::auth::Viewer;
use crate::auth::model::Session;
use crate::conversations::model::Conversation;
use crate::error::{AppError, AppResult};
use crate::workspaces::model::Workspace;

/// How often the database is asked again while events flow.
const RECHECK: Duration = Duration::from_secs(5);

/// What the stream shows.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Conversation(Uuid),
    Workspace(Uuid),
}

/// NOT_FOUND / UNAUTHENTICATED unless the viewer may still see `scope`.
pub async fn still_allowed(app: &App, viewer: &Viewer, scope: Scope) -> AppResult<()> {
    if chrono::Utc::now().timestamp() >= viewer.expires_at {
        return Err(AppError::unauthenticated(
            "the access token expired; subscribe again with a fresh one",
        ));
    }
    let mut conn = app.db.get().await?;
    if !Session::is_active(&mut conn, viewer.session_id, viewer.user_id).await? {
        return Err(AppError::unauthenticated("the session has ended"));
    }
    let member = match scope {
        Scope::Conversation(id) => Conversation::find_for_member(&mut conn, id, viewer.user_id)
            .await?
            .is_some(),
        Scope::Workspace(id) => Workspace::find_for_member(&mut conn, id, viewer.user_id)
            .await?
            .is_some(),
    };
    if !member {
        return Err(AppError::not_found(match scope {
            Scope::Conversation(_) => "conversation",
            Scope::Workspace(_) => "workspace",
        }));
    }
    Ok(())
}

struct Guard<T> {
    events: BoxStream<'static, async_graphql::Result<T>>,
    app: Arc<App>,
    viewer: Viewer,
    scope: Scope,
    checked: Instant,
    done: bool,
}

/// `events`, ended with an error as soon as the viewer loses access.
pub fn guarded<T: Send + 'static>(
    events: BoxStream<'static, async_graphql::Result<T>>,
    app: Arc<App>,
    viewer: Viewer,
    scope: Scope,
) -> BoxStream<'static, async_graphql::Result<T>> {
    let guard = Guard {
        events,
        app,
        viewer,
        scope,
        checked: Instant::now(),
        done: false,
    };
    futures_util::stream::unfold(guard, |mut g| async move {
        if g.done {
            return None;
        }
        let item = g.events.next().await?;
        let expired = chrono::Utc::now().timestamp() >= g.viewer.expires_at;
        if expired || g.checked.elapsed() >= RECHECK {
            // Boxed: the stream's resting size would otherwise include the whole check.
            if let Err(err) = Box::pin(still_allowed(&g.app, &g.viewer, g.scope)).await {
                g.done = true;
                return Some((Err(err.into()), g));
            }
            g.checked = Instant::now();
        }
        Some((item, g))
    })
    .boxed()
}

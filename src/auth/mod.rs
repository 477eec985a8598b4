//! Authentication: passwords, tokens, the per-request `Viewer`, and the account operations.
//!
//! A request authenticates with `Authorization: Bearer <accessToken>` (HTTP) or the
//! `connection_init` payload (WebSocket). `authenticate` checks the JWT and that its session
//! is still live; resolvers then call `viewer(ctx)` and get UNAUTHENTICATED when there is none.

pub mod graphql;
pub mod model;
pub mod password;
pub mod service;
pub mod tokens;

use std::net::IpAddr;

use async_graphql::Context;
use uuid::Uuid;

use crate::app::App;
use crate::error::{AppError, AppResult};

/// The authenticated user of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// When the access token expires (Unix seconds): long-lived streams end then.
    pub expires_at: i64,
}

/// What the request's credentials turned out to be.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    /// A token was presented but is invalid, expired or revoked.
    Rejected,
    /// The session could not be checked (database unavailable); logged where it happened.
    Unavailable,
    Viewer(Viewer),
}

/// Where a request came from, for rate limits and the session record.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The key for per-IP limits; requests without a known address share one bucket.
    pub fn ip_key(&self) -> String {
        self.ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

/// The token in an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Verifies an access token and that its session is live.
pub async fn authenticate(app: &App, token: Option<&str>) -> Auth {
    let Some(token) = token else {
        return Auth::Anonymous;
    };
    let Ok(claims) = app.tokens.verify(token) else {
        return Auth::Rejected;
    };
    let live = async {
        let mut conn = app.db.get().await?;
        Ok::<_, AppError>(model::Session::is_active(&mut conn, claims.sid, claims.sub).await?)
    }
    .await;
    match live {
        Ok(true) => Auth::Viewer(Viewer {
            user_id: claims.sub,
            session_id: claims.sid,
            expires_at: claims.exp,
        }),
        Ok(false) => Auth::Rejected,
        Err(err) => {
            if let AppError::Internal(cause) = &err {
                tracing::error!(error = ?cause, "cannot check the session of an access token");
            }
            Auth::Unavailable
        }
    }
}

/// The viewer of this request, or UNAUTHENTICATED.
pub fn viewer<'a>(ctx: &Context<'a>) -> AppResult<&'a Viewer> {
    match ctx.data_opt::<Auth>() {
        Some(Auth::Viewer(viewer)) => Ok(viewer),
        Some(Auth::Rejected) => Err(AppError::unauthenticated(
            "invalid, expired or revoked access token",
        )),
        Some(Auth::Unavailable) => Err(AppError::internal(anyhow::anyhow!(
            "session check unavailable"
        ))),
        Some(Auth::Anonymous) | None => Err(AppError::unauthenticated("authentication required")),
    }
}

pub fn client_info<'a>(ctx: &Context<'a>) -> ClientInfo {
    ctx.data_opt::<ClientInfo>().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}

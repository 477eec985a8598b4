//! `AppError`: the closed set of failures a client can see, each with a stable
//! `extensions.code` (API.md). Internal causes are logged with `tracing`, never returned.
//!
//! `AppError` deliberately has no `Display` impl: async-graphql converts any `Display` type
//! into an error by its text, which would drop the code and could leak a cause. Without
//! `Display`, `?` in a resolver goes through `From<AppError> for async_graphql::Error` below.

use std::time::Duration;

use async_graphql::ErrorExtensions;
use chrono::{DateTime, Utc};

/// A failure a client is allowed to see.
#[derive(Debug)]
pub enum AppError {
    /// No credentials, or credentials that are invalid, expired or revoked.
    Unauthenticated(String),
    /// Authenticated but not allowed (never used for other workspaces' data: see NotFound).
    Forbidden(String),
    /// Missing, or in a workspace the viewer is not a member of.
    NotFound(String),
    /// The input is wrong; `field` names the offending input field when there is one.
    BadUserInput {
        message: String,
        field: Option<String>,
    },
    RateLimited {
        retry_after: Duration,
    },
    QuotaExceeded {
        message: String,
        resets_at: DateTime<Utc>,
    },
    Conflict(String),
    Provider(String),
    /// A live stream was cut by an internal outage (the event hub lost Redis): code
    /// INTERNAL with `extensions.retryable`, and a message that says how to carry on.
    Interrupted(String),
    /// Anything the client cannot act on. The cause is logged; the client sees a fixed text.
    Internal(anyhow::Error),
}

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadUserInput { .. } => "BAD_USER_INPUT",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            AppError::Conflict(_) => "CONFLICT",
            AppError::Provider(_) => "PROVIDER_ERROR",
            AppError::Interrupted(_) | AppError::Internal(_) => "INTERNAL",
        }
    }

    /// The text shown to the client.
    pub fn message(&self) -> String {
        match self {
            AppError::Unauthenticated(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::Provider(m)
            | AppError::Interrupted(m) => m.clone(),
            AppError::BadUserInput { message, .. } | AppError::QuotaExceeded { message, .. } => {
                message.clone()
            }
            AppError::RateLimited { retry_after } => format!(
                "too many requests; retry in {} ms",
                retry_after.as_millis().max(1)
            ),
            AppError::Internal(_) => "internal server error".to_owned(),
        }
    }

    pub fn bad_input(field: &str, message: impl Into<String>) -> Self {
        AppError::BadUserInput {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        AppError::Unauthenticated(message.into())
    }

    pub fn not_found(what: &str) -> Self {
        AppError::NotFound(format!("{what} not found"))
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(cause.into())
    }

    /// Logs internal causes once, at the point the error leaves for a client.
    fn log(&self) {
        if let AppError::Internal(cause) = self {
            tracing::error!(error = ?cause, "internal error");
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        err.log();
        let mut error = async_graphql::Error::new(err.message());
        let code = err.code();
        error = error.extend_with(|_, e| e.set("code", code));
        match &err {
            AppError::RateLimited { retry_after } => {
                let ms = retry_after.as_millis().max(1) as u64;
                error = error.extend_with(|_, e| e.set("retryAfterMs", ms));
            }
            AppError::QuotaExceeded { resets_at, .. } => {
                let at = resets_at.to_rfc3339();
                error = error.extend_with(|_, e| e.set("resetsAt", at));
            }
            AppError::BadUserInput {
                field: Some(field), ..
            } => {
                let field = field.clone();
                error = error.extend_with(|_, e| e.set("field", field));
            }
            AppError::Interrupted(_) => {
                error = error.extend_with(|_, e| e.set("retryable", true));
            }
            _ => {}
        }
        error
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(err: diesel::result::Error) -> Self {
        AppError::Internal(anyhow::Error::new(err).context("database query failed"))
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for AppError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        AppError::Internal(anyhow::Error::new(err).context("no database connection"))
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        AppError::Internal(err)
    }
}

/// Provider failures reach clients as PROVIDER_ERROR with the error's safe description.
impl From<crate::llm::ProviderError> for AppError {
    fn from(err: crate::llm::ProviderError) -> Self {
        AppError::Provider(err.to_string())
    }
}

impl From<tokio::task::JoinError> for AppError {
    fn from(err: tokio::task::JoinError) -> Self {
        AppError::Internal(anyhow::Error::new(err).context("background task failed"))
    }
}

/// True when `err` is a unique-constraint violation (the caller turns it into CONFLICT).
pub fn is_unique_violation(err: &diesel::result::Error) -> bool {
    matches!(
        err,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_are_not_sent() {
        let err: async_graphql::Error =
            AppError::internal(anyhow::anyhow!("password for db is hunter2")).into();
        assert_eq!(err.message, "internal server error");
        let ext = format!("{:?}", err.extensions);
        assert!(ext.contains("INTERNAL"));
        assert!(!ext.contains("hunter2"));
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let err: async_graphql::Error = AppError::RateLimited {
            retry_after: Duration::from_millis(1500),
        }
        .into();
        let ext = format!("{:?}", err.extensions);
        assert!(
            ext.contains("RATE_LIMITED") && ext.contains("1500"),
            "{ext}"
        );
    }
}

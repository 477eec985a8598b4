//! The account operations behind the auth mutations: registration, login, refresh-token
//! rotation with reuse detection, logout, password change and reset.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::app::App;
use crate::auth::model::{NewSession, PasswordResetToken, RefreshToken, Session, reason};
use crate::auth::password::{MAX_PASSWORD_CHARS, validate_new_password};
use crate::auth::tokens::{random_token, token_hash};
use crate::auth::{ClientInfo, Viewer};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::mail::OutgoingMail;
use crate::ratelimit::LimitClass;
use crate::users::model::{NewUser, User};
use crate::workspaces::model::Workspace;

/// What a successful register, login or refresh hands back.
pub struct Issued {
    pub user: User,
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    pub refresh_token: String,
}

const BAD_CREDENTIALS: &str = "invalid email or password";
const BAD_REFRESH: &str = "invalid, expired or revoked refresh token";

/// Trims and lower-cases an email and checks its form.
pub fn normalize_email(field: &str, raw: &str) -> AppResult<String> {
    let email = raw.trim().to_lowercase();
    let domain_has_dot = email
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain.contains('.') && !domain.ends_with('.'));
    if email.len() > 254 || !domain_has_dot || !email_address::EmailAddress::is_valid(&email) {
        return Err(AppError::bad_input(field, "not a valid email address"));
    }
    Ok(email)
}

/// Trims a display name and checks it is 1 to 100 printable characters.
pub fn normalize_display_name(field: &str, raw: &str) -> AppResult<String> {
    crate::validate::single_line(field, raw, 1, 100)
}

fn refresh_expiry(app: &App) -> AppResult<DateTime<Utc>> {
    chrono::Duration::from_std(app.config.auth.refresh_token_ttl)
        .map(|ttl| Utc::now() + ttl)
        .map_err(|e| AppError::internal(anyhow::anyhow!("refresh ttl: {e}")))
}

/// Opens a session with its first refresh token. Call inside the caller's transaction.
async fn open_session(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: Uuid,
    client: &ClientInfo,
    expires_at: DateTime<Utc>,
) -> AppResult<(Uuid, String)> {
    let ip = client.ip.map(|ip| ip.to_string());
    let user_agent: Option<String> = client
        .user_agent
        .as_deref()
        .map(|ua| ua.chars().take(256).collect());
    let session = Session::create(
        conn,
        &NewSession {
            id: Uuid::now_v7(),
            user_id,
            user_agent: user_agent.as_deref(),
            ip: ip.as_deref(),
        },
    )
    .await?;
    let refresh = random_token();
    RefreshToken::insert(conn, &token_hash(&refresh), session.id, expires_at).await?;
    Ok((session.id, refresh))
}

fn issued(app: &App, user: User, session_id: Uuid, refresh_token: String) -> AppResult<Issued> {
    let access = app.tokens.issue(user.id, session_id)?;
    Ok(Issued {
        user,
        access_token: access.token,
        expires_at: access.expires_at,
        refresh_token,
    })
}

/// Creates the user, their personal workspace (OWNER) with its quota row and example agents,
/// and a session, in one transaction.
pub async fn register(
    app: &App,
    email: &str,
    password: &str,
    display_name: &str,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let email = normalize_email("email", email)?;
    validate_new_password("password", password)?;
    let display_name = normalize_display_name("displayName", display_name)?;
    let password_hash = app.passwords.hash(password).await?;
    let expires_at = refresh_expiry(app)?;
    let quota = app.config.quota.clone();

    let mut conn = app.db.get().await?;
    let (user, session_id, refresh) = conn
        .transaction::<_, AppError, _>(async |conn| {
            let user = User::insert(
                conn,
                &NewUser {
                    id: Uuid::now_v7(),
                    email: &email,
                    password_hash: &password_hash,
                    display_name: &display_name,
                },
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    AppError::Conflict("an account with this email already exists".to_owned())
                } else {
                    e.into()
                }
            })?;
            let workspace = Workspace::create_personal(conn, &user, &quota).await?;
            crate::agents::examples::add(conn, app, workspace.id).await?;
            let (session_id, refresh) = open_session(conn, user.id, client, expires_at).await?;
            Ok((user, session_id, refresh))
        })
        .await?;
    tracing::info!(user_id = %user.id, "registered");
    issued(app, user, session_id, refresh)
}

/// Checks credentials. Every failure is the same UNAUTHENTICATED answer, and an unknown email
/// costs the same argon2 verification as a wrong password.
pub async fn login(
    app: &App,
    email: &str,
    password: &str,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let email = email.trim().to_lowercase();
    app.limiter
        .check(LimitClass::LoginPerIp, &client.ip_key())
        .await?;
    // Nothing longer is an email, and it must not become a limiter key.
    if email.len() > 254 {
        return Err(AppError::unauthenticated(BAD_CREDENTIALS));
    }
    app.limiter.check(LimitClass::LoginPerEmail, &email).await?;
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(AppError::unauthenticated(BAD_CREDENTIALS));
    }
    let mut conn = app.db.get().await?;
    let user = User::find_by_email(&mut conn, &email).await?;
    // Give the connection back while hashing: argon2 may queue behind other logins.
    drop(conn);
    let verified = app
        .passwords
        .verify(password, user.as_ref().map(|u| u.password_hash.as_str()))
        .await?;
    let user = match user {
        Some(user) if verified => user,
        _ => return Err(AppError::unauthenticated(BAD_CREDENTIALS)),
    };
    let expires_at = refresh_expiry(app)?;
    let mut conn = app.db.get().await?;
    let user_id = user.id;
    let (session_id, refresh) = conn
        .transaction::<_, AppError, _>(async |conn| {
            open_session(conn, user_id, client, expires_at).await
        })
        .await?;
    issued(app, user, session_id, refresh)
}

enum Rotation {
    Rotated {
        user_id: Uuid,
        session_id: Uuid,
        refresh: String,
    },
    Rejected,
}

/// Exchanges a refresh token for a new pair. A token that was already used revokes its whole
/// family: whoever holds the newer token (possibly a thief) is logged out too.
pub async fn refresh(app: &App, refresh_token: &str) -> AppResult<Issued> {
    let hash = token_hash(refresh_token.trim());
    let expires_at = refresh_expiry(app)?;
    let mut conn = app.db.get().await?;
    let rotation = conn
        .transaction::<_, AppError, _>(async |conn| {
            let Some((token, session)) = RefreshToken::find_for_update(conn, &hash).await? else {
                return Ok(Rotation::Rejected);
            };
            if session.revoked_at.is_some() {
                return Ok(Rotation::Rejected);
            }
            if token.used_at.is_some() {
                tracing::warn!(
                    session_id = %session.id,
                    user_id = %session.user_id,
                    "refresh token reused; revoking its session"
                );
                Session::revoke(conn, session.id, reason::REUSE).await?;
                return Ok(Rotation::Rejected);
            }
            if token.expires_at <= Utc::now() {
                return Ok(Rotation::Rejected);
            }
            RefreshToken::mark_used(conn, &hash).await?;
            let refresh = random_token();
            RefreshToken::insert(conn, &token_hash(&refresh), session.id, expires_at).await?;
            Session::touch(conn, session.id).await?;
            Ok(Rotation::Rotated {
                user_id: session.user_id,
                session_id: session.id,
                refresh,
            })
        })
        .await?;
    match rotation {
        Rotation::Rejected => Err(AppError::unauthenticated(BAD_REFRESH)),
        Rotation::Rotated {
            user_id,
            session_id,
            refresh,
        } => {
            let user = User::find(&mut conn, user_id)
                .await?
                .ok_or_else(|| AppError::unauthenticated(BAD_REFRESH))?;
            issued(app, user, session_id, refresh)
        }
    }
}

/// Ends the session the refresh token belongs to (its whole family).
pub async fn logout(app: &App, refresh_token: &str) -> AppResult<bool> {
    let hash = token_hash(refresh_token.trim());
    let mut conn = app.db.get().await?;
    let found = conn
        .transaction::<_, AppError, _>(async |conn| {
            let Some((_, session)) = RefreshToken::find_for_update(conn, &hash).await? else {
                return Ok(false);
            };
            Session::revoke(conn, session.id, reason::LOGOUT).await?;
            Ok(true)
        })
        .await?;
    if found {
        Ok(true)
    } else {
        Err(AppError::unauthenticated(BAD_REFRESH))
    }
}

/// Sets a new password after checking the current one, and ends every other session.
pub async fn change_password(
    app: &App,
    viewer: &Viewer,
    current: &str,
    new: &str,
) -> AppResult<bool> {
    validate_new_password("newPassword", new)?;
    let mut conn = app.db.get().await?;
    let user = User::find(&mut conn, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::unauthenticated("account no longer exists"))?;
    drop(conn);
    // A stolen access token must not become a free password oracle.
    app.limiter
        .check(LimitClass::LoginPerEmail, &user.email)
        .await?;
    if current.chars().count() > MAX_PASSWORD_CHARS
        || !app
            .passwords
            .verify(current, Some(&user.password_hash))
            .await?
    {
        return Err(AppError::bad_input(
            "currentPassword",
            "current password is incorrect",
        ));
    }
    let hash = app.passwords.hash(new).await?;
    let mut conn = app.db.get().await?;
    let (user_id, keep) = (viewer.user_id, viewer.session_id);
    let revoked = conn
        .transaction::<_, AppError, _>(async |conn| {
            User::set_password_hash(conn, user_id, &hash).await?;
            // Reset links mailed before the change die with the old password.
            PasswordResetToken::consume_all_for_user(conn, user_id).await?;
            Ok(
                Session::revoke_all_for_user(conn, user_id, Some(keep), reason::PASSWORD_CHANGED)
                    .await?,
            )
        })
        .await?;
    tracing::info!(%user_id, revoked, "password changed");
    Ok(true)
}

/// Always answers true, at once, whether or not the email has an account: the lookup, the
/// token and the mail happen in a background task, so neither the answer nor its timing
/// reveals anything.
pub async fn request_password_reset(
    app: &std::sync::Arc<App>,
    email: &str,
    client: &ClientInfo,
) -> AppResult<bool> {
    app.limiter
        .check(LimitClass::ResetPerIp, &client.ip_key())
        .await?;
    let email = email.trim().to_lowercase();
    if email.len() > 254 {
        return Ok(true);
    }
    app.limiter.check(LimitClass::ResetPerEmail, &email).await?;
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(err) = send_reset(&app, &email).await {
            tracing::error!(error = ?err, "password reset mail failed");
        }
    });
    Ok(true)
}

async fn send_reset(app: &App, email: &str) -> AppResult<()> {
    let mut conn = app.db.get().await?;
    let Some(user) = User::find_by_email(&mut conn, email).await? else {
        tracing::info!("password reset requested for an unknown email");
        return Ok(());
    };
    let token = random_token();
    let ttl = chrono::Duration::from_std(app.config.auth.password_reset_ttl)
        .map_err(|e| AppError::internal(anyhow::anyhow!("reset ttl: {e}")))?;
    PasswordResetToken::insert(&mut conn, &token_hash(&token), user.id, Utc::now() + ttl).await?;
    drop(conn);
    let mut link = url::Url::parse(&app.config.auth.password_reset_url)
        .map_err(|e| AppError::internal(anyhow::anyhow!("PASSWORD_RESET_URL: {e}")))?;
    link.query_pairs_mut().append_pair("token", &token);
    let minutes = app.config.auth.password_reset_ttl.as_secs() / 60;
    let body = format!(
        "Hello {name},\n\nSomeone asked to reset the password of your Colloquy account. \
         To choose a new password, open this link within {minutes} minutes:\n\n{link}\n\n\
         If it was not you, ignore this mail: your password stays as it is.\n",
        name = user.display_name,
    );
    app.mailer
        .send(OutgoingMail {
            to: user.email.clone(),
            subject: "Reset your Colloquy password".to_owned(),
            body,
        })
        .await?;
    Ok(())
}

/// Consumes a reset token, sets the password and ends every session of the account.
pub async fn reset_password(
    app: &App,
    token: &str,
    new_password: &str,
    client: &ClientInfo,
) -> AppResult<bool> {
    app.limiter
        .check(LimitClass::ResetPerIp, &client.ip_key())
        .await?;
    validate_new_password("newPassword", new_password)?;
    let invalid = || AppError::bad_input("token", "invalid or expired reset token");
    let token = token.trim();
    if token.is_empty() || token.len() > 128 {
        return Err(invalid());
    }
    let new_hash = app.passwords.hash(new_password).await?;
    let hash = token_hash(token);
    let mut conn = app.db.get().await?;
    let user_id = conn
        .transaction::<_, AppError, _>(async |conn| {
            let Some(reset) = PasswordResetToken::find_for_update(conn, &hash).await? else {
                return Ok(None);
            };
            if reset.used_at.is_some() || reset.expires_at <= Utc::now() {
                return Ok(None);
            }
            User::set_password_hash(conn, reset.user_id, &new_hash).await?;
            PasswordResetToken::consume_all_for_user(conn, reset.user_id).await?;
            Session::revoke_all_for_user(conn, reset.user_id, None, reason::PASSWORD_RESET).await?;
            Ok(Some(reset.user_id))
        })
        .await?
        .ok_or_else(invalid)?;
    tracing::info!(%user_id, "password reset");
    Ok(true)
}

/// Changes the viewer's display name.
pub async fn update_profile(app: &App, viewer: &Viewer, display_name: &str) -> AppResult<User> {
    let display_name = normalize_display_name("displayName", display_name)?;
    let mut conn = app.db.get().await?;
    Ok(User::set_display_name(&mut conn, viewer.user_id, &display_name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email("e", "  Alice@Example.COM ").expect("valid"),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "alice@localhost",
        ] {
            assert!(normalize_email("e", bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email("e", &long).is_err());
    }

    #[test]
    fn display_names() {
        assert_eq!(normalize_display_name("d", "  Ada ").expect("ok"), "Ada");
        assert!(normalize_display_name("d", "   ").is_err());
        assert!(normalize_display_name("d", &"x".repeat(101)).is_err());
        assert!(normalize_display_name("d", "a\u{0007}b").is_err());
        assert!(normalize_display_name("d", &"é".repeat(100)).is_ok());
    }
}

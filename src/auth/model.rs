//! Sessions (refresh-token families), refresh tokens and password-reset tokens.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{password_reset_tokens, refresh_tokens, sessions};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = sessions)]
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_agent: Option<&'a str>,
    pub ip: Option<&'a str>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = refresh_tokens, check_for_backend(diesel::pg::Pg))]
pub struct RefreshToken {
    pub token_hash: Vec<u8>,
    pub session_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = password_reset_tokens, check_for_backend(diesel::pg::Pg))]
pub struct PasswordResetToken {
    pub token_hash: Vec<u8>,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// Why a session ended; stored for audits.
pub mod reason {
    pub const LOGOUT: &str = "logout";
    pub const REUSE: &str = "refresh token reuse";
    pub const PASSWORD_CHANGED: &str = "password changed";
    pub const PASSWORD_RESET: &str = "password reset";
}

impl Session {
    pub async fn create(
        conn: &mut AsyncPgConnection,
        new: &NewSession<'_>,
    ) -> QueryResult<Session> {
        diesel::insert_into(sessions::table)
            .values(new)
            .returning(Session::as_returning())
            .get_result(conn)
            .await
    }

    /// True when the session exists, belongs to `user_id` and is not revoked.
    pub async fn is_active(
        conn: &mut AsyncPgConnection,
        id: Uuid,
        user_id: Uuid,
    ) -> QueryResult<bool> {
        diesel::select(diesel::dsl::exists(
            sessions::table
                .filter(sessions::id.eq(id))
                .filter(sessions::user_id.eq(user_id))
                .filter(sessions::revoked_at.is_null()),
        ))
        .get_result(conn)
        .await
    }

    pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid, why: &str) -> QueryResult<()> {
        diesel::update(sessions::table.find(id))
            .filter(sessions::revoked_at.is_null())
            .set((
                sessions::revoked_at.eq(diesel::dsl::now),
                sessions::revoked_reason.eq(why),
            ))
            .execute(conn)
            .await
            .map(drop)
    }

    /// Revokes every live session of `user_id` except `keep`.
    pub async fn revoke_all_for_user(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
        keep: Option<Uuid>,
        why: &str,
    ) -> QueryResult<usize> {
        let keep = keep.unwrap_or(Uuid::nil());
        diesel::update(sessions::table)
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::id.ne(keep))
            .filter(sessions::revoked_at.is_null())
            .set((
                sessions::revoked_at.eq(diesel::dsl::now),
                sessions::revoked_reason.eq(why),
            ))
            .execute(conn)
            .await
    }

    pub async fn touch(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(sessions::table.find(id))
            .set(sessions::last_used_at.eq(diesel::dsl::now))
            .execute(conn)
            .await
            .map(drop)
    }
}

impl RefreshToken {
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        token_hash: &[u8],
        session_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> QueryResult<()> {
        diesel::insert_into(refresh_tokens::table)
            .values((
                refresh_tokens::token_hash.eq(token_hash),
                refresh_tokens::session_id.eq(session_id),
                refresh_tokens::expires_at.eq(expires_at),
            ))
            .execute(conn)
            .await
            .map(drop)
    }

    /// The token and its session, locked until the transaction ends, so two concurrent
    /// refreshes with one token are serialised and the second is seen as reuse.
    pub async fn find_for_update(
        conn: &mut AsyncPgConnection,
        token_hash: &[u8],
    ) -> QueryResult<Option<(RefreshToken, Session)>> {
        refresh_tokens::table
            .inner_join(sessions::table)
            .filter(refresh_tokens::token_hash.eq(token_hash))
            .select((RefreshToken::as_select(), Session::as_select()))
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    pub async fn mark_used(conn: &mut AsyncPgConnection, token_hash: &[u8]) -> QueryResult<()> {
        diesel::update(refresh_tokens::table.find(token_hash))
            .set(refresh_tokens::used_at.eq(diesel::dsl::now))
            .execute(conn)
            .await
            .map(drop)
    }
}

impl PasswordResetToken {
    pub async fn insert(
        conn: &mut AsyncPgConnection,
        token_hash: &[u8],
        user_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> QueryResult<()> {
        diesel::insert_into(password_reset_tokens::table)
            .values((
                password_reset_tokens::token_hash.eq(token_hash),
                password_reset_tokens::user_id.eq(user_id),
                password_reset_tokens::expires_at.eq(expires_at),
            ))
            .execute(conn)
            .await
            .map(drop)
    }

    pub async fn find_for_update(
        conn: &mut AsyncPgConnection,
        token_hash: &[u8],
    ) -> QueryResult<Option<PasswordResetToken>> {
        password_reset_tokens::table
            .find(token_hash)
            .select(PasswordResetToken::as_select())
            .for_update()
            .first(conn)
            .await
            .optional()
    }

    /// Marks every outstanding token of the user used: a reset consumes them all.
    pub async fn consume_all_for_user(
        conn: &mut AsyncPgConnection,
        user_id: Uuid,
    ) -> QueryResult<()> {
        diesel::update(password_reset_tokens::table)
            .filter(password_reset_tokens::user_id.eq(user_id))
            .filter(password_reset_tokens::used_at.is_null())
            .set(password_reset_tokens::used_at.eq(diesel::dsl::now))
            .execute(conn)
            .await
            .map(drop)
    }
}

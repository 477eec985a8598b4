//! The account mutations of API.md: register, login, refreshSession, logout, changePassword,
//! requestPasswordReset, resetPassword.

use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};

use crate::auth::{client_info, service, viewer};
use crate::graphql::app;
use crate::users::graphql::UserNode;

#[derive(InputObject)]
pub struct RegisterInput {
    /// Trimmed and lower-cased before use.
    pub email: String,
    /// 12 to 256 characters.
    pub password: String,
    /// 1 to 100 characters.
    pub display_name: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    pub email: String,
    pub password: String,
}

#[derive(InputObject)]
pub struct ChangePasswordInput {
    pub current_password: String,
    pub new_password: String,
}

#[derive(InputObject)]
pub struct ResetPasswordInput {
    /// The token from the reset link.
    pub token: String,
    pub new_password: String,
}

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// A JWT for `Authorization: Bearer ...`, valid until `expiresAt`.
    pub access_token: String,
    /// Opaque; exchange it with `refreshSession` for a new pair. Single use.
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    pub user: UserNode,
}

impl From<service::Issued> for AuthPayload {
    fn from(issued: service::Issued) -> Self {
        AuthPayload {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_at: issued.expires_at,
            user: UserNode::caller(issued.user),
        }
    }
}

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Creates an account with its personal workspace and signs it in.
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<AuthPayload> {
        let issued = service::register(
            app(ctx)?,
            &input.email,
            &input.password,
            &input.display_name,
            &client_info(ctx),
        )
        .await?;
        Ok(issued.into())
    }

    /// Signs in. Every failure is the same UNAUTHENTICATED error.
    async fn login(
        &self,
        ctx: &Context<'_>,
        input: LoginInput,
    ) -> async_graphql::Result<AuthPayload> {
        let issued =
            service::login(app(ctx)?, &input.email, &input.password, &client_info(ctx)).await?;
        Ok(issued.into())
    }

    /// Exchanges a refresh token for a new access token and a new refresh token. A refresh
    /// token works once; presenting a used one ends its whole session.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> async_graphql::Result<AuthPayload> {
        Ok(service::refresh(app(ctx)?, &refresh_token).await?.into())
    }

    /// Ends the session of this refresh token; its access tokens stop working at once.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> async_graphql::Result<bool> {
        Ok(service::logout(app(ctx)?, &refresh_token).await?)
    }

    /// Sets a new password and ends every other session of the account.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        input: ChangePasswordInput,
    ) -> async_graphql::Result<bool> {
        let viewer = viewer(ctx)?;
        Ok(service::change_password(
            app(ctx)?,
            viewer,
            &input.current_password,
            &input.new_password,
        )
        .await?)
    }

    /// Mails a reset link if the email has an account. Always true.
    async fn request_password_reset(
        &self,
        ctx: &Context<'_>,
        email: String,
    ) -> async_graphql::Result<bool> {
        Ok(service::request_password_reset(app(ctx)?, &email, &client_info(ctx)).await?)
    }

    /// Sets a new password with a reset token and ends every session of the account.
    async fn reset_password(
        &self,
        ctx: &Context<'_>,
        input: ResetPasswordInput,
    ) -> async_graphql::Result<bool> {
        Ok(service::reset_password(
            app(ctx)?,
            &input.token,
            &input.new_password,
            &client_info(ctx),
        )
        .await?)
    }
}

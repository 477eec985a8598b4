//! Workspace provider keys ("bring your own key"): stored encrypted with AES-256-GCM under
//! `COLLOQUY_MASTER_KEY`, a fresh random nonce per record, the workspace and provider bound
//! as associated data. Only the last four characters are ever shown back. A workspace key
//! wins over the server's.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::anyhow;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use uuid::Uuid;

use crate::app::App;
use crate::auth::Viewer;
use crate::db::schema::provider_keys;
use crate::error::{AppError, AppResult};
use crate::workspaces::access::require;
use crate::workspaces::model::Role;

/// The 256-bit key that encrypts provider keys.
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// 32 bytes as 64 hex digits or base64 (standard or URL-safe, padded or not).
    pub fn parse(text: &str) -> anyhow::Result<MasterKey> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(text)?
        } else {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| anyhow!("COLLOQUY_MASTER_KEY must be 32 bytes as hex or base64"))?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow!("COLLOQUY_MASTER_KEY must be exactly 32 bytes (256 bits)"))?;
        Ok(MasterKey(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }

    fn aad(workspace_id: Uuid, provider: &str) -> Vec<u8> {
        format!("colloquy/provider-key/v1/{workspace_id}/{provider}").into_bytes()
    }

    pub fn encrypt(
        &self,
        workspace_id: Uuid,
        provider: &str,
        secret: &str,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(workspace_id, provider);
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow!("encryption failed"))?;
        Ok((nonce.to_vec(), ciphertext))
    }

    pub fn decrypt(
        &self,
        workspace_id: Uuid,
        provider: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> anyhow::Result<String> {
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| anyhow!("stored nonce has the wrong length"))?;
        let aad = Self::aad(workspace_id, provider);
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                anyhow!(
                    "cannot decrypt a provider key: wrong COLLOQUY_MASTER_KEY or a tampered row"
                )
            })?;
        Ok(String::from_utf8(plain)?)
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = provider_keys, check_for_backend(diesel::pg::Pg))]
pub struct ProviderKeyRow {
    pub workspace_id: Uuid,
    pub provider: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub last4: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProviderKeyRow {
    pub async fn for_workspace(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
    ) -> QueryResult<Vec<ProviderKeyRow>> {
        provider_keys::table
            .filter(provider_keys::workspace_id.eq(workspace_id))
            .order(provider_keys::provider)
            .select(ProviderKeyRow::as_select())
            .load(conn)
            .await
    }

    pub async fn find(
        conn: &mut AsyncPgConnection,
        workspace_id: Uuid,
        provider: &str,
    ) -> QueryResult<Option<ProviderKeyRow>> {
        provider_keys::table
            .find((workspace_id, provider))
            .select(ProviderKeyRow::as_select())
            .first(conn)
            .await
            .optional()
    }
}

fn master(app: &App) -> AppResult<MasterKey> {
    let key = app.config.llm.master_key.as_ref().ok_or_else(|| {
        AppError::bad_input(
            "apiKey",
            "workspace provider keys are disabled on this server (COLLOQUY_MASTER_KEY is not set)",
        )
    })?;
    Ok(MasterKey::parse(key.expose())?)
}

fn last4(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// Stores (or replaces) a workspace's key for a provider: OWNER or ADMIN.
pub async fn set(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    provider: &str,
    api_key: &str,
) -> AppResult<ProviderKeyRow> {
    let spec = app
        .providers
        .catalog()
        .provider(provider)
        .filter(|p| p.needs_key)
        .ok_or_else(|| AppError::bad_input("provider", "no provider of that name takes a key"))?;
    let api_key = api_key.trim();
    if api_key.len() < 8
        || api_key.len() > 512
        || api_key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AppError::bad_input(
            "apiKey",
            "an API key is 8 to 512 characters without spaces",
        ));
    }
    let master = master(app)?;
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, workspace_id, Role::Admin).await?;
    let (nonce, ciphertext) = master.encrypt(workspace_id, &spec.name, api_key)?;
    let row = diesel::insert_into(provider_keys::table)
        .values((
            provider_keys::workspace_id.eq(workspace_id),
            provider_keys::provider.eq(&spec.name),
            provider_keys::nonce.eq(&nonce),
            provider_keys::ciphertext.eq(&ciphertext),
            provider_keys::last4.eq(last4(api_key)),
            provider_keys::created_by.eq(Some(viewer.user_id)),
        ))
        .on_conflict((provider_keys::workspace_id, provider_keys::provider))
        .do_update()
        .set((
            provider_keys::nonce.eq(&nonce),
            provider_keys::ciphertext.eq(&ciphertext),
            provider_keys::last4.eq(last4(api_key)),
            provider_keys::created_by.eq(Some(viewer.user_id)),
            provider_keys::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ProviderKeyRow::as_returning())
        .get_result(&mut conn)
        .await?;
    tracing::info!(%workspace_id, provider = %spec.name, "workspace provider key set");
    Ok(row)
}

/// Deletes a workspace's key for a provider: OWNER or ADMIN. False when there was none.
pub async fn delete(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    provider: &str,
) -> AppResult<bool> {
    let mut conn = app.db.get().await?;
    require(&mut conn, viewer, workspace_id, Role::Admin).await?;
    let n = diesel::delete(provider_keys::table.find((workspace_id, provider)))
        .execute(&mut conn)
        .await?;
    Ok(n > 0)
}

/// The key a generation in `workspace_id` uses for `provider`: the workspace's own, else the
/// server's, else none.
pub async fn resolve(
    app: &App,
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    provider: &str,
) -> AppResult<Option<String>> {
    if let Some(row) = ProviderKeyRow::find(conn, workspace_id, provider).await? {
        let master = master(app).map_err(|_| {
            AppError::internal(anyhow!(
                "a workspace key is stored but COLLOQUY_MASTER_KEY is not set"
            ))
        })?;
        return Ok(Some(master.decrypt(
            workspace_id,
            provider,
            &row.nonce,
            &row.ciphertext,
        )?));
    }
    Ok(app.providers.server_key(provider).map(str::to_owned))
}

/// A model ready for a generation in a workspace: its catalog entry and the key to use.
pub struct Resolved {
    pub spec: crate::llm::catalog::ModelSpec,
    pub api_key: Option<String>,
}

/// Checks that `model_id` exists and is available to `workspace_id` (BAD_USER_INPUT
/// otherwise) and finds the key its generation uses.
pub async fn resolve_model(
    app: &App,
    conn: &mut AsyncPgConnection,
    workspace_id: Uuid,
    model_id: &str,
) -> AppResult<Resolved> {
    let spec = app.providers.model(model_id).cloned().ok_or_else(|| {
        AppError::bad_input(
            "model",
            format!("unknown model `{model_id}`; the `models` query lists them"),
        )
    })?;
    let needs_key = app
        .providers
        .catalog()
        .provider(&spec.provider)
        .is_some_and(|p| p.needs_key);
    let api_key = resolve(app, conn, workspace_id, &spec.provider).await?;
    if needs_key && api_key.is_none() {
        return Err(AppError::bad_input(
            "model",
            format!(
                "model `{model_id}` is not available: no API key for provider `{}` (set one with setProviderKey)",
                spec.provider
            ),
        ));
    }
    Ok(Resolved { spec, api_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fresh_nonces_and_bound_rows() {
        let key = MasterKey::parse(&"ab".repeat(32)).expect("hex key");
        let ws = Uuid::new_v4();
        let (n1, c1) = key
            .encrypt(ws, "openai", "sk-secret-1234")
            .expect("encrypt");
        let (n2, c2) = key
            .encrypt(ws, "openai", "sk-secret-1234")
            .expect("encrypt");
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
        assert_eq!(
            key.decrypt(ws, "openai", &n1, &c1).expect("decrypt"),
            "sk-secret-1234"
        );
        assert!(
            key.decrypt(ws, "anthropic", &n1, &c1).is_err(),
            "bound to its provider"
        );
        assert!(
            key.decrypt(Uuid::new_v4(), "openai", &n1, &c1).is_err(),
            "bound to its workspace"
        );
        let other = MasterKey::parse(&base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
            .expect("b64");
        assert!(other.decrypt(ws, "openai", &n1, &c1).is_err());
        assert!(MasterKey::parse("short").is_err());
        assert_eq!(last4("sk-secret-1234"), "1234");
    }
}

//! DataLoaders for fields that would otherwise run one query per row. They batch but do not
//! cache (async-graphql's default), so one instance serves every request and connection
//! without serving stale rows to long-lived subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use uuid::Uuid;

use crate::db::DbPool;
use crate::workspaces::graphql::WorkspaceMemberNode;
use crate::workspaces::model::{Membership, QuotaRow, Role};

/// A loader failure, shared by every waiter of the batch.
pub type LoadError = Arc<anyhow::Error>;

pub struct MembersLoader {
    pub db: DbPool,
}

impl Loader<Uuid> for MembersLoader {
    type Value = Vec<WorkspaceMemberNode>;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = Membership::with_users(&mut conn, keys)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        let mut out: HashMap<Uuid, Self::Value> = HashMap::new();
        for (member, user) in rows {
            out.entry(member.workspace_id)
                .or_default()
                .push(WorkspaceMemberNode {
                    role: Role::from_db(&member.role),
                    joined_at: member.joined_at,
                    user: user.into(),
                });
        }
        Ok(out)
    }
}

pub struct QuotaLoader {
    pub db: DbPool,
}

impl Loader<Uuid> for QuotaLoader {
    type Value = QuotaRow;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = QuotaRow::for_workspaces(&mut conn, keys)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        Ok(rows.into_iter().map(|r| (r.workspace_id, r)).collect())
    }
}

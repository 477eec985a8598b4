//! DataLoaders for fields that would otherwise run one query per row. They batch but do not
//! cache (async-graphql's default), so one instance serves every request and connection
//! without serving stale rows to long-lived subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use uuid::Uuid;

use crate::agents::model::Agent;
use crate::compare::model::Votes;
use crate::conversations::model::{Conversation, Message};
use crate::db::DbPool;
use crate::users::model::User;
use crate::workspaces::graphql::{WorkspaceMemberNode, WorkspaceNode};
use crate::workspaces::model::{Membership, QuotaRow, Role, Workspace};

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

pub struct UserLoader {
    pub db: DbPool,
}

impl Loader<Uuid> for UserLoader {
    type Value = User;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = User::find_many(&mut conn, keys)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        Ok(rows.into_iter().map(|u| (u.id, u)).collect())
    }
}

/// Workspaces as seen by a viewer, keyed by `(workspace, viewer)`: a workspace the viewer
/// is not a member of is absent.
pub struct WorkspaceLoader {
    pub db: DbPool,
}

impl Loader<(Uuid, Uuid)> for WorkspaceLoader {
    type Value = WorkspaceNode;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[(Uuid, Uuid)],
    ) -> Result<HashMap<(Uuid, Uuid), Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let mut by_viewer: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (workspace, viewer) in keys {
            by_viewer.entry(*viewer).or_default().push(*workspace);
        }
        let mut out = HashMap::new();
        for (viewer, ids) in by_viewer {
            let rows = Workspace::many_for_member(&mut conn, &ids, viewer)
                .await
                .map_err(|e| Arc::new(e.into()))?;
            for row in rows {
                out.insert((row.0.id, viewer), WorkspaceNode::from(row));
            }
        }
        Ok(out)
    }
}

/// Conversations by id. Callers reach them through an already authorised message.
pub struct ConversationLoader {
    pub db: DbPool,
}

impl Loader<Uuid> for ConversationLoader {
    type Value = Conversation;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = Conversation::find_many(&mut conn, keys)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        Ok(rows.into_iter().map(|c| (c.id, c)).collect())
    }
}

/// Agents by id. Callers reach them through an already authorised conversation of the same
/// workspace.
pub struct AgentLoader {
    pub db: DbPool,
}

impl Loader<Uuid> for AgentLoader {
    type Value = Agent;
    type Error = LoadError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let rows = Agent::find_many(&mut conn, keys)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        Ok(rows.into_iter().map(|a| (a.id, a)).collect())
    }
}

/// The children of a parent (roots when `parent_id` is None) in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SiblingKey {
    pub conversation_id: Uuid,
    pub parent_id: Option<Uuid>,
}

/// The votes on an answer, as one viewer sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoteKey {
    pub message_id: Uuid,
    pub viewer: Uuid,
}

/// How many UP and DOWN votes an answer has, and the viewer's own.
#[derive(Debug, Clone, Default)]
pub struct VoteTally {
    pub up: i64,
    pub down: i64,
    pub mine: Option<String>,
}

pub struct VotesLoader {
    pub db: DbPool,
}

impl Loader<VoteKey> for VotesLoader {
    type Value = VoteTally;
    type Error = LoadError;

    async fn load(&self, keys: &[VoteKey]) -> Result<HashMap<VoteKey, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let ids: Vec<Uuid> = keys.iter().map(|k| k.message_id).collect();
        let votes = Votes::on(&mut conn, &ids)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        let mut out: HashMap<VoteKey, Self::Value> =
            keys.iter().map(|k| (*k, VoteTally::default())).collect();
        for key in keys {
            let Some(tally) = out.get_mut(key) else {
                continue;
            };
            for vote in votes.iter().filter(|v| v.message_id == key.message_id) {
                match vote.vote.as_str() {
                    "UP" => tally.up += 1,
                    _ => tally.down += 1,
                }
                if vote.user_id == key.viewer {
                    tally.mine = Some(vote.vote.clone());
                }
            }
        }
        Ok(out)
    }
}

pub struct SiblingsLoader {
    pub db: DbPool,
}

impl Loader<SiblingKey> for SiblingsLoader {
    type Value = Vec<Message>;
    type Error = LoadError;

    async fn load(
        &self,
        keys: &[SiblingKey],
    ) -> Result<HashMap<SiblingKey, Self::Value>, Self::Error> {
        let mut conn = self.db.get().await.map_err(|e| Arc::new(e.into()))?;
        let conversations: Vec<Uuid> = keys.iter().map(|k| k.conversation_id).collect();
        let parents: Vec<Uuid> = keys.iter().filter_map(|k| k.parent_id).collect();
        let want_roots = keys.iter().any(|k| k.parent_id.is_none());
        let rows = Message::children_of(&mut conn, &conversations, &parents, want_roots)
            .await
            .map_err(|e| Arc::new(e.into()))?;
        let mut out: HashMap<SiblingKey, Self::Value> = HashMap::new();
        for message in rows {
            let key = SiblingKey {
                conversation_id: message.conversation_id,
                parent_id: message.parent_id,
            };
            if keys.contains(&key) {
                out.entry(key).or_default().push(message);
            }
        }
        Ok(out)
    }
}

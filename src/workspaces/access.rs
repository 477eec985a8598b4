//! The one membership check every workspace-scoped operation goes through.
//!
//! Not a member: NOT_FOUND, exactly as if the workspace did not exist (no existence leaks).
//! A member whose role is too low: FORBIDDEN (they know the workspace exists).

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::auth::Viewer;
use crate::error::{AppError, AppResult};
use crate::workspaces::model::{Role, Workspace};

/// A workspace and the role the viewer holds in it.
#[derive(Debug, Clone)]
pub struct Access {
    pub workspace: Workspace,
    pub role: Role,
}

/// Requires the viewer to be a member of `workspace_id` with at least `min` role.
pub async fn require(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    workspace_id: Uuid,
    min: Role,
) -> AppResult<Access> {
    let (workspace, role) = Workspace::find_for_member(conn, workspace_id, viewer.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("workspace"))?;
    let role = Role::from_db(&role);
    ensure_role(role, min)?;
    Ok(Access { workspace, role })
}

/// FORBIDDEN unless `role` is at least `min`.
pub fn ensure_role(role: Role, min: Role) -> AppResult<()> {
    if role < min {
        return Err(AppError::Forbidden(format!(
            "this needs the {} role or higher in the workspace",
            min.as_str()
        )));
    }
    Ok(())
}

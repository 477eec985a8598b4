//! Workspace management: create, rename, delete, and membership changes with their role
//! rules. OWNER can do everything; ADMIN manages settings and the members below OWNER;
//! MEMBER reads and writes conversations. A workspace always keeps at least one OWNER.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Viewer;
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::users::model::User;
use crate::validate;
use crate::workspaces::access::{ensure_role, require};
use crate::workspaces::model::{Membership, Role, Workspace};

pub fn normalize_name(raw: &str) -> AppResult<String> {
    validate::single_line("name", raw, 1, 100)
}

/// Creates a workspace with the viewer as OWNER, the default quota and the example agents.
pub async fn create(app: &App, viewer: &Viewer, name: &str) -> AppResult<(Workspace, Role)> {
    let name = normalize_name(name)?;
    let defaults = app.config.quota.clone();
    let owner = viewer.user_id;
    let mut conn = app.db.get().await?;
    let workspace = conn
        .transaction::<_, AppError, _>(async |conn| {
            let workspace = Workspace::create(conn, &name, false, owner, &defaults).await?;
            crate::agents::examples::add(conn, app, workspace.id).await?;
            Ok(workspace)
        })
        .await?;
    Ok((workspace, Role::Owner))
}

/// Renames a workspace (ADMIN or OWNER).
pub async fn rename(
    app: &App,
    viewer: &Viewer,
    id: Uuid,
    name: &str,
) -> AppResult<(Workspace, Role)> {
    let name = normalize_name(name)?;
    let mut conn = app.db.get().await?;
    let access = require(&mut conn, viewer, id, Role::Admin).await?;
    let workspace = Workspace::rename(&mut conn, id, &name).await?;
    Ok((workspace, access.role))
}

/// Deletes a workspace and everything in it (OWNER only; never a personal workspace).
pub async fn delete(app: &App, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = app.db.get().await?;
    let access = require(&mut conn, viewer, id, Role::Owner).await?;
    if access.workspace.personal {
        return Err(AppError::bad_input(
            "id",
            "a personal workspace cannot be deleted",
        ));
    }
    Workspace::delete(&mut conn, id).await?;
    tracing::info!(workspace_id = %id, user_id = %viewer.user_id, "workspace deleted");
    Ok(true)
}

/// Who may grant or take `target_role`, and act on a member currently holding `current`:
/// OWNER anything; ADMIN only below OWNER on both sides.
fn may_manage(actor: Role, current: Role, target: Role) -> AppResult<()> {
    ensure_role(actor, Role::Admin)?;
    if actor < Role::Owner && (current == Role::Owner || target == Role::Owner) {
        return Err(AppError::Forbidden(
            "only an OWNER can manage OWNERs".to_owned(),
        ));
    }
    Ok(())
}

/// Adds an existing user, by email, as ADMIN or MEMBER.
pub async fn add_member(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    email: &str,
    role: Role,
) -> AppResult<(Membership, User)> {
    if role == Role::Owner {
        return Err(AppError::bad_input(
            "role",
            "new members join as ADMIN or MEMBER; promote them afterwards",
        ));
    }
    let email = email.trim().to_lowercase();
    let mut conn = app.db.get().await?;
    let access = require(&mut conn, viewer, workspace_id, Role::Admin).await?;
    may_manage(access.role, role, role)?;
    let user = User::find_by_email(&mut conn, &email)
        .await?
        .ok_or_else(|| AppError::NotFound("no account has that email".to_owned()))?;
    let membership = Membership::insert(&mut conn, workspace_id, user.id, role)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                AppError::Conflict("that user is already a member".to_owned())
            } else {
                e.into()
            }
        })?;
    Ok((membership, user))
}

/// Fails with BAD_USER_INPUT when the workspace would be left without an OWNER. Call with
/// the workspace row locked.
async fn keep_an_owner(conn: &mut AsyncPgConnection, workspace_id: Uuid) -> AppResult<()> {
    if Membership::count_owners(conn, workspace_id).await? < 1 {
        return Err(AppError::bad_input(
            "userId",
            "a workspace must keep at least one OWNER",
        ));
    }
    Ok(())
}

/// Changes a member's role.
pub async fn update_member(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    user_id: Uuid,
    role: Role,
) -> AppResult<(Membership, User)> {
    let mut conn = app.db.get().await?;
    let access = require(&mut conn, viewer, workspace_id, Role::Admin).await?;
    let actor = access.role;
    let viewer_id = viewer.user_id;
    let membership = conn
        .transaction::<_, AppError, _>(async |conn| {
            Workspace::lock(conn, workspace_id).await?;
            let current = Membership::find(conn, workspace_id, user_id)
                .await?
                .ok_or_else(|| AppError::not_found("member"))?;
            // Re-read the actor's role under the lock: it may have changed meanwhile.
            let actor = Membership::find(conn, workspace_id, viewer_id)
                .await?
                .map(|m| Role::from_db(&m.role))
                .unwrap_or(Role::Member)
                .min(actor);
            may_manage(actor, Role::from_db(&current.role), role)?;
            let updated = Membership::set_role(conn, workspace_id, user_id, role).await?;
            keep_an_owner(conn, workspace_id).await?;
            Ok(updated)
        })
        .await?;
    let user = User::find(&mut conn, user_id)
        .await?
        .ok_or_else(|| AppError::not_found("member"))?;
    Ok((membership, user))
}

/// Removes a member. Anyone may leave; ADMIN removes members below OWNER; OWNER anyone. The
/// last OWNER can be neither removed nor leave.
pub async fn remove_member(
    app: &App,
    viewer: &Viewer,
    workspace_id: Uuid,
    user_id: Uuid,
) -> AppResult<bool> {
    let mut conn = app.db.get().await?;
    let access = require(&mut conn, viewer, workspace_id, Role::Member).await?;
    let actor = access.role;
    let leaving = user_id == viewer.user_id;
    conn.transaction::<_, AppError, _>(async |conn| {
        Workspace::lock(conn, workspace_id).await?;
        let current = Membership::find(conn, workspace_id, user_id)
            .await?
            .ok_or_else(|| AppError::not_found("member"))?;
        if !leaving {
            let current = Role::from_db(&current.role);
            may_manage(actor, current, current)?;
        }
        Membership::delete(conn, workspace_id, user_id).await?;
        keep_an_owner(conn, workspace_id).await
    })
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_rules() {
        assert!(may_manage(Role::Owner, Role::Owner, Role::Member).is_ok());
        assert!(may_manage(Role::Owner, Role::Member, Role::Owner).is_ok());
        assert!(may_manage(Role::Admin, Role::Member, Role::Admin).is_ok());
        assert!(may_manage(Role::Admin, Role::Admin, Role::Member).is_ok());
        assert!(may_manage(Role::Admin, Role::Owner, Role::Member).is_err());
        assert!(may_manage(Role::Admin, Role::Member, Role::Owner).is_err());
        assert!(may_manage(Role::Member, Role::Member, Role::Member).is_err());
    }
}

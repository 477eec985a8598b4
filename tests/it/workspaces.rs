//! Workspace management, roles, and the membership check seen from outside.

use serde_json::{Value, json};

use crate::common::{Session, TestApp, expect_error};

const UPDATE_MEMBER: &str = "mutation($i: UpdateWorkspaceMemberInput!) {
    updateWorkspaceMember(input: $i) { role user { email } } }";
const REMOVE_MEMBER: &str =
    "mutation($w: ID!, $u: ID!) { removeWorkspaceMember(workspaceId: $w, userId: $u) }";

async fn set_role(app: &TestApp, actor: &Session, ws: &str, user: &Session, role: &str) -> Value {
    app.gql_as(
        Some(&actor.access),
        UPDATE_MEMBER,
        json!({ "i": { "workspaceId": ws, "userId": user.user_id, "role": role } }),
    )
    .await
}

async fn remove(app: &TestApp, actor: &Session, ws: &str, user: &Session) -> Value {
    app.gql_as(
        Some(&actor.access),
        REMOVE_MEMBER,
        json!({ "w": ws, "u": user.user_id }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_manage_workspaces() {
    let app = TestApp::spawn().await;
    let owner = app.register("owner@example.com").await;
    let ws = app.create_workspace(&owner, "  Research  ").await;

    let body = app
        .gql_as(
            Some(&owner.access),
            "query($id: ID!) { workspace(id: $id) { name personal viewerRole members { role user { email } } quota { period } } }",
            json!({ "id": ws }),
        )
        .await;
    let w = &body["data"]["workspace"];
    assert_eq!(w["name"], "Research");
    assert_eq!(w["personal"], false);
    assert_eq!(w["viewerRole"], "OWNER");
    assert_eq!(w["members"][0]["role"], "OWNER");
    assert_eq!(w["quota"]["period"], "MONTH");

    let rename = "mutation($id: ID!, $n: String!) { updateWorkspace(id: $id, input: { name: $n }) { name } }";
    let body = app
        .gql_as(Some(&owner.access), rename, json!({ "id": ws, "n": "Lab" }))
        .await;
    assert_eq!(body["data"]["updateWorkspace"]["name"], "Lab", "{body}");
    let body = app
        .gql_as(Some(&owner.access), rename, json!({ "id": ws, "n": "" }))
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = app
        .gql_as(
            Some(&owner.access),
            rename,
            json!({ "id": ws, "n": "x".repeat(101) }),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");

    let delete = "mutation($id: ID!) { deleteWorkspace(id: $id) }";
    let personal = app.personal_workspace(&owner).await;
    let body = app
        .gql_as(Some(&owner.access), delete, json!({ "id": personal }))
        .await;
    expect_error(&body, "BAD_USER_INPUT");

    // Deleting takes the conversations with it.
    let conversation = app.create_conversation(&owner, &ws, "doomed").await;
    app.insert_message(&conversation, None, "USER", "hello")
        .await;
    let body = app
        .gql_as(Some(&owner.access), delete, json!({ "id": ws }))
        .await;
    assert_eq!(body["data"]["deleteWorkspace"], true, "{body}");
    let body = app
        .gql_as(
            Some(&owner.access),
            "query($id: ID!) { conversation(id: $id) { id } }",
            json!({ "id": conversation }),
        )
        .await;
    assert_eq!(body["data"]["conversation"], Value::Null);
    let body = app
        .gql_as(Some(&owner.access), "{ workspaces { id } }", json!({}))
        .await;
    assert_eq!(body["data"]["workspaces"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_manages_members() {
    let app = TestApp::spawn().await;
    let owner = app.register("o@example.com").await;
    let admin = app.register("a@example.com").await;
    let member = app.register("m@example.com").await;
    let extra = app.register("x@example.com").await;
    let ws = app.create_workspace(&owner, "Team").await;
    app.add_member(&owner, &ws, "A@example.com", "ADMIN").await;
    app.add_member(&owner, &ws, "m@example.com", "MEMBER").await;

    let add = "mutation($i: AddWorkspaceMemberInput!) { addWorkspaceMember(input: $i) { role } }";
    let add_input = |email: &str, role: &str| json!({ "i": { "workspaceId": ws, "email": email, "role": role } });

    // MEMBER: reads, but manages nothing.
    let body = app
        .gql_as(
            Some(&member.access),
            "query($id: ID!) { workspace(id: $id) { viewerRole members { role } } }",
            json!({ "id": ws }),
        )
        .await;
    assert_eq!(body["data"]["workspace"]["viewerRole"], "MEMBER");
    assert_eq!(
        body["data"]["workspace"]["members"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    expect_error(
        &app.gql_as(
            Some(&member.access),
            add,
            add_input("x@example.com", "MEMBER"),
        )
        .await,
        "FORBIDDEN",
    );
    expect_error(
        &set_role(&app, &member, &ws, &admin, "MEMBER").await,
        "FORBIDDEN",
    );
    expect_error(&remove(&app, &member, &ws, &admin).await, "FORBIDDEN");
    let rename =
        "mutation($id: ID!) { updateWorkspace(id: $id, input: { name: \"Mine\" }) { name } }";
    expect_error(
        &app.gql_as(Some(&member.access), rename, json!({ "id": ws }))
            .await,
        "FORBIDDEN",
    );
    let delete = "mutation($id: ID!) { deleteWorkspace(id: $id) }";
    expect_error(
        &app.gql_as(Some(&member.access), delete, json!({ "id": ws }))
            .await,
        "FORBIDDEN",
    );

    // ADMIN: settings and members below OWNER, nothing about OWNERs, no deleting.
    let body = app
        .gql_as(Some(&admin.access), rename, json!({ "id": ws }))
        .await;
    assert_eq!(body["data"]["updateWorkspace"]["name"], "Mine", "{body}");
    expect_error(
        &app.gql_as(Some(&admin.access), delete, json!({ "id": ws }))
            .await,
        "FORBIDDEN",
    );
    let body = app
        .gql_as(
            Some(&admin.access),
            add,
            add_input("x@example.com", "MEMBER"),
        )
        .await;
    assert_eq!(
        body["data"]["addWorkspaceMember"]["role"], "MEMBER",
        "{body}"
    );
    let body = set_role(&app, &admin, &ws, &extra, "ADMIN").await;
    assert_eq!(
        body["data"]["updateWorkspaceMember"]["role"], "ADMIN",
        "{body}"
    );
    expect_error(
        &set_role(&app, &admin, &ws, &extra, "OWNER").await,
        "FORBIDDEN",
    );
    expect_error(
        &set_role(&app, &admin, &ws, &owner, "MEMBER").await,
        "FORBIDDEN",
    );
    expect_error(&remove(&app, &admin, &ws, &owner).await, "FORBIDDEN");
    let body = remove(&app, &admin, &ws, &extra).await;
    assert_eq!(body["data"]["removeWorkspaceMember"], true, "{body}");

    // Bad adds.
    expect_error(
        &app.gql_as(
            Some(&admin.access),
            add,
            add_input("m@example.com", "MEMBER"),
        )
        .await,
        "CONFLICT",
    );
    expect_error(
        &app.gql_as(
            Some(&admin.access),
            add,
            add_input("ghost@example.com", "MEMBER"),
        )
        .await,
        "NOT_FOUND",
    );
    expect_error(
        &app.gql_as(
            Some(&owner.access),
            add,
            add_input("x@example.com", "OWNER"),
        )
        .await,
        "BAD_USER_INPUT",
    );
    expect_error(
        &set_role(&app, &owner, &ws, &extra, "ADMIN").await,
        "NOT_FOUND",
    );

    // The last OWNER can be neither demoted nor removed, nor leave.
    expect_error(
        &set_role(&app, &owner, &ws, &owner, "ADMIN").await,
        "BAD_USER_INPUT",
    );
    expect_error(&remove(&app, &owner, &ws, &owner).await, "BAD_USER_INPUT");
    // With a second OWNER, the first may step down.
    assert_eq!(
        set_role(&app, &owner, &ws, &admin, "OWNER").await["data"]["updateWorkspaceMember"]["role"],
        "OWNER"
    );
    assert_eq!(
        set_role(&app, &owner, &ws, &owner, "MEMBER").await["data"]["updateWorkspaceMember"]["role"],
        "MEMBER"
    );

    // A member may leave; then the workspace is gone for them.
    let body = remove(&app, &member, &ws, &member).await;
    assert_eq!(body["data"]["removeWorkspaceMember"], true, "{body}");
    let body = app
        .gql_as(
            Some(&member.access),
            "query($id: ID!) { workspace(id: $id) { id } }",
            json!({ "id": ws }),
        )
        .await;
    assert_eq!(body["data"]["workspace"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_demoting_each_other_at_once_leave_one() {
    let app = TestApp::spawn().await;
    let a = app.register("a1@example.com").await;
    let b = app.register("b1@example.com").await;
    let ws = app.create_workspace(&a, "Pair").await;
    app.add_member(&a, &ws, "b1@example.com", "ADMIN").await;
    set_role(&app, &a, &ws, &b, "OWNER").await;
    for _ in 0..3 {
        let (x, y) = tokio::join!(
            set_role(&app, &a, &ws, &b, "MEMBER"),
            set_role(&app, &b, &ws, &a, "MEMBER"),
        );
        let wins = [&x, &y].iter().filter(|r| r["errors"].is_null()).count();
        assert_eq!(wins, 1, "exactly one demotion may win: {x} {y}");
        let body = app
            .gql_as(
                Some(&a.access),
                "query($id: ID!) { workspace(id: $id) { members { role } } }",
                json!({ "id": ws }),
            )
            .await;
        let owners = body["data"]["workspace"]["members"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["role"] == "OWNER").count());
        assert_eq!(owners, Some(1), "{body}");
        // Restore two owners for the next round.
        // x is `a` demoting `b`: when it won, `a` is the remaining owner.
        let (owner, other) = if x["errors"].is_null() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(set_role(&app, owner, &ws, other, "OWNER").await["errors"].is_null());
    }
}

/// Every workspace-scoped operation, as someone who is not a member: NOT_FOUND, or null for
/// the single-item queries. Never FORBIDDEN, and never anything that reveals existence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_see_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.register("in@example.com").await;
    let outsider = app.register("out@example.com").await;
    let ws = app.create_workspace(&owner, "Private").await;
    let conversation = app.create_conversation(&owner, &ws, "secret plans").await;
    let message = app
        .insert_message(&conversation, None, "USER", "the secret")
        .await;
    let ids = json!({ "ws": ws, "c": conversation, "m": message, "u": owner.user_id });

    let not_found = [
        "mutation($ws: ID!) { updateWorkspace(id: $ws, input: { name: \"x\" }) { id } }",
        "mutation($ws: ID!) { deleteWorkspace(id: $ws) }",
        "mutation($ws: ID!) { addWorkspaceMember(input: { workspaceId: $ws, email: \"out@example.com\", role: MEMBER }) { role } }",
        "mutation($ws: ID!, $u: ID!) { updateWorkspaceMember(input: { workspaceId: $ws, userId: $u, role: MEMBER }) { role } }",
        "mutation($ws: ID!, $u: ID!) { removeWorkspaceMember(workspaceId: $ws, userId: $u) }",
        "query($ws: ID!) { conversations(workspaceId: $ws) { edges { node { id } } } }",
        "query($ws: ID!) { searchConversations(workspaceId: $ws, query: \"secret\") { edges { node { id } } } }",
        "mutation($ws: ID!) { createConversation(input: { workspaceId: $ws }) { id } }",
        "mutation($c: ID!) { updateConversation(id: $c, input: { pinned: true }) { id } }",
        "mutation($c: ID!) { deleteConversation(id: $c) }",
        "query($c: ID!) { exportConversation(id: $c, format: MARKDOWN) }",
        "mutation($m: ID!) { selectBranch(messageId: $m) { id } }",
    ];
    for query in not_found {
        let body = app.gql_as(Some(&outsider.access), query, ids.clone()).await;
        expect_error(&body, "NOT_FOUND");
        assert!(!body.to_string().contains("secret"), "{body}");
    }
    let null = [
        ("query($ws: ID!) { workspace(id: $ws) { id } }", "workspace"),
        (
            "query($c: ID!) { conversation(id: $c) { id } }",
            "conversation",
        ),
        ("query($m: ID!) { message(id: $m) { id } }", "message"),
    ];
    for (query, field) in null {
        let body = app.gql_as(Some(&outsider.access), query, ids.clone()).await;
        assert!(body["errors"].is_null(), "{body}");
        assert_eq!(body["data"][field], Value::Null, "{query}");
    }
    // The owner's user node shows the outsider no workspaces of the owner's.
    app.add_member(
        &owner,
        &app.create_workspace(&owner, "Shared").await,
        "out@example.com",
        "MEMBER",
    )
    .await;
    let body = app
        .gql_as(
            Some(&outsider.access),
            "{ workspaces { name members { user { email workspaces { name } } } } }",
            json!({}),
        )
        .await;
    let text = body.to_string();
    assert!(
        text.contains("Shared") && !text.contains("Private"),
        "{text}"
    );
    // Nothing was changed by the attempts.
    let body = app
        .gql_as(
            Some(&owner.access),
            "query($c: ID!) { conversation(id: $c) { pinned title } }",
            ids.clone(),
        )
        .await;
    assert_eq!(
        body["data"]["conversation"],
        json!({ "pinned": false, "title": "secret plans" })
    );
}

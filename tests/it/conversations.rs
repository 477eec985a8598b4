//! Conversations: create/update/delete, the listing and its cursors, the message tree and
//! branches, search, export, and the index behind the listing.

use std::collections::HashSet;

use colloquy::conversations::model::{Conversation, ListFilter};
use colloquy::db::Explain;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::{Session, TestApp, error_code, expect_error};

const CREATE: &str = "mutation($i: CreateConversationInput!) { createConversation(input: $i) {
    id title model systemPrompt pinned archived messageCount preview lastMessageAt
    createdBy { email } workspace { id viewerRole } } }";
const UPDATE: &str =
    "mutation($id: ID!, $i: UpdateConversationInput!) { updateConversation(id: $id, input: $i) {
    title systemPrompt model pinned archived } }";
const LIST: &str = "query($ws: ID!, $first: Int, $after: String, $filter: ConversationFilter) {
    conversations(workspaceId: $ws, first: $first, after: $after, filter: $filter) {
      edges { cursor node { id title pinned archived model preview messageCount lastMessageAt createdBy { email } } }
      pageInfo { hasNextPage endCursor } } }";
const MESSAGES: &str = "query($id: ID!, $first: Int, $after: String) { conversation(id: $id) {
    messageCount preview
    messages(first: $first, after: $after) {
      edges { node { id content role seq parentId siblings { id } } }
      pageInfo { hasNextPage endCursor } } } }";

async fn list(app: &TestApp, s: &Session, ws: &str, vars: Value) -> Value {
    let mut vars = vars;
    vars["ws"] = json!(ws);
    app.gql_as(Some(&s.access), LIST, vars).await
}

fn titles(body: &Value) -> Vec<String> {
    body["data"]["conversations"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("no edges: {body}"))
        .iter()
        .map(|e| e["node"]["title"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_and_delete() {
    let app = TestApp::spawn().await;
    let owner = app.register("c1@example.com").await;
    let member = app.register("c2@example.com").await;
    let ws = app.create_workspace(&owner, "Chat").await;
    app.add_member(&owner, &ws, "c2@example.com", "MEMBER")
        .await;

    let body = app
        .gql_as(
            Some(&owner.access),
            CREATE,
            json!({ "i": { "workspaceId": ws } }),
        )
        .await;
    let c = &body["data"]["createConversation"];
    assert_eq!(c["title"], Value::Null, "{body}");
    assert_eq!(c["model"], "local/echo");
    assert_eq!(c["messageCount"], 0);
    assert_eq!(c["createdBy"]["email"], "c1@example.com");
    assert_eq!(c["workspace"]["viewerRole"], "OWNER");
    let id = c["id"].as_str().expect("id").to_owned();

    let bad = [
        json!({ "workspaceId": ws, "title": "t".repeat(201) }),
        json!({ "workspaceId": ws, "systemPrompt": "p".repeat(32_001) }),
        json!({ "workspaceId": ws, "model": "no-provider" }),
        json!({ "workspaceId": "not-a-uuid" }),
    ];
    for input in bad {
        expect_error(
            &app.gql_as(Some(&owner.access), CREATE, json!({ "i": input }))
                .await,
            "BAD_USER_INPUT",
        );
    }
    let body = app
        .gql_as(
            Some(&owner.access),
            CREATE,
            json!({ "i": { "workspaceId": uuid::Uuid::new_v4() } }),
        )
        .await;
    expect_error(&body, "NOT_FOUND");
    let ok = app
        .gql_as(Some(&owner.access), CREATE, json!({ "i": { "workspaceId": ws, "title": "t".repeat(200), "systemPrompt": "p".repeat(32_000) } }))
        .await;
    assert!(ok["errors"].is_null(), "limits are inclusive");

    // Any member edits.
    let body = app
        .gql_as(
            Some(&member.access),
            UPDATE,
            json!({ "id": id, "i": { "title": " Plans ", "systemPrompt": "Be brief.", "pinned": true, "model": "openai/gpt-4o-mini" } }),
        )
        .await;
    assert_eq!(
        body["data"]["updateConversation"],
        json!({ "title": "Plans", "systemPrompt": "Be brief.", "model": "openai/gpt-4o-mini", "pinned": true, "archived": false })
    );
    let body = app
        .gql_as(
            Some(&member.access),
            UPDATE,
            json!({ "id": id, "i": { "title": null, "archived": true } }),
        )
        .await;
    assert_eq!(
        body["data"]["updateConversation"]["title"],
        Value::Null,
        "{body}"
    );
    assert_eq!(
        body["data"]["updateConversation"]["systemPrompt"],
        "Be brief."
    );
    assert_eq!(body["data"]["updateConversation"]["archived"], true);
    let body = app
        .gql_as(
            Some(&member.access),
            UPDATE,
            json!({ "id": id, "i": { "title": "x".repeat(201) } }),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = app
        .gql_as(
            Some(&member.access),
            UPDATE,
            json!({ "id": uuid::Uuid::new_v4(), "i": { "pinned": true } }),
        )
        .await;
    expect_error(&body, "NOT_FOUND");

    // Deleting: the creator or an ADMIN; messages go with it.
    let m1 = app.insert_message(&id, None, "USER", "hello").await;
    app.insert_message(&id, Some(&m1), "ASSISTANT", "hi").await;
    let delete = "mutation($id: ID!) { deleteConversation(id: $id) }";
    expect_error(
        &app.gql_as(Some(&member.access), delete, json!({ "id": id }))
            .await,
        "FORBIDDEN",
    );
    let body = app
        .gql_as(Some(&owner.access), delete, json!({ "id": id }))
        .await;
    assert_eq!(body["data"]["deleteConversation"], true, "{body}");
    let left: i64 = colloquy::db::schema::messages::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count");
    assert_eq!(left, 0);
    expect_error(
        &app.gql_as(Some(&owner.access), delete, json!({ "id": id }))
            .await,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_order_filters_and_counters() {
    let app = TestApp::spawn().await;
    let a = app.register("l1@example.com").await;
    let b = app.register("l2@example.com").await;
    let ws = app.create_workspace(&a, "List").await;
    app.add_member(&a, &ws, "l2@example.com", "MEMBER").await;

    let first = app.create_conversation(&a, &ws, "first").await;
    let second = app.create_conversation(&b, &ws, "second").await;
    let third = app.create_conversation(&a, &ws, "third").await;
    let archived = app.create_conversation(&a, &ws, "old").await;
    app.gql_as(
        Some(&a.access),
        UPDATE,
        json!({ "id": archived, "i": { "archived": true } }),
    )
    .await;

    // Newest activity first.
    assert_eq!(
        titles(&list(&app, &a, &ws, json!({})).await),
        ["third", "second", "first"]
    );
    // A message moves a conversation up and fills its counters.
    let q = app
        .insert_message(&first, None, "USER", "  What is   a monad?\n")
        .await;
    app.insert_message(
        &first,
        Some(&q),
        "ASSISTANT",
        "A monoid in the category of endofunctors.",
    )
    .await;
    let body = list(&app, &a, &ws, json!({})).await;
    assert_eq!(titles(&body), ["first", "third", "second"]);
    let top = &body["data"]["conversations"]["edges"][0]["node"];
    assert_eq!(top["messageCount"], 2);
    assert_eq!(top["preview"], "A monoid in the category of endofunctors.");
    assert!(top["lastMessageAt"].is_string());
    // Pinned first.
    app.gql_as(
        Some(&a.access),
        UPDATE,
        json!({ "id": second, "i": { "pinned": true } }),
    )
    .await;
    assert_eq!(
        titles(&list(&app, &a, &ws, json!({})).await),
        ["second", "first", "third"]
    );

    // Filters.
    let by = |filter: Value| list(&app, &a, &ws, json!({ "filter": filter }));
    assert_eq!(titles(&by(json!({ "archived": true })).await), ["old"]);
    assert_eq!(titles(&by(json!({ "pinned": true })).await), ["second"]);
    assert_eq!(
        titles(&by(json!({ "pinned": false })).await),
        ["first", "third"]
    );
    assert_eq!(
        titles(&by(json!({ "createdBy": b.user_id })).await),
        ["second"]
    );
    app.gql_as(
        Some(&a.access),
        UPDATE,
        json!({ "id": third, "i": { "model": "anthropic/claude-3-5-haiku-latest" } }),
    )
    .await;
    assert_eq!(
        titles(&by(json!({ "model": "anthropic/claude-3-5-haiku-latest" })).await),
        ["third"]
    );
    let body = by(json!({ "createdBy": "nope" })).await;
    expect_error(&body, "BAD_USER_INPUT");

    // Bad paging input.
    expect_error(
        &list(&app, &a, &ws, json!({ "after": "garbage" })).await,
        "BAD_USER_INPUT",
    );
    expect_error(
        &list(&app, &a, &ws, json!({ "first": -1 })).await,
        "BAD_USER_INPUT",
    );
    let search_cursor = base64_json(&json!({ "k": "search", "v": 1 }));
    expect_error(
        &list(&app, &a, &ws, json!({ "after": search_cursor })).await,
        "BAD_USER_INPUT",
    );
}

fn base64_json(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_never_repeats_or_skips_while_conversations_arrive() {
    let app = TestApp::spawn().await;
    let a = app.register("p@example.com").await;
    let ws = app.create_workspace(&a, "Paging").await;
    let mut expected = HashSet::new();
    for i in 0..25 {
        let id = app.create_conversation(&a, &ws, &format!("c{i:02}")).await;
        expected.insert(id);
    }
    // Two pinned ones, to cross the pinned/unpinned boundary within a page.
    let pinned: Vec<String> = expected.iter().take(2).cloned().collect();
    for id in &pinned {
        app.gql_as(
            Some(&a.access),
            UPDATE,
            json!({ "id": id, "i": { "pinned": true } }),
        )
        .await;
    }

    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let body = list(&app, &a, &ws, json!({ "first": 7, "after": after })).await;
        let conn = &body["data"]["conversations"];
        let edges = conn["edges"].as_array().unwrap_or_else(|| panic!("{body}"));
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        // New conversations arrive between pages; they sort before the cursor.
        app.create_conversation(&a, &ws, &format!("new{pages}"))
            .await;
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 4);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a conversation was repeated");
    assert_eq!(
        unique, expected,
        "a conversation was skipped, or a new one leaked in"
    );
    assert_eq!(
        &seen[..2].iter().cloned().collect::<HashSet<_>>(),
        &pinned.into_iter().collect::<HashSet<_>>()
    );

    // `first` is capped at 100.
    let mut conn = app.db().await;
    diesel::sql_query(format!(
        "INSERT INTO conversations (id, workspace_id, model, title) \
         SELECT gen_random_uuid(), '{ws}', 'local/echo', 'bulk' FROM generate_series(1, 120)"
    ))
    .execute(&mut conn)
    .await
    .expect("bulk insert");
    let body = list(&app, &a, &ws, json!({ "first": 500 })).await;
    assert_eq!(
        body["data"]["conversations"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    assert_eq!(
        body["data"]["conversations"]["pageInfo"]["hasNextPage"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_form_a_tree_with_an_active_branch() {
    let app = TestApp::spawn().await;
    let a = app.register("t@example.com").await;
    let ws = app.personal_workspace(&a).await;
    let c = app.create_conversation(&a, &ws, "tree").await;

    let u1 = app.insert_message(&c, None, "USER", "u1").await;
    let a1 = app.insert_message(&c, Some(&u1), "ASSISTANT", "a1").await;
    let u2 = app.insert_message(&c, Some(&a1), "USER", "u2").await;
    let a2 = app.insert_message(&c, Some(&u2), "ASSISTANT", "a2").await;
    // An edit: a sibling of u2 with its own reply; the active branch follows it.
    let u2b = app.insert_message(&c, Some(&a1), "USER", "u2 edited").await;
    let a2b = app
        .insert_message(&c, Some(&u2b), "ASSISTANT", "a2 again")
        .await;

    let contents = |body: &Value| -> Vec<String> {
        body["data"]["conversation"]["messages"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|e| e["node"]["content"].as_str().expect("content").to_owned())
            .collect()
    };
    let body = app
        .gql_as(Some(&a.access), MESSAGES, json!({ "id": c }))
        .await;
    assert_eq!(contents(&body), ["u1", "a1", "u2 edited", "a2 again"]);
    assert_eq!(body["data"]["conversation"]["messageCount"], 4);
    assert_eq!(body["data"]["conversation"]["preview"], "a2 again");
    let edges = &body["data"]["conversation"]["messages"]["edges"];
    assert_eq!(
        edges[2]["node"]["siblings"],
        json!([{ "id": u2 }, { "id": u2b }])
    );
    assert_eq!(edges[0]["node"]["siblings"], json!([{ "id": u1 }]));
    assert_eq!(edges[0]["node"]["parentId"], Value::Null);
    assert_eq!(edges[3]["node"]["parentId"], json!(u2b));
    let seqs: Vec<i64> = edges
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2, 5, 6]);

    // Pages of the branch.
    let body = app
        .gql_as(Some(&a.access), MESSAGES, json!({ "id": c, "first": 3 }))
        .await;
    assert_eq!(contents(&body), ["u1", "a1", "u2 edited"]);
    let page = &body["data"]["conversation"]["messages"]["pageInfo"];
    assert_eq!(page["hasNextPage"], true);
    let body = app
        .gql_as(
            Some(&a.access),
            MESSAGES,
            json!({ "id": c, "first": 3, "after": page["endCursor"] }),
        )
        .await;
    assert_eq!(contents(&body), ["a2 again"]);
    assert_eq!(
        body["data"]["conversation"]["messages"]["pageInfo"]["hasNextPage"],
        false
    );
    expect_error(
        &app.gql_as(Some(&a.access), MESSAGES, json!({ "id": c, "after": "x" }))
            .await,
        "BAD_USER_INPUT",
    );

    // Switch back to the first version: the newest leaf under u2 becomes active.
    let select = "mutation($m: ID!) { selectBranch(messageId: $m) { messageCount preview } }";
    let body = app
        .gql_as(Some(&a.access), select, json!({ "m": u2 }))
        .await;
    assert_eq!(
        body["data"]["selectBranch"],
        json!({ "messageCount": 4, "preview": "a2" }),
        "{body}"
    );
    let body = app
        .gql_as(Some(&a.access), MESSAGES, json!({ "id": c }))
        .await;
    assert_eq!(contents(&body), ["u1", "a1", "u2", "a2"]);
    // Selecting an inner message picks the newest leaf below it (the edited branch).
    app.gql_as(Some(&a.access), select, json!({ "m": a1 }))
        .await;
    let body = app
        .gql_as(Some(&a.access), MESSAGES, json!({ "id": c }))
        .await;
    assert_eq!(contents(&body), ["u1", "a1", "u2 edited", "a2 again"]);
    expect_error(
        &app.gql_as(
            Some(&a.access),
            select,
            json!({ "m": uuid::Uuid::new_v4() }),
        )
        .await,
        "NOT_FOUND",
    );

    // `message(id)` and its conversation.
    let body = app
        .gql_as(
            Some(&a.access),
            "query($m: ID!) { message(id: $m) { content role status conversation { title } } }",
            json!({ "m": a2 }),
        )
        .await;
    assert_eq!(
        body["data"]["message"],
        json!({ "content": "a2", "role": "ASSISTANT", "status": "COMPLETE", "conversation": { "title": "tree" } })
    );

    // A parent from another conversation is refused and nothing is written.
    let other = app.create_conversation(&a, &ws, "other").await;
    let mut conn = app.db().await;
    let err = colloquy::conversations::service::insert_message(
        &mut conn,
        &colloquy::conversations::service::MessageInsert {
            conversation_id: other.parse().expect("uuid"),
            parent_id: Some(a2b.parse().expect("uuid")),
            role: "USER",
            content: "stray",
            status: "COMPLETE",
            model: None,
            created_by: None,
            client_message_id: None,
            runner_instance: None,
        },
    )
    .await
    .expect_err("foreign parent");
    assert_eq!(err.code(), "BAD_USER_INPUT");
    let body = app
        .gql_as(
            Some(&a.access),
            "query($id: ID!) { conversation(id: $id) { messageCount } }",
            json!({ "id": other }),
        )
        .await;
    assert_eq!(body["data"]["conversation"]["messageCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_ranks_highlights_and_pages() {
    let app = TestApp::spawn().await;
    let a = app.register("s@example.com").await;
    let ws = app.personal_workspace(&a).await;
    let heavy = app
        .create_conversation(&a, &ws, "Borrow checker questions")
        .await;
    let q = app
        .insert_message(
            &heavy,
            None,
            "USER",
            "Why does the borrow checker reject my code?",
        )
        .await;
    app.insert_message(
        &heavy,
        Some(&q),
        "ASSISTANT",
        "The borrow checker enforces that borrows never outlive their owner.",
    )
    .await;
    let light = app.create_conversation(&a, &ws, "Dinner ideas").await;
    app.insert_message(
        &light,
        None,
        "USER",
        "Pasta, unless someone wants to borrow my wok. <script>alert(1)</script>",
    )
    .await;
    let none = app.create_conversation(&a, &ws, "Weather").await;
    app.insert_message(&none, None, "USER", "Will it rain tomorrow?")
        .await;
    // Another workspace's conversations are never found.
    let other_user = app.register("s2@example.com").await;
    let other_ws = app.personal_workspace(&other_user).await;
    let hidden = app
        .create_conversation(&other_user, &other_ws, "borrow borrow borrow")
        .await;
    app.insert_message(&hidden, None, "USER", "borrow").await;

    let search = "query($ws: ID!, $q: String!, $first: Int, $after: String) {
        searchConversations(workspaceId: $ws, query: $q, first: $first, after: $after) {
          edges { cursor snippet score node { id title } } pageInfo { hasNextPage endCursor } } }";
    let body = app
        .gql_as(
            Some(&a.access),
            search,
            json!({ "ws": ws, "q": "borrowing" }),
        )
        .await;
    let edges = body["data"]["searchConversations"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    let ids: Vec<&str> = edges
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [heavy.as_str(), light.as_str()],
        "stemmed, ranked, scoped: {body}"
    );
    assert!(edges[0]["score"].as_f64() > edges[1]["score"].as_f64());
    let snippet = edges[1]["snippet"].as_str().expect("snippet");
    assert!(snippet.contains("<mark>borrow</mark>"), "{snippet}");
    assert!(
        snippet.contains("&lt;script&gt;") && !snippet.contains("<script>"),
        "escaped: {snippet}"
    );

    // Pages.
    let body = app
        .gql_as(
            Some(&a.access),
            search,
            json!({ "ws": ws, "q": "borrow", "first": 1 }),
        )
        .await;
    let page = &body["data"]["searchConversations"];
    assert_eq!(page["edges"][0]["node"]["id"], json!(heavy));
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    let body = app
        .gql_as(
            Some(&a.access),
            search,
            json!({ "ws": ws, "q": "borrow", "first": 1, "after": page["pageInfo"]["endCursor"] }),
        )
        .await;
    let page = &body["data"]["searchConversations"];
    assert_eq!(page["edges"][0]["node"]["id"], json!(light));
    assert_eq!(page["pageInfo"]["hasNextPage"], false);

    // Phrases and exclusions (web-search syntax), no matches, bad input.
    let body = app
        .gql_as(
            Some(&a.access),
            search,
            json!({ "ws": ws, "q": "\"borrow checker\" -wok" }),
        )
        .await;
    assert_eq!(
        body["data"]["searchConversations"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let body = app
        .gql_as(Some(&a.access), search, json!({ "ws": ws, "q": "zebra" }))
        .await;
    assert_eq!(body["data"]["searchConversations"]["edges"], json!([]));
    expect_error(
        &app.gql_as(Some(&a.access), search, json!({ "ws": ws, "q": "   " }))
            .await,
        "BAD_USER_INPUT",
    );
    expect_error(
        &app.gql_as(
            Some(&a.access),
            search,
            json!({ "ws": ws, "q": "x", "after": "bad" }),
        )
        .await,
        "BAD_USER_INPUT",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_found_once_they_have_ended() {
    let app = TestApp::spawn().await;
    let a = app.register("s3@example.com").await;
    let ws = app.personal_workspace(&a).await;
    let c = app.create_conversation(&a, &ws, "Marsupials").await;
    let question = app
        .insert_message(&c, None, "USER", "Tell me about them")
        .await;
    let answer = app
        .insert_generation(&c, &question, "The quokka lives on Rottnest", None)
        .await;
    let search = "query($ws: ID!, $q: String!) {
        searchConversations(workspaceId: $ws, query: $q) { edges { snippet node { id } } } }";
    let found = |body: &Value| {
        body["data"]["searchConversations"]["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .len()
    };
    let body = app
        .gql_as(Some(&a.access), search, json!({ "ws": ws, "q": "quokka" }))
        .await;
    assert_eq!(found(&body), 0, "a streaming answer is not indexed: {body}");

    diesel::sql_query("UPDATE messages SET status = 'CANCELLED' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(answer)
        .execute(&mut app.db().await)
        .await
        .expect("end the answer");
    let body = app
        .gql_as(Some(&a.access), search, json!({ "ws": ws, "q": "quokka" }))
        .await;
    assert_eq!(found(&body), 1, "an ended answer is: {body}");
    let snippet = body["data"]["searchConversations"]["edges"][0]["snippet"]
        .as_str()
        .unwrap_or_default();
    assert!(snippet.contains("<mark>quokka</mark>"), "{snippet}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_the_active_branch() {
    let app = TestApp::spawn().await;
    let a = app.register("e@example.com").await;
    let ws = app.personal_workspace(&a).await;
    let c = app.create_conversation(&a, &ws, "Export me").await;
    app.gql_as(
        Some(&a.access),
        UPDATE,
        json!({ "id": c, "i": { "systemPrompt": "Answer in French." } }),
    )
    .await;
    let u = app.insert_message(&c, None, "USER", "Hello?").await;
    app.insert_message(&c, Some(&u), "ASSISTANT", "Old answer")
        .await;
    app.insert_message(&c, Some(&u), "ASSISTANT", "Bonjour !")
        .await;

    let export = "query($id: ID!, $f: ExportFormat!) { exportConversation(id: $id, format: $f) }";
    let body = app
        .gql_as(Some(&a.access), export, json!({ "id": c, "f": "JSON" }))
        .await;
    let doc: Value =
        serde_json::from_str(body["data"]["exportConversation"].as_str().expect("string"))
            .expect("valid JSON");
    assert_eq!(doc["title"], "Export me");
    assert_eq!(doc["systemPrompt"], "Answer in French.");
    let messages: Vec<(&str, &str)> = doc["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect();
    assert_eq!(messages, [("USER", "Hello?"), ("ASSISTANT", "Bonjour !")]);

    let body = app
        .gql_as(Some(&a.access), export, json!({ "id": c, "f": "MARKDOWN" }))
        .await;
    let md = body["data"]["exportConversation"]
        .as_str()
        .expect("markdown");
    assert!(md.starts_with("# Export me\n"), "{md}");
    assert!(md.contains("## System\n\nAnswer in French."), "{md}");
    assert!(md.contains("## User\n\nHello?"), "{md}");
    assert!(
        md.contains("## Assistant (local/echo)\n\nBonjour !"),
        "{md}"
    );
    assert!(!md.contains("Old answer"), "only the active branch: {md}");
    let body = app
        .gql_as(Some(&a.access), export, json!({ "id": c, "f": "PDF" }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
}

/// Listing 20 conversations of a workspace holding 10,000 is an index scan, not a sequential
/// scan: checked on the query the resolver really runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_uses_the_index_on_a_large_workspace() {
    let app = TestApp::spawn().await;
    let a = app.register("big@example.com").await;
    let ws = app.create_workspace(&a, "Big").await;
    let small = app.create_workspace(&a, "Small").await;
    let mut conn = app.db().await;
    for (workspace, n) in [(&ws, 10_000), (&small, 2_000)] {
        diesel::sql_query(format!(
            "INSERT INTO conversations (id, workspace_id, model, title, pinned, sort_at, created_at) \
             SELECT gen_random_uuid(), '{workspace}', 'local/echo', 'c' || g, g % 500 = 0, \
                    now() - g * interval '1 minute', now() - g * interval '1 minute' \
             FROM generate_series(1, {n}) g"
        ))
        .execute(&mut conn)
        .await
        .expect("seed");
    }
    diesel::sql_query("ANALYZE conversations")
        .execute(&mut conn)
        .await
        .expect("analyze");

    let workspace_id: uuid::Uuid = ws.parse().expect("uuid");
    let first_page = Conversation::listing(workspace_id, &ListFilter::default(), None).limit(21);
    let later_page = Conversation::listing(
        workspace_id,
        &ListFilter::default(),
        Some(colloquy::conversations::model::ListPosition {
            pinned: false,
            sort_at: chrono::Utc::now() - chrono::Duration::minutes(5_000),
            id: uuid::Uuid::max(),
        }),
    )
    .limit(21);
    for plan in [
        Explain(first_page)
            .load::<String>(&mut conn)
            .await
            .expect("explain"),
        Explain(later_page)
            .load::<String>(&mut conn)
            .await
            .expect("explain"),
    ] {
        let plan = plan.join("\n");
        assert!(plan.contains("conversations_listing_idx"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(
            !plan.contains("Sort"),
            "the index provides the order: {plan}"
        );
    }

    let body = list(&app, &a, &ws, json!({ "first": 20 })).await;
    let edges = body["data"]["conversations"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(edges.len(), 20);
    assert!(
        edges[..20].iter().all(|e| e["node"]["pinned"] == true),
        "20 pinned ones lead"
    );
}

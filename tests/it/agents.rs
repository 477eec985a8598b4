//! Agents through the real server: CRUD and who may do it, input checks, the example agents
//! of new workspaces, conversations started from an agent, and an agent's settings reaching
//! the provider's request.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Session, TestApp, expect_error};
use crate::fake_upstream::{FakeUpstream, Script};

const AGENT_FIELDS: &str = "id workspaceId name description avatar model systemPrompt temperature
    maxOutputTokens createdBy { id } createdAt updatedAt";

const EXAMPLE_NAMES: [&str; 5] = [
    "Code helper",
    "General assistant",
    "Strategist",
    "Summariser",
    "Translator",
];

/// Runs an operation and returns its `data`, panicking with the body on any error.
async fn ok(app: &TestApp, s: &Session, query: &str, variables: Value) -> Value {
    let body = app.gql_as(Some(&s.access), query, variables).await;
    assert!(body["errors"].is_null(), "{query}: {body}");
    body["data"].clone()
}

async fn agents(app: &TestApp, s: &Session, ws: &str) -> Vec<Value> {
    let data = ok(
        app,
        s,
        &format!("query($w: ID!) {{ agents(workspaceId: $w) {{ {AGENT_FIELDS} }} }}"),
        json!({ "w": ws }),
    )
    .await;
    data["agents"].as_array().expect("a list").clone()
}

fn create_agent_op() -> String {
    format!("mutation($i: CreateAgentInput!) {{ createAgent(input: $i) {{ {AGENT_FIELDS} }} }}")
}

fn update_agent_op() -> String {
    format!("mutation($i: UpdateAgentInput!) {{ updateAgent(input: $i) {{ {AGENT_FIELDS} }} }}")
}

const DELETE_AGENT: &str = "mutation($id: ID!) { deleteAgent(id: $id) }";

const CONVERSATION_FIELDS: &str =
    "id model systemPrompt temperature maxOutputTokens agent { id name }";

async fn create_agent(app: &TestApp, s: &Session, input: Value) -> Value {
    ok(app, s, &create_agent_op(), json!({ "i": input })).await["createAgent"].clone()
}

async fn create_conversation(app: &TestApp, s: &Session, input: Value) -> Value {
    ok(
        app,
        s,
        &format!(
            "mutation($i: CreateConversationInput!) {{ createConversation(input: $i) {{ {CONVERSATION_FIELDS} }} }}"
        ),
        json!({ "i": input }),
    )
    .await["createConversation"]
        .clone()
}

async fn conversation(app: &TestApp, s: &Session, id: &str) -> Value {
    ok(
        app,
        s,
        &format!("query($c: ID!) {{ conversation(id: $c) {{ {CONVERSATION_FIELDS} }} }}"),
        json!({ "c": id }),
    )
    .await["conversation"]
        .clone()
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_create_agents_and_only_creators_and_admins_change_them() {
    let app = TestApp::spawn_with(&[("EXAMPLE_AGENTS", "false")]).await;
    let owner = app.register("owner@example.com").await;
    let author = app.register("author@example.com").await;
    let other = app.register("other@example.com").await;
    let admin = app.register("admin@example.com").await;
    let outsider = app.register("outsider@example.com").await;
    let ws = app.create_workspace(&owner, "Team").await;
    app.add_member(&owner, &ws, &author.email, "MEMBER").await;
    app.add_member(&owner, &ws, &other.email, "MEMBER").await;
    app.add_member(&owner, &ws, &admin.email, "ADMIN").await;

    let agent = create_agent(
        &app,
        &author,
        json!({ "workspaceId": ws, "name": "  Reviewer ", "description": "Reviews code",
                "avatar": "🧐", "systemPrompt": "Review it.", "temperature": 0.7,
                "maxOutputTokens": 500 }),
    )
    .await;
    assert_eq!(agent["name"], "Reviewer", "trimmed");
    assert_eq!(agent["workspaceId"], ws.as_str());
    assert_eq!(agent["avatar"], "🧐");
    assert_eq!(agent["model"], "local/echo", "DEFAULT_MODEL");
    assert_eq!(agent["temperature"], 0.7, "no float noise: {agent}");
    assert_eq!(agent["maxOutputTokens"], 500);
    assert_eq!(agent["createdBy"]["id"], author.user_id.as_str());
    let agent_id = id(&agent);
    // Defaults: the 🤖 avatar, no description or settings.
    let plain = create_agent(
        &app,
        &other,
        json!({ "workspaceId": ws, "name": "Assistant" }),
    )
    .await;
    assert_eq!(plain["avatar"], "🤖");
    assert!(plain["description"].is_null() && plain["temperature"].is_null());

    // Every member lists them, by name.
    let names: Vec<Value> = agents(&app, &other, &ws)
        .await
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("Assistant"), json!("Reviewer")]);

    // Another member may not change it.
    let body = app
        .gql_as(
            Some(&other.access),
            &update_agent_op(),
            json!({ "i": { "id": agent_id, "name": "Mine now" } }),
        )
        .await;
    expect_error(&body, "FORBIDDEN");
    let body = app
        .gql_as(Some(&other.access), DELETE_AGENT, json!({ "id": agent_id }))
        .await;
    expect_error(&body, "FORBIDDEN");

    // An outsider sees nothing at all.
    for (query, vars) in [
        (
            update_agent_op(),
            json!({ "i": { "id": agent_id, "name": "x" } }),
        ),
        (DELETE_AGENT.to_owned(), json!({ "id": agent_id })),
        (
            "query($w: ID!) { agents(workspaceId: $w) { id } }".to_owned(),
            json!({ "w": ws }),
        ),
        (
            create_agent_op(),
            json!({ "i": { "workspaceId": ws, "name": "Spy" } }),
        ),
    ] {
        let body = app.gql_as(Some(&outsider.access), &query, vars).await;
        expect_error(&body, "NOT_FOUND");
    }
    let body = app
        .gql_as(
            Some(&outsider.access),
            "query($id: ID!) { agent(id: $id) { id } }",
            json!({ "id": agent_id }),
        )
        .await;
    assert!(
        body["data"]["agent"].is_null() && body["errors"].is_null(),
        "{body}"
    );

    // An ADMIN may; a partial update leaves the rest, and null clears.
    let updated = ok(
        &app,
        &admin,
        &update_agent_op(),
        json!({ "i": { "id": agent_id, "name": "Code reviewer", "temperature": null } }),
    )
    .await["updateAgent"]
        .clone();
    assert_eq!(updated["name"], "Code reviewer");
    assert!(updated["temperature"].is_null());
    assert_eq!(updated["systemPrompt"], "Review it.");
    assert_eq!(updated["maxOutputTokens"], 500);
    assert_eq!(updated["createdBy"]["id"], author.user_id.as_str());
    // The creator may.
    let updated = ok(
        &app,
        &author,
        &update_agent_op(),
        json!({ "i": { "id": agent_id, "avatar": "🇵🇹", "description": "" } }),
    )
    .await["updateAgent"]
        .clone();
    assert_eq!(updated["avatar"], "🇵🇹");
    assert!(updated["description"].is_null(), "empty clears");
    let data = ok(&app, &author, DELETE_AGENT, json!({ "id": agent_id })).await;
    assert_eq!(data["deleteAgent"], true);
    assert_eq!(agents(&app, &owner, &ws).await.len(), 1);
    let body = app
        .gql_as(
            Some(&author.access),
            DELETE_AGENT,
            json!({ "id": agent_id }),
        )
        .await;
    expect_error(&body, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_is_refused_naming_the_field() {
    let app = TestApp::spawn_with(&[("EXAMPLE_AGENTS", "false")]).await;
    let s = app.register("bad-agents@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let long_prompt = "p".repeat(32_001);
    let cases = [
        (json!({ "name": "" }), "name"),
        (json!({ "name": "n".repeat(81) }), "name"),
        (
            json!({ "name": "ok", "description": "d".repeat(501) }),
            "description",
        ),
        (json!({ "name": "ok", "avatar": "AI" }), "avatar"),
        (json!({ "name": "ok", "avatar": "🤖🤖" }), "avatar"),
        (
            json!({ "name": "ok", "systemPrompt": long_prompt }),
            "systemPrompt",
        ),
        (json!({ "name": "ok", "temperature": 2.5 }), "temperature"),
        (json!({ "name": "ok", "temperature": -1 }), "temperature"),
        (
            json!({ "name": "ok", "maxOutputTokens": 0 }),
            "maxOutputTokens",
        ),
        (json!({ "name": "ok", "model": "nobody/nothing" }), "model"),
        // In the catalog, but no key for its provider.
        (
            json!({ "name": "ok", "model": "openai/gpt-4o-mini" }),
            "model",
        ),
    ];
    for (mut input, field) in cases {
        input["workspaceId"] = json!(ws);
        let body = app
            .gql_as(Some(&s.access), &create_agent_op(), json!({ "i": input }))
            .await;
        let error = expect_error(&body, "BAD_USER_INPUT");
        assert_eq!(error["extensions"]["field"], field, "{input}: {body}");
    }
    assert!(agents(&app, &s, &ws).await.is_empty(), "nothing stored");

    let agent = create_agent(&app, &s, json!({ "workspaceId": ws, "name": "Fine" })).await;
    for (change, field) in [
        (json!({ "name": " " }), "name"),
        (json!({ "avatar": "x" }), "avatar"),
        (json!({ "temperature": 9 }), "temperature"),
        (json!({ "maxOutputTokens": -5 }), "maxOutputTokens"),
        (json!({ "model": "anthropic/claude-sonnet-4-0" }), "model"),
    ] {
        let mut input = change.clone();
        input["id"] = agent["id"].clone();
        let body = app
            .gql_as(Some(&s.access), &update_agent_op(), json!({ "i": input }))
            .await;
        let error = expect_error(&body, "BAD_USER_INPUT");
        assert_eq!(error["extensions"]["field"], field, "{change}: {body}");
    }

    // An agent of another workspace cannot start a conversation here, and is not revealed.
    let team = app.create_workspace(&s, "Team").await;
    let foreign = create_agent(&app, &s, json!({ "workspaceId": team, "name": "Theirs" })).await;
    for agent_id in [id(&foreign), uuid::Uuid::now_v7().to_string()] {
        let body = app
            .gql_as(
                Some(&s.access),
                "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }",
                json!({ "i": { "workspaceId": ws, "agentId": agent_id } }),
            )
            .await;
        let error = expect_error(&body, "BAD_USER_INPUT");
        assert_eq!(error["extensions"]["field"], "agentId");
        assert_eq!(error["message"], "no such agent in this workspace");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_workspaces_start_with_five_examples_on_echo_without_keys() {
    let app = TestApp::spawn().await;
    let s = app.register("examples@example.com").await;
    let personal = app.personal_workspace(&s).await;
    let team = app.create_workspace(&s, "Team").await;
    for ws in [&personal, &team] {
        let list = agents(&app, &s, ws).await;
        let names: Vec<&str> = list.iter().filter_map(|a| a["name"].as_str()).collect();
        assert_eq!(names, EXAMPLE_NAMES, "by name");
        for agent in &list {
            assert_eq!(agent["model"], "local/echo", "no provider key: {agent}");
            assert!(agent["createdBy"].is_null());
            assert!(
                agent["systemPrompt"]
                    .as_str()
                    .is_some_and(|p| p.len() > 100),
                "{agent}"
            );
            assert!(agent["description"].is_string() && agent["temperature"].is_number());
            assert!(!agent["avatar"].as_str().unwrap_or_default().is_empty());
        }
    }
    // Usable as they are: a conversation from one answers with echo.
    let summariser = agents(&app, &s, &personal)
        .await
        .into_iter()
        .find(|a| a["name"] == "Summariser")
        .expect("summariser");
    let c = create_conversation(
        &app,
        &s,
        json!({ "workspaceId": personal, "agentId": summariser["id"] }),
    )
    .await;
    assert_eq!(c["model"], "local/echo");
    assert_eq!(c["temperature"], 0.3);
    assert_eq!(c["maxOutputTokens"], 1024);
    assert_eq!(c["agent"]["name"], "Summariser");
    // The owner edits an example; a member cannot (nobody created it).
    let member = app.register("member@example.com").await;
    app.add_member(&s, &team, &member.email, "MEMBER").await;
    let example = id(&agents(&app, &s, &team).await[0]);
    let body = app
        .gql_as(
            Some(&member.access),
            &update_agent_op(),
            json!({ "i": { "id": example, "name": "Mine" } }),
        )
        .await;
    expect_error(&body, "FORBIDDEN");
    ok(
        &app,
        &s,
        &update_agent_op(),
        json!({ "i": { "id": example, "name": "Ours" } }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_agents_can_be_turned_off() {
    let app = TestApp::spawn_with(&[("EXAMPLE_AGENTS", "false")]).await;
    let s = app.register("no-examples@example.com").await;
    let personal = app.personal_workspace(&s).await;
    let team = app.create_workspace(&s, "Team").await;
    assert!(agents(&app, &s, &personal).await.is_empty());
    assert!(agents(&app, &s, &team).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_use_catalog_models_whose_provider_has_a_key() {
    for (key, expected) in [
        (
            "OPENAI_API_KEY",
            [
                ("General assistant", "openai/gpt-4.1-mini"),
                ("Code helper", "openai/gpt-4.1"),
                ("Summariser", "openai/gpt-4o-mini"),
                ("Strategist", "openai/gpt-4.1"),
                ("Translator", "openai/gpt-4o-mini"),
            ],
        ),
        (
            "ANTHROPIC_API_KEY",
            [
                ("General assistant", "anthropic/claude-sonnet-4-0"),
                ("Code helper", "anthropic/claude-sonnet-4-0"),
                ("Summariser", "anthropic/claude-3-5-haiku-latest"),
                ("Strategist", "anthropic/claude-sonnet-4-0"),
                ("Translator", "anthropic/claude-3-5-haiku-latest"),
            ],
        ),
    ] {
        let app = TestApp::spawn_with(&[(key, "sk-test-key")]).await;
        let s = app.register("keyed@example.com").await;
        let ws = app.personal_workspace(&s).await;
        let list = agents(&app, &s, &ws).await;
        let data = ok(
            &app,
            &s,
            "query($w: ID) { models(workspaceId: $w) { id available } }",
            json!({ "w": ws }),
        )
        .await;
        for (name, model) in expected {
            let agent = list
                .iter()
                .find(|a| a["name"] == name)
                .unwrap_or_else(|| panic!("no {name}"));
            assert_eq!(agent["model"], model, "{key}: {name}");
            let listed = data["models"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["id"] == model))
                .unwrap_or_else(|| panic!("{model} is not in the catalog"));
            assert_eq!(listed["available"], true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_copies_its_agent_and_later_edits_do_not_reach_it() {
    let app = TestApp::spawn_with(&[("EXAMPLE_AGENTS", "false")]).await;
    let s = app.register("copies@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let agent = create_agent(
        &app,
        &s,
        json!({ "workspaceId": ws, "name": "Poet", "systemPrompt": "Answer in verse.",
                "temperature": 1.2, "maxOutputTokens": 64 }),
    )
    .await;
    let agent_id = id(&agent);
    let c = create_conversation(&app, &s, json!({ "workspaceId": ws, "agentId": agent_id })).await;
    assert_eq!(c["model"], "local/echo");
    assert_eq!(c["systemPrompt"], "Answer in verse.");
    assert_eq!(c["temperature"], 1.2);
    assert_eq!(c["maxOutputTokens"], 64);
    assert_eq!(c["agent"]["id"], agent_id.as_str());

    // Fields given with the agent win over its own.
    let overridden = create_conversation(
        &app,
        &s,
        json!({ "workspaceId": ws, "agentId": agent_id, "systemPrompt": "Prose, please.",
                "temperature": 0 }),
    )
    .await;
    assert_eq!(overridden["systemPrompt"], "Prose, please.");
    assert_eq!(overridden["temperature"], 0.0);
    assert_eq!(
        overridden["maxOutputTokens"], 64,
        "the rest still from the agent"
    );

    // Editing the agent leaves the conversations as they were.
    ok(
        &app,
        &s,
        &update_agent_op(),
        json!({ "i": { "id": agent_id, "systemPrompt": "Answer in haiku.", "temperature": 0.1,
                       "maxOutputTokens": null, "name": "Haiku poet" } }),
    )
    .await;
    let after = conversation(&app, &s, &id(&c)).await;
    assert_eq!(after["systemPrompt"], "Answer in verse.");
    assert_eq!(after["temperature"], 1.2);
    assert_eq!(after["maxOutputTokens"], 64);
    assert_eq!(
        after["agent"]["name"], "Haiku poet",
        "it still points at the agent"
    );

    // The conversation's own settings change through updateConversation.
    let data = ok(
        &app,
        &s,
        "mutation($c: ID!) { updateConversation(id: $c, input: { temperature: null, maxOutputTokens: 200 }) { temperature maxOutputTokens } }",
        json!({ "c": id(&c) }),
    )
    .await;
    assert!(data["updateConversation"]["temperature"].is_null());
    assert_eq!(data["updateConversation"]["maxOutputTokens"], 200);

    // Deleting the agent keeps the conversation and its settings.
    ok(&app, &s, DELETE_AGENT, json!({ "id": agent_id })).await;
    let after = conversation(&app, &s, &id(&c)).await;
    assert!(after["agent"].is_null(), "{after}");
    assert_eq!(after["systemPrompt"], "Answer in verse.");
}

fn openai_frames(words: &[&str]) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": "gpt-4o-mini",
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] })
        )
    };
    let mut frames: Vec<String> = words
        .iter()
        .map(|w| chunk(json!({ "content": w }), Value::Null))
        .collect();
    frames.push(chunk(json!({}), json!("stop")));
    frames.push(format!(
        "data: {}\n\n",
        json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "gpt-4o-mini", "choices": [],
                "usage": { "prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14 } })
    ));
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

const SEND: &str =
    "mutation($i: SendMessageInput!) { sendMessage(input: $i) { assistantMessage { id } } }";

async fn send_and_finish(app: &TestApp, s: &Session, conversation: &str) -> Value {
    let data = ok(
        app,
        s,
        SEND,
        json!({ "i": { "conversationId": conversation, "content": "Hello there" } }),
    )
    .await;
    let message = data["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .expect("assistant id")
        .to_owned();
    for _ in 0..200 {
        let data = ok(
            app,
            s,
            "query($m: ID!) { message(id: $m) { status content error } }",
            json!({ "m": message }),
        )
        .await;
        if !matches!(
            data["message"]["status"].as_str(),
            Some("PENDING" | "STREAMING")
        ) {
            return data["message"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("message {message} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_settings_reach_the_provider_request() {
    colloquy::install_crypto_provider();
    let upstream = FakeUpstream::start(vec![
        // Slow to start, so the reservation can be seen while it runs.
        Script::sse(200, &openai_frames(&["Short", " summary"]))
            .first_delay(Duration::from_millis(1500)),
        Script::sse(200, &openai_frames(&["Hi", "!"])),
    ])
    .await;
    let base = format!("{}/v1", upstream.base_url);
    let app = TestApp::spawn_with(&[
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test-key"),
        ("TITLE_MODEL", "local/echo"),
    ])
    .await;
    let s = app.register("settings@example.com").await;
    let ws = app.personal_workspace(&s).await;

    // An example agent's defaults: the Summariser (temperature 0.3, at most 1024 tokens).
    let summariser = agents(&app, &s, &ws)
        .await
        .into_iter()
        .find(|a| a["name"] == "Summariser")
        .expect("summariser");
    assert_eq!(summariser["model"], "openai/gpt-4o-mini");
    let c = create_conversation(
        &app,
        &s,
        json!({ "workspaceId": ws, "agentId": summariser["id"] }),
    )
    .await;
    let sent = app
        .gql_as(
            Some(&s.access),
            SEND,
            json!({ "i": { "conversationId": id(&c), "content": "Summarise this, please" } }),
        )
        .await;
    let message = sent["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sent}"))
        .to_owned();
    // The reservation holds the prompt plus the agent's 1024, not the model's 16384.
    let data = ok(
        &app,
        &s,
        "query($w: ID!) { workspace(id: $w) { quota { tokensReserved } } }",
        json!({ "w": ws }),
    )
    .await;
    let reserved = data["workspace"]["quota"]["tokensReserved"]
        .as_i64()
        .expect("reserved");
    assert!(
        (1024..4000).contains(&reserved),
        "reserved {reserved} tokens"
    );
    let mut finished = Value::Null;
    for _ in 0..200 {
        let data = ok(
            &app,
            &s,
            "query($m: ID!) { message(id: $m) { status content error } }",
            json!({ "m": message }),
        )
        .await;
        if !matches!(
            data["message"]["status"].as_str(),
            Some("PENDING" | "STREAMING")
        ) {
            finished = data["message"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finished["status"], "COMPLETE", "{finished}");
    assert_eq!(finished["content"], "Short summary");
    let body = &upstream.requests()[0].body;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["temperature"], 0.3, "{body}");
    assert_eq!(body["max_tokens"], 1024, "{body}");
    assert_eq!(body["messages"][0]["role"], "system");
    assert!(
        body["messages"][0]["content"]
            .as_str()
            .is_some_and(|p| p.starts_with("You summarise text.")),
        "{body}"
    );

    // A custom agent: its settings, capped by nothing else.
    let agent = create_agent(
        &app,
        &s,
        json!({ "workspaceId": ws, "name": "Terse", "model": "openai/gpt-4o-mini",
                "systemPrompt": "Be terse.", "temperature": 0.7, "maxOutputTokens": 321 }),
    )
    .await;
    let c = create_conversation(
        &app,
        &s,
        json!({ "workspaceId": ws, "agentId": agent["id"] }),
    )
    .await;
    let finished = send_and_finish(&app, &s, &id(&c)).await;
    assert_eq!(finished["status"], "COMPLETE", "{finished}");
    let body = &upstream.requests()[1].body;
    assert_eq!(body["temperature"], 0.7, "exactly 0.7: {body}");
    assert_eq!(body["max_tokens"], 321);
    assert_eq!(
        body["messages"][0],
        json!({ "role": "system", "content": "Be terse." })
    );
    assert_eq!(body["messages"][1]["content"], "Hello there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_holds_at_most_200_agents() {
    use diesel_async::RunQueryDsl;
    let app = TestApp::spawn().await;
    let s = app.register("many@example.com").await;
    let ws = app.personal_workspace(&s).await;
    // 5 examples + 195 = the limit.
    diesel::sql_query(
        "INSERT INTO agents (id, workspace_id, name, avatar, model) \
         SELECT gen_random_uuid(), $1, 'Agent ' || n, '🤖', 'local/echo' \
         FROM generate_series(1, 195) AS n",
    )
    .bind::<diesel::sql_types::Uuid, _>(ws.parse::<uuid::Uuid>().expect("uuid"))
    .execute(&mut app.db().await)
    .await
    .expect("fill the workspace");
    assert_eq!(agents(&app, &s, &ws).await.len(), 200);
    let body = app
        .gql_as(
            Some(&s.access),
            &create_agent_op(),
            json!({ "i": { "workspaceId": ws, "name": "One too many" } }),
        )
        .await;
    let error = expect_error(&body, "CONFLICT");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("200")),
        "{body}"
    );
    // Room again after a delete.
    let first = id(&agents(&app, &s, &ws).await[0]);
    ok(&app, &s, DELETE_AGENT, json!({ "id": first })).await;
    create_agent(
        &app,
        &s,
        json!({ "workspaceId": ws, "name": "Now it fits" }),
    )
    .await;
}

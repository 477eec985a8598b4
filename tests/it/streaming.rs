//! Streaming chat through the real server: sendMessage, subscriptions over WebSocket, stop,
//! failures, resume, branches, titles, recovery.

use std::time::Duration;

use colloquy::db::schema::messages;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::ws::GqlSocket;
use crate::common::{Session, TestApp, expect_error};
use crate::fake_upstream::{End, FakeUpstream, Script};

pub(crate) const SEND: &str = "mutation($i: SendMessageInput!) { sendMessage(input: $i) {
    userMessage { id role status content seq parentId }
    assistantMessage { id role status content model parentId } } }";
pub(crate) const STREAM: &str = "subscription($m: ID!, $after: Int) { messageStream(messageId: $m, afterSeq: $after) {
    __typename
    ... on MessageDelta { messageId seq text }
    ... on MessageFinished { message { id status content promptTokens completionTokens costUsd error completedAt } } } }";
pub(crate) const EVENTS: &str = "subscription($c: ID!) { conversationEvents(conversationId: $c) {
    __typename
    ... on MessageCreated { message { id role } }
    ... on MessageDelta { messageId seq text }
    ... on MessageFinished { message { id status } }
    ... on ConversationUpdated { conversation { id title } } } }";

struct Chat {
    app: TestApp,
    user: Session,
    conversation: String,
}

async fn chat(overrides: &[(&str, &str)]) -> Chat {
    let app = TestApp::spawn_with(overrides).await;
    let user = app.register("stream@example.com").await;
    let ws = app.personal_workspace(&user).await;
    let conversation = app.create_conversation(&user, &ws, "").await;
    Chat {
        app,
        user,
        conversation,
    }
}

impl Chat {
    async fn send(&self, content: &str, extra: Value) -> Value {
        let mut input = json!({ "conversationId": self.conversation, "content": content });
        if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
            input.extend(extra.clone());
        }
        self.app
            .gql_as(Some(&self.user.access), SEND, json!({ "i": input }))
            .await
    }

    async fn sent(&self, content: &str) -> (String, String) {
        let body = self.send(content, json!({})).await;
        let payload = &body["data"]["sendMessage"];
        (
            payload["userMessage"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{body}"))
                .to_owned(),
            payload["assistantMessage"]["id"]
                .as_str()
                .expect("assistant")
                .to_owned(),
        )
    }

    async fn message(&self, id: &str) -> Value {
        let body = self
            .app
            .gql_as(
                Some(&self.user.access),
                "query($m: ID!) { message(id: $m) { id status content error promptTokens completionTokens completedAt siblings { id } } }",
                json!({ "m": id }),
            )
            .await;
        body["data"]["message"].clone()
    }

    async fn wait_finished(&self, id: &str) -> Value {
        for _ in 0..300 {
            let m = self.message(id).await;
            if !matches!(m["status"].as_str(), Some("PENDING" | "STREAMING")) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("message {id} did not finish");
    }
}

pub(crate) fn deltas(events: &[Value]) -> Vec<(i64, String)> {
    events
        .iter()
        .filter_map(|e| {
            let d = &e["data"]["messageStream"];
            (d["__typename"] == "MessageDelta").then(|| {
                (
                    d["seq"].as_i64().expect("seq"),
                    d["text"].as_str().expect("text").to_owned(),
                )
            })
        })
        .collect()
}

pub(crate) fn joined(deltas: &[(i64, String)]) -> String {
    deltas.iter().map(|(_, t)| t.as_str()).collect()
}

pub(crate) fn finished(events: &[Value]) -> Value {
    let last = &events.last().expect("events")["data"]["messageStream"];
    assert_eq!(last["__typename"], "MessageFinished", "{events:?}");
    last["message"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_streams_and_finishes_with_echo() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "5")]).await;
    let mut feed = GqlSocket::connect(&chat.app, &chat.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": chat.conversation }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let body = chat.send("hello big world", json!({})).await;
    let payload = &body["data"]["sendMessage"];
    assert_eq!(payload["userMessage"]["status"], "COMPLETE", "{body}");
    assert_eq!(payload["userMessage"]["content"], "hello big world");
    assert_eq!(payload["assistantMessage"]["status"], "STREAMING");
    assert_eq!(payload["assistantMessage"]["model"], "local/echo");
    assert_eq!(
        payload["assistantMessage"]["parentId"],
        payload["userMessage"]["id"]
    );
    let assistant = payload["assistantMessage"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let mut socket = GqlSocket::connect(&chat.app, &chat.user.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": assistant }))
        .await;
    let events = socket.collect("1", 100).await;
    let got = deltas(&events);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=4).collect::<Vec<_>>()
    );
    assert_eq!(joined(&got), "Echo: hello big world");
    let end = finished(&events);
    assert_eq!(end["status"], "COMPLETE");
    assert_eq!(end["content"], "Echo: hello big world");
    assert_eq!(end["completionTokens"], 4);
    assert!(end["promptTokens"].as_i64().is_some_and(|n| n > 0));
    assert_eq!(end["costUsd"], 0.0);
    assert!(end["completedAt"].is_string());

    // The conversation feed saw both messages created, the deltas and the end.
    let mut kinds = Vec::new();
    while !kinds.contains(&"MessageFinished".to_owned()) {
        let m = feed.next().await.expect("event");
        kinds.push(
            m["payload"]["data"]["conversationEvents"]["__typename"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(kinds[..2], ["MessageCreated", "MessageCreated"]);
    assert_eq!(kinds.iter().filter(|k| *k == "MessageDelta").count(), 4);

    // Stored, and the conversation's counters follow.
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            "query($c: ID!) { conversation(id: $c) { messageCount preview } }",
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(
        body["data"]["conversation"],
        json!({ "messageCount": 2, "preview": "Echo: hello big world" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_after_seq_and_parallel_subscribers_agree() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "15")]).await;
    let (_, assistant) = chat.sent("/words 60").await;
    let mut a = GqlSocket::connect(&chat.app, &chat.user.access).await;
    let mut b = GqlSocket::connect(&chat.app, &chat.user.access).await;
    a.subscribe("1", STREAM, json!({ "m": assistant })).await;
    b.subscribe("1", STREAM, json!({ "m": assistant })).await;

    // `a` reads ten deltas and drops its connection, then resumes after the last seq seen.
    let first = deltas(&a.collect("1", 10).await);
    assert_eq!(first.len(), 10);
    let last_seen = first.last().expect("delta").0;
    a.close().await;
    let mut a = GqlSocket::connect(&chat.app, &chat.user.access).await;
    a.subscribe("2", STREAM, json!({ "m": assistant, "after": last_seen }))
        .await;
    let rest = a.collect("2", 1000).await;
    let mut all = first.clone();
    all.extend(deltas(&rest));
    assert_eq!(
        all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let full: String = (1..=60)
        .map(|i| {
            if i == 1 {
                "word1".to_owned()
            } else {
                format!(" word{i}")
            }
        })
        .collect();
    assert_eq!(joined(&all), full);
    assert_eq!(finished(&rest)["status"], "COMPLETE");

    let other = b.collect("1", 1000).await;
    assert_eq!(
        deltas(&other),
        all,
        "two subscribers see identical sequences"
    );

    // A late subscriber after the end gets the whole replay.
    let mut late = GqlSocket::connect(&chat.app, &chat.user.access).await;
    late.subscribe("3", STREAM, json!({ "m": assistant, "after": 58 }))
        .await;
    let tail = late.collect("3", 100).await;
    assert_eq!(
        deltas(&tail),
        vec![(59, " word59".to_owned()), (60, " word60".to_owned())]
    );
    assert_eq!(finished(&tail)["content"], full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_does_not_stop_the_generation() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "10")]).await;
    let (_, assistant) = chat.sent("/words 30").await;
    let mut socket = GqlSocket::connect(&chat.app, &chat.user.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": assistant }))
        .await;
    assert_eq!(deltas(&socket.collect("1", 2).await).len(), 2);
    drop(socket);
    let m = chat.wait_finished(&assistant).await;
    assert_eq!(m["status"], "COMPLETE");
    assert!(
        m["content"].as_str().is_some_and(|c| c.ends_with("word30")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_keeps_the_partial_text() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "20")]).await;
    let (_, assistant) = chat.sent("/words 500").await;
    let mut socket = GqlSocket::connect(&chat.app, &chat.user.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": assistant }))
        .await;
    let before = deltas(&socket.collect("1", 5).await);
    assert_eq!(before.len(), 5);

    let stop = "mutation($m: ID!) { stopGeneration(messageId: $m) { status content completedAt } }";
    let body = chat
        .app
        .gql_as(Some(&chat.user.access), stop, json!({ "m": assistant }))
        .await;
    let stopped = &body["data"]["stopGeneration"];
    assert_eq!(stopped["status"], "CANCELLED", "{body}");
    let content = stopped["content"].as_str().expect("content");
    assert!(
        content.starts_with("word1 word2 word3 word4 word5"),
        "{content}"
    );
    assert!(!content.contains("word500"), "stopped early");
    assert!(stopped["completedAt"].is_string());

    // The subscriber's stream ends with the same message.
    let rest = socket.collect("1", 1000).await;
    let mut all = before;
    all.extend(deltas(&rest));
    assert_eq!(joined(&all), content, "deltas add up to the kept text");
    assert_eq!(finished(&rest)["status"], "CANCELLED");
    // Stopping again changes nothing.
    let body = chat
        .app
        .gql_as(Some(&chat.user.access), stop, json!({ "m": assistant }))
        .await;
    assert_eq!(body["data"]["stopGeneration"]["content"], content);
}

pub(crate) fn openai_frames(words: &[&str]) -> Vec<String> {
    let mut frames: Vec<String> = words
        .iter()
        .map(|w| format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n", serde_json::to_string(w).expect("json")))
        .collect();
    frames.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".to_owned());
    frames.push("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n".to_owned());
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_upstream_streams_and_a_mid_stream_failure_keeps_the_partial() {
    colloquy::install_crypto_provider();
    let upstream = FakeUpstream::start(vec![
        Script::sse(200, &openai_frames(&["Hello", " from", " upstream"])),
        Script::sse(
            200,
            &openai_frames(&["Partial", " answer", " then", " more"])[..2],
        )
        .end(End::Drop),
    ])
    .await;
    let base = format!("{}/v1", upstream.base_url);
    // Titles come from the echo model, so the upstream sees only the two generations.
    let chat = chat(&[
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test-key"),
        ("TITLE_MODEL", "local/echo"),
    ])
    .await;
    let body = chat
        .send("hi", json!({ "model": "openai/gpt-4o-mini" }))
        .await;
    let assistant = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let m = chat.wait_finished(&assistant).await;
    assert_eq!(m["status"], "COMPLETE", "{m}");
    assert_eq!(m["content"], "Hello from upstream");
    assert_eq!(m["promptTokens"], 11, "provider usage wins");
    assert_eq!(m["completionTokens"], 3);
    let request = &upstream.requests()[0];
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-key"));
    assert_eq!(request.body["model"], "gpt-4o-mini");
    assert_eq!(request.body["messages"].as_array().map(Vec::len), Some(1));
    // The conversation switched model.
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            "query($c: ID!) { conversation(id: $c) { model } }",
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(body["data"]["conversation"]["model"], "openai/gpt-4o-mini");

    let (_, failing) = chat.sent("again").await;
    let m = chat.wait_finished(&failing).await;
    assert_eq!(m["status"], "FAILED", "{m}");
    assert_eq!(m["content"], "Partial answer", "partial text kept");
    let error = m["error"].as_str().expect("error");
    assert!(
        error.contains("openai") && !error.contains("sk-test-key"),
        "{error}"
    );
    // The second request carried the whole branch as context.
    assert_eq!(
        upstream.requests()[1].body["messages"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_with_the_same_key_is_idempotent() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let key = json!({ "clientMessageId": "client-42" });
    let (first, second) = tokio::join!(
        chat.send("once", key.clone()),
        chat.send("once", key.clone())
    );
    let third = chat.send("once", key).await;
    let ids = |b: &Value| {
        (
            b["data"]["sendMessage"]["userMessage"]["id"].clone(),
            b["data"]["sendMessage"]["assistantMessage"]["id"].clone(),
        )
    };
    assert!(ids(&first).0.is_string(), "{first}");
    assert_eq!(ids(&first), ids(&second), "{second}");
    assert_eq!(ids(&first), ids(&third));
    let n: i64 = messages::table
        .count()
        .get_result(&mut chat.app.db().await)
        .await
        .expect("count");
    assert_eq!(n, 2, "one user message and one answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sends_store_nothing() {
    let chat = chat(&[]).await;
    for (content, extra, code) in [
        ("", json!({}), "BAD_USER_INPUT"),
        ("   ", json!({}), "BAD_USER_INPUT"),
        (&*"x".repeat(100_001), json!({}), "BAD_USER_INPUT"),
        ("hi", json!({ "model": "nobody/nothing" }), "BAD_USER_INPUT"),
        (
            "hi",
            json!({ "model": "openai/gpt-4o-mini" }),
            "BAD_USER_INPUT",
        ),
        (
            "hi",
            json!({ "parentId": uuid::Uuid::new_v4() }),
            "BAD_USER_INPUT",
        ),
        ("hi", json!({ "clientMessageId": "" }), "BAD_USER_INPUT"),
    ] {
        let body = chat.send(content, extra.clone()).await;
        expect_error(&body, code);
    }
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            SEND,
            json!({ "i": { "conversationId": uuid::Uuid::new_v4(), "content": "hi" } }),
        )
        .await;
    expect_error(&body, "NOT_FOUND");
    let n: i64 = messages::table
        .count()
        .get_result(&mut chat.app.db().await)
        .await
        .expect("count");
    assert_eq!(n, 0);
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            "query($c: ID!) { conversation(id: $c) { model } }",
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(
        body["data"]["conversation"]["model"], "local/echo",
        "a refused send switches nothing"
    );
    // 100,000 characters is accepted.
    let body = chat.send(&"y".repeat(100_000), json!({})).await;
    assert!(body["errors"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_and_anonymous_subscribers_are_refused() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let (_, assistant) = chat.sent("secret").await;
    let outsider = chat.app.register("nosy@example.com").await;
    let mut socket = GqlSocket::connect(&chat.app, &outsider.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": assistant }))
        .await;
    let events = socket.collect("1", 10).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{events:?}"
    );
    assert!(!events[0].to_string().contains("secret"));
    socket
        .subscribe("2", EVENTS, json!({ "c": chat.conversation }))
        .await;
    let events = socket.collect("2", 10).await;
    assert_eq!(
        events[0]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{events:?}"
    );
    for (query, vars) in [
        (
            "mutation($m: ID!) { stopGeneration(messageId: $m) { id } }",
            json!({ "m": assistant }),
        ),
        (
            "mutation($m: ID!) { regenerateMessage(input: { messageId: $m }) { id } }",
            json!({ "m": assistant }),
        ),
        (
            "mutation($m: ID!) { editMessage(input: { messageId: $m, content: \"x\" }) { userMessage { id } } }",
            json!({ "m": assistant }),
        ),
        (
            "mutation($c: ID!) { sendMessage(input: { conversationId: $c, content: \"x\" }) { userMessage { id } } }",
            json!({ "c": chat.conversation }),
        ),
    ] {
        expect_error(
            &chat.app.gql_as(Some(&outsider.access), query, vars).await,
            "NOT_FOUND",
        );
    }

    // No token: the subscription fails loudly instead of staying silent.
    let mut anonymous = GqlSocket::connect(&chat.app, "").await;
    anonymous
        .subscribe("1", STREAM, json!({ "m": assistant }))
        .await;
    let events = anonymous.collect("1", 10).await;
    assert_eq!(
        events[0]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regenerate_and_edit_make_branches() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let (user, first) = chat.sent("first question").await;
    chat.wait_finished(&first).await;

    let regen =
        "mutation($m: ID!) { regenerateMessage(input: { messageId: $m }) { id parentId status } }";
    let body = chat
        .app
        .gql_as(Some(&chat.user.access), regen, json!({ "m": first }))
        .await;
    let again = body["data"]["regenerateMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    assert_eq!(body["data"]["regenerateMessage"]["parentId"], json!(user));
    let m = chat.wait_finished(&again).await;
    assert_eq!(m["siblings"], json!([{ "id": first }, { "id": again }]));
    expect_error(
        &chat
            .app
            .gql_as(Some(&chat.user.access), regen, json!({ "m": "nope" }))
            .await,
        "BAD_USER_INPUT",
    );

    let edit =
        "mutation($m: ID!, $c: String!) { editMessage(input: { messageId: $m, content: $c }) {
        userMessage { id parentId content } assistantMessage { id parentId } } }";
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            edit,
            json!({ "m": user, "c": "better question" }),
        )
        .await;
    let payload = &body["data"]["editMessage"];
    let edited = payload["userMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    assert_eq!(
        payload["userMessage"]["parentId"],
        Value::Null,
        "a sibling of the original root"
    );
    let answer = payload["assistantMessage"]["id"]
        .as_str()
        .expect("answer")
        .to_owned();
    chat.wait_finished(&answer).await;
    expect_error(
        &chat
            .app
            .gql_as(
                Some(&chat.user.access),
                edit,
                json!({ "m": first, "c": "x" }),
            )
            .await,
        "BAD_USER_INPUT",
    );

    let branch =
        "query($c: ID!) { conversation(id: $c) { messages { edges { node { id content } } } } }";
    let contents = |body: Value| -> Vec<String> {
        body["data"]["conversation"]["messages"]["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["node"]["content"].as_str().expect("c").to_owned())
            .collect()
    };
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            branch,
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(contents(body), ["better question", "Echo: better question"]);
    // The old branch stays: select it again.
    chat.app
        .gql_as(
            Some(&chat.user.access),
            "mutation($m: ID!) { selectBranch(messageId: $m) { id } }",
            json!({ "m": user }),
        )
        .await;
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            branch,
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(contents(body), ["first question", "Echo: first question"]);
    let m = chat.message(&edited).await;
    assert_eq!(m["siblings"], json!([{ "id": user }, { "id": edited }]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reply_gets_a_title() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let mut feed = GqlSocket::connect(&chat.app, &chat.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": chat.conversation }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    chat.sent("Plan a trip to Lisbon in spring").await;
    let updated = loop {
        let m = feed.next().await.expect("event");
        let e = &m["payload"]["data"]["conversationEvents"];
        if e["__typename"] == "ConversationUpdated" {
            break e["conversation"].clone();
        }
    };
    let title = updated["title"].as_str().expect("title");
    assert!(
        !title.is_empty() && title.split_whitespace().count() <= 8,
        "{title}"
    );
    assert_eq!(updated["id"], json!(chat.conversation));
    // The job is gone once done (the event goes out just before the job's row is deleted).
    let mut jobs = -1i64;
    for _ in 0..100 {
        jobs = colloquy::db::schema::jobs::table
            .count()
            .get_result(&mut chat.app.db().await)
            .await
            .expect("count");
        if jobs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(jobs, 0, "the title job is deleted once done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovery_fails_unfinished_generations() {
    // Background reaping out of the way: this test calls the reaper itself.
    let chat = chat(&[
        ("HEARTBEAT_INTERVAL_SECS", "600"),
        ("HEARTBEAT_TIMEOUT_SECS", "1800"),
    ])
    .await;
    let app = &chat.app;
    let user = app
        .insert_message(&chat.conversation, None, "USER", "question")
        .await;
    let dead = app.fake_instance(Duration::from_secs(3600)).await;
    let live = app.fake_instance(Duration::ZERO).await;
    // No runner recorded, a runner that stopped beating, a runner still beating.
    let partial = app
        .insert_generation(&chat.conversation, &user, "half an ans", None)
        .await;
    let of_dead = app
        .insert_generation(&chat.conversation, &user, "left behind", Some(dead))
        .await;
    let of_live = app
        .insert_generation(&chat.conversation, &user, "still going", Some(live))
        .await;
    let reaped = colloquy::streaming::instances::reap(&app.state.app)
        .await
        .expect("reap");
    assert_eq!(reaped, 2);
    for (id, content) in [(partial, "half an ans"), (of_dead, "left behind")] {
        let m = chat.message(&id.to_string()).await;
        assert_eq!(m["status"], "FAILED");
        assert_eq!(m["content"], content);
        assert_eq!(
            m["error"], "the server running the generation stopped",
            "{m}"
        );
        assert!(m["completedAt"].is_string());
    }
    let m = chat.message(&of_live.to_string()).await;
    assert_eq!(
        m["status"], "STREAMING",
        "a live server's generation is left alone"
    );
    assert!(m["completedAt"].is_null());
    // Reaping again finds nothing: each orphan is reaped once.
    let again = colloquy::streaming::instances::reap(&app.state.app)
        .await
        .expect("reap");
    assert_eq!(again, 0);
    let partial = partial.to_string();

    // A message the hub never knew replays from Postgres: its content as one delta.
    let mut socket = GqlSocket::connect(&chat.app, &chat.user.access).await;
    socket.subscribe("1", STREAM, json!({ "m": partial })).await;
    let events = socket.collect("1", 10).await;
    assert_eq!(deltas(&events), vec![(1, "half an ans".to_owned())]);
    assert_eq!(finished(&events)["status"], "FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_transport() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "5")]).await;
    let (_, assistant) = chat.sent("over sse").await;
    let response = chat
        .app
        .client
        .post(chat.app.url("/graphql/stream"))
        .bearer_auth(&chat.user.access)
        .header("accept", "text/event-stream")
        .json(&json!({ "query": STREAM, "variables": { "m": assistant } }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream"))
    );
    let body = response.text().await.expect("body");
    // Parse the event stream: `event: next` with a JSON result, and a final `event: complete`.
    let mut events = Vec::new();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("message");
        let data: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
            .collect();
        events.push((name.to_owned(), data));
    }
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(last.0, "complete", "{body}");
    let results: Vec<Value> = rest
        .iter()
        .filter(|(name, _)| name == "next")
        .map(|(_, data)| serde_json::from_str(data).expect("json result"))
        .collect();
    let got = deltas(&results);
    assert_eq!(joined(&got), "Echo: over sse");
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(finished(&results)["status"], "COMPLETE");

    // Without the Accept header: 406; without a token: the error arrives as a result.
    let response = chat
        .app
        .client
        .post(chat.app.url("/graphql/stream"))
        .json(&json!({ "query": STREAM, "variables": { "m": assistant } }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 406);
    let body = chat
        .app
        .client
        .post(chat.app.url("/graphql/stream"))
        .header("accept", "text/event-stream")
        .json(&json!({ "query": STREAM, "variables": { "m": assistant } }))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body");
    assert!(
        body.contains("UNAUTHENTICATED") && body.contains("event: complete"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_access_ends() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let owner_ws = chat.app.create_workspace(&chat.user, "Shared").await;
    let guest = chat.app.register("guest2@example.com").await;
    chat.app
        .add_member(&chat.user, &owner_ws, "guest2@example.com", "MEMBER")
        .await;
    let shared = chat
        .app
        .create_conversation(&chat.user, &owner_ws, "shared")
        .await;
    // A second session of the owner, logged out later, and a member removed later.
    let other = crate::common::session_from(
        &chat
            .app
            .login("stream@example.com", crate::common::PASSWORD)
            .await,
        "login",
    );
    let mut owner_feed = GqlSocket::connect(&chat.app, &other.access).await;
    owner_feed
        .subscribe("1", EVENTS, json!({ "c": shared }))
        .await;
    let mut guest_feed = GqlSocket::connect(&chat.app, &guest.access).await;
    guest_feed
        .subscribe("1", EVENTS, json!({ "c": shared }))
        .await;
    // Past the re-check interval, access ends for both.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    chat.app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": other.refresh }),
        )
        .await;
    let remove =
        "mutation($w: ID!, $u: ID!) { removeWorkspaceMember(workspaceId: $w, userId: $u) }";
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            remove,
            json!({ "w": owner_ws, "u": guest.user_id }),
        )
        .await;
    assert_eq!(body["data"]["removeWorkspaceMember"], true, "{body}");
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            SEND,
            json!({ "i": { "conversationId": shared, "content": "after" } }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let owner_events = owner_feed.collect("1", 50).await;
    let last = owner_events.last().expect("an error ends the stream");
    assert_eq!(
        last["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{owner_events:?}"
    );
    assert!(
        !last.to_string().contains("after"),
        "nothing delivered after logout"
    );
    let guest_events = guest_feed.collect("1", 50).await;
    let last = guest_events.last().expect("an error ends the stream");
    assert_eq!(
        last["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{guest_events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_chain_instead_of_forking() {
    let chat = chat(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let (a, b) = tokio::join!(
        chat.send("first", json!({})),
        chat.send("second", json!({}))
    );
    for body in [&a, &b] {
        let id = body["data"]["sendMessage"]["assistantMessage"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"));
        chat.wait_finished(id).await;
    }
    let branch = "query($c: ID!) { conversation(id: $c) { messageCount messages { edges { node { content } } } } }";
    let body = chat
        .app
        .gql_as(
            Some(&chat.user.access),
            branch,
            json!({ "c": chat.conversation }),
        )
        .await;
    assert_eq!(
        body["data"]["conversation"]["messageCount"], 4,
        "both turns on one branch: {body}"
    );
}

//! Scale-out: several server processes on one Postgres. Heartbeats, the background reaper of
//! dead processes' generations, stopGeneration received by a process that does not run the
//! generation, and `contentSeq`.

use std::time::{Duration, Instant};

use colloquy::db::schema::{instances, usage_records};
use colloquy::streaming::instances::Instance;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::ws::GqlSocket;
use crate::common::{Session, TestApp};
use crate::streaming::{deltas, finished, joined};

const SEND: &str =
    "mutation($c: ID!, $t: String!) { sendMessage(input: { conversationId: $c, content: $t }) {
    assistantMessage { id } } }";
const STOP: &str = "mutation($m: ID!) { stopGeneration(messageId: $m) { status content contentSeq error completedAt } }";
const MESSAGE: &str =
    "query($m: ID!) { message(id: $m) { status content contentSeq error completedAt } }";
const STREAM: &str =
    "subscription($m: ID!, $after: Int) { messageStream(messageId: $m, afterSeq: $after) {
    __typename
    ... on MessageDelta { seq text }
    ... on MessageFinished { message { status content contentSeq error } } } }";
const QUOTA: &str = "query($w: ID!) { workspace(id: $w) { quota { tokensUsed tokensReserved } } }";

/// Heartbeats every second, dead after three: the background reaper acts within seconds.
const FAST_HEARTBEAT: [(&str, &str); 2] = [
    ("HEARTBEAT_INTERVAL_SECS", "1"),
    ("HEARTBEAT_TIMEOUT_SECS", "3"),
];
/// No background reaping during the test (the start-up kind is not run by `TestApp`).
const SLOW_HEARTBEAT: [(&str, &str); 2] = [
    ("HEARTBEAT_INTERVAL_SECS", "600"),
    ("HEARTBEAT_TIMEOUT_SECS", "1800"),
];

struct Chat {
    user: Session,
    workspace: String,
    conversation: String,
}

async fn chat(app: &TestApp) -> Chat {
    let user = app.register("scale@example.com").await;
    let workspace = app.personal_workspace(&user).await;
    let conversation = app.create_conversation(&user, &workspace, "").await;
    Chat {
        user,
        workspace,
        conversation,
    }
}

async fn message(app: &TestApp, s: &Session, id: &str) -> Value {
    let body = app
        .gql_as(Some(&s.access), MESSAGE, json!({ "m": id }))
        .await;
    body["data"]["message"].clone()
}

async fn quota(app: &TestApp, c: &Chat) -> Value {
    let body = app
        .gql_as(Some(&c.user.access), QUOTA, json!({ "w": c.workspace }))
        .await;
    body["data"]["workspace"]["quota"].clone()
}

/// Reserves quota for a generation inserted by hand, as the send path would: 10 prompt
/// tokens plus 100 of output.
async fn reserve(app: &TestApp, c: &Chat, message_id: uuid::Uuid) {
    colloquy::usage::quota::reserve(
        &mut app.db().await,
        &colloquy::usage::quota::ReserveRequest {
            workspace_id: c.workspace.parse().expect("uuid"),
            user_id: c.user.user_id.parse().expect("uuid"),
            message_id,
            model: "local/echo",
            prompt_tokens: 10,
            max_output_tokens: 100,
            ttl: Duration::from_secs(600),
        },
    )
    .await
    .expect("reserve");
}

/// The ledger row of a generation: (prompt, completion, estimated).
async fn ledger(app: &TestApp, message_id: uuid::Uuid) -> Option<(i64, i64, bool)> {
    usage_records::table
        .filter(usage_records::message_id.eq(message_id))
        .select((
            usage_records::prompt_tokens,
            usage_records::completion_tokens,
            usage_records::estimated,
        ))
        .first(&mut app.db().await)
        .await
        .optional()
        .expect("ledger")
}

async fn heartbeat_of(app: &TestApp, id: uuid::Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    Instance::find(&mut app.db().await, id)
        .await
        .expect("find instance")
        .map(|i| i.heartbeat_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instance_refreshes_its_heartbeat_and_leaves_on_shutdown() {
    let app = TestApp::spawn_with(&FAST_HEARTBEAT).await;
    let me = app.state.app.instance_id;
    let first = heartbeat_of(&app, me).await.expect("registered at start");
    let row = Instance::find(&mut app.db().await, me)
        .await
        .expect("find")
        .expect("row");
    assert_eq!(row.pid, std::process::id() as i32);
    assert!(!row.hostname.is_empty());
    let mut moved = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if heartbeat_of(&app, me).await.expect("still registered") > first {
            moved = true;
            break;
        }
    }
    assert!(moved, "the heartbeat moved within 5 s");
    assert!(
        Instance::is_live(&mut app.db().await, me, Duration::from_secs(3))
            .await
            .expect("is_live")
    );

    // A peer registers too, and deletes its row when it shuts down cleanly.
    let peer = app.spawn_peer(&FAST_HEARTBEAT).await;
    let peer_id = peer.state.app.instance_id;
    assert_ne!(peer_id, me);
    assert!(heartbeat_of(&app, peer_id).await.is_some());
    drop(peer);
    let mut gone = false;
    for _ in 0..100 {
        if heartbeat_of(&app, peer_id).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the peer's row was deleted at shutdown");
    assert!(heartbeat_of(&app, me).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_generation_is_reaped_in_the_background() {
    let app = TestApp::spawn_with(&FAST_HEARTBEAT).await;
    let c = chat(&app).await;
    let question = app
        .insert_message(&c.conversation, None, "USER", "question")
        .await;
    // A server that beats now and never again: dead three seconds later.
    let runner = app.fake_instance(Duration::ZERO).await;
    let id = app
        .insert_generation(
            &c.conversation,
            &question,
            "partial words here",
            Some(runner),
        )
        .await;
    reserve(&app, &c, id).await;
    assert_eq!(quota(&app, &c).await["tokensReserved"], 110);

    // A subscriber waits for the end of a generation no hub here knows.
    let mut socket = GqlSocket::connect(&app, &c.user.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": id.to_string() }))
        .await;
    let events = socket.collect("1", 10).await;
    let end = finished(&events);
    assert_eq!(end["status"], "FAILED", "{events:?}");
    assert_eq!(end["content"], "partial words here");
    assert_eq!(end["error"], "the server running the generation stopped");
    assert_eq!(joined(&deltas(&events)), "partial words here");

    // Not before its runner was dead.
    let (reaped_at, last_beat): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        colloquy::db::schema::messages::table
            .inner_join(
                instances::table.on(instances::id
                    .nullable()
                    .eq(colloquy::db::schema::messages::runner_instance)),
            )
            .filter(colloquy::db::schema::messages::id.eq(id))
            .select((
                colloquy::db::schema::messages::completed_at.assume_not_null(),
                instances::heartbeat_at,
            ))
            .first(&mut app.db().await)
            .await
            .expect("reaped message and its runner");
    assert!(
        reaped_at >= last_beat + chrono::Duration::seconds(3),
        "reaped at {reaped_at}, last heartbeat {last_beat}"
    );

    // Its reservation settled to the partial text, once.
    let q = quota(&app, &c).await;
    assert_eq!(q["tokensReserved"], 0, "{q}");
    assert_eq!(q["tokensUsed"], 13, "{q}");
    assert_eq!(ledger(&app, id).await, Some((10, 3, true)));
    // Our own server, beating, is never reaped: nothing else changes.
    assert!(
        Instance::is_live(
            &mut app.db().await,
            app.state.app.instance_id,
            Duration::from_secs(3)
        )
        .await
        .expect("is_live")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_received_by_another_server_without_redis_uses_the_durable_flag() {
    // No Redis: the hubs are each in their own process, so only the flag in Postgres can
    // carry the stop from B to the runner on A.
    let settings = [("REDIS_URL", ""), ("ECHO_TOKEN_DELAY_MS", "10")];
    let a = TestApp::spawn_with(&settings).await;
    let b = a.spawn_peer(&settings).await;
    assert!(a.state.app.redis.is_none() && b.state.app.redis.is_none());
    let c = chat(&a).await;
    let body = a
        .gql_as(
            Some(&c.user.access),
            SEND,
            json!({ "c": c.conversation, "t": "/words 400" }),
        )
        .await;
    let id = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    // Let some text flow on A.
    for _ in 0..100 {
        if message(&a, &c.user, &id).await["contentSeq"]
            .as_i64()
            .is_some_and(|n| n > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let asked = Instant::now();
    let body = b
        .gql_as(Some(&c.user.access), STOP, json!({ "m": id }))
        .await;
    let took = asked.elapsed();
    let stopped = &body["data"]["stopGeneration"];
    assert_eq!(stopped["status"], "CANCELLED", "{body}");
    assert!(
        took < Duration::from_secs(3),
        "A stopped within its next flush: {took:?}"
    );
    let content = stopped["content"].as_str().expect("content");
    assert!(content.starts_with("word1 word2"), "{content}");
    assert!(!content.contains("word400"), "stopped early: {content}");
    assert!(stopped["error"].is_null());
    // The final write holds the whole kept text and says how many deltas it holds.
    assert_eq!(
        stopped["contentSeq"].as_u64(),
        Some(content.split_whitespace().count() as u64)
    );
    // And A settled it.
    for _ in 0..100 {
        if quota(&a, &c).await["tokensReserved"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(quota(&a, &c).await["tokensReserved"], 0);
    assert!(ledger(&a, id.parse().expect("uuid")).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_dead_servers_generation_cancels_it_at_once_and_settles() {
    let app = TestApp::spawn_with(&SLOW_HEARTBEAT).await;
    let c = chat(&app).await;
    let question = app
        .insert_message(&c.conversation, None, "USER", "question")
        .await;
    let dead = app.fake_instance(Duration::from_secs(3600)).await;
    let id = app
        .insert_generation(&c.conversation, &question, "partial words here", Some(dead))
        .await;
    reserve(&app, &c, id).await;

    let asked = Instant::now();
    let body = app
        .gql_as(Some(&c.user.access), STOP, json!({ "m": id.to_string() }))
        .await;
    let took = asked.elapsed();
    let stopped = &body["data"]["stopGeneration"];
    assert_eq!(stopped["status"], "CANCELLED", "{body}");
    assert_eq!(stopped["content"], "partial words here");
    assert!(stopped["error"].is_null());
    assert!(stopped["completedAt"].is_string());
    assert!(
        took < Duration::from_secs(2),
        "no waiting for a dead server: {took:?}"
    );

    let q = quota(&app, &c).await;
    assert_eq!(q["tokensReserved"], 0, "{q}");
    assert_eq!(q["tokensUsed"], 13, "{q}");
    assert_eq!(ledger(&app, id).await, Some((10, 3, true)));
    // The conversation shows the kept text.
    let body = app
        .gql_as(
            Some(&c.user.access),
            "query($c: ID!) { conversation(id: $c) { preview } }",
            json!({ "c": c.conversation }),
        )
        .await;
    assert_eq!(
        body["data"]["conversation"]["preview"],
        "partial words here"
    );
    // Stopping again changes nothing.
    let body = app
        .gql_as(Some(&c.user.access), STOP, json!({ "m": id.to_string() }))
        .await;
    assert_eq!(body["data"]["stopGeneration"]["status"], "CANCELLED");
    assert_eq!(quota(&app, &c).await["tokensUsed"], 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_seq_tells_where_the_live_stream_continues() {
    let app = TestApp::spawn_with(&[("ECHO_TOKEN_DELAY_MS", "10")]).await;
    let c = chat(&app).await;
    let body = app
        .gql_as(
            Some(&c.user.access),
            SEND,
            json!({ "c": c.conversation, "t": "/words 300" }),
        )
        .await;
    let id = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();

    // Mid-stream: a flushed prefix, and how many deltas it holds.
    let mut read = Value::Null;
    for _ in 0..100 {
        read = message(&app, &c.user, &id).await;
        if read["contentSeq"].as_i64().is_some_and(|n| n > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read["status"], "STREAMING", "{read}");
    let seq = read["contentSeq"].as_i64().expect("contentSeq");
    assert!(seq > 0 && seq < 300, "{read}");
    let prefix = read["content"].as_str().expect("content").to_owned();
    assert_eq!(prefix.split_whitespace().count() as i64, seq, "{read}");

    // Continuing from there: no delta lost or repeated.
    let mut socket = GqlSocket::connect(&app, &c.user.access).await;
    socket
        .subscribe("1", STREAM, json!({ "m": id, "after": seq }))
        .await;
    let events = socket.collect("1", 1000).await;
    let rest = deltas(&events);
    assert_eq!(rest.iter().map(|(s, _)| *s).next(), Some(seq + 1));
    let end = finished(&events);
    assert_eq!(end["status"], "COMPLETE");
    assert_eq!(format!("{prefix}{}", joined(&rest)), end["content"]);

    // Finished: contentSeq is the number of deltas.
    let mut socket = GqlSocket::connect(&app, &c.user.access).await;
    socket.subscribe("2", STREAM, json!({ "m": id })).await;
    let all = deltas(&socket.collect("2", 1000).await);
    assert_eq!(all.len(), 300);
    let m = message(&app, &c.user, &id).await;
    assert_eq!(m["contentSeq"], 300, "{m}");
    assert_eq!(end["contentSeq"], 300);
}

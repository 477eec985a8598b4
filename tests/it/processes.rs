//! Several real `colloquy` processes on one Postgres and one Redis (scale-out): one rate
//! limit for all, a stream that crosses processes (send on one, subscribe on another, stop
//! from a third, resume on a third), a crashed owner whose generation a survivor fails, and a
//! graceful stop of one process while the others serve on.
//!
//! Processes are numbered P1, P2, P3 as in the issue; `procs[0]` is P1.

use std::future::Future;
use std::time::Duration;

use colloquy::db::schema::usage_records;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::own_redis::OwnRedis;
use crate::common::process::ServerProcess;
use crate::common::ws::GqlSocket;
use crate::common::{Client, Session, TestApp, expect_error};
use crate::metrics::sample;
use crate::ratelimit::query;
use crate::streaming::{EVENTS, SEND, STREAM, deltas, finished, joined};

/// Heartbeats every second; an owner silent for 3 s is dead, so crashes are noticed quickly.
const HEARTBEAT: [(&str, &str); 2] = [
    ("HEARTBEAT_INTERVAL_SECS", "1"),
    ("HEARTBEAT_TIMEOUT_SECS", "3"),
];
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Every word of `local/echo` takes 10 ms.
const ECHO_10_MS: (&str, &str) = ("ECHO_TOKEN_DELAY_MS", "10");

const MESSAGE: &str = "query($m: ID!) { message(id: $m) { id status content error } }";
const QUOTA: &str = "query($w: ID!) { workspace(id: $w) { quota { tokensUsed tokensReserved } } }";
const USAGE_UPDATED: &str =
    "subscription($w: ID!) { usageUpdated(workspaceId: $w) { tokensUsed tokensReserved } }";
const STOP: &str = "mutation($m: ID!) { stopGeneration(messageId: $m) { status content } }";

/// `future`'s output, or a panic saying `what` did not happen within `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// What `local/echo` answers to `/words n`.
fn words(n: usize) -> String {
    (1..=n)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn seqs(deltas: &[(i64, String)]) -> Vec<i64> {
    deltas.iter().map(|(seq, _)| *seq).collect()
}

/// `messageStream` results in short, for failure messages: `seq`, `Finished STATUS` or the
/// errors.
fn outline(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let event = &e["data"]["messageStream"];
            match event["__typename"].as_str() {
                Some("MessageDelta") => event["seq"].to_string(),
                Some("MessageFinished") => format!("Finished {}", event["message"]["status"]),
                _ => e.to_string(),
            }
        })
        .collect()
}

/// The rest of the stream on `socket`, up to its end within `limit` (else a panic saying
/// `what`): deltas numbered on from `next_seq` with no gap or duplicate, and the message of
/// `MessageFinished`.
async fn rest_of_stream(
    socket: &mut GqlSocket,
    next_seq: i64,
    limit: Duration,
    what: &str,
) -> (Vec<(i64, String)>, Value) {
    let events = within(limit, what, socket.collect("s", 100_000)).await;
    let got = deltas(&events);
    assert_eq!(
        seqs(&got),
        (next_seq..next_seq + got.len() as i64).collect::<Vec<_>>(),
        "every delta once, in order: {:?}",
        outline(&events)
    );
    (got, finished(&events))
}

/// A `TestApp`, which owns the database (dropped at the end, even after a panic), and `n`
/// processes over it. The `TestApp`'s in-process server joins the cluster with the same
/// settings; the tests talk to the processes only.
async fn start(n: usize, overrides: &[(&str, &str)]) -> (TestApp, Vec<ServerProcess>) {
    let mut vars = HEARTBEAT.to_vec();
    vars.extend_from_slice(overrides);
    let app = TestApp::spawn_with(&vars).await;
    let procs =
        futures_util::future::join_all((0..n).map(|_| ServerProcess::start(&app.db_name, &vars)))
            .await;
    (app, procs)
}

/// `n` processes and a user with a conversation, made on P1. A token is valid on every
/// process: they share the JWT secret.
struct Cluster {
    /// Before `app`: the processes stop before the database is dropped.
    procs: Vec<ServerProcess>,
    app: TestApp,
    user: Session,
    workspace: String,
    conversation: String,
}

async fn cluster(n: usize, overrides: &[(&str, &str)]) -> Cluster {
    let (app, procs) = start(n, overrides).await;
    let user = procs[0].register("procs@example.com").await;
    let workspace = procs[0].personal_workspace(&user).await;
    let conversation = procs[0].create_conversation(&user, &workspace, "").await;
    Cluster {
        procs,
        app,
        user,
        workspace,
        conversation,
    }
}

impl Cluster {
    /// Sends `content` through `on`; returns the assistant message's id.
    async fn send(&self, on: &Client, content: &str) -> String {
        let body = on
            .gql_as(
                Some(&self.user.access),
                SEND,
                json!({ "i": { "conversationId": self.conversation, "content": content } }),
            )
            .await;
        body["data"]["sendMessage"]["assistantMessage"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("sendMessage failed: {body}"))
            .to_owned()
    }

    async fn message(&self, on: &Client, id: &str) -> Value {
        let body = on
            .gql_as(Some(&self.user.access), MESSAGE, json!({ "m": id }))
            .await;
        assert!(body["data"]["message"].is_object(), "{body}");
        body["data"]["message"].clone()
    }

    async fn quota(&self, on: &Client) -> Value {
        let body = on
            .gql_as(
                Some(&self.user.access),
                QUOTA,
                json!({ "w": self.workspace }),
            )
            .await;
        assert!(body["data"]["workspace"]["quota"].is_object(), "{body}");
        body["data"]["workspace"]["quota"].clone()
    }

    /// Polls `on` until no tokens are reserved (every reservation settled), for up to `limit`.
    async fn wait_settled(&self, on: &Client, limit: Duration) -> Value {
        within(limit, "quota reservations settled", async {
            loop {
                let quota = self.quota(on).await;
                if quota["tokensReserved"] == 0 {
                    return quota;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }

    /// A socket on `on` subscribed (as "s") to `messageStream` of `id` after `after_seq`.
    async fn stream(&self, on: &Client, id: &str, after_seq: i64) -> GqlSocket {
        let mut socket = GqlSocket::connect_addr(on.addr, &self.user.access).await;
        socket
            .subscribe("s", STREAM, json!({ "m": id, "after": after_seq }))
            .await;
        socket
    }

    /// The first `n` deltas of `socket`'s stream, live while the generation runs.
    async fn first_deltas(&self, socket: &mut GqlSocket, n: usize) -> Vec<(i64, String)> {
        let events = within(
            Duration::from_secs(10),
            "the first deltas on the subscriber's process",
            socket.collect("s", n),
        )
        .await;
        let got = deltas(&events);
        assert_eq!(
            seqs(&got),
            (1..=n as i64).collect::<Vec<_>>(),
            "live deltas, in order: {:?}",
            outline(&events)
        );
        got
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rate_limit_across_processes() {
    let (_app, procs) = start(2, &[("RATE_LIMIT_QUERIES_PER_MIN", "4")]).await;
    let (p1, p2): (&Client, &Client) = (&procs[0], &procs[1]);
    let user = p1.register("limited@example.com").await;
    let me = |on| query(on, Some(&user.access), "{ me { email } }");
    for (i, on) in [p1, p2, p1, p2].into_iter().enumerate() {
        let (status, _, body) = me(on).await;
        assert_eq!(status, StatusCode::OK, "query {i}: {body}");
        assert_eq!(body["data"]["me"]["email"], "limited@example.com");
    }
    for on in [p1, p2] {
        let (status, _, body) = me(on).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        expect_error(&body, "RATE_LIMITED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_one_send_on_another() {
    let c = cluster(2, &[ECHO_10_MS]).await;
    let (p1, p2) = (&c.procs[0], &c.procs[1]);
    let mut feed = GqlSocket::connect_addr(p2.addr, &c.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": c.conversation }))
        .await;
    feed.subscribe("usage", USAGE_UPDATED, json!({ "w": c.workspace }))
        .await;
    // Nothing acknowledges a subscription: give both 300 ms to be registered (here and
    // through Redis) before the send, as tests/it/streaming.rs does.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let assistant = c.send(p1, "/words 60").await;
    let mut stream = c.stream(p2, &assistant, 0).await;
    let (got, end) = rest_of_stream(
        &mut stream,
        1,
        Duration::from_secs(20),
        "messageStream on P2 to end",
    )
    .await;
    assert_eq!(got.len(), 60, "one delta a word");
    assert_eq!(end["status"], "COMPLETE", "{end}");
    assert_eq!(end["content"], words(60));
    assert_eq!(joined(&got), words(60));

    // The conversation feed and the usage feed on P2 saw what happened on P1.
    let mut kinds = Vec::new();
    let mut feed_deltas = Vec::new();
    let mut usage = Vec::new();
    within(
        Duration::from_secs(20),
        "conversationEvents and usageUpdated on P2",
        async {
            let mut ended = false;
            let mut settled = false;
            while !(ended && settled) {
                let m = feed.next().await.expect("the feed stays open");
                assert_eq!(m["type"], "next", "{m}");
                if m["id"] == "usage" {
                    let quota = m["payload"]["data"]["usageUpdated"].clone();
                    settled = quota["tokensReserved"] == 0
                        && quota["tokensUsed"].as_i64().is_some_and(|n| n > 0);
                    usage.push(quota);
                    continue;
                }
                let e = &m["payload"]["data"]["conversationEvents"];
                let kind = e["__typename"].as_str().unwrap_or_default().to_owned();
                match kind.as_str() {
                    "MessageDelta" if e["messageId"] == assistant.as_str() => {
                        feed_deltas.push(e["seq"].as_i64().expect("seq"));
                    }
                    "MessageFinished" if e["message"]["id"] == assistant.as_str() => {
                        assert_eq!(e["message"]["status"], "COMPLETE", "{e}");
                        ended = true;
                    }
                    _ => {}
                }
                kinds.push(kind);
            }
        },
    )
    .await;
    assert!(
        kinds.len() >= 2 && kinds[..2] == ["MessageCreated", "MessageCreated"],
        "both messages created first: {kinds:?}"
    );
    assert_eq!(feed_deltas, (1..=60).collect::<Vec<_>>(), "{kinds:?}");
    assert!(
        usage.len() >= 2,
        "usageUpdated fires after the send, not only at first: {usage:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_from_a_third_process() {
    let c = cluster(3, &[ECHO_10_MS]).await;
    let (p1, p2, p3) = (&c.procs[0], &c.procs[1], &c.procs[2]);
    let assistant = c.send(p1, "/words 400").await;
    let mut stream = c.stream(p2, &assistant, 0).await;
    let before = c.first_deltas(&mut stream, 5).await;

    let body = within(
        Duration::from_secs(5),
        "stopGeneration on P3 to return",
        p3.gql_as(Some(&c.user.access), STOP, json!({ "m": assistant })),
    )
    .await;
    let stopped = &body["data"]["stopGeneration"];
    assert_eq!(stopped["status"], "CANCELLED", "{body}");
    let content = stopped["content"].as_str().expect("content");
    assert!(content.starts_with(&words(5)), "{content}");
    assert!(!content.contains("word400"), "stopped early: {content}");

    // P2's subscriber ends with the same text it was sent.
    let (rest, end) = rest_of_stream(
        &mut stream,
        6,
        Duration::from_secs(5),
        "MessageFinished on P2 after the stop",
    )
    .await;
    let mut all = before;
    all.extend(rest);
    assert_eq!(end["status"], "CANCELLED", "{end}");
    assert_eq!(end["content"], content);
    assert_eq!(joined(&all), content, "the deltas add up to the kept text");

    // The owner itself stopped (not only the row): P1 counts a cancelled generation.
    within(
        Duration::from_secs(5),
        "P1 to count the generation CANCELLED",
        async {
            loop {
                let text = p1
                    .client
                    .get(p1.url("/metrics"))
                    .send()
                    .await
                    .expect("metrics")
                    .text()
                    .await
                    .expect("text");
                let cancelled = sample(
                    &text,
                    "colloquy_generations_total",
                    &["status=\"CANCELLED\""],
                );
                if cancelled.is_some_and(|n| n >= 1.0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_processes() {
    let c = cluster(3, &[ECHO_10_MS]).await;
    let (p1, p2, p3) = (&c.procs[0], &c.procs[1], &c.procs[2]);
    let assistant = c.send(p1, "/words 200").await;
    let mut first_socket = c.stream(p2, &assistant, 0).await;
    let first = c.first_deltas(&mut first_socket, 20).await;
    first_socket.close().await;

    let mut resumed = c.stream(p3, &assistant, 20).await;
    let (rest, end) = rest_of_stream(
        &mut resumed,
        21,
        Duration::from_secs(20),
        "the rest of the stream on P3",
    )
    .await;
    assert_eq!(rest.len(), 180, "every delta after 20, once");
    assert_eq!(end["status"], "COMPLETE", "{end}");
    assert_eq!(end["content"], words(200));
    assert_eq!(joined(&first) + &joined(&rest), words(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_is_failed_by_a_survivor() {
    let mut c = cluster(2, &[ECHO_10_MS]).await;
    let assistant = c.send(&c.procs[0], "/words 2000").await;
    let mut stream = c.stream(&c.procs[1], &assistant, 0).await;
    c.first_deltas(&mut stream, 30).await;
    // The owner writes its partial text to Postgres about once a second: wait until some is
    // there, so that a survivor has text to keep whether it reads Postgres or Redis.
    within(
        Duration::from_secs(5),
        "a partial text flushed by P1",
        async {
            while c.message(&c.procs[1], &assistant).await["content"] == "" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;

    c.procs[0].kill().await;
    let p2 = &c.procs[1];
    let (_, end) = rest_of_stream(
        &mut stream,
        31,
        HEARTBEAT_TIMEOUT + Duration::from_secs(7),
        "MessageFinished on P2 after P1 was killed",
    )
    .await;
    assert_eq!(end["status"], "FAILED", "{end}");

    let m = c.message(p2, &assistant).await;
    assert_eq!(m["status"], "FAILED", "{m}");
    let content = m["content"].as_str().expect("content");
    assert!(
        content.starts_with("word1"),
        "the partial text is kept: {m}"
    );
    assert!(!content.contains("word2000"), "{m}");

    // Its reservation is settled, once.
    c.wait_settled(p2, Duration::from_secs(5)).await;
    let message_id: uuid::Uuid = assistant.parse().expect("uuid");
    let records: i64 = usage_records::table
        .filter(usage_records::message_id.eq(message_id))
        .count()
        .get_result(&mut c.app.db().await)
        .await
        .expect("count usage records");
    assert_eq!(records, 1, "settled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_of_one_process() {
    let mut c = cluster(2, &[ECHO_10_MS, ("SHUTDOWN_GRACE_SECS", "3")]).await;
    let assistant = c.send(&c.procs[0], "/words 2000").await;
    let mut stream = c.stream(&c.procs[1], &assistant, 0).await;
    let before = c.first_deltas(&mut stream, 30).await;

    let status = c.procs[0].terminate().await;
    assert!(status.success(), "a graceful stop exits 0, got {status}");
    let p2 = &c.procs[1];
    // P1 wrote the end before it exited: P2 relays it at once, no heartbeat timeout.
    let (rest, end) = rest_of_stream(
        &mut stream,
        31,
        Duration::from_secs(2),
        "MessageFinished on P2 after P1's SIGTERM",
    )
    .await;
    assert_eq!(end["status"], "FAILED", "{end}");
    assert!(
        end["error"]
            .as_str()
            .is_some_and(|e| e.contains("shut down")),
        "failed by the shutdown path: {end}"
    );
    let mut all = before;
    all.extend(rest);
    assert_eq!(end["content"], joined(&all), "the partial text is kept");
    c.wait_settled(p2, Duration::from_secs(5)).await;

    // P2 serves on: a new answer streams to the end.
    let next = c.send(p2, "/words 3").await;
    let mut socket = c.stream(p2, &next, 0).await;
    let (_, end) = rest_of_stream(
        &mut socket,
        1,
        Duration::from_secs(10),
        "a new answer on P2",
    )
    .await;
    assert_eq!(end["status"], "COMPLETE", "{end}");
    assert_eq!(end["content"], words(3));
}

/// The harness itself: a process that cannot start fails the test with its own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "BIND_ADDR")]
async fn a_process_that_cannot_start_fails_with_its_output() {
    // The configuration is refused before any database is opened.
    ServerProcess::start("colloquy_never_created", &[("BIND_ADDR", "nowhere")]).await;
}

const CONTENT_SEQ: &str = "query($m: ID!) { message(id: $m) { status content contentSeq } }";

/// The error of a subscription's last result, when it ended with one.
fn last_error(events: &[Value]) -> Value {
    let last = events.last().cloned().unwrap_or_default();
    assert!(last["errors"].is_array(), "ended with an error: {events:?}");
    last["errors"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_spares_local_subscribers_and_remote_ones_resume() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let c = cluster(2, &[ECHO_10_MS, ("REDIS_URL", url.as_str())]).await;
    let (p1, p2) = (&c.procs[0], &c.procs[1]);
    let assistant = c.send(p1, "/words 600").await;
    let mut local = c.stream(p1, &assistant, 0).await;
    let mut remote = c.stream(p2, &assistant, 0).await;
    let mut feed = GqlSocket::connect_addr(p2.addr, &c.user.access).await;
    feed.subscribe("e", EVENTS, json!({ "c": c.conversation }))
        .await;
    let mut seen = c.first_deltas(&mut remote, 20).await;

    redis.kill();
    // P2's follower and P2's conversation feed end with a retryable INTERNAL error.
    let events = within(
        Duration::from_secs(10),
        "P2's follower to hear of the outage",
        remote.collect("s", 10_000),
    )
    .await;
    seen.extend(deltas(&events));
    let error = last_error(&events);
    assert_eq!(error["extensions"]["code"], "INTERNAL", "{error}");
    assert_eq!(error["extensions"]["retryable"], true, "{error}");
    assert_eq!(
        seqs(&seen),
        (1..=seen.len() as i64).collect::<Vec<_>>(),
        "no gap before the error"
    );
    let events = within(
        Duration::from_secs(10),
        "P2's conversation feed to hear of the outage",
        feed.collect("e", 10_000),
    )
    .await;
    assert_eq!(last_error(&events)["extensions"]["code"], "INTERNAL");
    // A subscriber arriving on P2 during the outage waits in Postgres for the end.
    let mut during = c.stream(p2, &assistant, 0).await;

    // Redis comes back, empty; the runner on P1 refills the generation's stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart().await;
    let key = format!("colloquy:hub:gen:{assistant}");
    within(
        Duration::from_secs(10),
        "the stream to be refilled",
        async {
            loop {
                if let Some(mut conn) = redis.connection().await {
                    let exists: bool = redis::cmd("EXISTS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or(false);
                    if exists {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    // P2's client resumes from what Postgres holds: its content, then deltas after contentSeq.
    let stored = c
        .app
        .gql_as(Some(&c.user.access), CONTENT_SEQ, json!({ "m": assistant }))
        .await;
    let stored = &stored["data"]["message"];
    let from = stored["contentSeq"].as_i64().expect("contentSeq");
    let prefix = stored["content"].as_str().expect("content").to_owned();
    let mut resumed = c.stream(p2, &assistant, from).await;
    let (rest, end) = rest_of_stream(
        &mut resumed,
        from + 1,
        Duration::from_secs(30),
        "P2's resumed stream to end",
    )
    .await;
    assert_eq!(end["status"], "COMPLETE", "{end}");
    let content = end["content"].as_str().expect("content");
    assert_eq!(format!("{prefix}{}", joined(&rest)), content);
    assert_eq!(content, words(600));

    // P1's own subscriber never noticed: every delta once, then the end.
    let (all, end) = rest_of_stream(
        &mut local,
        1,
        Duration::from_secs(30),
        "P1's local stream to end",
    )
    .await;
    assert_eq!(all.len(), 600);
    assert_eq!(end["status"], "COMPLETE");
    // The one that came during the outage got the whole answer from Postgres.
    let events = within(
        Duration::from_secs(30),
        "the outage-time subscriber to end",
        during.collect("s", 10_000),
    )
    .await;
    assert_eq!(deltas(&events), vec![(1, words(600))]);
    assert_eq!(finished(&events)["status"], "COMPLETE");
}

//! N-way compare through the real server: the fan-out, its streams and stops, its quota,
//! its judging (heuristic with `local/echo`, a real verdict from a loopback OpenAI), votes,
//! the leaderboard's Elo figures, and `selectBranch` across the answers.

use std::collections::BTreeMap;
use std::time::Duration;

use colloquy::db::schema::{comparison_entries, comparisons, messages, quota_reservations};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::ws::GqlSocket;
use crate::common::{Session, TestApp, expect_error};
use crate::fake_upstream::{FakeUpstream, Script};
use crate::streaming::{STREAM, deltas, finished, joined, openai_frames};

const SEND: &str = "mutation($i: SendMessageInput!) { sendMessage(input: $i) {
    userMessage { id parentId }
    assistantMessage { id }
    assistantMessages { id model status parentId } } }";
const COMPARISON: &str = "query($u: ID!) { comparison(userMessageId: $u) {
    status judgeModel judgedBy userMessage { id }
    entries { model summary reasoning score rank latencyToFirstTokenMs totalTimeMs
              promptTokens completionTokens costUsd message { id status content } } } }";
const EVENTS: &str = "subscription($c: ID!) { conversationEvents(conversationId: $c) {
    __typename
    ... on MessageCreated { message { id role } }
    ... on MessageDelta { messageId seq text }
    ... on MessageFinished { message { id status } }
    ... on ComparisonReady { comparison { status judgedBy userMessage { id } entries { model rank message { id } } } } } }";
const LEADERBOARD: &str = "query($w: ID!) { leaderboard(workspaceId: $w) {
    model votesUp votesDown wins losses winRate elo } }";
const RATE: &str = "mutation($m: ID!, $v: Vote) { rateMessage(messageId: $m, vote: $v) {
    id viewerVote votesUp votesDown } }";
const QUOTA: &str =
    "query($w: ID!) { workspace(id: $w) { quota { tokensUsed tokensReserved messagesUsed } } }";

const A: &str = "local/echo";
const B: &str = "local/echo-b";
const C: &str = "local/echo-c";

/// Two more echo models (the same in-process provider under other ids), so three distinct
/// models run with no network.
fn catalog() -> String {
    let dir = std::env::temp_dir().join(format!("colloquy-compare-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("models.toml");
    let mut toml = String::new();
    for id in [B, C] {
        toml.push_str(&format!(
            "[[models]]\nid = \"{id}\"\nprovider = \"local\"\nupstream = \"echo\"\n\
             display_name = \"{id}\"\ncontext_window = 32768\nmax_output_tokens = 4096\n\n"
        ));
    }
    std::fs::write(&path, toml).expect("write the catalog");
    path.to_str().expect("path").to_owned()
}

struct Compare {
    app: TestApp,
    user: Session,
    ws: String,
    conversation: String,
}

async fn setup(overrides: &[(&str, &str)]) -> Compare {
    let catalog = catalog();
    let mut vars: Vec<(&str, &str)> = vec![
        ("MODEL_CATALOG_FILE", &catalog),
        ("RATE_LIMIT_GENERATIONS_PER_MIN", "10000"),
        ("RATE_LIMIT_GENERATIONS_BURST", "10000"),
        ("RATE_LIMIT_MUTATIONS_PER_MIN", "10000"),
        ("RATE_LIMIT_QUERIES_PER_MIN", "10000"),
    ];
    vars.extend_from_slice(overrides);
    let app = TestApp::spawn_with(&vars).await;
    let user = app.register("compare@example.com").await;
    let ws = app.personal_workspace(&user).await;
    let conversation = app.create_conversation(&user, &ws, "compare").await;
    Compare {
        app,
        user,
        ws,
        conversation,
    }
}

impl Compare {
    async fn gql(&self, query: &str, variables: Value) -> Value {
        self.app
            .gql_as(Some(&self.user.access), query, variables)
            .await
    }

    async fn send(&self, content: &str, extra: Value) -> Value {
        let mut input = json!({ "conversationId": self.conversation, "content": content });
        if let (Some(input), Some(extra)) = (input.as_object_mut(), extra.as_object()) {
            input.extend(extra.clone());
        }
        self.gql(SEND, json!({ "i": input })).await
    }

    /// A comparison of `models`: (user message, answers in the request's order).
    async fn compare(&self, content: &str, models: &[&str]) -> (String, Vec<String>) {
        let body = self.send(content, json!({ "models": models })).await;
        let payload = &body["data"]["sendMessage"];
        let user = payload["userMessage"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned();
        let answers = payload["assistantMessages"]
            .as_array()
            .expect("answers")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect();
        (user, answers)
    }

    async fn message(&self, id: &str) -> Value {
        let body = self
            .gql(
                "query($m: ID!) { message(id: $m) { id status content model siblings { id } } }",
                json!({ "m": id }),
            )
            .await;
        body["data"]["message"].clone()
    }

    async fn wait_finished(&self, id: &str) -> Value {
        for _ in 0..400 {
            let m = self.message(id).await;
            if !matches!(m["status"].as_str(), Some("PENDING" | "STREAMING")) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("message {id} did not finish");
    }

    async fn comparison(&self, user: &str) -> Value {
        self.gql(COMPARISON, json!({ "u": user })).await
    }

    async fn wait_ready(&self, user: &str) -> Value {
        for _ in 0..400 {
            let body = self.comparison(user).await;
            if body["data"]["comparison"]["status"] == "READY" {
                return body["data"]["comparison"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "comparison of {user} never got READY: {}",
            self.comparison(user).await
        );
    }

    async fn quota(&self) -> Value {
        let body = self.gql(QUOTA, json!({ "w": self.ws })).await;
        body["data"]["workspace"]["quota"].clone()
    }

    async fn wait_settled(&self) -> Value {
        for _ in 0..200 {
            let q = self.quota().await;
            if q["tokensReserved"] == 0 && self.count_unfinished().await == 0 {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reservations never settled: {}", self.quota().await);
    }

    async fn count_unfinished(&self) -> i64 {
        messages::table
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .count()
            .get_result(&mut self.app.db().await)
            .await
            .expect("count")
    }

    /// Messages, comparisons, entries and reservations stored.
    async fn stored(&self) -> (i64, i64, i64, i64) {
        let mut conn = self.app.db().await;
        let m = messages::table.count().get_result(&mut conn).await;
        let c = comparisons::table.count().get_result(&mut conn).await;
        let e = comparison_entries::table
            .count()
            .get_result(&mut conn)
            .await;
        let r = quota_reservations::table
            .count()
            .get_result(&mut conn)
            .await;
        (
            m.expect("messages"),
            c.expect("comparisons"),
            e.expect("entries"),
            r.expect("reservations"),
        )
    }

    async fn leaderboard(&self, s: &Session, ws: &str) -> Value {
        let body = self
            .app
            .gql_as(Some(&s.access), LEADERBOARD, json!({ "w": ws }))
            .await;
        assert!(body["errors"].is_null(), "{body}");
        body["data"]["leaderboard"].clone()
    }
}

/// Reads `conversationEvents` until `ComparisonReady`; returns every event's payload.
async fn events_until_ready(feed: &mut GqlSocket) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let m = feed.next().await.expect("an event");
        let e = m["payload"]["data"]["conversationEvents"].clone();
        assert!(!e.is_null(), "{m}");
        let done = e["__typename"] == "ComparisonReady";
        events.push(e);
        if done {
            return events;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_way_compare_streams_three_gap_free_answers_and_is_judged() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "10")]).await;
    let mut feed = GqlSocket::connect(&c.app, &c.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": c.conversation }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let body = c.send("/words 40", json!({ "models": [A, B, C] })).await;
    let payload = &body["data"]["sendMessage"];
    let user = payload["userMessage"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    let answers = payload["assistantMessages"].as_array().expect("answers");
    assert_eq!(answers.len(), 3);
    assert_eq!(
        answers
            .iter()
            .map(|a| a["model"].clone())
            .collect::<Vec<_>>(),
        [A, B, C]
    );
    for a in answers {
        assert_eq!(a["parentId"].as_str(), Some(user.as_str()), "siblings");
        assert_eq!(a["status"], "STREAMING");
    }
    assert_eq!(
        payload["assistantMessage"]["id"], answers[0]["id"],
        "assistantMessage stays the first answer"
    );
    let ids: Vec<String> = answers
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect();

    // Three streams, followed at once, each its own numbering.
    let follow = |id: String| {
        let app = &c.app;
        let token = c.user.access.clone();
        async move {
            let mut socket = GqlSocket::connect(app, &token).await;
            socket.subscribe("1", STREAM, json!({ "m": id })).await;
            socket.collect("1", 100).await
        }
    };
    let (s1, s2, s3) = tokio::join!(
        follow(ids[0].clone()),
        follow(ids[1].clone()),
        follow(ids[2].clone())
    );
    let words: String = (1..=40)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    for events in [&s1, &s2, &s3] {
        let got = deltas(events);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=40).collect::<Vec<_>>(),
            "gap-free"
        );
        assert_eq!(joined(&got), words);
        assert_eq!(finished(events)["status"], "COMPLETE");
    }

    // conversationEvents carried every answer, and then the judged comparison.
    let events = events_until_ready(&mut feed).await;
    let created = events
        .iter()
        .filter(|e| e["__typename"] == "MessageCreated")
        .count();
    assert_eq!(created, 4, "the user message and three answers");
    let mut per_message: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["__typename"] == "MessageDelta") {
        per_message
            .entry(e["messageId"].as_str().expect("id").to_owned())
            .or_default()
            .push(e["seq"].as_i64().expect("seq"));
    }
    assert_eq!(per_message.len(), 3);
    for seqs in per_message.values() {
        assert_eq!(*seqs, (1..=40).collect::<Vec<_>>());
    }
    let ready = &events.last().expect("ready")["comparison"];
    assert_eq!(ready["status"], "READY");
    assert_eq!(
        ready["judgedBy"], "heuristic",
        "local/echo gives no verdict"
    );
    assert_eq!(ready["userMessage"]["id"].as_str(), Some(user.as_str()));

    let comparison = c.wait_ready(&user).await;
    assert_eq!(
        comparison["judgeModel"], A,
        "the conversation's model judges"
    );
    let entries = comparison["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["message"]["id"].as_str(), Some(ids[i].as_str()));
        assert_eq!(
            e["summary"].as_str(),
            Some(words.as_str()),
            "40 words fit in 50"
        );
        let reasoning = e["reasoning"].as_str().expect("reasoning");
        assert!(reasoning.split_whitespace().count() <= 20, "{reasoning}");
        assert_eq!(e["score"], 10.0);
        assert_eq!(e["rank"], i + 1, "equal answers keep the request's order");
        assert_eq!(e["completionTokens"], 40);
        assert!(e["promptTokens"].as_i64().is_some_and(|n| n > 0));
        assert_eq!(e["costUsd"], 0.0);
        let first = e["latencyToFirstTokenMs"].as_i64().expect("latency");
        let total = e["totalTimeMs"].as_i64().expect("total");
        assert!(first <= total, "{e}");
        assert!(total >= 400, "40 tokens 10 ms apart: {e}");
    }

    // The branch continues from the first answer; each answer settled its own reservation.
    let body = c
        .gql(
            "query($c: ID!) { conversation(id: $c) { messageCount messages { edges { node { id } } } } }",
            json!({ "c": c.conversation }),
        )
        .await;
    let branch: Vec<&str> = body["data"]["conversation"]["messages"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(branch, [user.as_str(), ids[0].as_str()]);
    let q = c.wait_settled().await;
    assert_eq!(q["messagesUsed"], 3, "{q}");
    let (_, _, _, reservations) = c.stored().await;
    assert_eq!(reservations, 0);
    let ledger: i64 = colloquy::db::schema::usage_records::table
        .count()
        .get_result(&mut c.app.db().await)
        .await
        .expect("ledger");
    assert_eq!(ledger, 3, "one ledger row per answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_answer_leaves_the_others_running() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "20")]).await;
    let (user, ids) = c.compare("/words 120", &[A, B, C]).await;
    let mut socket = GqlSocket::connect(&c.app, &c.user.access).await;
    socket.subscribe("1", STREAM, json!({ "m": ids[1] })).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = socket.next().await.expect("a delta");
        seen.push(m["payload"].clone());
    }
    let body = c
        .gql(
            "mutation($m: ID!) { stopGeneration(messageId: $m) { status content } }",
            json!({ "m": ids[1] }),
        )
        .await;
    assert_eq!(
        body["data"]["stopGeneration"]["status"], "CANCELLED",
        "{body}"
    );
    // The others are still going.
    for id in [&ids[0], &ids[2]] {
        assert_eq!(c.message(id).await["status"], "STREAMING");
    }
    // The stopped stream ends, gap-free, with the cancelled message.
    seen.extend(socket.collect("1", 500).await);
    let got = deltas(&seen);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=got.len() as i64).collect::<Vec<_>>()
    );
    assert!(got.len() < 120);
    assert_eq!(finished(&seen)["status"], "CANCELLED");

    let full: String = (1..=120)
        .map(|i| format!("word{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    for id in [&ids[0], &ids[2]] {
        let m = c.wait_finished(id).await;
        assert_eq!(m["status"], "COMPLETE");
        assert_eq!(m["content"].as_str(), Some(full.as_str()));
    }
    let stopped = c.message(&ids[1]).await;
    assert_eq!(stopped["status"], "CANCELLED");
    assert!(full.starts_with(stopped["content"].as_str().expect("content")));

    // Judged once all ended: the stopped answer ranks last.
    let comparison = c.wait_ready(&user).await;
    let ranks: Vec<i64> = comparison["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["rank"].as_i64().expect("rank"))
        .collect();
    assert_eq!(ranks, [1, 3, 2]);
    let q = c.wait_settled().await;
    assert_eq!(q["messagesUsed"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_that_does_not_fit_the_quota_is_refused_whole() {
    // Each echo answer reserves its prompt plus 4,096 output tokens: two fit, three do not.
    let c = setup(&[
        ("QUOTA_DEFAULT_TOKEN_LIMIT", "10000"),
        ("ECHO_TOKEN_DELAY_MS", "0"),
    ])
    .await;
    let body = c.send("hello", json!({ "models": [A, B, C] })).await;
    let err = expect_error(&body, "QUOTA_EXCEEDED");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("all of its 3 answers")),
        "{err}"
    );
    assert!(err["extensions"]["resetsAt"].is_string());
    assert_eq!(
        c.stored().await,
        (0, 0, 0, 0),
        "nothing stored, nothing reserved"
    );
    let q = c.quota().await;
    assert_eq!(
        (&q["tokensReserved"], &q["messagesUsed"]),
        (&json!(0), &json!(0)),
        "{q}"
    );

    // Two fit: admitted together, each settled on its own.
    let (_, ids) = c.compare("hello", &[A, B]).await;
    assert_eq!(ids.len(), 2);
    let q = c.wait_settled().await;
    assert_eq!(q["messagesUsed"], 2);
    assert!(
        q["tokensUsed"].as_i64().is_some_and(|t| t > 0 && t < 200),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_lists_are_refused_before_anything_is_stored() {
    let c = setup(&[]).await;
    let seven = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    for extra in [
        json!({ "models": [] }),
        json!({ "models": [A] }),
        json!({ "models": seven }),
        json!({ "models": [A, B, C, "local/echo-d", "x/1", "x/2", "x/3"] }),
        json!({ "models": [A, A] }),
        json!({ "models": [A, B, " local/echo "] }),
        json!({ "models": [A, "nobody/nothing"] }),
        json!({ "models": [A, "openai/gpt-4o-mini"] }),
        json!({ "models": [A, B], "model": A }),
    ] {
        let body = c.send("hello", extra.clone()).await;
        let err = expect_error(&body, "BAD_USER_INPUT");
        assert_eq!(err["extensions"]["field"], "models", "{extra}: {body}");
    }
    // Not a member: NOT_FOUND, like any other send.
    let outsider = c.app.register("outsider@example.com").await;
    let body = c
        .app
        .gql_as(
            Some(&outsider.access),
            SEND,
            json!({ "i": { "conversationId": c.conversation, "content": "hi", "models": [A, B] } }),
        )
        .await;
    expect_error(&body, "NOT_FOUND");
    assert_eq!(c.stored().await, (0, 0, 0, 0));
    let q = c.quota().await;
    assert_eq!(
        (&q["tokensReserved"], &q["messagesUsed"]),
        (&json!(0), &json!(0)),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_compare_returns_the_same_messages() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let extra = json!({ "models": [A, B, C], "clientMessageId": "cmp-1" });
    let (first, second) =
        tokio::join!(c.send("once", extra.clone()), c.send("once", extra.clone()));
    let third = c.send("once", extra).await;
    let ids = |b: &Value| {
        let p = &b["data"]["sendMessage"];
        (
            p["userMessage"]["id"].clone(),
            p["assistantMessages"]
                .as_array()
                .map(|a| a.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()),
            p["assistantMessage"]["id"].clone(),
        )
    };
    assert!(ids(&first).0.is_string(), "{first}");
    assert_eq!(ids(&first).1.as_ref().map(Vec::len), Some(3));
    assert_eq!(ids(&first), ids(&second), "{second}");
    assert_eq!(ids(&first), ids(&third), "{third}");
    let (messages, comparisons, entries, _) = c.stored().await;
    assert_eq!((messages, comparisons, entries), (4, 1, 3));
    let q = c.wait_settled().await;
    assert_eq!(q["messagesUsed"], 3, "the replays reserved nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_branch_on_another_answer_continues_from_it() {
    colloquy::install_crypto_provider();
    let upstream = FakeUpstream::start(vec![
        Script::sse(200, &openai_frames(&["Upstream", " answer"])),
        Script::sse(200, &openai_frames(&["Follow", " up"])),
    ])
    .await;
    let base = format!("{}/v1", upstream.base_url);
    let c = setup(&[
        ("ECHO_TOKEN_DELAY_MS", "0"),
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test"),
        ("TITLE_MODEL", A),
        ("COMPARE_JUDGE_MODEL", A),
    ])
    .await;
    let (user, ids) = c.compare("Question?", &[A, "openai/gpt-4o-mini"]).await;
    assert_eq!(c.wait_finished(&ids[0]).await["content"], "Echo: Question?");
    assert_eq!(c.wait_finished(&ids[1]).await["content"], "Upstream answer");
    let siblings = c.message(&ids[1]).await["siblings"].clone();
    assert_eq!(siblings, json!([{ "id": ids[0] }, { "id": ids[1] }]));

    let body = c
        .gql(
            "mutation($m: ID!) { selectBranch(messageId: $m) { preview messages { edges { node { id } } } } }",
            json!({ "m": ids[1] }),
        )
        .await;
    let selected = &body["data"]["selectBranch"];
    assert_eq!(selected["preview"], "Upstream answer", "{body}");
    let branch: Vec<&str> = selected["messages"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["id"].as_str().expect("id"))
        .collect();
    assert_eq!(branch, [user.as_str(), ids[1].as_str()]);

    // The next message goes under the selected answer, which is in its context.
    let body = c
        .send("And then?", json!({ "model": "openai/gpt-4o-mini" }))
        .await;
    let payload = &body["data"]["sendMessage"];
    assert_eq!(
        payload["userMessage"]["parentId"].as_str(),
        Some(ids[1].as_str()),
        "{body}"
    );
    let next = payload["assistantMessage"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(c.wait_finished(&next).await["content"], "Follow up");
    let sent = &upstream.requests()[1].body["messages"];
    assert_eq!(
        sent,
        &json!([
            { "role": "user", "content": "Question?" },
            { "role": "assistant", "content": "Upstream answer" },
            { "role": "user", "content": "And then?" }
        ])
    );
    c.wait_ready(&user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_model_summarises_and_ranks_the_answers() {
    colloquy::install_crypto_provider();
    let long: String = (1..=70)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let verdict = json!({
        "answers": [
            { "id": "A", "summary": long, "reasoning": long, "score": 6 },
            { "id": "B", "summary": "Short and right.", "reasoning": "Direct and correct.", "score": 9 },
            { "id": "C", "summary": "Adequate.", "reasoning": "Fine but vague.", "score": 7.5 }
        ],
        "ranking": ["B", "C", "A"]
    })
    .to_string();
    // The verdict arrives in pieces, as a model streams it.
    let pieces: Vec<&str> = {
        let (a, rest) = verdict.split_at(verdict.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        vec![a, b, c]
    };
    let upstream = FakeUpstream::start(vec![Script::sse(200, &openai_frames(&pieces))]).await;
    let base = format!("{}/v1", upstream.base_url);
    let c = setup(&[
        ("ECHO_TOKEN_DELAY_MS", "0"),
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test"),
        ("TITLE_MODEL", A),
        ("COMPARE_JUDGE_MODEL", "openai/gpt-4o-mini"),
    ])
    .await;
    let mut feed = GqlSocket::connect(&c.app, &c.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": c.conversation }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (user, ids) = c.compare("Which is best?", &[A, B, C]).await;

    let events = events_until_ready(&mut feed).await;
    let ready = &events.last().expect("ready")["comparison"];
    assert_eq!(ready["judgedBy"], "openai/gpt-4o-mini", "{ready}");
    assert_eq!(
        ready["entries"],
        json!([
            { "model": A, "rank": 3, "message": { "id": ids[0] } },
            { "model": B, "rank": 1, "message": { "id": ids[1] } },
            { "model": C, "rank": 2, "message": { "id": ids[2] } },
        ])
    );
    let comparison = c.wait_ready(&user).await;
    assert_eq!(comparison["judgeModel"], "openai/gpt-4o-mini");
    let entries = comparison["entries"].as_array().expect("entries");
    let words = |v: &Value| v.as_str().map(|s| s.split_whitespace().count());
    assert_eq!(words(&entries[0]["summary"]), Some(50), "cut to 50 words");
    assert_eq!(words(&entries[0]["reasoning"]), Some(20), "cut to 20 words");
    assert_eq!(entries[1]["summary"], "Short and right.");
    assert_eq!(entries[1]["reasoning"], "Direct and correct.");
    assert_eq!(
        entries
            .iter()
            .map(|e| e["score"].clone())
            .collect::<Vec<_>>(),
        [json!(6.0), json!(9.0), json!(7.5)]
    );

    // The judge was asked once, with every answer labelled.
    assert_eq!(upstream.request_count(), 1);
    let request = &upstream.requests()[0].body;
    assert!(
        request["messages"][0]["content"]
            .as_str()
            .is_some_and(|s| s.contains("JSON")),
        "{request}"
    );
    let prompt = request["messages"][1]["content"].as_str().expect("prompt");
    for part in [
        "Which is best?",
        "Answer A",
        "Answer B",
        "Answer C",
        "Echo: Which is best?",
    ] {
        assert!(prompt.contains(part), "{prompt}");
    }

    // The ranking's pairs are games: B beat C and A, C beat A.
    let board = c.leaderboard(&c.user, &c.ws).await;
    assert_eq!(
        board,
        json!([
            { "model": B, "votesUp": 0, "votesDown": 0, "wins": 2, "losses": 0, "winRate": 1.0, "elo": 1031.26 },
            { "model": C, "votesUp": 0, "votesDown": 0, "wins": 1, "losses": 1, "winRate": 0.5, "elo": 1000.03 },
            { "model": A, "votesUp": 0, "votesDown": 0, "wins": 0, "losses": 2, "winRate": 0.0, "elo": 968.7 },
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elo_figures_after_a_scripted_set_of_votes() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let owner = c.user.clone();
    let team = c.app.create_workspace(&owner, "Team").await;
    let member = c.app.register("voter@example.com").await;
    c.app
        .add_member(&owner, &team, "voter@example.com", "MEMBER")
        .await;
    let conversation = c.app.create_conversation(&owner, &team, "votes").await;
    let c = Compare {
        conversation,
        ws: team,
        ..c
    };
    let owner = &owner;
    let (u1, first) = c.compare("one", &[A, B, C]).await;
    let (u2, second) = c.compare("two", &[A, B, C]).await;
    let body = c.send("plain", json!({})).await;
    let plain = body["data"]["sendMessage"]["assistantMessage"]["id"]
        .as_str()
        .expect("plain")
        .to_owned();
    c.wait_ready(&u1).await;
    c.wait_ready(&u2).await;
    // Heuristic rankings are not games: nobody has played yet.
    let board = c.leaderboard(&member, &c.ws).await;
    for row in board.as_array().expect("rows") {
        assert_eq!(
            (&row["elo"], &row["wins"], &row["winRate"]),
            (&json!(1000.0), &json!(0), &Value::Null),
            "{board}"
        );
    }

    let vote = |s: &Session, m: &str, v: Value| {
        let app = &c.app;
        let token = s.access.clone();
        let m = m.to_owned();
        async move {
            let body = app
                .gql_as(Some(&token), RATE, json!({ "m": m, "v": v }))
                .await;
            assert!(body["errors"].is_null(), "{body}");
            body["data"]["rateMessage"].clone()
        }
    };
    // 1. The owner likes the first answer of comparison 1: A beats B, then C.
    vote(owner, &first[0], json!("UP")).await;
    let board = c.leaderboard(owner, &c.ws).await;
    let elo = |board: &Value| -> Vec<(String, f64)> {
        board
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["model"].as_str().expect("model").to_owned(),
                    r["elo"].as_f64().expect("elo"),
                )
            })
            .collect()
    };
    assert_eq!(
        elo(&board),
        [
            (A.to_owned(), 1031.26),
            (C.to_owned(), 984.74),
            (B.to_owned(), 984.0)
        ]
    );
    // 2. The member dislikes it: B and C beat A.
    vote(&member, &first[0], json!("DOWN")).await;
    // 3. The owner likes B in comparison 2: B beats A and C.
    vote(owner, &second[1], json!("UP")).await;
    // 4. The owner changes their mind on comparison 1: the UP is replaced by a DOWN.
    let rated = vote(owner, &first[0], json!("DOWN")).await;
    assert_eq!(rated["viewerVote"], "DOWN");
    assert_eq!(
        (&rated["votesUp"], &rated["votesDown"]),
        (&json!(0), &json!(2))
    );
    // 5. A vote outside any comparison counts as a vote, never as a game.
    vote(&member, &plain, json!("UP")).await;
    // 6. The owner dislikes C in comparison 2: now A beats C there too.
    vote(owner, &second[2], json!("DOWN")).await;

    // Replayed in time order: member on 1 (B>A, C>A), owner on 1 (B>A, C>A), owner on 2
    // (B>A, A>C, B>C).
    let board = c.leaderboard(&member, &c.ws).await;
    assert_eq!(
        board,
        json!([
            { "model": B, "votesUp": 1, "votesDown": 0, "wins": 4, "losses": 0, "winRate": 1.0, "elo": 1056.31 },
            { "model": C, "votesUp": 0, "votesDown": 1, "wins": 2, "losses": 2, "winRate": 0.5, "elo": 993.63 },
            { "model": A, "votesUp": 1, "votesDown": 2, "wins": 1, "losses": 5, "winRate": 1.0 / 6.0, "elo": 950.06 },
        ])
    );
    // Removing a vote removes its games.
    let rated = vote(owner, &second[2], Value::Null).await;
    assert_eq!(rated["viewerVote"], Value::Null);
    let board = c.leaderboard(owner, &c.ws).await;
    assert_eq!(board[2]["model"], A);
    assert_eq!(
        (&board[2]["wins"], &board[2]["losses"]),
        (&json!(0), &json!(5))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_and_comparisons_are_checked() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let (user, ids) = c.compare("rate me", &[A, B]).await;
    let outsider = c.app.register("stranger@example.com").await;
    let as_outsider = |query: &'static str, variables: Value| {
        let app = &c.app;
        let token = outsider.access.clone();
        async move { app.gql_as(Some(&token), query, variables).await }
    };
    // Outsiders see nothing.
    let body = as_outsider(RATE, json!({ "m": ids[0], "v": "UP" })).await;
    expect_error(&body, "NOT_FOUND");
    let body = as_outsider(COMPARISON, json!({ "u": user })).await;
    expect_error(&body, "NOT_FOUND");
    let body = as_outsider(LEADERBOARD, json!({ "w": c.ws })).await;
    expect_error(&body, "NOT_FOUND");
    // Only answers are rated, and a vote must be given (null removes it).
    let body = c.gql(RATE, json!({ "m": user, "v": "UP" })).await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = c
        .gql(
            "mutation($m: ID!) { rateMessage(messageId: $m) { id } }",
            json!({ "m": ids[0] }),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = c.gql(RATE, json!({ "m": "not-an-id", "v": "UP" })).await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = c.gql(RATE, json!({ "m": ids[0], "v": "SIDEWAYS" })).await;
    assert!(body["errors"].is_array(), "{body}");
    // One vote per member: a second one replaces it.
    let body = c.gql(RATE, json!({ "m": ids[0], "v": "UP" })).await;
    assert_eq!(
        body["data"]["rateMessage"],
        json!({ "id": ids[0], "viewerVote": "UP", "votesUp": 1, "votesDown": 0 })
    );
    let body = c.gql(RATE, json!({ "m": ids[0], "v": "DOWN" })).await;
    assert_eq!(
        body["data"]["rateMessage"],
        json!({ "id": ids[0], "viewerVote": "DOWN", "votesUp": 0, "votesDown": 1 })
    );
    let body = c.gql(RATE, json!({ "m": ids[0], "v": null })).await;
    assert_eq!(
        body["data"]["rateMessage"],
        json!({ "id": ids[0], "viewerVote": null, "votesUp": 0, "votesDown": 0 })
    );
    // A plain message has no comparison.
    let body = c.send("plain", json!({})).await;
    let plain_user = body["data"]["sendMessage"]["userMessage"]["id"]
        .as_str()
        .expect("user")
        .to_owned();
    let body = c.comparison(&plain_user).await;
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(body["data"]["comparison"], Value::Null);
    c.wait_ready(&user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparison_ready_reaches_another_server_process() {
    let c = setup(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let catalog = catalog();
    let peer = c.app.spawn_peer(&[("MODEL_CATALOG_FILE", &catalog)]).await;
    let mut feed = GqlSocket::connect(&peer, &c.user.access).await;
    feed.subscribe("events", EVENTS, json!({ "c": c.conversation }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (user, _) = c.compare("across", &[A, B]).await;
    let events = events_until_ready(&mut feed).await;
    let ready = &events.last().expect("ready")["comparison"];
    assert_eq!(ready["userMessage"]["id"].as_str(), Some(user.as_str()));
    assert_eq!(ready["status"], "READY");
}

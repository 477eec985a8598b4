//! Quotas and usage: race-free reservations, settlement in every outcome, rollover, the
//! ledger and its report, admin and member limits, live updates.

use std::time::Duration;

use colloquy::db::schema::{messages, usage_records, workspace_quotas};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::ws::GqlSocket;
use crate::common::{Session, TestApp, expect_error};
use crate::fake_upstream::{End, FakeUpstream, Script};

const SEND: &str =
    "mutation($c: ID!, $t: String!) { sendMessage(input: { conversationId: $c, content: $t }) {
    assistantMessage { id } } }";
const QUOTA: &str = "query($w: ID!) { workspace(id: $w) { quota {
    period periodStart resetsAt tokenLimit tokensUsed tokensReserved messageLimit messagesUsed } } }";
const USAGE: &str = "query($w: ID!, $g: UsageGrouping) { usage(workspaceId: $w, groupBy: $g) {
    promptTokens completionTokens costUsd messages rows { key promptTokens completionTokens costUsd messages } } }";

/// Generous rate limits: these tests are about quotas.
const NO_RATE_LIMITS: [(&str, &str); 4] = [
    ("RATE_LIMIT_GENERATIONS_PER_MIN", "10000"),
    ("RATE_LIMIT_GENERATIONS_BURST", "10000"),
    ("RATE_LIMIT_MUTATIONS_PER_MIN", "10000"),
    ("RATE_LIMIT_QUERIES_PER_MIN", "10000"),
];

async fn spawn(extra: &[(&str, &str)]) -> TestApp {
    let mut vars: Vec<(&str, &str)> = NO_RATE_LIMITS.to_vec();
    vars.extend_from_slice(extra);
    TestApp::spawn_with(&vars).await
}

async fn quota(app: &TestApp, s: &Session, ws: &str) -> Value {
    let body = app.gql_as(Some(&s.access), QUOTA, json!({ "w": ws })).await;
    body["data"]["workspace"]["quota"].clone()
}

async fn wait_settled(app: &TestApp, s: &Session, ws: &str) -> Value {
    for _ in 0..200 {
        let q = quota(app, s, ws).await;
        let running: i64 = messages::table
            .filter(messages::status.eq_any(["PENDING", "STREAMING"]))
            .count()
            .get_result(&mut app.db().await)
            .await
            .expect("count");
        if q["tokensReserved"] == 0 && running == 0 {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("reservations never settled: {}", quota(app, s, ws).await);
}

async fn ledger_tokens(app: &TestApp) -> i64 {
    let rows: Vec<(i64, i64)> = usage_records::table
        .select((
            usage_records::prompt_tokens,
            usage_records::completion_tokens,
        ))
        .load(&mut app.db().await)
        .await
        .expect("ledger");
    rows.iter().map(|(p, c)| p + c).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sends_with_budget_for_one() {
    // local/echo reserves its prompt plus 4,096 output tokens: 5,000 fit exactly one.
    let app = spawn(&[
        ("QUOTA_DEFAULT_TOKEN_LIMIT", "5000"),
        ("ECHO_TOKEN_DELAY_MS", "30"),
    ])
    .await;
    let s = app.register("q50@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &ws, "race").await;
    let sends = (0..50).map(|i| {
        let app = &app;
        let token = s.access.clone();
        let conversation = conversation.clone();
        async move {
            app.gql_as(
                Some(&token),
                SEND,
                json!({ "c": conversation, "t": format!("message {i}") }),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let admitted = results.iter().filter(|r| r["errors"].is_null()).count();
    let refused: Vec<&Value> = results.iter().filter(|r| !r["errors"].is_null()).collect();
    assert_eq!(admitted, 1, "exactly one fits");
    assert_eq!(refused.len(), 49);
    for r in &refused {
        let err = expect_error(r, "QUOTA_EXCEEDED");
        assert!(
            err["extensions"]["resetsAt"]
                .as_str()
                .is_some_and(|t| t.contains("-01T00:00:00")),
            "{r}"
        );
    }
    // Refused sends stored nothing.
    let stored: i64 = messages::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count");
    assert_eq!(stored, 2);

    let q = wait_settled(&app, &s, &ws).await;
    assert_eq!(q["messagesUsed"], 1, "{q}");
    assert_eq!(q["tokensReserved"], 0);
    let used = q["tokensUsed"].as_i64().expect("used");
    assert!(
        used > 0 && used < 100,
        "actual usage, not the reservation: {q}"
    );
    assert_eq!(used, ledger_tokens(&app).await, "the numbers add up");
    // With the reservation released, there is room again.
    let body = app
        .gql_as(
            Some(&s.access),
            SEND,
            json!({ "c": conversation, "t": "again" }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    wait_settled(&app, &s, &ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_settles_to_actual_usage() {
    colloquy::install_crypto_provider();
    let frame = |w: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    };
    let upstream = FakeUpstream::start(vec![
        Script::sse(200, &[frame("Half"), frame(" an"), frame(" answer")]).end(End::Drop),
    ])
    .await;
    let base = format!("{}/v1", upstream.base_url);
    let app = spawn(&[
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test"),
        ("TITLE_MODEL", "local/echo"),
        ("DEFAULT_MODEL", "openai/gpt-4o-mini"),
    ])
    .await;
    let s = app.register("qfail@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &ws, "fail").await;
    let body = app
        .gql_as(
            Some(&s.access),
            SEND,
            json!({ "c": conversation, "t": "tell me" }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let q = wait_settled(&app, &s, &ws).await;
    let (prompt, completion, estimated, cost): (i64, i64, bool, i64) = usage_records::table
        .select((
            usage_records::prompt_tokens,
            usage_records::completion_tokens,
            usage_records::estimated,
            usage_records::cost_micro_usd,
        ))
        .first(&mut app.db().await)
        .await
        .expect("one ledger row");
    assert!(estimated, "the provider never reported usage");
    assert_eq!(completion, 3, "\"Half an answer\" in o200k");
    assert!(prompt > 0);
    assert!(cost > 0);
    assert_eq!(q["tokensUsed"].as_i64(), Some(prompt + completion));
    assert_eq!(q["messagesUsed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_period_starts_from_zero() {
    let app = spawn(&[
        ("ECHO_TOKEN_DELAY_MS", "0"),
        ("QUOTA_DEFAULT_TOKEN_LIMIT", "10000"),
    ])
    .await;
    let s = app.register("roll@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &ws, "roll").await;
    // Last month's row is nearly full.
    let ws_id: uuid::Uuid = ws.parse().expect("uuid");
    diesel::update(workspace_quotas::table.find(ws_id))
        .set((
            workspace_quotas::tokens_used.eq(9_990),
            workspace_quotas::messages_used.eq(77),
            workspace_quotas::period_start.eq(chrono::Utc::now() - chrono::Duration::days(40)),
        ))
        .execute(&mut app.db().await)
        .await
        .expect("age the row");
    let shown = quota(&app, &s, &ws).await;
    assert_eq!(
        shown["tokensUsed"], 0,
        "the display already counts the new period: {shown}"
    );
    let body = app
        .gql_as(
            Some(&s.access),
            SEND,
            json!({ "c": conversation, "t": "new month" }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let q = wait_settled(&app, &s, &ws).await;
    assert_eq!(q["messagesUsed"], 1, "{q}");
    assert_eq!(q["tokensUsed"].as_i64(), Some(ledger_tokens(&app).await));
    let start: chrono::DateTime<chrono::Utc> = workspace_quotas::table
        .find(ws_id)
        .select(workspace_quotas::period_start)
        .first(&mut app.db().await)
        .await
        .expect("row");
    assert_eq!(
        start,
        colloquy::workspaces::model::period_start("MONTH", chrono::Utc::now()),
        "the stored row moved to this month's start"
    );
    assert_eq!(
        q["periodStart"]
            .as_str()
            .map(|p| p.ends_with("T00:00:00+00:00")),
        Some(true),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_report_sums_the_ledger() {
    let app = spawn(&[("ECHO_TOKEN_DELAY_MS", "0")]).await;
    let owner = app.register("rep@example.com").await;
    let other = app.register("rep2@example.com").await;
    let ws = app.create_workspace(&owner, "Report").await;
    app.add_member(&owner, &ws, "rep2@example.com", "MEMBER")
        .await;
    let c1 = app.create_conversation(&owner, &ws, "a").await;
    let c2 = app.create_conversation(&other, &ws, "b").await;
    for (s, c, t) in [
        (&owner, &c1, "one two"),
        (&owner, &c1, "three"),
        (&other, &c2, "four five six"),
    ] {
        let body = app
            .gql_as(Some(&s.access), SEND, json!({ "c": c, "t": t }))
            .await;
        assert!(body["errors"].is_null(), "{body}");
        wait_settled(&app, &owner, &ws).await;
    }
    let total = app
        .gql_as(Some(&owner.access), USAGE, json!({ "w": ws }))
        .await;
    let report = &total["data"]["usage"];
    assert_eq!(report["messages"], 3, "{total}");
    let ledger = ledger_tokens(&app).await;
    assert_eq!(
        report["promptTokens"].as_i64().unwrap_or(0)
            + report["completionTokens"].as_i64().unwrap_or(0),
        ledger
    );
    assert_eq!(report["rows"], json!([]));
    for grouping in ["DAY", "MODEL", "USER"] {
        let body = app
            .gql_as(
                Some(&other.access),
                USAGE,
                json!({ "w": ws, "g": grouping }),
            )
            .await;
        let rows = body["data"]["usage"]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .clone();
        let sum = |k: &str| rows.iter().map(|r| r[k].as_i64().unwrap_or(0)).sum::<i64>();
        assert_eq!(sum("messages"), 3, "{grouping}");
        assert_eq!(
            sum("promptTokens") + sum("completionTokens"),
            ledger,
            "{grouping}"
        );
        let expected_rows = match grouping {
            "USER" => 2,
            _ => 1,
        };
        assert_eq!(rows.len(), expected_rows, "{grouping}: {body}");
    }
    let body = app
        .gql_as(Some(&owner.access), USAGE, json!({ "w": ws, "g": "MODEL" }))
        .await;
    assert_eq!(body["data"]["usage"]["rows"][0]["key"], "local/echo");
    // Time windows.
    let later = "query($w: ID!, $f: DateTime) { usage(workspaceId: $w, from: $f) { messages } }";
    let body = app
        .gql_as(
            Some(&owner.access),
            later,
            json!({ "w": ws, "f": "2999-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(body["data"]["usage"]["messages"], 0);
    let bad = "query($w: ID!) { usage(workspaceId: $w, from: \"2026-02-01T00:00:00Z\", to: \"2026-01-01T00:00:00Z\") { messages } }";
    expect_error(
        &app.gql_as(Some(&owner.access), bad, json!({ "w": ws }))
            .await,
        "BAD_USER_INPUT",
    );
    let outsider = app.register("rep3@example.com").await;
    expect_error(
        &app.gql_as(Some(&outsider.access), USAGE, json!({ "w": ws }))
            .await,
        "NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_set_quotas_and_owners_set_member_budgets() {
    let app = spawn(&[
        ("ECHO_TOKEN_DELAY_MS", "0"),
        ("ADMIN_EMAILS", "root@example.com"),
    ])
    .await;
    let root = app.register("root@example.com").await;
    let owner = app.register("own@example.com").await;
    let member = app.register("mem@example.com").await;
    let ws = app.create_workspace(&owner, "Limits").await;
    app.add_member(&owner, &ws, "mem@example.com", "MEMBER")
        .await;
    let set = "mutation($i: SetWorkspaceQuotaInput!) { setWorkspaceQuota(input: $i) {
        period tokenLimit messageLimit tokensUsed messagesUsed resetsAt } }";
    let input = json!({ "i": { "workspaceId": ws, "period": "DAY", "tokenLimit": 100000, "messageLimit": 2 } });
    expect_error(
        &app.gql_as(Some(&owner.access), set, input.clone()).await,
        "FORBIDDEN",
    );
    let body = app.gql_as(Some(&root.access), set, input).await;
    let q = &body["data"]["setWorkspaceQuota"];
    assert_eq!(q["period"], "DAY", "{body}");
    assert_eq!(q["messageLimit"], 2);
    let negative = json!({ "i": { "workspaceId": ws, "period": "DAY", "tokenLimit": -1 } });
    expect_error(
        &app.gql_as(Some(&root.access), set, negative).await,
        "BAD_USER_INPUT",
    );

    // The member's own budget is too small for a generation; the owner's is not capped.
    let limit = "mutation($w: ID!, $u: ID!, $l: Int) { setMemberTokenLimit(workspaceId: $w, userId: $u, tokenLimit: $l) }";
    expect_error(
        &app.gql_as(
            Some(&member.access),
            limit,
            json!({ "w": ws, "u": member.user_id, "l": 10 }),
        )
        .await,
        "FORBIDDEN",
    );
    let body = app
        .gql_as(
            Some(&owner.access),
            limit,
            json!({ "w": ws, "u": member.user_id, "l": 100 }),
        )
        .await;
    assert_eq!(body["data"]["setMemberTokenLimit"], true, "{body}");
    let c = app.create_conversation(&member, &ws, "m").await;
    let refused = app
        .gql_as(Some(&member.access), SEND, json!({ "c": c, "t": "hi" }))
        .await;
    let err = expect_error(&refused, "QUOTA_EXCEEDED");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("your budget")),
        "{refused}"
    );
    let ok = app
        .gql_as(Some(&owner.access), SEND, json!({ "c": c, "t": "hi" }))
        .await;
    assert!(ok["errors"].is_null(), "{ok}");
    wait_settled(&app, &owner, &ws).await;
    // Two messages a day: the second passes, the third does not.
    let ok = app
        .gql_as(
            Some(&owner.access),
            SEND,
            json!({ "c": c, "t": "hi again" }),
        )
        .await;
    assert!(ok["errors"].is_null(), "{ok}");
    wait_settled(&app, &owner, &ws).await;
    let third = app
        .gql_as(
            Some(&owner.access),
            SEND,
            json!({ "c": c, "t": "one more" }),
        )
        .await;
    let err = expect_error(&third, "QUOTA_EXCEEDED");
    let resets = err["extensions"]["resetsAt"].as_str().expect("resetsAt");
    let resets = chrono::DateTime::parse_from_rfc3339(resets).expect("date");
    assert!(
        resets.signed_duration_since(chrono::Utc::now()) <= chrono::Duration::days(1),
        "tomorrow, UTC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_updated_follows_reservations_and_settlements() {
    // A slow answer: the reservation is still held when the first update is read.
    let app = spawn(&[("ECHO_TOKEN_DELAY_MS", "100")]).await;
    let s = app.register("live@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let c = app.create_conversation(&s, &ws, "live").await;
    let mut socket = GqlSocket::connect(&app, &s.access).await;
    socket
        .subscribe("1", "subscription($w: ID!) { usageUpdated(workspaceId: $w) { tokensUsed tokensReserved messagesUsed } }", json!({ "w": ws }))
        .await;
    let first = socket.next().await.expect("current quota");
    assert_eq!(
        first["payload"]["data"]["usageUpdated"],
        json!({ "tokensUsed": 0, "tokensReserved": 0, "messagesUsed": 0 })
    );
    let body = app
        .gql_as(
            Some(&s.access),
            SEND,
            json!({ "c": c, "t": "watch the meter" }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let reserved = socket.next().await.expect("reservation");
    let r = &reserved["payload"]["data"]["usageUpdated"];
    assert!(
        r["tokensReserved"].as_i64().is_some_and(|n| n > 4000),
        "{reserved}"
    );
    assert_eq!(r["messagesUsed"], 1);
    let settled = socket.next().await.expect("settlement");
    let r = &settled["payload"]["data"]["usageUpdated"];
    assert_eq!(r["tokensReserved"], 0, "{settled}");
    assert!(r["tokensUsed"].as_i64().is_some_and(|n| n > 0));
    let outsider = app.register("peek@example.com").await;
    let mut other = GqlSocket::connect(&app, &outsider.access).await;
    other
        .subscribe(
            "1",
            "subscription($w: ID!) { usageUpdated(workspaceId: $w) { tokensUsed } }",
            json!({ "w": ws }),
        )
        .await;
    let refused = other.collect("1", 5).await;
    assert_eq!(
        refused[0]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_and_expired_reservations_are_released() {
    // Background reaping out of the way: this test calls the reaper itself.
    let app = spawn(&[
        ("HEARTBEAT_INTERVAL_SECS", "600"),
        ("HEARTBEAT_TIMEOUT_SECS", "1800"),
    ])
    .await;
    let s = app.register("crash@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let c = app.create_conversation(&s, &ws, "crash").await;
    let ws_id: uuid::Uuid = ws.parse().expect("uuid");
    let user_id: uuid::Uuid = s.user_id.parse().expect("uuid");
    let question = app.insert_message(&c, None, "USER", "question").await;
    // A generation whose process died: reserved, streaming, partial text.
    let crashed = app
        .insert_generation(&c, &question, "partial words here", None)
        .await;
    let mut conn = app.db().await;
    let reserve = |message_id, ttl| colloquy::usage::quota::ReserveRequest {
        workspace_id: ws_id,
        user_id,
        message_id,
        model: "local/echo",
        prompt_tokens: 10,
        max_output_tokens: 100,
        ttl,
    };
    colloquy::usage::quota::reserve(&mut conn, &reserve(crashed, Duration::from_secs(600)))
        .await
        .expect("reserve");
    // And a reservation that simply expired.
    let orphan = app.insert_generation(&c, &question, "", None).await;
    colloquy::usage::quota::reserve(&mut conn, &reserve(orphan, Duration::ZERO))
        .await
        .expect("reserve");
    assert_eq!(quota(&app, &s, &ws).await["tokensReserved"], 220);

    tokio::time::sleep(Duration::from_millis(50)).await;
    let swept = colloquy::usage::quota::sweep(&mut conn)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(quota(&app, &s, &ws).await["tokensReserved"], 110);

    colloquy::streaming::instances::reap(&app.state.app)
        .await
        .expect("reap");
    let q = quota(&app, &s, &ws).await;
    assert_eq!(q["tokensReserved"], 0, "{q}");
    let (prompt, completion, estimated): (i64, i64, bool) = usage_records::table
        .filter(usage_records::message_id.eq(crashed))
        .select((
            usage_records::prompt_tokens,
            usage_records::completion_tokens,
            usage_records::estimated,
        ))
        .first(&mut conn)
        .await
        .expect("ledger row for the crashed generation");
    assert_eq!(
        (prompt, completion, estimated),
        (10, 3, true),
        "its partial text, counted"
    );
    assert_eq!(q["tokensUsed"], 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_conversation_mid_stream_still_charges() {
    let app = spawn(&[("ECHO_TOKEN_DELAY_MS", "20")]).await;
    let s = app.register("del@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let c = app.create_conversation(&s, &ws, "doomed").await;
    let body = app
        .gql_as(Some(&s.access), SEND, json!({ "c": c, "t": "/words 500" }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = app
        .gql_as(
            Some(&s.access),
            "mutation($c: ID!) { deleteConversation(id: $c) }",
            json!({ "c": c }),
        )
        .await;
    assert_eq!(body["data"]["deleteConversation"], true, "{body}");
    let q = wait_settled(&app, &s, &ws).await;
    let ledger = ledger_tokens(&app).await;
    assert!(ledger > 0, "the partial answer was charged");
    assert_eq!(q["tokensUsed"].as_i64(), Some(ledger));
    let (conversation, completion): (Option<uuid::Uuid>, i64) = usage_records::table
        .select((
            usage_records::conversation_id,
            usage_records::completion_tokens,
        ))
        .first(&mut app.db().await)
        .await
        .expect("ledger row");
    assert_eq!(conversation, None, "the ledger outlives the conversation");
    assert!(
        completion > 0 && completion < 500,
        "stopped early: {completion}"
    );
}

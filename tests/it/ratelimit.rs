//! Rate limits through the real server: classes per user or IP, 429 with `Retry-After`, limits
//! shared through Redis between servers, the in-process fallback while Redis is down, and the
//! WebSocket subscribe and connection caps.
//!
//! Every test uses a key prefix of its own, so tests sharing the Redis server never share a
//! bucket (all of them come from 127.0.0.1).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::common::own_redis::OwnRedis;
use crate::common::ws::GqlSocket;
use crate::common::{Client, Session, TestApp, expect_error, test_config};

const SEND: &str = "mutation($i: SendMessageInput!) { sendMessage(input: $i) {
    userMessage { id } assistantMessage { id } } }";

/// A key prefix no other test uses.
fn prefix() -> String {
    format!("colloquy:rl-test:{}", uuid::Uuid::new_v4().simple())
}

/// A server with its own key prefix and instant echo replies, plus `overrides`.
async fn spawn(prefix: &str, overrides: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("RATE_LIMIT_KEY_PREFIX", prefix),
        ("ECHO_TOKEN_DELAY_MS", "0"),
    ];
    vars.extend_from_slice(overrides);
    TestApp::spawn_with(&vars).await
}

/// POSTs a body and returns the status, the headers and the JSON.
pub(crate) async fn post(
    app: &Client,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = app.client.post(app.url("/graphql")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.expect("json body"))
}

pub(crate) async fn query(
    app: &Client,
    token: Option<&str>,
    query: &str,
) -> (StatusCode, HeaderMap, Value) {
    post(app, token, json!({ "query": query })).await
}

/// `retryAfterMs` of the first error, after checking its code is RATE_LIMITED.
#[track_caller]
fn retry_after_ms(body: &Value) -> u64 {
    expect_error(body, "RATE_LIMITED")["extensions"]["retryAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retryAfterMs in {body}"))
}

/// The `Retry-After` header, in seconds.
#[track_caller]
fn retry_after_header(headers: &HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {headers:?}"))
}

async fn conversation(app: &TestApp, s: &Session) -> String {
    let workspace = app.personal_workspace(s).await;
    app.create_conversation(s, &workspace, "limits").await
}

fn send_body(conversation: &str, content: &str) -> Value {
    json!({ "query": SEND, "variables": { "i": { "conversationId": conversation, "content": content } } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_21st_generation_in_a_minute_is_rate_limited() {
    let app = spawn(
        &prefix(),
        &[
            ("RATE_LIMIT_GENERATIONS_PER_MIN", "20"),
            ("RATE_LIMIT_GENERATIONS_BURST", "20"),
        ],
    )
    .await;
    let a = app.register("gen-a@example.com").await;
    let b = app.register("gen-b@example.com").await;
    let conversation_a = conversation(&app, &a).await;
    // 20 at once, then one every 3 s: the 21st is refused unless the first 20 took over 3 s
    // (a loaded machine), when a few more may pass first.
    let mut refused = None;
    for i in 0..30 {
        let (status, headers, body) = post(
            &app,
            Some(&a.access),
            send_body(&conversation_a, &format!("m{i}")),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, headers, body));
            break;
        }
        assert_eq!(status, StatusCode::OK, "send {i}: {body}");
        assert!(
            body["data"]["sendMessage"]["userMessage"]["id"].is_string(),
            "send {i}: {body}"
        );
    }
    let (sent, headers, body) = refused.expect("30 sends at once were never refused");
    assert!(
        (20..=25).contains(&sent),
        "the first refusal was send {sent}"
    );
    // The next generation is at most 3 s away.
    let wait = retry_after_ms(&body);
    assert!((1..=3_000).contains(&wait), "retryAfterMs {wait}");
    assert_eq!(retry_after_header(&headers), wait.div_ceil(1000));

    // Other classes of the same user are untouched, and so is another user.
    let (status, _, body) = query(&app, Some(&a.access), "{ me { email } }").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let conversation_b = conversation(&app, &b).await;
    let (status, _, body) = post(&app, Some(&b.access), send_body(&conversation_b, "hi")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");

    // Aliases cannot smuggle more generations into one request.
    let twice = json!({
        "query": "mutation($i: SendMessageInput!) { x: sendMessage(input: $i) { userMessage { id } }
                  y: sendMessage(input: $i) { userMessage { id } } }",
        "variables": { "i": { "conversationId": conversation_b, "content": "again" } }
    });
    let before = message_count(&app).await;
    let mut limited = false;
    for _ in 0..10 {
        let (status, _, body) = post(&app, Some(&b.access), twice.clone()).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after_ms(&body);
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "20 per minute cannot allow 10 double sends at once"
    );
    let stored = message_count(&app).await - before;
    // At most 9 double sends (19 generations left) went through: 4 messages each.
    assert!(stored <= 36, "{stored} messages stored");
}

async fn message_count(app: &TestApp) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    colloquy::db::schema::messages::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_query_class_answers_429_with_retry_after() {
    let app = spawn(&prefix(), &[("RATE_LIMIT_QUERIES_PER_MIN", "3")]).await;
    let a = app.register("q-a@example.com").await;
    let b = app.register("q-b@example.com").await;
    for _ in 0..3 {
        let (status, _, body) = query(&app, Some(&a.access), "{ me { email } }").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["me"]["email"], "q-a@example.com");
    }
    let (status, headers, body) = query(&app, Some(&a.access), "{ me { email } }").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["data"].is_null(), "nothing ran: {body}");
    let wait = retry_after_ms(&body);
    // A query every 20 s.
    assert!((15_000..=20_000).contains(&wait), "retryAfterMs {wait}");
    assert_eq!(retry_after_header(&headers), wait.div_ceil(1000));
    assert!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"))
    );

    // Mutations are another class: still allowed.
    let (status, _, body) = post(
        &app,
        Some(&a.access),
        json!({ "query": "mutation { createWorkspace(input: { name: \"More\" }) { id } }" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");

    // Another user has a bucket of their own, and every operation of a batch counts.
    let (status, _, body) = query(&app, Some(&b.access), "{ me { email } }").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let batch = json!([{ "query": "{ me { id } }" }, { "query": "{ me { id } }" }]);
    let (status, _, body) = post(&app, Some(&b.access), batch.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    let (status, _, body) = post(&app, Some(&b.access), batch).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    retry_after_ms(&body);

    // GET queries are limited the same way.
    let response = app
        .client
        .get(app.url("/graphql?query=%7B%20me%20%7B%20id%20%7D%20%7D"))
        .bearer_auth(&b.access)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_mutations_are_limited_per_ip_but_login_is_not() {
    let app = spawn(&prefix(), &[("RATE_LIMIT_MUTATIONS_PER_MIN", "2")]).await;
    app.register("ip-a@example.com").await;
    app.register("ip-b@example.com").await;
    let (status, headers, body) = post(
        &app,
        None,
        json!({ "query": "mutation { register(input: { email: \"ip-c@example.com\", password: \"long enough password\", displayName: \"C\" }) { accessToken } }" }),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after_header(&headers) >= 1);
    retry_after_ms(&body);

    // login has limits of its own (per email and IP), not the mutation class.
    for _ in 0..3 {
        let body = app.login("ip-a@example.com", crate::common::PASSWORD).await;
        assert!(body["data"]["login"]["accessToken"].is_string(), "{body}");
    }
    // A signed-in user has a bucket of their own, not the IP's.
    let body = app.login("ip-b@example.com", crate::common::PASSWORD).await;
    let token = body["data"]["login"]["accessToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let (status, _, body) = post(
        &app,
        Some(&token),
        json!({ "query": "mutation { createWorkspace(input: { name: \"Mine\" }) { id } }" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Redis: shared limits, and the fallback while it is down.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_in_process_and_recovers() {
    let mut redis = OwnRedis::start().await;
    let prefix = prefix();
    let url = redis.url();
    let app = spawn(
        &prefix,
        &[("REDIS_URL", &url), ("RATE_LIMIT_QUERIES_PER_MIN", "4")],
    )
    .await;
    let limiter = app.state.app.limiter.clone();
    let a = app.register("outage@example.com").await;
    let me = || query(&app, Some(&a.access), "{ me { id } }");
    let (status, _, _) = me().await;
    assert_eq!(status, StatusCode::OK);
    let keys = redis.keys(&prefix).await;
    assert!(
        keys.contains(&format!("{prefix}:query:user:{}", a.user_id)),
        "{keys:?}"
    );
    assert_eq!(limiter.fallbacks(), 0);

    // Redis goes away: requests are still answered, and still limited, in process.
    redis.kill();
    let mut allowed = 0;
    let mut limited = false;
    for _ in 0..8 {
        let (status, _, body) = me().await;
        match status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                retry_after_ms(&body);
                limited = true;
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        limited,
        "never unlimited: {allowed} allowed without a refusal"
    );
    assert!(allowed <= 4, "{allowed}");
    assert!(limiter.fallbacks() >= 2, "{}", limiter.fallbacks());
    assert_eq!(limiter.outages(), 1);
    assert!(limiter.redis_down());

    // Redis is back (empty): within a few seconds the limits live there again.
    redis.restart().await;
    let mut back = false;
    for _ in 0..60 {
        let _ = me().await;
        if !limiter.redis_down() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "the limiter did not go back to Redis");
    let fallbacks = limiter.fallbacks();
    let (status, _, body) = me().await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the new Redis has a full bucket: {body}"
    );
    assert_eq!(limiter.fallbacks(), fallbacks, "decided in Redis");
    let keys = redis.keys(&prefix).await;
    assert!(
        keys.contains(&format!("{prefix}:query:user:{}", a.user_id)),
        "{keys:?}"
    );
    assert_eq!(limiter.outages(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_share_one_limit() {
    let prefix = prefix();
    let overrides = [
        ("RATE_LIMIT_KEY_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_QUERIES_PER_MIN", "4"),
    ];
    let one = TestApp::spawn_with(&overrides).await;
    // A second server over the same database (so the same users and sessions).
    let two = SecondServer::start(&one, &overrides).await;
    let s = one.register("shared@example.com").await;
    let ask = |url: String| {
        let client = one.client.clone();
        let token = s.access.clone();
        async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": "{ me { email } }" }))
                .send()
                .await
                .expect("request");
            let status = response.status();
            (status, response.json::<Value>().await.expect("json"))
        }
    };
    for url in [
        one.url("/graphql"),
        two.url(),
        one.url("/graphql"),
        two.url(),
    ] {
        let (status, body) = ask(url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["me"]["email"], "shared@example.com");
    }
    for url in [one.url("/graphql"), two.url()] {
        let (status, body) = ask(url).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        retry_after_ms(&body);
    }
    assert_eq!(one.state.app.limiter.fallbacks(), 0);
    assert_eq!(two.limiter.fallbacks(), 0);
}

/// Another server process-alike: its own `App` and listener over `of`'s database.
struct SecondServer {
    addr: std::net::SocketAddr,
    limiter: colloquy::ratelimit::Limiter,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl SecondServer {
    async fn start(of: &TestApp, overrides: &[(&str, &str)]) -> SecondServer {
        let config = test_config(&of.db_name, overrides);
        let app = colloquy::app::App::build(config).expect("app builds");
        let limiter = app.limiter.clone();
        let state = colloquy::app::AppState::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            let _ = colloquy::app::serve(listener, state, shutdown).await;
        });
        SecondServer {
            addr,
            limiter,
            _shutdown: tx,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket.
// ---------------------------------------------------------------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw graphql-transport-ws socket with `connection_init` sent.
async fn init_raw(app: &TestApp, token: &str) -> Socket {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    socket
        .send(Message::Text(init.to_string().into()))
        .await
        .expect("send");
    socket
}

/// What the server answers a `connection_init` with: Ok(()) for the ack, Err((code, reason))
/// for a close.
async fn init_outcome(socket: &mut Socket) -> Result<(), (u16, String)> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer within 10 s")
            .expect("an answer before the end")
            .expect("frame");
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).expect("json");
                assert_eq!(value["type"], "connection_ack", "{value}");
                return Ok(());
            }
            Message::Close(Some(frame)) => {
                return Err((u16::from(frame.code), frame.reason.to_string()));
            }
            Message::Close(None) => return Err((0, String::new())),
            _ => continue,
        }
    }
}

/// The next message about `id`, skipping `next` payloads.
async fn end_of(socket: &mut GqlSocket, id: &str) -> Value {
    loop {
        let message = socket.next().await.expect("socket open");
        if message["id"] == id && message["type"] != "next" {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_are_limited_per_connection_without_closing_it() {
    let app = spawn(&prefix(), &[("RATE_LIMIT_WS_SUBSCRIBES_PER_MIN", "3")]).await;
    let s = app.register("wssub@example.com").await;
    let mut socket = GqlSocket::connect(&app, &s.access).await;
    for id in ["a", "b", "c"] {
        socket.subscribe(id, "{ me { email } }", json!({})).await;
        assert_eq!(end_of(&mut socket, id).await["type"], "complete");
    }
    socket.subscribe("d", "{ me { email } }", json!({})).await;
    let refused = end_of(&mut socket, "d").await;
    assert_eq!(refused["type"], "error", "{refused}");
    let error = &refused["payload"][0];
    assert_eq!(error["extensions"]["code"], "RATE_LIMITED", "{refused}");
    let wait = error["extensions"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!((10_000..=20_000).contains(&wait), "retryAfterMs {wait}");
    // The socket stays open.
    socket.send(json!({ "type": "ping" })).await;
    assert_eq!(socket.next().await, Some(json!({ "type": "pong" })));
    // Another connection has a budget of its own.
    let mut other = GqlSocket::connect(&app, &s.access).await;
    other.subscribe("a", "{ me { email } }", json!({})).await;
    assert_eq!(end_of(&mut other, "a").await["type"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_over_websocket_share_the_users_limit() {
    let app = spawn(
        &prefix(),
        &[
            ("RATE_LIMIT_GENERATIONS_PER_MIN", "2"),
            ("RATE_LIMIT_GENERATIONS_BURST", "2"),
        ],
    )
    .await;
    let s = app.register("wsgen@example.com").await;
    let conversation = conversation(&app, &s).await;
    let (status, _, body) = post(&app, Some(&s.access), send_body(&conversation, "one")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut socket = GqlSocket::connect(&app, &s.access).await;
    let input = json!({ "i": { "conversationId": conversation, "content": "two" } });
    socket.subscribe("1", SEND, input.clone()).await;
    let first = socket.collect("1", 1).await;
    assert!(
        first[0]["data"]["sendMessage"]["userMessage"]["id"].is_string(),
        "{first:?}"
    );
    socket.subscribe("2", SEND, input).await;
    let refused = end_of(&mut socket, "2").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused}"
    );
    let (status, _, body) = post(&app, Some(&s.access), send_body(&conversation, "three")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_capped_per_user() {
    let app = spawn(&prefix(), &[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let s = app.register("wscap@example.com").await;
    let other = app.register("wscap2@example.com").await;
    let first = GqlSocket::connect(&app, &s.access).await;
    let _second = GqlSocket::connect(&app, &s.access).await;
    let mut third = init_raw(&app, &s.access).await;
    assert_eq!(
        init_outcome(&mut third).await,
        Err((4429, "Too many connections".to_owned()))
    );
    // Someone else is not affected.
    let _theirs = GqlSocket::connect(&app, &other.access).await;
    // Closing one frees its place.
    first.close().await;
    let mut reopened = false;
    for _ in 0..50 {
        let mut socket = init_raw(&app, &s.access).await;
        if init_outcome(&mut socket).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "a closed connection did not free its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_subprotocol_is_limited_too() {
    let app = spawn(&prefix(), &[("RATE_LIMIT_WS_SUBSCRIBES_PER_MIN", "1")]).await;
    let s = app.register("wslegacy@example.com").await;
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let mut send = async |value: Value| {
        socket
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("send");
        let mut out = Vec::new();
        while let Some(Ok(message)) = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer")
        {
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).expect("json");
                let done = value["type"] != "data";
                out.push(value);
                if done {
                    break;
                }
            }
        }
        out
    };
    let ack = send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", s.access) } })).await;
    assert_eq!(ack, vec![json!({ "type": "connection_ack" })]);
    let ran =
        send(json!({ "id": "1", "type": "start", "payload": { "query": "{ me { email } }" } }))
            .await;
    assert_eq!(
        ran[0]["payload"]["data"]["me"]["email"], "wslegacy@example.com",
        "{ran:?}"
    );
    let refused =
        send(json!({ "id": "2", "type": "start", "payload": { "query": "{ me { email } }" } }))
            .await;
    assert_eq!(
        refused[0]["payload"]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{refused:?}"
    );
}

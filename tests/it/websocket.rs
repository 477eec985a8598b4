//! GraphQL over WebSocket (graphql-transport-ws): authentication in `connection_init`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::common::TestApp;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(app: &TestApp, origin: Option<&str>) -> Result<Socket, String> {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).expect("origin"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
        .map_err(|e| e.to_string())
}

async fn next_json(socket: &mut Socket) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")?;
        match message.expect("frame") {
            Message::Text(text) => return Some(serde_json::from_str(&text).expect("json")),
            Message::Close(frame) => {
                return Some(json!({ "closed": frame.map(|f| u16::from(f.code)) }));
            }
            _ => continue,
        }
    }
}

async fn send(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_init_authenticates_the_socket() {
    let app = TestApp::spawn().await;
    let s = app.register("ws@example.com").await;

    for payload in [
        json!({ "Authorization": format!("Bearer {}", s.access) }),
        json!({ "authToken": s.access }),
        json!({ "authorization": format!("bearer {}", s.access) }),
    ] {
        let mut socket = open(&app, None).await.expect("open");
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        assert_eq!(
            next_json(&mut socket).await.expect("ack")["type"],
            "connection_ack"
        );
        send(
            &mut socket,
            json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }),
        )
        .await;
        let next = next_json(&mut socket).await.expect("next");
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(next["payload"]["data"]["me"]["email"], "ws@example.com");
        assert_eq!(
            next_json(&mut socket).await.expect("complete")["type"],
            "complete"
        );
    }

    // No token: the socket opens, but anything needing a viewer fails loudly.
    let mut socket = open(&app, None).await.expect("open");
    send(&mut socket, json!({ "type": "connection_init" })).await;
    assert_eq!(
        next_json(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    send(
        &mut socket,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }),
    )
    .await;
    let next = next_json(&mut socket).await.expect("next");
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{next}"
    );

    // A bad token closes the connection with 4403 Forbidden.
    let mut socket = open(&app, None).await.expect("open");
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "Authorization": "Bearer nope" } }),
    )
    .await;
    let closed = next_json(&mut socket).await.expect("close");
    assert_eq!(closed, json!({ "closed": 4403 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_cannot_open_a_socket() {
    let app = TestApp::spawn().await;
    let same = format!("http://{}", app.addr);
    assert!(open(&app, Some(&same)).await.is_ok());
    let err = open(&app, Some("https://evil.example"))
        .await
        .expect_err("refused");
    assert!(err.contains("403"), "{err}");

    let allowed = TestApp::spawn_with(&[("CORS_ORIGINS", "https://app.example")]).await;
    assert!(open(&allowed, Some("https://app.example")).await.is_ok());
    assert!(open(&allowed, Some("https://evil.example")).await.is_err());
}

// ---------------------------------------------------------------------------------------------
// graphql-transport-ws, per the graphql-ws PROTOCOL.md: close codes and message flow.
// ---------------------------------------------------------------------------------------------

/// Opens a socket offering `protocols` (a `Sec-WebSocket-Protocol` value); returns it with the
/// protocol the server selected.
async fn open_with(app: &TestApp, protocols: &'static str) -> (Socket, Option<String>) {
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(protocols),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (socket, selected)
}

/// A socket past `connection_init` / `connection_ack`, anonymous when `token` is `None`.
async fn acked(app: &TestApp, token: Option<&str>) -> Socket {
    let mut socket = open(app, None).await.expect("open");
    let init = match token {
        Some(token) => json!({
            "type": "connection_init",
            "payload": { "Authorization": format!("Bearer {token}") }
        }),
        None => json!({ "type": "connection_init" }),
    };
    send(&mut socket, init).await;
    let ack = next_json(&mut socket).await.expect("ack");
    assert_eq!(ack, json!({ "type": "connection_ack" }));
    socket
}

/// The close the server sends next: (code, reason). Panics on any other message.
async fn expect_close(socket: &mut Socket) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a close within 10 s")
            .expect("a close frame before the end of the stream")
            .expect("frame");
        match message {
            Message::Close(Some(frame)) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Message::Close(None) => panic!("close without a code"),
            Message::Text(text) => panic!("expected a close, got {text}"),
            _ => continue,
        }
    }
}

fn subscribe(id: &str, query: &str, variables: Value) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } })
}

const CONVERSATION_EVENTS: &str =
    "subscription($c: ID!) { conversationEvents(conversationId: $c) { __typename } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_are_negotiated() {
    let app = TestApp::spawn().await;
    let (_, selected) = open_with(&app, "graphql-transport-ws").await;
    assert_eq!(selected.as_deref(), Some("graphql-transport-ws"));
    let (_, selected) = open_with(&app, "graphql-ws").await;
    assert_eq!(selected.as_deref(), Some("graphql-ws"));
    // The client's first known protocol wins, and is the one spoken.
    let (mut socket, selected) = open_with(&app, "chat, graphql-transport-ws, graphql-ws").await;
    assert_eq!(selected.as_deref(), Some("graphql-transport-ws"));
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );

    // No known subprotocol: no upgrade.
    let mut request = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let err = tokio_tungstenite::connect_async(request)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_close_with_4400() {
    let app = TestApp::spawn().await;

    let invalid = [
        Message::Text("{ not json".into()),
        Message::Text(json!({ "type": "hello" }).to_string().into()),
        Message::Text(json!({ "payload": {} }).to_string().into()),
        Message::Text(json!([1, 2]).to_string().into()),
        Message::Text(
            json!({ "type": "connection_init", "payload": "x" })
                .to_string()
                .into(),
        ),
        // Server-to-client types are not for the client to send.
        Message::Text(json!({ "type": "connection_ack" }).to_string().into()),
        Message::Binary(json!({ "type": "connection_init" }).to_string().into()),
    ];
    for message in invalid {
        let mut socket = open(&app, None).await.expect("open");
        socket.send(message.clone()).await.expect("send");
        let (code, reason) = expect_close(&mut socket).await;
        assert_eq!(code, 4400, "{message:?} closed with {code} {reason}");
        assert!(!reason.is_empty());
    }

    // After the ack too: a subscribe without a payload, with an empty id, or of another type.
    for message in [
        json!({ "id": "1", "type": "subscribe" }),
        json!({ "id": "1", "type": "subscribe", "payload": { "variables": {} } }),
        json!({ "id": "", "type": "subscribe", "payload": { "query": "{ __typename }" } }),
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ __typename }", "variables": [] } }),
        json!({ "type": "complete" }),
        json!({ "id": "1", "type": "next", "payload": {} }),
    ] {
        let mut socket = acked(&app, None).await;
        send(&mut socket, message.clone()).await;
        let (code, reason) = expect_close(&mut socket).await;
        assert_eq!(code, 4400, "{message} closed with {code} {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() {
    let app = TestApp::spawn().await;
    let mut socket = acked(&app, None).await;
    let query = format!("{{ __typename }} #{}", "x".repeat(70 * 1024));
    // The server may close before the whole message is written.
    let _ = socket
        .send(Message::Text(
            subscribe("1", &query, json!({})).to_string().into(),
        ))
        .await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => panic!("expected a close, got {text}"),
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket ends within 10 s");
    assert!(matches!(ended, Some(4400)), "closed with {ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_before_the_ack_closes_with_4401() {
    let app = TestApp::spawn().await;
    let mut socket = open(&app, None).await.expect("open");
    send(&mut socket, subscribe("1", "{ __typename }", json!({}))).await;
    assert_eq!(
        expect_close(&mut socket).await,
        (4401, "Unauthorized".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_close_with_4403() {
    let app = TestApp::spawn().await;
    let s = app.register("ws403@example.com").await;
    for payload in [
        json!({ "Authorization": "Bearer nope" }),
        json!({ "headers": { "Authorization": "Bearer nope" } }),
        json!({ "authToken": "nope" }),
        json!({ "Authorization": format!("Basic {}", s.access) }),
    ] {
        let mut socket = open(&app, None).await.expect("open");
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        assert_eq!(
            expect_close(&mut socket).await,
            (4403, "Forbidden".to_owned()),
            "{payload}"
        );
    }

    // A revoked session: the token verifies but its session is over.
    let body = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": s.refresh }),
        )
        .await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    let mut socket = open(&app, None).await.expect("open");
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "authToken": s.access } }),
    )
    .await;
    assert_eq!(
        expect_close(&mut socket).await,
        (4403, "Forbidden".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_init_closes_with_4408() {
    let app = TestApp::spawn_with(&[("WS_INIT_TIMEOUT_MS", "300")]).await;
    let started = std::time::Instant::now();
    let mut socket = open(&app, None).await.expect("open");
    // A ping is no connection_init.
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );
    assert_eq!(
        expect_close(&mut socket).await,
        (4408, "Connection initialisation timeout".to_owned())
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(250)
            && elapsed < std::time::Duration::from_secs(3),
        "{elapsed:?}"
    );

    // A connection_init in time keeps the socket open past the timeout.
    let mut socket = acked(&app, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_id_reused_closes_with_4409() {
    let app = TestApp::spawn().await;
    let s = app.register("ws409@example.com").await;
    let workspace = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &workspace, "held open").await;

    let mut socket = acked(&app, Some(&s.access)).await;
    // A subscription that stays open: nothing happens in the conversation.
    send(
        &mut socket,
        subscribe("dup", CONVERSATION_EVENTS, json!({ "c": conversation })),
    )
    .await;
    send(&mut socket, subscribe("dup", "{ __typename }", json!({}))).await;
    assert_eq!(
        expect_close(&mut socket).await,
        (4409, "Subscriber for dup already exists".to_owned())
    );

    // The same, with both subscribes in one write burst and a single-result first operation.
    let mut socket = acked(&app, Some(&s.access)).await;
    socket
        .feed(Message::Text(
            subscribe("q", "{ me { email } }", json!({}))
                .to_string()
                .into(),
        ))
        .await
        .expect("feed");
    socket
        .feed(Message::Text(
            subscribe("q", "{ me { email } }", json!({}))
                .to_string()
                .into(),
        ))
        .await
        .expect("feed");
    socket.flush().await.expect("flush");
    let (code, reason) = loop {
        match next_json(&mut socket).await.expect("message") {
            Value::Object(m) if m.contains_key("closed") => {
                break (m["closed"].clone(), String::new());
            }
            other => assert!(
                other["type"] == "next" || other["type"] == "complete",
                "{other}"
            ),
        }
    };
    assert_eq!(code, json!(4409), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_init_closes_with_4429() {
    let app = TestApp::spawn().await;
    let mut socket = acked(&app, None).await;
    send(&mut socket, json!({ "type": "connection_init" })).await;
    assert_eq!(
        expect_close(&mut socket).await,
        (4429, "Too many initialisation requests".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_access_token_closes_the_socket_with_4403() {
    let app = TestApp::spawn_with(&[("ACCESS_TOKEN_TTL_SECS", "1")]).await;
    let s = app.register("wsexp@example.com").await;
    let started = std::time::Instant::now();
    let mut socket = open(&app, None).await.expect("open");
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "authToken": s.access } }),
    )
    .await;
    // The token lives at most a second: the ack may or may not make it first.
    let first = next_json(&mut socket).await.expect("ack or close");
    if first["type"] == "connection_ack" {
        assert_eq!(expect_close(&mut socket).await.0, 4403);
    } else {
        assert_eq!(first, json!({ "closed": 4403 }));
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A token with this `exp`, signed with the test secret, for the user and session of `s`.
fn token_expiring_at(s: &crate::common::Session, exp: i64) -> String {
    use base64::Engine as _;
    let payload = s.access.split('.').nth(1).expect("payload");
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json");
    claims["exp"] = json!(exp);
    claims["jti"] = json!(uuid::Uuid::new_v4());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::common::TEST_JWT_SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_lives_until_the_raw_exp_of_its_token() {
    let app = TestApp::spawn().await;
    let s = app.register("wsexp2@example.com").await;
    let now = chrono::Utc::now().timestamp();

    // Two seconds left: acknowledged, usable, then closed with 4403 at `exp`.
    let token = token_expiring_at(&s, now + 2);
    let started = std::time::Instant::now();
    let mut socket = acked(&app, Some(&token)).await;
    send(&mut socket, subscribe("1", "{ me { email } }", json!({}))).await;
    let next = next_json(&mut socket).await.expect("next");
    assert_eq!(next["payload"]["data"]["me"]["email"], "wsexp2@example.com");
    assert_eq!(
        next_json(&mut socket).await.expect("complete")["type"],
        "complete"
    );
    assert_eq!(
        expect_close(&mut socket).await,
        (4403, "Forbidden".to_owned())
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900)
            && elapsed < std::time::Duration::from_secs(4),
        "{elapsed:?}"
    );

    // Past `exp` but within the verification leeway: HTTP still takes it, a socket does not.
    let token = token_expiring_at(&s, now - 5);
    assert_eq!(app.me(&token).await, Ok("wsexp2@example.com".to_owned()));
    let mut socket = open(&app, None).await.expect("open");
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "authToken": token } }),
    )
    .await;
    assert_eq!(expect_close(&mut socket).await.0, 4403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_pong() {
    let app = TestApp::spawn().await;
    let mut socket = open(&app, None).await.expect("open");
    // Before the connection_init too.
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );
    send(&mut socket, json!({ "type": "connection_init" })).await;
    assert_eq!(
        next_json(&mut socket).await.expect("ack")["type"],
        "connection_ack"
    );
    send(
        &mut socket,
        json!({ "type": "ping", "payload": { "n": 1 } }),
    )
    .await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong", "payload": { "n": 1 } }))
    );
    // A client pong is taken silently: the next reply is the next ping's pong.
    send(&mut socket, json!({ "type": "pong" })).await;
    send(
        &mut socket,
        json!({ "type": "pong", "payload": { "x": true } }),
    )
    .await;
    send(&mut socket, json!({ "type": "ping", "payload": null })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_mutations_run_over_the_socket() {
    let app = TestApp::spawn().await;
    let s = app.register("wsq@example.com").await;
    let mut socket = acked(&app, Some(&s.access)).await;

    send(
        &mut socket,
        json!({ "id": "q1", "type": "subscribe", "payload": {
            "query": "query Me { me { email } } query Other { __typename }",
            "operationName": "Me",
            "variables": null,
            "extensions": {}
        } }),
    )
    .await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(
            json!({ "id": "q1", "type": "next", "payload": { "data": { "me": { "email": "wsq@example.com" } } } })
        )
    );
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "id": "q1", "type": "complete" }))
    );

    send(
        &mut socket,
        subscribe(
            "m1",
            "mutation($n: String!) { createWorkspace(input: { name: $n }) { name } }",
            json!({ "n": "Over the socket" }),
        ),
    )
    .await;
    let next = next_json(&mut socket).await.expect("next");
    assert_eq!(next["id"], "m1");
    assert_eq!(
        next["payload"]["data"]["createWorkspace"]["name"], "Over the socket",
        "{next}"
    );
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "id": "m1", "type": "complete" }))
    );

    // Refused before execution (syntax, validation): `error`, and no `complete` after it.
    for (id, query) in [("e1", "{ me { email "), ("e2", "{ noSuchField }")] {
        send(&mut socket, subscribe(id, query, json!({}))).await;
        let error = next_json(&mut socket).await.expect("error");
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["id"], id);
        assert!(error["payload"][0]["message"].is_string(), "{error}");
    }
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "pong" }))
    );

    // An id is free again once its operation completed.
    send(&mut socket, subscribe("q1", "{ __typename }", json!({}))).await;
    assert_eq!(next_json(&mut socket).await.expect("next")["type"], "next");
    assert_eq!(
        next_json(&mut socket).await.expect("complete")["type"],
        "complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_complete_stops_the_operation() {
    let app = TestApp::spawn().await;
    let s = app.register("wscomplete@example.com").await;
    let workspace = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &workspace, "to stop").await;
    let mut socket = acked(&app, Some(&s.access)).await;

    send(
        &mut socket,
        subscribe("live", CONVERSATION_EVENTS, json!({ "c": conversation })),
    )
    .await;
    send(&mut socket, json!({ "id": "live", "type": "complete" })).await;
    // Completing an unknown id is no error either.
    send(&mut socket, json!({ "id": "unknown", "type": "complete" })).await;
    // The id is free: reusing it is no 4409, and no `complete` came for the stopped one.
    send(
        &mut socket,
        subscribe("live", "{ me { email } }", json!({})),
    )
    .await;
    let next = next_json(&mut socket).await.expect("next");
    assert_eq!(next["id"], "live");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["data"]["me"]["email"],
        "wscomplete@example.com"
    );
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "id": "live", "type": "complete" }))
    );

    // A client that goes away with subscriptions open: the server carries on serving others.
    send(
        &mut socket,
        subscribe("a", CONVERSATION_EVENTS, json!({ "c": conversation })),
    )
    .await;
    drop(socket);
    let mut other = acked(&app, Some(&s.access)).await;
    send(&mut other, json!({ "type": "ping" })).await;
    assert_eq!(next_json(&mut other).await, Some(json!({ "type": "pong" })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_graphql_ws_subprotocol_still_works() {
    let app = TestApp::spawn().await;
    let s = app.register("legacy@example.com").await;
    let (mut socket, selected) = open_with(&app, "graphql-ws").await;
    assert_eq!(selected.as_deref(), Some("graphql-ws"));
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", s.access) } }),
    )
    .await;
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "type": "connection_ack" }))
    );
    send(
        &mut socket,
        json!({ "id": "1", "type": "start", "payload": { "query": "{ me { email } }" } }),
    )
    .await;
    let data = next_json(&mut socket).await.expect("data");
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], "1");
    assert_eq!(data["payload"]["data"]["me"]["email"], "legacy@example.com");
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "id": "1", "type": "complete" }))
    );

    // A bad token still closes with 4403 there.
    let (mut socket, _) = open_with(&app, "graphql-ws").await;
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "authToken": "nope" } }),
    )
    .await;
    let closed = next_json(&mut socket).await;
    assert!(
        matches!(&closed, Some(v) if v["closed"] == 4403 || v["type"] == "connection_error"),
        "{closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_socket_stops_its_operations() {
    let app = TestApp::spawn().await;
    let s = app.register("wsleak@example.com").await;
    let workspace = app.personal_workspace(&s).await;
    let conversation = app.create_conversation(&s, &workspace, "leak").await;
    let metrics = tokio::runtime::Handle::current().metrics();
    const OPEN: usize = 20;

    for polite in [false, true] {
        let mut socket = acked(&app, Some(&s.access)).await;
        for i in 0..OPEN {
            send(
                &mut socket,
                subscribe(
                    &format!("s{i}"),
                    CONVERSATION_EVENTS,
                    json!({ "c": conversation }),
                ),
            )
            .await;
        }
        // Messages are handled in order: once the pong is back, every operation is running.
        send(&mut socket, json!({ "type": "ping" })).await;
        assert_eq!(
            next_json(&mut socket).await,
            Some(json!({ "type": "pong" }))
        );
        let running = metrics.num_alive_tasks();
        if polite {
            socket.close(None).await.expect("close");
        } else {
            drop(socket);
        }
        let mut alive = running;
        for _ in 0..100 {
            alive = metrics.num_alive_tasks();
            if alive + OPEN <= running {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            alive + OPEN <= running,
            "{running} tasks with the socket open, still {alive} after it closed (polite: {polite})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_refused_by_its_resolver_ends_with_next_and_complete() {
    let app = TestApp::spawn().await;
    let mut socket = acked(&app, None).await;
    send(
        &mut socket,
        subscribe(
            "x",
            CONVERSATION_EVENTS,
            json!({ "c": uuid::Uuid::new_v4() }),
        ),
    )
    .await;
    let next = next_json(&mut socket).await.expect("next");
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{next}"
    );
    assert_eq!(
        next_json(&mut socket).await,
        Some(json!({ "id": "x", "type": "complete" }))
    );
}

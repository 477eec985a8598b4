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

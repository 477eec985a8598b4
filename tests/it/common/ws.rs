//! A graphql-transport-ws client for tests.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::TestApp;

type Inner =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct GqlSocket {
    inner: Inner,
}

impl GqlSocket {
    /// Connects to `app` and completes `connection_init` with this token (empty: anonymous).
    pub async fn connect(app: &TestApp, token: &str) -> GqlSocket {
        Self::connect_addr(app.addr, token).await
    }

    /// Connects to the server at `addr` (a `ServerProcess`, say) and completes
    /// `connection_init` with this token (empty: anonymous).
    pub async fn connect_addr(addr: SocketAddr, token: &str) -> GqlSocket {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (inner, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        let mut socket = GqlSocket { inner };
        // An empty token: an anonymous connection (no payload).
        let init = if token.is_empty() {
            json!({ "type": "connection_init" })
        } else {
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } })
        };
        socket.send(init).await;
        let ack = socket.next().await.expect("ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        socket
    }

    pub async fn send(&mut self, value: Value) {
        self.inner
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }))
            .await;
    }

    /// The next JSON message (pings answered), or None when the socket closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(15), self.inner.next())
                .await
                .expect("a message within 15 s")?;
            match message.ok()? {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("json");
                    if value["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(value);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The payloads of `next` messages for subscription `id` until its `complete`, at most
    /// `limit` of them.
    pub async fn collect(&mut self, id: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(message) = self.next().await else {
                break;
            };
            if message["id"] != id {
                continue;
            }
            match message["type"].as_str() {
                Some("next") => out.push(message["payload"].clone()),
                Some("complete") => break,
                Some("error") => {
                    out.push(json!({ "errors": message["payload"] }));
                    break;
                }
                _ => {}
            }
        }
        out
    }

    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
    }
}

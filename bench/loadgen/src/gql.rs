//! A small GraphQL client for Colloquy: operations over HTTP, and `graphql-transport-ws`
//! sockets (optionally bound to a chosen loopback source address).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{WebSocketStream, client_async};

/// The password of every account the benchmarks create.
pub const PASSWORD: &str = "bench-password-123";

/// GraphQL over HTTP against one server.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    url: String,
}

/// What `register` and `login` give back.
#[derive(Debug, Clone)]
pub struct Account {
    pub token: String,
    pub personal_workspace: String,
}

impl Http {
    /// `server` is the base URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(server: &str) -> anyhow::Result<Http> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Http {
            client,
            url: format!("{}/graphql", server.trim_end_matches('/')),
        })
    }

    /// Runs one operation; GraphQL errors become an `Err` naming their codes.
    pub async fn exec(
        &self,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .post(&self.url)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.context("GraphQL request failed")?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("GraphQL answer is not JSON (HTTP {status})"))?;
        if let Some(errors) = body
            .get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        {
            bail!(
                "GraphQL errors (HTTP {status}): {}",
                Value::Array(errors.clone())
            );
        }
        body.get("data")
            .cloned()
            .filter(|d| !d.is_null())
            .ok_or_else(|| anyhow!("GraphQL answer without data (HTTP {status})"))
    }

    pub async fn register(&self, email: &str) -> anyhow::Result<Account> {
        let data = self
            .exec(
                None,
                "mutation($i: RegisterInput!) { register(input: $i) { accessToken user { workspaces { id personal } } } }",
                json!({ "i": { "email": email, "password": PASSWORD, "displayName": "Bench" } }),
            )
            .await
            .with_context(|| format!("cannot register {email}"))?;
        account(&data["register"])
    }

    pub async fn login(&self, email: &str) -> anyhow::Result<Account> {
        let data = self
            .exec(
                None,
                "mutation($i: LoginInput!) { login(input: $i) { accessToken user { workspaces { id personal } } } }",
                json!({ "i": { "email": email, "password": PASSWORD } }),
            )
            .await
            .with_context(|| format!("cannot log in as {email}"))?;
        account(&data["login"])
    }

    /// Logs in, registering the account first when it does not exist yet.
    pub async fn login_or_register(&self, email: &str) -> anyhow::Result<Account> {
        match self.login(email).await {
            Ok(account) => Ok(account),
            Err(_) => self.register(email).await,
        }
    }

    pub async fn create_conversation(
        &self,
        token: &str,
        workspace: &str,
        model: &str,
    ) -> anyhow::Result<String> {
        let data = self
            .exec(
                Some(token),
                "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }",
                json!({ "i": { "workspaceId": workspace, "title": "bench", "model": model } }),
            )
            .await
            .context("cannot create a conversation")?;
        data.pointer("/createConversation/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("createConversation gave no id")
    }
}

fn account(payload: &Value) -> anyhow::Result<Account> {
    let token = payload["accessToken"]
        .as_str()
        .context("no accessToken in the answer")?
        .to_owned();
    let personal_workspace = payload
        .pointer("/user/workspaces")
        .and_then(Value::as_array)
        .and_then(|ws| ws.iter().find(|w| w["personal"] == json!(true)))
        .and_then(|w| w["id"].as_str())
        .context("no personal workspace in the answer")?
        .to_owned();
    Ok(Account {
        token,
        personal_workspace,
    })
}

/// A `graphql-transport-ws` connection, acknowledged.
pub struct Ws {
    socket: WebSocketStream<TcpStream>,
}

impl Ws {
    /// Connects to `server`'s `/graphql`, from `source` when given, and authenticates.
    pub async fn connect(server: &str, token: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
        let url = format!(
            "{}/graphql",
            server.trim_end_matches('/').replacen("http", "ws", 1)
        );
        let mut request = url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let host = request
            .uri()
            .authority()
            .context("the server URL has no host")?
            .as_str()
            .to_owned();
        let target: SocketAddr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?;
        let tcp = match source {
            Some(ip) => {
                let socket = TcpSocket::new_v4()?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("cannot bind to {ip}"))?;
                socket.connect(target).await
            }
            None => TcpStream::connect(target).await,
        }
        .with_context(|| format!("cannot connect to {target}"))?;
        tcp.set_nodelay(true)?;
        let (socket, _) = client_async(request, tcp)
            .await
            .context("WebSocket handshake failed")?;
        let mut ws = Ws { socket };
        ws.send(&json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
            .await?;
        let ack = ws.next().await?;
        if ack["type"] != "connection_ack" {
            bail!("expected connection_ack, got {ack}");
        }
        Ok(ws)
    }

    pub async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .context("cannot send on the WebSocket")
    }

    /// Starts operation `id`.
    pub async fn subscribe(
        &mut self,
        id: &str,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<()> {
        self.send(&json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }))
            .await
    }

    /// The next protocol message (protocol-level pings are answered here).
    pub async fn next(&mut self) -> anyhow::Result<Value> {
        loop {
            let message = self
                .socket
                .next()
                .await
                .context("the server closed the WebSocket")?
                .context("WebSocket read failed")?;
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => bail!("the server closed the WebSocket: {frame:?}"),
                _ => continue,
            };
            let value: Value =
                serde_json::from_str(text.as_str()).context("a WebSocket message is not JSON")?;
            if value["type"] == "ping" {
                self.send(&json!({ "type": "pong" })).await?;
                continue;
            }
            return Ok(value);
        }
    }

    /// Runs a query or mutation over the socket and returns its `data` as soon as the `next`
    /// carrying it arrives, as a client library hands the result to the application; the
    /// `complete` that follows is skipped by later reads (its id is not theirs).
    pub async fn execute(
        &mut self,
        id: &str,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        self.subscribe(id, query, variables).await?;
        loop {
            let message = self.next().await?;
            if message["id"] != id {
                continue;
            }
            match message["type"].as_str() {
                Some("next") => {
                    if let Some(errors) = message.pointer("/payload/errors") {
                        bail!("operation {id} failed: {errors}");
                    }
                    return message
                        .pointer("/payload/data")
                        .cloned()
                        .context("operation result without data");
                }
                Some("complete") => bail!("operation {id} completed without a result"),
                Some("error") => bail!("operation {id} refused: {}", message["payload"]),
                _ => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

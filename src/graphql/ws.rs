//! GraphQL over WebSocket, subprotocol `graphql-transport-ws`, as specified by the
//! graphql-ws project's PROTOCOL.md (enisdenjo/graphql-ws).
//!
//! One socket carries one connection: the client sends `connection_init` (credentials in its
//! payload, read by `authenticate_init`, which the legacy `graphql-ws` path shares), the
//! server answers `connection_ack`, then every `subscribe` runs in a task of its own and
//! streams `next` messages until `complete` (or `error` when the operation is refused before
//! it runs). All outgoing messages pass through one bounded channel to a single writer.
//!
//! Fatal protocol errors close the socket with the codes the protocol prescribes:
//!
//! | code | reason                               | when                                        |
//! |------|--------------------------------------|---------------------------------------------|
//! | 4400 | what is wrong with the message       | bad JSON, type or fields; binary; too large |
//! | 4401 | `Unauthorized`                       | `subscribe` before the `connection_ack`     |
//! | 4403 | `Forbidden`                          | credentials refused, or the token expired   |
//! | 4408 | `Connection initialisation timeout`  | no `connection_init` in `WS_INIT_TIMEOUT_MS`|
//! | 4409 | `Subscriber for <id> already exists` | an id reused while its operation runs       |
//! | 4429 | `Too many initialisation requests`   | a second `connection_init`                  |
//! | 4429 | `Too many connections`               | `WS_MAX_CONNECTIONS_PER_USER` reached       |
//! | 4500 | `Internal server error`              | the session could not be checked            |
//!
//! 4429 serves both "too many" closes on purpose: the protocol's own 4429 already tells
//! clients not to retry at once, which is what a user at the connection cap should do too;
//! the reason tells the two apart. (The legacy `graphql-ws` path, whose init failures can only
//! close with 4403, refuses with `Forbidden: Too many connections`.)
//!
//! Rate limits (`crate::ratelimit`): every `subscribe` spends a `WsSubscribe` cell of its
//! connection (`RATE_LIMIT_WS_SUBSCRIBES_PER_MIN`); a query or mutation also spends the cells
//! of its class for the connection's user (`Generation` for `sendMessage`, `regenerateMessage`
//! and `editMessage`; `Mutation`; `Query`), as it would over HTTP. A refused `subscribe` gets an
//! `error` message carrying RATE_LIMITED and `retryAfterMs`; the socket stays open.
//!
//! When the access token given in `connection_init` reaches its `exp`, the socket is closed
//! with 4403, so the client reconnects with a fresh token. Closing the socket, either way,
//! stops every operation it started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_graphql::{Response, ServerError, Variables};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;

use crate::app::App;
use crate::auth::{Auth, ClientInfo, authenticate, bearer};
use crate::graphql::AppSchema;
use crate::graphql::http::{WS_MAX_MESSAGE_BYTES, app_server_error};
use crate::ratelimit::operations::{self, Charge};
use crate::ratelimit::{LimitClass, Limiter, WsConnectionSlot};

/// The subprotocol this module speaks.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// Close codes of the protocol.
pub mod close_code {
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const CONNECTION_INITIALISATION_TIMEOUT: u16 = 4408;
    pub const SUBSCRIBER_ALREADY_EXISTS: u16 = 4409;
    pub const TOO_MANY_INITIALISATION_REQUESTS: u16 = 4429;
    /// Also used for a user past `WS_MAX_CONNECTIONS_PER_USER`, with its own reason.
    pub const TOO_MANY_CONNECTIONS: u16 = 4429;
    pub const INTERNAL_SERVER_ERROR: u16 = 4500;
}

/// Messages waiting for the writer; when full, producers wait (backpressure to the operations).
const OUTGOING_BUFFER: usize = 64;

/// Operations one socket may run at once; more are answered with `error`.
const MAX_OPERATIONS: usize = 100;

/// How long a closing socket waits for the close frame to go out and the client's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The close reason for a user past `WS_MAX_CONNECTIONS_PER_USER`.
pub const TOO_MANY_CONNECTIONS: &str = "Too many connections";

/// A close reason must fit a control frame: 125 bytes less the 2-byte code.
const MAX_CLOSE_REASON_BYTES: usize = 123;

// ---------------------------------------------------------------------------------------------
// Credentials in `connection_init`, shared with the legacy `graphql-ws` path.
// ---------------------------------------------------------------------------------------------

/// What the credentials of a `connection_init` payload turned out to be.
#[derive(Debug)]
pub enum InitAuth {
    /// Anonymous (no token) or a live session; `expires_at` is the token's `exp` (Unix seconds).
    Accepted { auth: Auth, expires_at: Option<i64> },
    /// A token was given but is malformed, invalid, expired or revoked.
    Forbidden(&'static str),
    /// The session could not be checked (logged where it happened).
    Unavailable,
}

/// The access token in a `connection_init` payload: `{"Authorization": "Bearer ..."}` (any
/// capitalisation of the key), `{"headers": {"Authorization": ...}}` or `{"authToken": "..."}`.
/// `Ok(None)` is an anonymous connection; `Err` an `Authorization` value that is not a bearer.
pub fn init_token(payload: &Value) -> Result<Option<String>, &'static str> {
    // Header names are case-insensitive; clients send whatever capitalisation they like.
    let header_value = |obj: &Value| {
        obj.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
    };
    let authorization =
        header_value(payload).or_else(|| payload.get("headers").and_then(header_value));
    match (
        authorization,
        payload.get("authToken").and_then(Value::as_str),
    ) {
        (Some(value), _) => bearer(&value)
            .map(|token| Some(token.to_owned()))
            .ok_or("Authorization must be `Bearer <token>`"),
        (None, Some(token)) => Ok(Some(token.to_owned())),
        (None, None) => Ok(None),
    }
}

/// Authenticates a `connection_init` payload: the token (if any) must verify and its session
/// be live.
pub async fn authenticate_init(app: &App, payload: &Value) -> InitAuth {
    let token = match init_token(payload) {
        Ok(token) => token,
        Err(reason) => return InitAuth::Forbidden(reason),
    };
    match authenticate(app, token.as_deref()).await {
        Auth::Rejected => InitAuth::Forbidden("invalid, expired or revoked access token"),
        Auth::Unavailable => InitAuth::Unavailable,
        auth => {
            let expires_at = token
                .as_deref()
                .and_then(|t| app.tokens.verify(t).ok())
                .map(|claims| claims.exp);
            InitAuth::Accepted { auth, expires_at }
        }
    }
}

/// When a token with this `exp` stops being good for the socket: `Err` if it already has,
/// `Ok(None)` if it is too far off to represent.
fn expiry_deadline(exp: i64) -> Result<Option<Instant>, ()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let exp = Duration::from_secs(u64::try_from(exp).unwrap_or(0));
    let remaining = exp.saturating_sub(now);
    if remaining.is_zero() {
        return Err(());
    }
    Ok(Instant::now().checked_add(remaining))
}

// ---------------------------------------------------------------------------------------------
// Messages.
// ---------------------------------------------------------------------------------------------

/// What a client may send. Anything else (including the server's own types) is a 4400.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Map<String, Value>>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Map<String, Value>>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Map<String, Value>>,
    },
    Subscribe {
        id: String,
        payload: SubscribePayload,
    },
    Complete {
        id: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribePayload {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    extensions: Option<Map<String, Value>>,
}

impl SubscribePayload {
    fn into_request(self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(self.query);
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        if let Some(variables) = self.variables {
            request = request.variables(Variables::from_json(Value::Object(variables)));
        }
        for (key, value) in self.extensions.unwrap_or_default() {
            if let Ok(value) = async_graphql::Value::from_json(value) {
                request.extensions.insert(key, value);
            }
        }
        request
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    ConnectionAck,
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<Map<String, Value>>,
    },
    Next {
        id: &'a str,
        payload: &'a Response,
    },
    Error {
        id: &'a str,
        payload: &'a [ServerError],
    },
    Complete {
        id: &'a str,
    },
}

fn encode(message: &ServerMessage<'_>) -> Option<Message> {
    match serde_json::to_string(message) {
        Ok(text) => Some(Message::Text(text.into())),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a graphql-transport-ws message");
            None
        }
    }
}

fn server_error(message: &str, code: &str) -> ServerError {
    let mut err = ServerError::new(message, None);
    err.extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    err
}

/// A response that failed before execution (parse, validation, limits): no data, and errors
/// that point at no field.
fn is_request_error(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

// ---------------------------------------------------------------------------------------------
// The connection.
// ---------------------------------------------------------------------------------------------

/// Why the reader stopped.
#[derive(Debug)]
enum End {
    /// The client closed the socket or went away, or the writer did: nothing more to say.
    Stop,
    /// Close the socket with this code and reason.
    Close(u16, String),
}

impl End {
    fn close(code: u16, reason: impl Into<String>) -> End {
        End::Close(code, reason.into())
    }

    /// `reason` when it fits a close frame, `fallback` otherwise.
    fn close_or(code: u16, reason: String, fallback: &str) -> End {
        if reason.len() <= MAX_CLOSE_REASON_BYTES {
            End::Close(code, reason)
        } else {
            End::Close(code, fallback.to_owned())
        }
    }

    fn invalid(reason: String) -> End {
        End::close_or(close_code::BAD_REQUEST, reason, "Invalid message received")
    }

    fn forbidden() -> End {
        End::close(close_code::FORBIDDEN, "Forbidden")
    }

    fn internal() -> End {
        End::close(close_code::INTERNAL_SERVER_ERROR, "Internal server error")
    }
}

/// How an operation's task ended. The connection sends the closing message, after taking the
/// id off its table, so a client may reuse the id as soon as it sees `complete` or `error`.
enum Outcome {
    Complete,
    Error(Vec<ServerError>),
}

struct Connection {
    schema: AppSchema,
    app: Arc<App>,
    client: ClientInfo,
    out: mpsc::Sender<Message>,
    init_received: bool,
    /// Set once the connection is acknowledged.
    auth: Option<Auth>,
    /// When the access token of the connection expires.
    expires: Option<Instant>,
    /// Running operations by client id. Tasks are aborted when the connection is dropped.
    operations: HashMap<String, AbortHandle>,
    tasks: JoinSet<(String, Outcome)>,
    /// This connection's key for `WsSubscribe`.
    limit_key: String,
    /// The user's place under `WS_MAX_CONNECTIONS_PER_USER`, freed with the connection.
    _slot: Option<WsConnectionSlot>,
}

/// Serves one `graphql-transport-ws` socket until either side closes it.
pub async fn serve(socket: WebSocket, schema: AppSchema, app: Arc<App>, client: ClientInfo) {
    let _connection = crate::metrics::websocket_connection();
    let init_timeout = app.config.server.ws_init_timeout;
    let (sink, mut incoming) = socket.split();
    let (out, outgoing) = mpsc::channel(OUTGOING_BUFFER);
    let (close_tx, close_rx) = oneshot::channel();
    let (finished_tx, finished_rx) = oneshot::channel::<()>();

    let reader = async move {
        let mut connection = Connection {
            schema,
            app,
            client,
            out,
            init_received: false,
            auth: None,
            expires: None,
            operations: HashMap::new(),
            tasks: JoinSet::new(),
            limit_key: uuid::Uuid::new_v4().simple().to_string(),
            _slot: None,
        };
        let end = connection.run(&mut incoming, init_timeout).await;
        let frame = match end {
            End::Stop => None,
            End::Close(code, reason) => {
                tracing::debug!(code, %reason, "closing a graphql-transport-ws socket");
                Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })
            }
        };
        let closing = frame.is_some();
        // The close goes out before the operations stop, so nothing they queue precedes it.
        let _ = close_tx.send(frame);
        drop(connection); // aborts every operation
        let _ = finished_tx.send(());
        if closing {
            // Read until the client answers the close, so its frame is not lost to a reset.
            while let Some(Ok(message)) = incoming.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        }
    };
    let writer = write(sink, outgoing, close_rx);
    let grace = async {
        if finished_rx.await.is_ok() {
            tokio::time::sleep(CLOSE_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        () = grace => tracing::debug!("a graphql-transport-ws socket did not close in time"),
    }
}

/// The single writer: sends what the connection and its operations queue, then the close.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
) {
    loop {
        tokio::select! {
            biased;
            frame = &mut close => {
                match frame {
                    Ok(Some(frame)) => {
                        let _ = sink.send(Message::Close(Some(frame))).await;
                    }
                    // The client closed (its close is answered by flushing) or the reader is gone.
                    _ => {
                        let _ = sink.close().await;
                    }
                }
                return;
            }
            message = outgoing.recv() => {
                let Some(message) = message else {
                    let _ = sink.close().await;
                    return;
                };
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Connection {
    async fn run(&mut self, incoming: &mut SplitStream<WebSocket>, init_timeout: Duration) -> End {
        // A zero timeout waits forever, as in the reference implementation.
        let init_deadline = (!init_timeout.is_zero())
            .then(|| Instant::now().checked_add(init_timeout))
            .flatten();
        loop {
            let init_deadline = if self.init_received {
                None
            } else {
                init_deadline
            };
            let expires = self.expires;
            let result = tokio::select! {
                biased;
                () = sleep_until(init_deadline) => Err(End::close(
                    close_code::CONNECTION_INITIALISATION_TIMEOUT,
                    "Connection initialisation timeout",
                )),
                () = sleep_until(expires) => {
                    tracing::debug!("the access token of a socket expired");
                    Err(End::forbidden())
                }
                // Messages before finished operations: a burst is read in order, so an id
                // reused within it is seen while its first operation is still on the table.
                // Handled in boxes: an idle socket's future holds only what waiting needs, not
                // the largest state of handling a message (most of an idle connection's size).
                message = incoming.next() => match message {
                    None => Err(End::Stop),
                    Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                    Some(Err(e)) => Err(read_error(&e)),
                },
                Some(joined) = self.tasks.join_next_with_id() => Box::pin(self.on_finished(joined)).await,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    async fn send(&self, message: &ServerMessage<'_>) -> Result<(), End> {
        let message = encode(message).ok_or_else(End::internal)?;
        self.out.send(message).await.map_err(|_| End::Stop)
    }

    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => {
                if text.len() > WS_MAX_MESSAGE_BYTES {
                    return Err(End::invalid(format!(
                        "Message too large: the limit is {WS_MAX_MESSAGE_BYTES} bytes"
                    )));
                }
                let message: ClientMessage = serde_json::from_str(text.as_str())
                    .map_err(|e| End::invalid(format!("Invalid message received: {e}")))?;
                self.on_client_message(message).await
            }
            Message::Binary(_) => Err(End::invalid(
                "Binary messages are not supported; send JSON as text".to_owned(),
            )),
            // WebSocket-level pings are answered by the socket itself.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(End::Stop),
        }
    }

    async fn on_client_message(&mut self, message: ClientMessage) -> Result<(), End> {
        match message {
            ClientMessage::ConnectionInit { payload } => self.on_init(payload).await,
            ClientMessage::Ping { payload } => self.send(&ServerMessage::Pong { payload }).await,
            ClientMessage::Pong { .. } => Ok(()),
            ClientMessage::Subscribe { id, payload } => self.on_subscribe(id, payload).await,
            ClientMessage::Complete { id } => {
                check_id(&id)?;
                // No `complete` is sent back: the client has stopped listening.
                if let Some(task) = self.operations.remove(&id) {
                    task.abort();
                }
                Ok(())
            }
        }
    }

    async fn on_init(&mut self, payload: Option<Map<String, Value>>) -> Result<(), End> {
        if self.init_received {
            return Err(End::close(
                close_code::TOO_MANY_INITIALISATION_REQUESTS,
                "Too many initialisation requests",
            ));
        }
        self.init_received = true;
        let payload = payload.map_or(Value::Null, Value::Object);
        match authenticate_init(&self.app, &payload).await {
            InitAuth::Accepted { auth, expires_at } => {
                if let Some(exp) = expires_at {
                    // The raw `exp`, without the leeway HTTP requests get: past it, the
                    // client must reconnect with a fresh token.
                    self.expires = expiry_deadline(exp).map_err(|()| {
                        tracing::debug!("connection_init with an access token past its exp");
                        End::forbidden()
                    })?;
                }
                if let Auth::Viewer(viewer) = &auth {
                    self._slot = Some(self.app.limiter.ws_connection(viewer.user_id).ok_or_else(
                        || End::close(close_code::TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS),
                    )?);
                }
                self.auth = Some(auth);
                self.send(&ServerMessage::ConnectionAck).await
            }
            InitAuth::Forbidden(reason) => {
                tracing::debug!(reason, "connection_init refused");
                Err(End::forbidden())
            }
            InitAuth::Unavailable => Err(End::internal()),
        }
    }

    async fn on_subscribe(&mut self, id: String, payload: SubscribePayload) -> Result<(), End> {
        check_id(&id)?;
        let Some(auth) = &self.auth else {
            return Err(End::close(close_code::UNAUTHORIZED, "Unauthorized"));
        };
        if self.operations.contains_key(&id) {
            return Err(End::close_or(
                close_code::SUBSCRIBER_ALREADY_EXISTS,
                format!("Subscriber for {id} already exists"),
                "Subscriber already exists",
            ));
        }
        if self.operations.len() >= MAX_OPERATIONS {
            let error = server_error(
                &format!("too many operations on this socket (at most {MAX_OPERATIONS} at once)"),
                "BAD_USER_INPUT",
            );
            return self
                .send(&ServerMessage::Error {
                    id: &id,
                    payload: &[error],
                })
                .await;
        }
        if let Err(err) = self
            .app
            .limiter
            .check(LimitClass::WsSubscribe, &self.limit_key)
            .await
        {
            return self
                .send(&ServerMessage::Error {
                    id: &id,
                    payload: &[app_server_error(err)],
                })
                .await;
        }
        let mut request = payload.into_request();
        // Subscriptions spend only `WsSubscribe`; queries and mutations also their class,
        // checked in the operation's task so a slow Redis never holds up the socket.
        let charge = match operations::charge(&mut request, self.app.config.graphql.max_query_bytes)
        {
            Charge::Class(class, cells) => Some(Admit {
                limiter: self.app.limiter.clone(),
                subject: operations::subject(auth, &self.client),
                class,
                cells,
            }),
            Charge::Exempt | Charge::Subscription => None,
        };
        let request = request.data(auth.clone()).data(self.client.clone());
        let task = self.tasks.spawn(execute(
            self.schema.clone(),
            request,
            charge,
            id.clone(),
            self.out.clone(),
        ));
        self.operations.insert(id, task);
        Ok(())
    }

    async fn on_finished(
        &mut self,
        joined: Result<(tokio::task::Id, (String, Outcome)), JoinError>,
    ) -> Result<(), End> {
        let (task_id, id, outcome) = match joined {
            Ok((task_id, (id, outcome))) => (task_id, id, outcome),
            Err(e) if e.is_panic() => {
                let task_id = e.id();
                let Some(id) = self
                    .operations
                    .iter()
                    .find(|(_, task)| task.id() == task_id)
                    .map(|(id, _)| id.clone())
                else {
                    return Ok(());
                };
                tracing::error!(operation = %id, "a GraphQL operation panicked");
                let outcome =
                    Outcome::Error(vec![server_error("internal server error", "INTERNAL")]);
                (task_id, id, outcome)
            }
            Err(_) => return Ok(()), // aborted by the client's `complete`
        };
        // The id may have been completed by the client, and even reused, meanwhile.
        if self
            .operations
            .get(&id)
            .is_none_or(|task| task.id() != task_id)
        {
            return Ok(());
        }
        self.operations.remove(&id);
        match outcome {
            Outcome::Complete => self.send(&ServerMessage::Complete { id: &id }).await,
            Outcome::Error(errors) => {
                self.send(&ServerMessage::Error {
                    id: &id,
                    payload: &errors,
                })
                .await
            }
        }
    }
}

/// The class cells an operation spends before it runs.
struct Admit {
    limiter: Limiter,
    subject: String,
    class: LimitClass,
    cells: u32,
}

/// Runs one operation, sending each response as `next`.
async fn execute(
    schema: AppSchema,
    request: async_graphql::Request,
    admit: Option<Admit>,
    id: String,
    out: mpsc::Sender<Message>,
) -> (String, Outcome) {
    let _active = crate::metrics::subscription();
    // Boxed, so a subscription's task does not keep room for the check while it waits.
    if let Some(admit) = admit
        && let Err(err) = Box::pin(
            admit
                .limiter
                .check_n(admit.class, &admit.subject, admit.cells),
        )
        .await
    {
        return (id, Outcome::Error(vec![app_server_error(err)]));
    }
    let mut responses = schema.execute_stream(request);
    let mut first = true;
    while let Some(response) = responses.next().await {
        if first && is_request_error(&response) {
            return (id, Outcome::Error(response.errors));
        }
        first = false;
        let Some(message) = encode(&ServerMessage::Next {
            id: &id,
            payload: &response,
        }) else {
            let error = server_error("internal server error", "INTERNAL");
            return (id, Outcome::Error(vec![error]));
        };
        if out.send(message).await.is_err() {
            break; // the socket is gone; the connection is ending
        }
    }
    (id, Outcome::Complete)
}

fn check_id(id: &str) -> Result<(), End> {
    if id.is_empty() {
        return Err(End::invalid(
            "Invalid message received: `id` must be a non-empty string".to_owned(),
        ));
    }
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A read error ends the connection; a message over the size limit is an invalid message.
fn read_error(error: &axum::Error) -> End {
    let text = error.to_string();
    if text.contains("too long") || text.contains("too big") {
        tracing::debug!(error = %text, "a graphql-transport-ws message over the size limit");
        End::invalid(format!(
            "Message too large: the limit is {WS_MAX_MESSAGE_BYTES} bytes"
        ))
    } else {
        tracing::debug!(error = %text, "graphql-transport-ws read failed");
        End::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_in_init_payloads() {
        assert_eq!(
            init_token(&json!({ "Authorization": "Bearer a" })),
            Ok(Some("a".to_owned()))
        );
        assert_eq!(
            init_token(&json!({ "headers": { "authorization": "bearer b" } })),
            Ok(Some("b".to_owned()))
        );
        assert_eq!(
            init_token(&json!({ "authToken": "c" })),
            Ok(Some("c".to_owned()))
        );
        assert_eq!(init_token(&json!({})), Ok(None));
        assert_eq!(init_token(&Value::Null), Ok(None));
        assert!(init_token(&json!({ "Authorization": "Basic x" })).is_err());
    }

    #[test]
    fn client_messages_parse_per_the_protocol() {
        let parse = |v: Value| serde_json::from_value::<ClientMessage>(v);
        assert!(parse(json!({ "type": "connection_init" })).is_ok());
        assert!(parse(json!({ "type": "connection_init", "payload": null })).is_ok());
        assert!(parse(json!({ "type": "connection_init", "payload": [] })).is_err());
        assert!(parse(json!({ "type": "ping", "payload": { "a": 1 } })).is_ok());
        assert!(parse(json!({ "type": "subscribe", "id": "1" })).is_err());
        assert!(parse(json!({ "type": "subscribe", "id": "1", "payload": {} })).is_err());
        assert!(
            parse(json!({ "type": "subscribe", "id": "1", "payload": {
                "query": "{ a }", "variables": null, "operationName": null, "extensions": null
            } }))
            .is_ok()
        );
        assert!(parse(json!({ "type": "next", "id": "1", "payload": {} })).is_err());
        assert!(parse(json!({ "type": "complete" })).is_err());
        assert!(parse(json!({ "id": "1" })).is_err());
    }

    #[test]
    fn server_messages_serialise_per_the_protocol() {
        let text = |m: &ServerMessage<'_>| serde_json::to_value(m).expect("json");
        assert_eq!(
            text(&ServerMessage::ConnectionAck),
            json!({ "type": "connection_ack" })
        );
        assert_eq!(
            text(&ServerMessage::Pong { payload: None }),
            json!({ "type": "pong" })
        );
        assert_eq!(
            text(&ServerMessage::Complete { id: "7" }),
            json!({ "type": "complete", "id": "7" })
        );
    }

    #[test]
    fn long_reasons_fall_back() {
        let long = "x".repeat(200);
        match End::close_or(
            4409,
            format!("Subscriber for {long} already exists"),
            "short",
        ) {
            End::Close(4409, reason) => assert_eq!(reason, "short"),
            other => panic!("{other:?}"),
        }
        assert!(expiry_deadline(0).is_err());
        assert!(expiry_deadline(i64::MAX).is_ok());
    }
}

//! GraphQL over HTTP (POST and GET, single or batched) and over WebSocket
//! (`graphql-transport-ws`, served by `ws`; legacy `graphql-ws` through async-graphql), both
//! on `/graphql`.
//!
//! Each request is authenticated once here and runs with `Auth` and `ClientInfo` as data.
//! Responses follow GraphQL-over-HTTP: `application/graphql-response+json` when the client
//! accepts it (request errors then get 4xx), `application/json` otherwise.

use std::any::TypeId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{BatchRequest, BatchResponse, Data, Executor, ParseRequestError, ServerError};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLProtocol, GraphQLWebSocket};
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{BoxStream, FuturesOrdered};
use futures_util::{SinkExt, StreamExt};

use crate::app::{App, AppState};
use crate::auth::{Auth, ClientInfo, authenticate, bearer};
use crate::error::AppError;
use crate::graphql::AppSchema;
use crate::graphql::ws::{self, InitAuth};
use crate::ratelimit::LimitClass;
use crate::ratelimit::operations::{self, Charge};
use tracing::Instrument;

/// Largest WebSocket message a client may send (a subscribe with its variables).
pub const WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// A WebSocket's read buffer (tungstenite's default is 128 KiB per connection).
const WS_READ_BUFFER_BYTES: usize = 4 * 1024;
/// How much a WebSocket buffers before writing (also 128 KiB by default).
const WS_WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// The legacy subprotocol (Apollo's subscriptions-transport-ws), still served by async-graphql.
const LEGACY_WS_PROTOCOL: &str = "graphql-ws";

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// Starts the message of a refused `connection_init` on the legacy `graphql-ws` path, so the
/// close can be given the code 4403 instead of async-graphql's generic 1002.
const WS_FORBIDDEN: &str = "Forbidden: ";

/// Turns async-graphql's `1002` close after a refused `connection_init` into `4403 Forbidden`
/// (legacy `graphql-ws` path; `graphql-transport-ws` is served by `ws`).
fn forbidden_close_code(message: Message) -> Message {
    match message {
        Message::Close(Some(frame))
            if frame.code == 1002 && frame.reason.starts_with(WS_FORBIDDEN) =>
        {
            Message::Close(Some(CloseFrame {
                code: 4403,
                reason: frame.reason,
            }))
        }
        other => other,
    }
}

/// Answers 413 from the body-limit layer (plain text) in the GraphQL error shape.
pub async fn json_payload_too_large(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BAD_USER_INPUT",
            "request body too large",
        );
    }
    response
}

/// A JSON error body in the GraphQL response shape, for failures before execution.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// An `AppError` as a GraphQL error, with its `extensions` (code, `retryAfterMs`, ...) and no
/// location.
pub fn app_server_error(err: AppError) -> ServerError {
    let err = async_graphql::Error::from(err);
    let mut error = ServerError::new(err.message, None);
    error.extensions = err.extensions;
    error
}

/// A failure before execution as a response: RATE_LIMITED is a 429 with `Retry-After` (whole
/// seconds, rounded up) beside `extensions.retryAfterMs`.
pub fn app_error_response(err: AppError) -> Response {
    let (status, retry_after) = match &err {
        AppError::RateLimited { retry_after } => {
            (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after))
        }
        AppError::BadUserInput { .. } => (StatusCode::BAD_REQUEST, None),
        AppError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, None),
        AppError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
        AppError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        AppError::Conflict(_) => (StatusCode::CONFLICT, None),
        AppError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, None),
        AppError::Provider(_) => (StatusCode::BAD_GATEWAY, None),
        AppError::Interrupted(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let body = serde_json::json!({ "errors": [app_server_error(err)] });
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response();
    if let Some(wait) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(wait)),
        );
    }
    response
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Spends the rate limits of one request's operations (`ratelimit::operations`) before it
/// runs, for its user, or its client IP when anonymous. `Err` is the response to send instead
/// (429 with `Retry-After` when limited). For every transport that executes operations from
/// an HTTP request: `POST`/`GET /graphql` call it, and so should `/graphql/stream`.
pub async fn admit_requests(
    app: &App,
    auth: &Auth,
    client: &ClientInfo,
    requests: Vec<&mut async_graphql::Request>,
) -> Result<(), Response> {
    let max_query_bytes = app.config.graphql.max_query_bytes;
    let charges: Vec<(LimitClass, u32)> = requests
        .into_iter()
        .filter_map(|request| operations::charge(request, max_query_bytes).cells())
        .collect();
    let subject = operations::subject(auth, client);
    operations::admit(&app.limiter, &subject, charges)
        .await
        .map_err(app_error_response)
}

/// The request body or query string could not be read as GraphQL.
pub struct Rejection(ParseRequestError);

impl From<ParseRequestError> for Rejection {
    fn from(err: ParseRequestError) -> Self {
        Rejection(err)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let too_large = match &self.0 {
            ParseRequestError::PayloadTooLarge => true,
            ParseRequestError::Io(e) => e.to_string().contains("length limit"),
            _ => false,
        };
        if too_large {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                "request body too large",
            )
        } else {
            error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("invalid GraphQL request: {}", self.0),
            )
        }
    }
}

/// The client's address: the socket peer, or the first `X-Forwarded-For` hop when the server
/// is configured to trust its proxy.
pub fn client_info(app: &App, headers: &HeaderMap, peer: SocketAddr) -> ClientInfo {
    let forwarded = app
        .config
        .server
        .trust_proxy_headers
        .then(|| {
            headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                // The rightmost entry is the one our proxy added; the others are the
                // client's to invent.
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        })
        .flatten();
    ClientInfo {
        ip: Some(forwarded.unwrap_or(peer.ip())),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The `Auth` of an HTTP request from its `Authorization` header.
pub async fn http_auth(app: &App, headers: &HeaderMap) -> Auth {
    match headers.get(header::AUTHORIZATION) {
        None => Auth::Anonymous,
        Some(value) => match value.to_str().ok().and_then(bearer) {
            Some(token) => authenticate(app, Some(token)).await,
            None => Auth::Rejected,
        },
    }
}

pub async fn post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: GraphQLBatchRequest<Rejection>,
) -> Response {
    execute(&state, &headers, peer, request.into_inner(), false).await
}

/// GET: a WebSocket upgrade, or a query in the query string (mutations are refused).
pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response {
    let wants_websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_websocket {
        return websocket(state, peer, request).await;
    }
    let headers = request.headers().clone();
    match GraphQLBatchRequest::<Rejection>::from_request(request, &state).await {
        Ok(batch) => execute(&state, &headers, peer, batch.into_inner(), true).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// True when the operation the request selects is not a query (GET may only read).
fn is_non_query(request: &async_graphql::Request) -> bool {
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false; // execution reports the syntax error
    };
    let operation = match (&document.operations, &request.operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str()),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    operation.is_some_and(|op| op.node.ty != OperationType::Query)
}

async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    batch: BatchRequest,
    via_get: bool,
) -> Response {
    let app = &state.app;
    let max_batch = app.config.graphql.max_batch;
    if let BatchRequest::Batch(requests) = &batch {
        if requests.is_empty() {
            return error_response(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", "empty batch");
        }
        if requests.len() > max_batch {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!(
                    "a batch may hold at most {max_batch} operations; this one has {}",
                    requests.len()
                ),
            );
        }
    }
    if via_get && batch.iter().any(is_non_query) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "BAD_USER_INPUT",
            "only queries may be sent with GET; use POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    let auth = http_auth(app, headers).await;
    let client = client_info(app, headers, peer);
    let mut batch = batch;
    let requests = batch.iter_mut().collect();
    if let Err(refused) = admit_requests(app, &auth, &client, requests).await {
        return refused;
    }
    let batch = batch.data(auth).data(client);
    let timeout = app.config.server.request_timeout;
    let Ok(response) = tokio::time::timeout(timeout, execute_batch(state, batch)).await else {
        tracing::warn!(?timeout, "GraphQL request timed out");
        return error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "INTERNAL",
            "the request took too long",
        );
    };
    respond(headers, response)
}

/// `Schema::execute_batch` (the operations run concurrently, answers in order), timing each
/// operation for the metrics.
async fn execute_batch(state: &AppState, batch: BatchRequest) -> BatchResponse {
    let max_query_bytes = state.app.config.graphql.max_query_bytes;
    match batch {
        BatchRequest::Single(request) => {
            BatchResponse::Single(execute_one(state, request, max_query_bytes).await)
        }
        BatchRequest::Batch(requests) => BatchResponse::Batch(
            requests
                .into_iter()
                .map(|request| execute_one(state, request, max_query_bytes))
                .collect::<FuturesOrdered<_>>()
                .collect()
                .await,
        ),
    }
}

/// Runs one operation and records `colloquy_graphql_requests_total` and its duration.
async fn execute_one(
    state: &AppState,
    mut request: async_graphql::Request,
    max_query_bytes: usize,
) -> async_graphql::Response {
    let (operation, kind) = operation_labels(&mut request, max_query_bytes);
    let started = std::time::Instant::now();
    let span = tracing::info_span!("graphql", operation = %operation, kind);
    let response = state.schema.execute(request).instrument(span).await;
    crate::metrics::graphql_request(operation, kind, response.is_ok(), started.elapsed());
    response
}

/// The `operation` and `kind` labels of a request, from the document `operations::charge`
/// already parsed (and cached in the request). `unknown` when no operation can be selected.
fn operation_labels(
    request: &mut async_graphql::Request,
    max_query_bytes: usize,
) -> (String, &'static str) {
    if request.query.len() > max_query_bytes {
        return (crate::metrics::operation_label(None), "unknown");
    }
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return (crate::metrics::operation_label(None), "unknown");
    };
    let (name, operation) = match (&document.operations, operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => (None, Some(op)),
        (DocumentOperations::Multiple(ops), Some(name)) => (Some(name), ops.get(name)),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops
            .iter()
            .next()
            .map_or((None, None), |(name, op)| (Some(name.as_str()), Some(op))),
        _ => (None, None),
    };
    let Some(operation) = operation else {
        return (crate::metrics::operation_label(None), "unknown");
    };
    let kind = match operation.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    (crate::metrics::operation_label(name), kind)
}

fn respond(headers: &HeaderMap, response: BatchResponse) -> Response {
    let graphql_response_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(GRAPHQL_RESPONSE_JSON));
    // A request error (parse, validation, limits) has no data and no path; under the
    // graphql-response+json media type it is a 400.
    let request_error = match &response {
        BatchResponse::Single(r) => {
            r.data == async_graphql::Value::Null
                && !r.errors.is_empty()
                && r.errors.iter().all(|e| e.path.is_empty())
        }
        BatchResponse::Batch(_) => false,
    };
    let status = if graphql_response_json && request_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content_type = if graphql_response_json {
        GRAPHQL_RESPONSE_JSON
    } else {
        "application/json"
    };
    match serde_json::to_vec(&response) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a GraphQL response");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal server error",
            )
        }
    }
}

/// Browsers do not apply CORS to WebSockets, so the Origin is checked here: same host, or in
/// `CORS_ORIGINS`. Clients that send no Origin (not browsers) pass.
fn origin_allowed(app: &App, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let allowed = &app.config.server.cors_origins;
    if allowed
        .iter()
        .any(|o| o == "*" || o == origin.trim_end_matches('/'))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = url::Url::parse(origin).ok().map(|u| match u.port() {
        Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_owned(),
    });
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(&o))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WsProtocol {
    /// `graphql-transport-ws`, served by `ws`.
    TransportWs,
    /// `graphql-ws` (subscriptions-transport-ws), served by async-graphql.
    Legacy,
}

/// The subprotocol to speak: the first the client offers that the server knows, with the
/// value as the client spelt it (the response must echo one of the offered values).
fn offered_protocol(headers: &HeaderMap) -> Option<(WsProtocol, String)> {
    headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())?
        .split(',')
        .map(str::trim)
        .find_map(|p| {
            let protocol = if p.eq_ignore_ascii_case(ws::PROTOCOL) {
                WsProtocol::TransportWs
            } else if p.eq_ignore_ascii_case(LEGACY_WS_PROTOCOL) {
                WsProtocol::Legacy
            } else {
                return None;
            };
            Some((protocol, p.to_owned()))
        })
}

async fn websocket(state: AppState, peer: SocketAddr, request: Request<Body>) -> Response {
    if !origin_allowed(&state.app, request.headers()) {
        return error_response(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "this origin may not open a WebSocket",
        );
    }
    let Some((protocol, protocol_name)) = offered_protocol(request.headers()) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
        );
    };
    let client = client_info(&state.app, request.headers(), peer);
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = upgrade
        .protocols([protocol_name])
        .max_message_size(WS_MAX_MESSAGE_BYTES)
        .max_frame_size(WS_MAX_MESSAGE_BYTES)
        // tungstenite reserves 128 KiB for reading up front: most of an idle subscription's
        // memory. Client messages are small; the buffer grows for the rare large one.
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        // Each frame is flushed when sent; a small buffer is all that batching needs.
        .write_buffer_size(WS_WRITE_BUFFER_BYTES);
    let schema = state.schema.clone();
    let app = state.app.clone();
    if protocol == WsProtocol::TransportWs {
        // The connection lives in the span of its upgrade request (its request id).
        let span = tracing::Span::current();
        return upgrade
            .on_upgrade(move |socket| ws::serve(socket, schema, app, client).instrument(span));
    }

    // Legacy `graphql-ws`: async-graphql's implementation. `GraphQLProtocol` picks the same
    // protocol as `offered_protocol` (the client's first known one).
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(rejection) => return rejection.into_response(),
    };
    let mut data = Data::default();
    data.insert(client);
    let executor = LegacyExecutor {
        schema,
        app: app.clone(),
        connection: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    };
    let span = tracing::Span::current();
    upgrade.on_upgrade(move |socket| {
        async move {
            let _connection = crate::metrics::websocket_connection();
            let (sink, stream) = socket.split();
            let sink = sink
                .with(|message| async move { Ok::<_, axum::Error>(forbidden_close_code(message)) });
            GraphQLWebSocket::new_with_pair(Box::pin(sink), stream, executor, protocol)
                .with_data(data)
                .on_connection_init(move |payload| connection_init(app, payload))
                .serve()
                .await
        }
        .instrument(span)
    })
}

/// The schema behind the legacy `graphql-ws` path, with the limits of the
/// `graphql-transport-ws` one: each `start` spends a `WsSubscribe` cell of its connection and,
/// unless it is a subscription, its class cells (`ratelimit::operations`). A refused operation
/// gets one result carrying RATE_LIMITED, then `complete`.
#[derive(Clone)]
struct LegacyExecutor {
    schema: AppSchema,
    app: Arc<App>,
    /// The connection's key for `WsSubscribe`.
    connection: Arc<str>,
}

impl LegacyExecutor {
    async fn admit(
        &self,
        request: &mut async_graphql::Request,
        session: Option<&Data>,
    ) -> Result<(), AppError> {
        let limiter = &self.app.limiter;
        limiter
            .check(LimitClass::WsSubscribe, &self.connection)
            .await?;
        let charge = operations::charge(request, self.app.config.graphql.max_query_bytes);
        if let Charge::Class(class, cells) = charge {
            let get = |id: TypeId| session.and_then(|data| data.get(&id));
            let auth = get(TypeId::of::<Auth>())
                .and_then(|any| any.downcast_ref::<Auth>())
                .cloned()
                .unwrap_or(Auth::Anonymous);
            let client = get(TypeId::of::<ClientInfo>())
                .and_then(|any| any.downcast_ref::<ClientInfo>())
                .cloned()
                .unwrap_or_default();
            let subject = operations::subject(&auth, &client);
            limiter.check_n(class, &subject, cells).await?;
        }
        Ok(())
    }
}

impl Executor for LegacyExecutor {
    fn execute(
        &self,
        request: async_graphql::Request,
    ) -> impl Future<Output = async_graphql::Response> + Send {
        let schema = self.schema.clone();
        async move { schema.execute(request).await }
    }

    fn execute_stream(
        &self,
        mut request: async_graphql::Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, async_graphql::Response> {
        let this = self.clone();
        futures_util::stream::once(async move {
            match this.admit(&mut request, session_data.as_deref()).await {
                Ok(()) => Executor::execute_stream(&this.schema, request, session_data),
                Err(err) => futures_util::stream::once(async move {
                    async_graphql::Response::from_errors(vec![app_server_error(err)])
                })
                .boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

/// Authenticates a legacy `graphql-ws` `connection_init` (payload as in
/// `ws::authenticate_init`). No token is an anonymous connection; a bad token closes it, and
/// so does a user's connection past `WS_MAX_CONNECTIONS_PER_USER` (4403 here: the legacy
/// protocol has no other code).
async fn connection_init(app: Arc<App>, payload: serde_json::Value) -> async_graphql::Result<Data> {
    match ws::authenticate_init(&app, &payload).await {
        InitAuth::Accepted { auth, .. } => {
            let mut data = Data::default();
            if let Auth::Viewer(viewer) = &auth {
                // Held by the connection's data: the place is freed when the connection ends.
                let Some(slot) = app.limiter.ws_connection(viewer.user_id) else {
                    return Err(AppError::unauthenticated(format!(
                        "{WS_FORBIDDEN}{}",
                        ws::TOO_MANY_CONNECTIONS
                    ))
                    .into());
                };
                data.insert(slot);
            }
            data.insert(auth);
            Ok(data)
        }
        InitAuth::Forbidden(reason) => {
            Err(AppError::unauthenticated(format!("{WS_FORBIDDEN}{reason}")).into())
        }
        InitAuth::Unavailable => {
            Err(AppError::internal(anyhow::anyhow!("session check unavailable")).into())
        }
    }
}

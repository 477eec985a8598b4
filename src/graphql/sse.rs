//! GraphQL over Server-Sent Events (the graphql-sse protocol, "distinct connections" mode):
//! `POST /graphql/stream` with `Accept: text/event-stream` and a GraphQL request body. Each
//! result is an `event: next` with the result as JSON; the stream ends with
//! `event: complete`. Authentication is the usual `Authorization: Bearer` header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use async_graphql_axum::GraphQLRequest;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::app::AppState;
use crate::graphql::http::{Rejection, admit_requests, client_info, error_response, http_auth};

pub async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: GraphQLRequest<Rejection>,
) -> Response {
    let accepts_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts_sse {
        return error_response(
            StatusCode::NOT_ACCEPTABLE,
            "BAD_USER_INPUT",
            "send `Accept: text/event-stream` to /graphql/stream",
        );
    }
    let app = &state.app;
    let auth = http_auth(app, &headers).await;
    let client = client_info(app, &headers, peer);
    // Limited like any other request, before it runs.
    let mut request = request.into_inner();
    if let Err(refused) = admit_requests(app, &auth, &client, vec![&mut request]).await {
        return refused;
    }
    let request = request.data(auth).data(client);
    let results = state.schema.execute_stream(request).map(|response| {
        let event = Event::default().event("next");
        Ok::<_, Infallible>(match serde_json::to_string(&response) {
            Ok(json) => event.data(json),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise a streamed result");
                event.data(r#"{"errors":[{"message":"internal server error","extensions":{"code":"INTERNAL"}}]}"#)
            }
        })
    });
    let complete =
        futures_util::stream::once(async { Ok(Event::default().event("complete").data("")) });
    Sse::new(results.chain(complete))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

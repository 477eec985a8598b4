//! Depth, complexity, alias, query-size, body-size and batch limits; GET semantics; media
//! types; production hiding introspection and suggestions.

use serde_json::{Value, json};

use crate::common::{TEST_JWT_SECRET, TestApp, error_code, expect_error};

async fn post_json(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_complexity_and_aliases_are_limited() {
    let app = TestApp::spawn_with(&[
        ("GRAPHQL_MAX_DEPTH", "6"),
        ("GRAPHQL_MAX_COMPLEXITY", "40"),
        ("GRAPHQL_MAX_ALIASES", "5"),
    ])
    .await;
    let s = app.register("lim@example.com").await;

    let shallow = "{ me { workspaces { members { user { email } } } } }";
    let body = app.gql_as(Some(&s.access), shallow, json!({})).await;
    assert!(body["errors"].is_null(), "{body}");

    let deep =
        "{ me { workspaces { members { user { workspaces { members { user { email } } } } } } } }";
    let body = app.gql_as(Some(&s.access), deep, json!({})).await;
    let err = expect_error(&body, "BAD_USER_INPUT");
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("deep")),
        "{body}"
    );

    let wide: String = (0..45).map(|i| format!("f{i}: __typename ")).collect();
    let body = app
        .gql_as(Some(&s.access), &format!("{{ {wide} }}"), json!({}))
        .await;
    expect_error(&body, "BAD_USER_INPUT");

    let five: String = (0..5).map(|i| format!("a{i}: me {{ email }} ")).collect();
    let body = app
        .gql_as(Some(&s.access), &format!("{{ {five} }}"), json!({}))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let six: String = (0..6).map(|i| format!("a{i}: me {{ email }} ")).collect();
    let body = app
        .gql_as(Some(&s.access), &format!("{{ {six} }}"), json!({}))
        .await;
    let err = expect_error(&body, "BAD_USER_INPUT");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("aliases")),
        "{body}"
    );

    // Aliases hidden in a fragment spread several times count once per spread.
    let sneaky =
        "{ ...F ...F } fragment F on Query { a: me { email } b: me { email } c: me { email } }";
    let body = app.gql_as(Some(&s.access), sneaky, json!({})).await;
    expect_error(&body, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_body_sizes_are_limited() {
    let app = TestApp::spawn_with(&[
        ("GRAPHQL_MAX_QUERY_BYTES", "2000"),
        ("REQUEST_BODY_LIMIT_BYTES", "65536"),
    ])
    .await;
    let padded = format!("{{ __typename }} #{}", "x".repeat(2_100));
    let body = app.gql(&padded, json!({})).await;
    let err = expect_error(&body, "BAD_USER_INPUT");
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("bytes")),
        "{body}"
    );

    let huge = json!({ "query": "{ __typename }", "variables": { "blob": "y".repeat(100_000) } });
    let (status, body) = post_json(&app, &huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_capped() {
    let app = TestApp::spawn().await;
    let op = json!({ "query": "{ __typename }" });
    let (status, body) = post_json(&app, &json!([op, op])).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body[1]["data"]["__typename"], "Query");

    let ten: Vec<Value> = (0..10).map(|_| op.clone()).collect();
    let (status, _) = post_json(&app, &Value::Array(ten)).await;
    assert_eq!(status, 200);
    let eleven: Vec<Value> = (0..11).map(|_| op.clone()).collect();
    let (status, body) = post_json(&app, &Value::Array(eleven)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"));
    // An empty array is read as one empty request, refused as such.
    let (_, body) = post_json(&app, &json!([])).await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("BAD_USER_INPUT"),
        "{body}"
    );

    let off = TestApp::spawn_with(&[("GRAPHQL_MAX_BATCH", "1")]).await;
    let (status, _) = post_json(&off, &json!([op, op])).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_errors() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json error body");
    assert_eq!(error_code(&body).as_deref(), Some("BAD_USER_INPUT"));

    let body = app.gql("{ me { email ", json!({})).await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = app.gql("{ nosuchfield }", json!({})).await;
    expect_error(&body, "BAD_USER_INPUT");
    let body = app
        .gql("query($id: ID!) { workspace(id: $id) { name } }", json!({}))
        .await;
    expect_error(&body, "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_serves_queries_only_and_media_types_follow_accept() {
    let app = TestApp::spawn().await;
    let get = |q: &str| {
        let mut url = url::Url::parse(&app.url("/graphql")).expect("url");
        url.query_pairs_mut().append_pair("query", q);
        app.client.get(url).send()
    };
    let response = get("{ __typename }").await.expect("send");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"]["__typename"], "Query");

    let response = get("mutation { logout(refreshToken: \"x\") }")
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");

    // application/graphql-response+json: request errors are 400; field errors stay 200.
    let post = |q: &str, accept: &str| {
        app.client
            .post(app.url("/graphql"))
            .header("accept", accept)
            .json(&json!({ "query": q }))
            .send()
    };
    let response = post("{ nosuchfield }", "application/graphql-response+json")
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "application/graphql-response+json"
    );
    let response = post("{ me { email } }", "application/graphql-response+json")
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    let response = post("{ nosuchfield }", "application/json")
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_hides_introspection_and_suggestions() {
    let introspect = "{ __schema { queryType { name } } }";
    let typo = "{ workspacez { id } }";

    let dev = TestApp::spawn().await;
    let body = dev.gql(introspect, json!({})).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
    let body = dev.gql(typo, json!({})).await;
    assert!(body.to_string().contains("Did you mean"), "{body}");

    let prod = TestApp::spawn_with(&[
        ("COLLOQUY_ENV", "production"),
        ("JWT_SECRET", TEST_JWT_SECRET),
    ])
    .await;
    let body = prod.gql(introspect, json!({})).await;
    let err = expect_error(&body, "BAD_USER_INPUT");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("introspection")),
        "{body}"
    );
    assert!(body["data"].is_null(), "{body}");
    let body = prod.gql("{ __typename }", json!({})).await;
    assert_eq!(
        body["data"]["__typename"], "Query",
        "__typename stays allowed: {body}"
    );
    let body = prod.gql(typo, json!({})).await;
    expect_error(&body, "BAD_USER_INPUT");
    assert!(!body.to_string().contains("Did you mean"), "{body}");

    // Each is overridable.
    let open = TestApp::spawn_with(&[
        ("COLLOQUY_ENV", "production"),
        ("JWT_SECRET", TEST_JWT_SECRET),
        ("GRAPHQL_INTROSPECTION", "true"),
    ])
    .await;
    let body = open.gql(introspect, json!({})).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
}

/// The introspection query GraphiQL sends on load (graphql-js `getIntrospectionQuery`).
const GRAPHIQL_INTROSPECTION: &str = r#"
query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type {
  kind name
  ofType { kind name ofType { kind name ofType { kind name ofType { kind name
    ofType { kind name ofType { kind name ofType { kind name } } } } } } }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_introspection_passes_the_default_limits() {
    let app = TestApp::spawn().await;
    let body = app.gql(GRAPHIQL_INTROSPECTION, json!({})).await;
    assert!(
        body["errors"].is_null(),
        "{}",
        &body.to_string()[..500.min(body.to_string().len())]
    );
    let types = body["data"]["__schema"]["types"].as_array().expect("types");
    assert!(types.iter().any(|t| t["name"] == "AuthPayload"));
}

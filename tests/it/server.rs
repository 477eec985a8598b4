//! Health, readiness, GraphiQL, request ids, the schema file, and the binary itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestApp, drop_database, fresh_database, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status().as_u16(), 200);

    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status().as_u16(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(
        body,
        json!({ "ready": true, "database": "ok", "redis": "ok" })
    );

    // Take the database away: readiness must fail and say which dependency.
    drop_database(&app.db_name);
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["database"], "unavailable");
    assert_eq!(body["ready"], false);
    // Liveness does not depend on the database.
    let health = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status().as_u16(), 200);
    // A query needing the database is INTERNAL, with no cause in the message.
    let body = app
        .gql("mutation { register(input: { email: \"z@example.com\", password: \"long enough password\", displayName: \"Z\" }) { accessToken } }", json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INTERNAL",
        "{body}"
    );
    assert_eq!(body["errors"][0]["message"], "internal server error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_redis_is_unreachable() {
    let app = TestApp::spawn_with(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["redis"], "unavailable");
    assert_eq!(body["database"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_offline_and_requests_get_ids() {
    let app = TestApp::spawn().await;
    for path in ["/graphiql", "/"] {
        let page = app.client.get(app.url(path)).send().await.expect("send");
        assert_eq!(page.status().as_u16(), 200, "{path}");
        let html = page.text().await.expect("html");
        assert!(html.contains("/graphiql/assets/"), "{html}");
        assert!(
            !html.contains("https://"),
            "the page loads nothing from the internet"
        );
    }
    let js = app
        .client
        .get(app.url("/graphiql/assets/graphiql.min.js"))
        .send()
        .await
        .expect("send");
    assert_eq!(js.status().as_u16(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.contains("javascript"))
    );
    let missing = app
        .client
        .get(app.url("/graphiql/assets/..%2Fsecrets"))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status().as_u16(), 404);

    let response = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("send");
    let id = response.headers().get("x-request-id").expect("request id");
    assert_eq!(id.len(), 36);
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["x-request-id"], "abc-123");

    let prod = TestApp::spawn_with(&[
        ("COLLOQUY_ENV", "production"),
        ("JWT_SECRET", crate::common::TEST_JWT_SECRET),
    ])
    .await;
    let root = prod.client.get(prod.url("/")).send().await.expect("send");
    assert_eq!(
        root.status().as_u16(),
        404,
        "GraphiQL at / is for development only"
    );
}

#[test]
fn schema_file_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == colloquy::graphql::sdl(),
        "schema.graphql is stale: run `cargo run -- schema --write`"
    );
}

#[test]
fn unreachable_database_is_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/colloquy",
        )
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run colloquy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(line.contains("DATABASE_URL"), "{line}");
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(
        !stderr.contains("hunter2"),
        "the password must not be printed: {stderr}"
    );
}

#[test]
fn production_refuses_to_start_without_a_secret() {
    let output = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .env("COLLOQUY_ENV", "production")
        .env_remove("JWT_SECRET")
        .stdin(Stdio::null())
        .output()
        .expect("run colloquy");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_creates_its_database_serves_and_stops_on_sigterm() {
    // A database name that does not exist yet: the server must create and migrate it.
    let name = format!("colloquy_bin_{}", uuid::Uuid::new_v4().simple());
    let config = test_config(&name, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_colloquy"))
        .env("DATABASE_URL", &config.database.url)
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("JWT_SECRET")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn colloquy");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("server did not start: {seen:?}"));
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().expect("address").to_owned();
        }
        seen.push(line);
    };
    assert!(
        seen.iter().any(|l| l.contains("JWT_SECRET is not set")),
        "loud warning: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("created database")),
        "{seen:?}"
    );

    let client = reqwest::Client::new();
    let ready: Value = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["database"], "ok");
    let page = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .expect("graphiql");
    assert_eq!(page.status().as_u16(), 200);

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    drop_database(&name);
    // The fresh-database helper is still usable afterwards (template untouched).
    drop_database(&fresh_database().await);
}

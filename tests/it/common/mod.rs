//! `TestApp`: the real server on `127.0.0.1:0` over its own database, cloned from a template
//! migrated once, plus a client that speaks GraphQL over HTTP and WebSocket.
//!
//! The template is built under a Postgres advisory lock, so test processes running in
//! parallel (`cargo test`, `cargo nextest`) share it safely. Each test's database is dropped
//! when its `TestApp` is, even when the test panics.

#![allow(dead_code)]

pub mod own_redis;
pub mod process;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::app::{App, AppState};
use colloquy::config::Config;
use colloquy::db::quote_ident;
use colloquy::mail::{Mailer, OutgoingMail};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::{OnceCell, oneshot};

/// A JWT secret shared with tests that forge tokens.
pub const TEST_JWT_SECRET: &str = "colloquy-test-secret-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";

/// The Postgres server for tests, as a URL to its maintenance database.
pub fn admin_url() -> String {
    std::env::var("COLLOQUY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("COLLOQUY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("COLLOQUY_TEST_DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

async fn admin() -> AsyncPgConnection {
    AsyncPgConnection::establish(&admin_url())
        .await
        .unwrap_or_else(|e| panic!("tests need Postgres at {}: {e}", admin_url()))
}

/// The template's name changes whenever a migration does.
fn template_name() -> String {
    let mut hasher = sha2::Sha256::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(&file).expect("read migration"));
    }
    format!("colloquy_tpl_{}", &hex::encode(hasher.finalize())[..12])
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("migrations dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let building = format!("{name}_building");
            let mut conn = admin().await;
            diesel::sql_query("SELECT pg_advisory_lock(7061626)")
                .execute(&mut conn)
                .await
                .expect("template lock");
            let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                &format!("EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}')"),
            ))
            .get_result(&mut conn)
            .await
            .expect("check template");
            if !exists {
                diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&building)
                ))
                .execute(&mut conn)
                .await
                .expect("drop stale template");
                diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(&building)))
                    .execute(&mut conn)
                    .await
                    .expect("create template");
                colloquy::db::migrate(&database_url(&building))
                    .await
                    .expect("migrate template");
                diesel::sql_query(format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(&building),
                    quote_ident(&name)
                ))
                .execute(&mut conn)
                .await
                .expect("publish template");
            }
            diesel::sql_query("SELECT pg_advisory_unlock(7061626)")
                .execute(&mut conn)
                .await
                .expect("template unlock");
            name
        })
        .await
}

/// A fresh database cloned from the template; returns its name.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("colloquy_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin().await;
    // Cloning fails while another session is connected to the template, which can happen for
    // a moment while another process checks it; retry briefly.
    let mut attempt = 0;
    loop {
        let created = diesel::sql_query(format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&name),
            quote_ident(template)
        ))
        .execute(&mut conn)
        .await;
        match created {
            Ok(_) => return name,
            Err(e) if attempt < 20 => {
                attempt += 1;
                eprintln!("retrying clone of {template}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot clone {template}: {e}"),
        }
    }
}

/// Drops a database from a thread of its own, so it works from `Drop` inside a runtime.
pub fn drop_database(name: &str) {
    let name = name.to_owned();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut conn = admin().await;
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .execute(&mut conn)
            .await;
        });
    });
    let _ = handle.join();
}

/// The environment a test server starts with, in this process or as a child process;
/// `overrides` win.
pub fn test_env(db_name: &str, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".into(), database_url(db_name)),
        ("REDIS_URL".into(), redis_url()),
        ("JWT_SECRET".into(), TEST_JWT_SECRET.into()),
        ("DATABASE_POOL_SIZE".into(), "8".into()),
        ("LOGIN_LIMIT_PER_EMAIL".into(), "1000".into()),
        ("LOGIN_LIMIT_PER_IP".into(), "1000".into()),
        ("PASSWORD_RESET_LIMIT_PER_EMAIL".into(), "1000".into()),
        ("PASSWORD_RESET_LIMIT_PER_IP".into(), "1000".into()),
        ("PASSWORD_HASH_CONCURRENCY".into(), "4".into()),
        // Every test comes from 127.0.0.1: keep each test's rate-limit buckets its own.
        (
            "RATE_LIMIT_KEY_PREFIX".into(),
            format!("colloquy:rl-test:{db_name}"),
        ),
    ]);
    for (k, v) in overrides {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

/// The configuration of `test_env`.
pub fn test_config(db_name: &str, overrides: &[(&str, &str)]) -> Config {
    let vars = test_env(db_name, overrides);
    Config::from_lookup(|k| vars.get(k).cloned()).expect("test config is valid")
}

/// A GraphQL client for one server: a `TestApp` (through `Deref`) or a `ServerProcess`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        colloquy::install_crypto_provider();
        Client {
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs an operation, optionally with a bearer token, and returns the JSON body.
    pub async fn gql_as(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .client
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        response.json().await.expect("json body")
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(None, query, variables).await
    }

    pub async fn register(&self, email: &str) -> Session {
        let body = self
            .gql(
                "mutation($input: RegisterInput!) { register(input: $input) {
                    accessToken refreshToken user { id email } } }",
                json!({ "input": { "email": email, "password": PASSWORD, "displayName": "Test User" } }),
            )
            .await;
        session_from(&body, "register")
    }

    pub async fn login(&self, email: &str, password: &str) -> Value {
        self.gql(
            "mutation($input: LoginInput!) { login(input: $input) {
                accessToken refreshToken user { id email } } }",
            json!({ "input": { "email": email, "password": password } }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Value {
        self.gql(
            "mutation($t: String!) { refreshSession(refreshToken: $t) {
                accessToken refreshToken user { id email } } }",
            json!({ "t": refresh_token }),
        )
        .await
    }

    /// `me { email }` with this token: the email, or the error code.
    pub async fn me(&self, token: &str) -> Result<String, String> {
        let body = self
            .gql_as(Some(token), "{ me { email } }", json!({}))
            .await;
        match body["data"]["me"]["email"].as_str() {
            Some(email) => Ok(email.to_owned()),
            None => Err(error_code(&body).unwrap_or_else(|| format!("no error code in {body}"))),
        }
    }

    /// The id of the user's personal workspace.
    pub async fn personal_workspace(&self, s: &Session) -> String {
        let body = self
            .gql_as(Some(&s.access), "{ workspaces { id personal } }", json!({}))
            .await;
        body["data"]["workspaces"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["personal"] == true))
            .and_then(|w| w["id"].as_str())
            .unwrap_or_else(|| panic!("no personal workspace: {body}"))
            .to_owned()
    }

    pub async fn create_workspace(&self, s: &Session, name: &str) -> String {
        let body = self
            .gql_as(
                Some(&s.access),
                "mutation($n: String!) { createWorkspace(input: { name: $n }) { id } }",
                json!({ "n": name }),
            )
            .await;
        body["data"]["createWorkspace"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWorkspace failed: {body}"))
            .to_owned()
    }

    pub async fn add_member(&self, owner: &Session, workspace: &str, email: &str, role: &str) {
        let body = self
            .gql_as(
                Some(&owner.access),
                "mutation($i: AddWorkspaceMemberInput!) { addWorkspaceMember(input: $i) { role } }",
                json!({ "i": { "workspaceId": workspace, "email": email, "role": role } }),
            )
            .await;
        assert_eq!(body["data"]["addWorkspaceMember"]["role"], role, "{body}");
    }

    pub async fn create_conversation(&self, s: &Session, workspace: &str, title: &str) -> String {
        let body = self
            .gql_as(
                Some(&s.access),
                "mutation($i: CreateConversationInput!) { createConversation(input: $i) { id } }",
                json!({ "i": { "workspaceId": workspace, "title": title } }),
            )
            .await;
        body["data"]["createConversation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createConversation failed: {body}"))
            .to_owned()
    }
}

impl std::ops::Deref for TestApp {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.api
    }
}

/// The server in this test process, over a database of its own; its client (`addr`,
/// `client`, `gql_as`, `register`, ...) through `Deref`.
pub struct TestApp {
    api: Client,
    pub db_name: String,
    pub db_url: String,
    /// Mail the server "sent".
    pub outbox: Arc<Mutex<Vec<OutgoingMail>>>,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    /// Whether dropping this app drops the database: false for a peer (`spawn_peer`), which
    /// serves the database of another `TestApp`.
    owns_database: bool,
}

/// A signed-in user, as returned by `register` or `login`.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(overrides: &[(&str, &str)]) -> TestApp {
        colloquy::install_crypto_provider();
        let db_name = fresh_database().await;
        Self::serve(db_name, overrides, true).await
    }

    /// A second server process on this app's database (scale-out): its own state, hub and
    /// instance id, with `overrides` on the test defaults. It never drops the database; this
    /// app does, so keep this one alive for as long as the peer.
    pub async fn spawn_peer(&self, overrides: &[(&str, &str)]) -> TestApp {
        Self::serve(self.db_name.clone(), overrides, false).await
    }

    async fn serve(db_name: String, overrides: &[(&str, &str)], owns_database: bool) -> TestApp {
        let config = test_config(&db_name, overrides);
        let db_url = config.database.url.clone();
        let outbox = Arc::new(Mutex::new(Vec::new()));
        let mut app = App::build(config).expect("app builds");
        app.mailer = Mailer::Memory(outbox.clone());
        // As `app::start` does: registered before the first request, so no other process
        // takes this one's generations for orphans.
        colloquy::streaming::instances::register(&app)
            .await
            .expect("register the instance");
        let state = AppState::new(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = colloquy::app::serve(listener, serve_state, shutdown).await {
                eprintln!("test server failed: {e:#}");
            }
        });
        TestApp {
            api: Client::new(addr),
            db_name,
            db_url,
            outbox,
            state,
            shutdown: Some(tx),
            owns_database,
        }
    }

    /// A direct connection to this test's database, for checking what was stored.
    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db_url)
            .await
            .expect("connect to test database")
    }

    /// Waits for the server to hand a mail to the mailer.
    pub async fn wait_for_mail(&self, to: &str) -> OutgoingMail {
        for _ in 0..100 {
            if let Some(mail) = self
                .outbox
                .lock()
                .expect("outbox")
                .iter()
                .find(|m| m.to == to)
                .cloned()
            {
                return mail;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail to {to} within 5 s");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if self.owns_database {
            drop_database(&self.db_name);
        }
    }
}

/// The session in a register/login/refresh payload; panics with the body otherwise.
pub fn session_from(body: &Value, field: &str) -> Session {
    let payload = &body["data"][field];
    let get = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("{field} failed: {body}"))
            .to_owned()
    };
    Session {
        user_id: get(&payload["user"]["id"]),
        email: get(&payload["user"]["email"]),
        access: get(&payload["accessToken"]),
        refresh: get(&payload["refreshToken"]),
    }
}

/// The `extensions.code` of the first error.
pub fn error_code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// Asserts the first error has `code`, and returns that error.
#[track_caller]
pub fn expect_error<'a>(body: &'a Value, code: &str) -> &'a Value {
    assert_eq!(
        error_code(body).as_deref(),
        Some(code),
        "expected {code}, got {body}"
    );
    &body["errors"][0]
}

impl TestApp {
    /// Inserts a message through the internal API the generation runner uses.
    pub async fn insert_message(
        &self,
        conversation: &str,
        parent: Option<&str>,
        role: &str,
        content: &str,
    ) -> String {
        let mut conn = self.db().await;
        let message = colloquy::conversations::service::insert_message(
            &mut conn,
            &colloquy::conversations::service::MessageInsert {
                conversation_id: conversation.parse().expect("uuid"),
                parent_id: parent.map(|p| p.parse().expect("uuid")),
                role,
                content,
                status: "COMPLETE",
                model: (role == "ASSISTANT").then_some("local/echo"),
                created_by: None,
                client_message_id: None,
                runner_instance: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("insert_message: {e:?}"));
        message.id.to_string()
    }
}

impl TestApp {
    /// A row in `instances` for another server process whose last heartbeat was `silent_for`
    /// ago (by the database's clock): live or dead depending on the heartbeat timeout.
    pub async fn fake_instance(&self, silent_for: Duration) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        diesel::sql_query(
            "INSERT INTO instances (id, hostname, pid, heartbeat_at) \
             VALUES ($1, 'elsewhere', 1, now() - make_interval(secs => $2))",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Float8, _>(silent_for.as_secs_f64())
        .execute(&mut self.db().await)
        .await
        .expect("insert instance");
        id
    }

    /// An assistant message in progress (STREAMING) under `parent`, with `content` flushed so
    /// far and run by `runner`, as a server that then stopped would leave it.
    pub async fn insert_generation(
        &self,
        conversation: &str,
        parent: &str,
        content: &str,
        runner: Option<uuid::Uuid>,
    ) -> uuid::Uuid {
        let mut conn = self.db().await;
        colloquy::conversations::service::insert_message(
            &mut conn,
            &colloquy::conversations::service::MessageInsert {
                conversation_id: conversation.parse().expect("uuid"),
                parent_id: Some(parent.parse().expect("uuid")),
                role: "ASSISTANT",
                content,
                status: "STREAMING",
                model: Some("local/echo"),
                created_by: None,
                client_message_id: None,
                runner_instance: runner,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("insert_generation: {e:?}"))
        .id
    }
}

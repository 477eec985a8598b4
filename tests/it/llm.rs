//! Models, provider keys and the catalog through the real server.

use colloquy::db::schema::provider_keys;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

use crate::common::{TestApp, expect_error};

const MASTER_KEY: &str = "6b7d8c1f0e2a4b3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4";
const SET: &str = "mutation($w: ID!, $p: String!, $k: String!) {
    setProviderKey(workspaceId: $w, provider: $p, apiKey: $k) { provider last4 updatedAt } }";
const DELETE: &str =
    "mutation($w: ID!, $p: String!) { deleteProviderKey(workspaceId: $w, provider: $p) }";
const MODELS: &str = "query($w: ID) { models(workspaceId: $w) {
    id provider displayName contextWindow maxOutputTokens inputUsdPerMTok outputUsdPerMTok available } }";

fn model<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["data"]["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == id))
        .unwrap_or_else(|| panic!("no {id} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_the_catalog_with_availability() {
    let app = TestApp::spawn_with(&[("ANTHROPIC_API_KEY", "sk-ant-server-key")]).await;
    let body = app.gql(MODELS, json!({})).await;
    assert!(body["errors"].is_null(), "{body}");
    let echo = model(&body, "local/echo");
    assert_eq!(echo["available"], true);
    assert_eq!(echo["provider"], "local");
    let mini = model(&body, "openai/gpt-4o-mini");
    assert_eq!(mini["available"], false, "no OpenAI key configured");
    assert_eq!(mini["contextWindow"], 128_000);
    assert_eq!(mini["inputUsdPerMTok"], 0.15);
    assert_eq!(mini["outputUsdPerMTok"], 0.6);
    assert_eq!(
        model(&body, "anthropic/claude-3-5-haiku-latest")["available"],
        true
    );
    assert_eq!(model(&body, "google/gemini-2.0-flash")["available"], false);
    assert_eq!(
        model(&body, "openrouter/openai/gpt-4o-mini")["available"],
        false
    );
    // No key ever appears.
    assert!(!body.to_string().contains("sk-ant-server-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_file_adds_models() {
    let dir = std::env::temp_dir().join(format!("colloquy-catalog-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("models.toml");
    std::fs::write(
        &path,
        r#"
[[providers]]
name = "ollama"
wire = "openai"
base_url = "http://127.0.0.1:11434/v1"
needs_key = false

[[models]]
id = "ollama/llama3.2"
provider = "ollama"
upstream = "llama3.2"
display_name = "Llama 3.2 (Ollama)"
context_window = 131072
max_output_tokens = 2048
"#,
    )
    .expect("write");
    let app = TestApp::spawn_with(&[("MODEL_CATALOG_FILE", path.to_str().expect("path"))]).await;
    let body = app.gql(MODELS, json!({})).await;
    let llama = model(&body, "ollama/llama3.2");
    assert_eq!(llama["available"], true, "needs no key");
    assert_eq!(llama["displayName"], "Llama 3.2 (Ollama)");
    assert_eq!(llama["inputUsdPerMTok"], Value::Null);
    // And conversations can use it; unknown models are refused.
    let s = app.register("cat@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let create = "mutation($w: ID!, $m: String) { createConversation(input: { workspaceId: $w, model: $m }) { model } }";
    let body = app
        .gql_as(
            Some(&s.access),
            create,
            json!({ "w": ws, "m": "ollama/llama3.2" }),
        )
        .await;
    assert_eq!(
        body["data"]["createConversation"]["model"], "ollama/llama3.2",
        "{body}"
    );
    let body = app
        .gql_as(
            Some(&s.access),
            create,
            json!({ "w": ws, "m": "nobody/nothing" }),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_keys_are_encrypted_and_shown_as_last_four() {
    let app = TestApp::spawn_with(&[
        ("COLLOQUY_MASTER_KEY", MASTER_KEY),
        ("OPENAI_API_KEY", "sk-server-openai-key"),
    ])
    .await;
    let owner = app.register("k1@example.com").await;
    let admin = app.register("k2@example.com").await;
    let member = app.register("k3@example.com").await;
    let outsider = app.register("k4@example.com").await;
    let ws = app.create_workspace(&owner, "Keys").await;
    app.add_member(&owner, &ws, "k2@example.com", "ADMIN").await;
    app.add_member(&owner, &ws, "k3@example.com", "MEMBER")
        .await;

    let secret = "sk-ant-api03-workspace-secret-WXYZ";
    let body = app
        .gql_as(
            Some(&admin.access),
            SET,
            json!({ "w": ws, "p": "anthropic", "k": format!("  {secret} ") }),
        )
        .await;
    assert_eq!(body["data"]["setProviderKey"]["last4"], "WXYZ", "{body}");
    assert_eq!(body["data"]["setProviderKey"]["provider"], "anthropic");

    // Stored encrypted: neither the key nor a readable fragment of it is in the row.
    let (nonce, ciphertext): (Vec<u8>, Vec<u8>) = provider_keys::table
        .select((provider_keys::nonce, provider_keys::ciphertext))
        .first(&mut app.db().await)
        .await
        .expect("row");
    assert_eq!(nonce.len(), 12);
    assert!(!String::from_utf8_lossy(&ciphertext).contains("workspace-secret"));

    // What a generation would use: the workspace's key wins over the server's.
    let mut conn = app.db().await;
    let ws_id: uuid::Uuid = ws.parse().expect("uuid");
    let used = colloquy::llm::keys::resolve(&app.state.app, &mut conn, ws_id, "anthropic")
        .await
        .expect("resolve");
    assert_eq!(used.as_deref(), Some(secret));
    let used = colloquy::llm::keys::resolve(&app.state.app, &mut conn, ws_id, "openai")
        .await
        .expect("resolve");
    assert_eq!(used.as_deref(), Some("sk-server-openai-key"));

    // Visible to members as last four only; availability follows the workspace's keys.
    let body = app
        .gql_as(
            Some(&member.access),
            "query($w: ID!) { workspace(id: $w) { providerKeys { provider last4 } } }",
            json!({ "w": ws }),
        )
        .await;
    assert_eq!(
        body["data"]["workspace"]["providerKeys"],
        json!([{ "provider": "anthropic", "last4": "WXYZ" }])
    );
    assert!(!body.to_string().contains("workspace-secret"));
    let body = app
        .gql_as(Some(&member.access), MODELS, json!({ "w": ws }))
        .await;
    assert_eq!(
        model(&body, "anthropic/claude-3-5-haiku-latest")["available"],
        true
    );
    assert_eq!(model(&body, "google/gemini-2.0-flash")["available"], false);
    let body = app
        .gql_as(Some(&outsider.access), MODELS, json!({ "w": ws }))
        .await;
    expect_error(&body, "NOT_FOUND");

    // Replacing keeps one row; members cannot set or delete; outsiders see nothing.
    let body = app
        .gql_as(
            Some(&owner.access),
            SET,
            json!({ "w": ws, "p": "anthropic", "k": "sk-ant-second-key-ABCD" }),
        )
        .await;
    assert_eq!(body["data"]["setProviderKey"]["last4"], "ABCD", "{body}");
    let n: i64 = provider_keys::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count");
    assert_eq!(n, 1);
    expect_error(
        &app.gql_as(
            Some(&member.access),
            SET,
            json!({ "w": ws, "p": "openai", "k": "sk-member-key-1234" }),
        )
        .await,
        "FORBIDDEN",
    );
    expect_error(
        &app.gql_as(
            Some(&member.access),
            DELETE,
            json!({ "w": ws, "p": "anthropic" }),
        )
        .await,
        "FORBIDDEN",
    );
    expect_error(
        &app.gql_as(
            Some(&outsider.access),
            SET,
            json!({ "w": ws, "p": "openai", "k": "sk-outsider-1234" }),
        )
        .await,
        "NOT_FOUND",
    );
    expect_error(
        &app.gql_as(
            Some(&outsider.access),
            DELETE,
            json!({ "w": ws, "p": "anthropic" }),
        )
        .await,
        "NOT_FOUND",
    );

    // Bad input.
    for (provider, key, field) in [
        ("nosuch", "sk-valid-length-key", "provider"),
        ("local", "sk-valid-length-key", "provider"),
        ("openai", "short", "apiKey"),
        ("openai", "has a space in it", "apiKey"),
    ] {
        let body = app
            .gql_as(
                Some(&owner.access),
                SET,
                json!({ "w": ws, "p": provider, "k": key }),
            )
            .await;
        assert_eq!(
            expect_error(&body, "BAD_USER_INPUT")["extensions"]["field"],
            field,
            "{body}"
        );
    }

    let body = app
        .gql_as(
            Some(&owner.access),
            DELETE,
            json!({ "w": ws, "p": "anthropic" }),
        )
        .await;
    assert_eq!(body["data"]["deleteProviderKey"], true);
    let body = app
        .gql_as(
            Some(&owner.access),
            DELETE,
            json!({ "w": ws, "p": "anthropic" }),
        )
        .await;
    assert_eq!(body["data"]["deleteProviderKey"], false);
    let used = colloquy::llm::keys::resolve(&app.state.app, &mut conn, ws_id, "anthropic")
        .await
        .expect("resolve");
    assert_eq!(used, None, "no workspace key and no server key");

    // A generation request: unknown or unavailable models are BAD_USER_INPUT; available
    // ones come with the key to use.
    let app_state = &app.state.app;
    let resolved =
        colloquy::llm::keys::resolve_model(app_state, &mut conn, ws_id, "openai/gpt-4o-mini")
            .await
            .expect("server key");
    assert_eq!(resolved.api_key.as_deref(), Some("sk-server-openai-key"));
    assert_eq!(resolved.spec.upstream, "gpt-4o-mini");
    let echo = colloquy::llm::keys::resolve_model(app_state, &mut conn, ws_id, "local/echo")
        .await
        .expect("needs no key");
    assert_eq!(echo.api_key, None);
    for model in ["anthropic/claude-3-5-haiku-latest", "nobody/nothing"] {
        let err = colloquy::llm::keys::resolve_model(app_state, &mut conn, ws_id, model)
            .await
            .err()
            .map(|e| e.code());
        assert_eq!(err, Some("BAD_USER_INPUT"), "{model}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_key_workspace_keys_are_refused() {
    let app = TestApp::spawn().await;
    let s = app.register("nokey@example.com").await;
    let ws = app.personal_workspace(&s).await;
    let body = app
        .gql_as(
            Some(&s.access),
            SET,
            json!({ "w": ws, "p": "openai", "k": "sk-some-valid-key" }),
        )
        .await;
    let err = expect_error(&body, "BAD_USER_INPUT");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("COLLOQUY_MASTER_KEY")),
        "{body}"
    );
}

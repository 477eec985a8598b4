//! Registration, login, refresh rotation, logout, password change and reset, profile.

use colloquy::db::schema::{sessions, users, workspace_members, workspace_quotas, workspaces};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::common::{PASSWORD, TestApp, error_code, expect_error, session_from};

const REGISTER: &str = "mutation($input: RegisterInput!) { register(input: $input) {
    accessToken refreshToken expiresAt
    user { id email displayName createdAt
           workspaces { id name personal viewerRole
                        members { role user { email } }
                        quota { period tokenLimit tokensUsed tokensReserved messageLimit messagesUsed periodStart resetsAt } } } } }";

async fn count_users(app: &TestApp) -> i64 {
    users::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_creates_account_personal_workspace_and_quota() {
    let app = TestApp::spawn().await;
    let body = app
        .gql(
            REGISTER,
            json!({ "input": { "email": "  Ada@Example.COM ", "password": PASSWORD, "displayName": " Ada " } }),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let payload = &body["data"]["register"];
    let user = &payload["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["displayName"], "Ada");
    assert_eq!(payload["refreshToken"].as_str().map(str::len), Some(43));
    let expires =
        chrono::DateTime::parse_from_rfc3339(payload["expiresAt"].as_str().expect("expiresAt"))
            .expect("RFC 3339");
    let ttl = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!(
        (890..=900).contains(&ttl),
        "access token lives 15 minutes, got {ttl}s"
    );

    let workspaces = user["workspaces"].as_array().expect("workspaces");
    assert_eq!(workspaces.len(), 1);
    let ws = &workspaces[0];
    assert_eq!(ws["personal"], true);
    assert_eq!(ws["viewerRole"], "OWNER");
    assert_eq!(
        ws["members"],
        json!([{ "role": "OWNER", "user": { "email": "ada@example.com" } }])
    );
    let quota = &ws["quota"];
    assert_eq!(quota["period"], "MONTH");
    assert_eq!(quota["tokenLimit"], 1_000_000);
    assert_eq!(quota["tokensUsed"], 0);
    assert_eq!(quota["messageLimit"], json!(null));
    assert!(
        quota["periodStart"]
            .as_str()
            .is_some_and(|s| s.contains("-01T00:00:00")),
        "{quota}"
    );

    // The access token works, and `me` agrees.
    let token = payload["accessToken"].as_str().expect("token");
    assert_eq!(app.me(token).await, Ok("ada@example.com".to_owned()));
    let body = app
        .gql_as(Some(token), "{ workspaces { name personal } }", json!({}))
        .await;
    assert_eq!(body["data"]["workspaces"][0]["personal"], true, "{body}");

    // Stored: one user (with an argon2id hash, never the password), one workspace with one
    // OWNER and one quota row.
    let mut conn = app.db().await;
    let hash: String = users::table
        .select(users::password_hash)
        .first(&mut conn)
        .await
        .expect("user row");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
    let n: i64 = workspaces::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 1);
    let roles: Vec<String> = workspace_members::table
        .select(workspace_members::role)
        .load(&mut conn)
        .await
        .expect("members");
    assert_eq!(roles, vec!["OWNER"]);
    let n: i64 = workspace_quotas::table
        .count()
        .get_result(&mut conn)
        .await
        .expect("count");
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_quota_follows_configured_defaults() {
    let app = TestApp::spawn_with(&[
        ("QUOTA_DEFAULT_PERIOD", "DAY"),
        ("QUOTA_DEFAULT_TOKEN_LIMIT", "unlimited"),
        ("QUOTA_DEFAULT_MESSAGE_LIMIT", "50"),
    ])
    .await;
    let s = app.register("q@example.com").await;
    let body = app
        .gql_as(
            Some(&s.access),
            "{ workspaces { quota { period tokenLimit messageLimit periodStart resetsAt } } }",
            json!({}),
        )
        .await;
    let quota = &body["data"]["workspaces"][0]["quota"];
    assert_eq!(quota["period"], "DAY");
    assert_eq!(quota["tokenLimit"], json!(null));
    assert_eq!(quota["messageLimit"], 50);
    let start = chrono::DateTime::parse_from_rfc3339(quota["periodStart"].as_str().expect("start"))
        .expect("date");
    let end = chrono::DateTime::parse_from_rfc3339(quota["resetsAt"].as_str().expect("end"))
        .expect("date");
    assert_eq!((end - start).num_hours(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rejects_bad_input_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        ("not-an-email", PASSWORD.to_owned(), "Ada", "email"),
        ("ada@", PASSWORD.to_owned(), "Ada", "email"),
        ("", PASSWORD.to_owned(), "Ada", "email"),
        (
            "ada@example.com",
            "elevenchars".to_owned(),
            "Ada",
            "password",
        ),
        ("ada@example.com", "x".repeat(257), "Ada", "password"),
        ("ada@example.com", PASSWORD.to_owned(), "   ", "displayName"),
        (
            "ada@example.com",
            PASSWORD.to_owned(),
            &"n".repeat(101),
            "displayName",
        ),
    ];
    for (email, password, name, field) in cases {
        let body = app
            .gql(
                REGISTER,
                json!({ "input": { "email": email, "password": password, "displayName": name } }),
            )
            .await;
        let err = expect_error(&body, "BAD_USER_INPUT");
        assert_eq!(err["extensions"]["field"], field, "{body}");
        assert!(body["data"].is_null(), "{body}");
    }
    // A missing field is a validation error with the same code.
    let body = app
        .gql(
            "mutation { register(input: { email: \"a@b.io\" }) { accessToken } }",
            json!({}),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    assert_eq!(count_users(&app).await, 0);

    // 256 characters is the longest accepted password; it is not truncated.
    let long = "p".repeat(256);
    let body = app
        .gql(REGISTER, json!({ "input": { "email": "long@example.com", "password": long, "displayName": "L" } }))
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let almost = format!("{}q", "p".repeat(255));
    assert_eq!(
        error_code(&app.login("long@example.com", &almost).await).as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert!(app.login("long@example.com", &long).await["errors"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_twice_is_a_conflict_and_rolls_back() {
    let app = TestApp::spawn().await;
    app.register("dup@example.com").await;
    let body = app
        .gql(
            REGISTER,
            json!({ "input": { "email": "DUP@example.com", "password": PASSWORD, "displayName": "Again" } }),
        )
        .await;
    expect_error(&body, "CONFLICT");
    assert_eq!(count_users(&app).await, 1);
    let n: i64 = workspaces::table
        .count()
        .get_result(&mut app.db().await)
        .await
        .expect("count");
    assert_eq!(n, 1, "the failed registration left no workspace behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_indistinguishable() {
    let app = TestApp::spawn().await;
    app.register("bob@example.com").await;

    let ok = app.login(" BOB@example.com", PASSWORD).await;
    let s = session_from(&ok, "login");
    assert_eq!(app.me(&s.access).await, Ok("bob@example.com".to_owned()));

    let wrong_password = app.login("bob@example.com", "wrong password here").await;
    let unknown_email = app.login("nobody@example.com", PASSWORD).await;
    let malformed = app.login("not an email", PASSWORD).await;
    let overlong = app.login("bob@example.com", &"x".repeat(10_000)).await;
    let first = expect_error(&wrong_password, "UNAUTHENTICATED");
    for other in [&unknown_email, &malformed, &overlong] {
        let err = expect_error(other, "UNAUTHENTICATED");
        assert_eq!(err["message"], first["message"], "{other}");
    }
    assert_eq!(first["message"], "invalid email or password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let first = app.register("carol@example.com").await;

    let second = session_from(&app.refresh(&first.refresh).await, "refreshSession");
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    assert_eq!(
        app.me(&second.access).await,
        Ok("carol@example.com".to_owned())
    );
    let third = session_from(&app.refresh(&second.refresh).await, "refreshSession");

    // A second login is a separate family and must survive what follows.
    let other = session_from(&app.login("carol@example.com", PASSWORD).await, "login");

    // Presenting the already-used first token: rejected, and the whole family is revoked.
    let reuse = app.refresh(&first.refresh).await;
    expect_error(&reuse, "UNAUTHENTICATED");
    expect_error(&app.refresh(&third.refresh).await, "UNAUTHENTICATED");
    assert_eq!(
        app.me(&third.access).await,
        Err("UNAUTHENTICATED".to_owned())
    );
    assert_eq!(
        app.me(&first.access).await,
        Err("UNAUTHENTICATED".to_owned())
    );

    assert_eq!(
        app.me(&other.access).await,
        Ok("carol@example.com".to_owned())
    );
    session_from(&app.refresh(&other.refresh).await, "refreshSession");

    let reason: Option<String> = sessions::table
        .filter(sessions::revoked_at.is_not_null())
        .select(sessions::revoked_reason)
        .first(&mut app.db().await)
        .await
        .expect("revoked session");
    assert_eq!(reason.as_deref(), Some("refresh token reuse"));

    // Garbage and empty tokens.
    expect_error(&app.refresh("not-a-token").await, "UNAUTHENTICATED");
    expect_error(&app.refresh("").await, "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_with_one_token_do_not_both_win() {
    let app = TestApp::spawn().await;
    let s = app.register("race@example.com").await;
    let (a, b) = tokio::join!(app.refresh(&s.refresh), app.refresh(&s.refresh));
    let wins = [&a, &b].iter().filter(|r| r["errors"].is_null()).count();
    assert_eq!(wins, 1, "exactly one rotation may succeed: {a} {b}");
    // The loser was treated as reuse: the winner's new token is dead too.
    let winner = if a["errors"].is_null() { &a } else { &b };
    let rotated = session_from(winner, "refreshSession");
    expect_error(&app.refresh(&rotated.refresh).await, "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_refresh_token_is_rejected() {
    let app = TestApp::spawn_with(&[("REFRESH_TOKEN_TTL_DAYS", "0")]).await;
    let s = app.register("exp@example.com").await;
    expect_error(&app.refresh(&s.refresh).await, "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_at_once() {
    let app = TestApp::spawn().await;
    let s = app.register("dan@example.com").await;
    let other = session_from(&app.login("dan@example.com", PASSWORD).await, "login");
    let body = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": s.refresh }),
        )
        .await;
    assert_eq!(body["data"]["logout"], true, "{body}");
    assert_eq!(app.me(&s.access).await, Err("UNAUTHENTICATED".to_owned()));
    expect_error(&app.refresh(&s.refresh).await, "UNAUTHENTICATED");
    // Only that session.
    assert_eq!(
        app.me(&other.access).await,
        Ok("dan@example.com".to_owned())
    );
    let body = app
        .gql(
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": "bogus" }),
        )
        .await;
    expect_error(&body, "UNAUTHENTICATED");
}

const CHANGE: &str = "mutation($input: ChangePasswordInput!) { changePassword(input: $input) }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_password_revokes_every_other_session() {
    let app = TestApp::spawn().await;
    let mine = app.register("eve@example.com").await;
    let other = session_from(&app.login("eve@example.com", PASSWORD).await, "login");
    let new_password = "a brand new passphrase";

    let wrong = app
        .gql_as(
            Some(&mine.access),
            CHANGE,
            json!({ "input": { "currentPassword": "not my password", "newPassword": new_password } }),
        )
        .await;
    assert_eq!(
        expect_error(&wrong, "BAD_USER_INPUT")["extensions"]["field"],
        "currentPassword"
    );
    let short = app
        .gql_as(
            Some(&mine.access),
            CHANGE,
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": "short" } }),
        )
        .await;
    assert_eq!(
        expect_error(&short, "BAD_USER_INPUT")["extensions"]["field"],
        "newPassword"
    );
    // Nothing changed yet.
    assert_eq!(
        app.me(&other.access).await,
        Ok("eve@example.com".to_owned())
    );

    let anonymous = app
        .gql(
            CHANGE,
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": new_password } }),
        )
        .await;
    expect_error(&anonymous, "UNAUTHENTICATED");

    let ok = app
        .gql_as(
            Some(&mine.access),
            CHANGE,
            json!({ "input": { "currentPassword": PASSWORD, "newPassword": new_password } }),
        )
        .await;
    assert_eq!(ok["data"]["changePassword"], true, "{ok}");
    assert_eq!(app.me(&mine.access).await, Ok("eve@example.com".to_owned()));
    assert_eq!(
        app.me(&other.access).await,
        Err("UNAUTHENTICATED".to_owned())
    );
    expect_error(&app.refresh(&other.refresh).await, "UNAUTHENTICATED");
    session_from(&app.refresh(&mine.refresh).await, "refreshSession");
    expect_error(
        &app.login("eve@example.com", PASSWORD).await,
        "UNAUTHENTICATED",
    );
    session_from(&app.login("eve@example.com", new_password).await, "login");
}

const RESET: &str = "mutation($input: ResetPasswordInput!) { resetPassword(input: $input) }";

fn token_in(mail: &colloquy::mail::OutgoingMail) -> String {
    let start = mail.body.find("token=").expect("link with a token") + "token=".len();
    mail.body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_is_single_use_and_revokes_sessions() {
    let app = TestApp::spawn().await;
    let s = app.register("fay@example.com").await;

    for email in ["nobody@example.com", "FAY@example.com", "not an email"] {
        let body = app
            .gql(
                "mutation($e: String!) { requestPasswordReset(email: $e) }",
                json!({ "e": email }),
            )
            .await;
        assert_eq!(body["data"]["requestPasswordReset"], true, "{body}");
    }
    let mail = app.wait_for_mail("fay@example.com").await;
    assert!(mail.body.contains("30 minutes"), "{}", mail.body);
    let token = token_in(&mail);
    assert_eq!(token.len(), 43);
    // Only the known account got mail, and the stored token is a hash, not the token.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.outbox.lock().expect("outbox").len(), 1);
    let stored: Vec<Vec<u8>> = colloquy::db::schema::password_reset_tokens::table
        .select(colloquy::db::schema::password_reset_tokens::token_hash)
        .load(&mut app.db().await)
        .await
        .expect("tokens");
    assert_eq!(stored, vec![colloquy::auth::tokens::token_hash(&token)]);

    let weak = app
        .gql(
            RESET,
            json!({ "input": { "token": token, "newPassword": "short" } }),
        )
        .await;
    expect_error(&weak, "BAD_USER_INPUT");
    let new_password = "reset passphrase number one";
    let ok = app
        .gql(
            RESET,
            json!({ "input": { "token": token, "newPassword": new_password } }),
        )
        .await;
    assert_eq!(ok["data"]["resetPassword"], true, "{ok}");
    let again = app
        .gql(
            RESET,
            json!({ "input": { "token": token, "newPassword": "another passphrase 2" } }),
        )
        .await;
    assert_eq!(
        expect_error(&again, "BAD_USER_INPUT")["extensions"]["field"],
        "token"
    );
    let forged = app
        .gql(
            RESET,
            json!({ "input": { "token": "forged-token", "newPassword": "another passphrase 2" } }),
        )
        .await;
    expect_error(&forged, "BAD_USER_INPUT");

    assert_eq!(app.me(&s.access).await, Err("UNAUTHENTICATED".to_owned()));
    expect_error(&app.refresh(&s.refresh).await, "UNAUTHENTICATED");
    expect_error(
        &app.login("fay@example.com", PASSWORD).await,
        "UNAUTHENTICATED",
    );
    session_from(&app.login("fay@example.com", new_password).await, "login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reset_token_is_rejected() {
    let app = TestApp::spawn_with(&[("PASSWORD_RESET_TTL_MINS", "0")]).await;
    app.register("gus@example.com").await;
    let body = app
        .gql(
            "mutation { requestPasswordReset(email: \"gus@example.com\") }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["requestPasswordReset"], true);
    let token = token_in(&app.wait_for_mail("gus@example.com").await);
    let body = app
        .gql(
            RESET,
            json!({ "input": { "token": token, "newPassword": "a new passphrase!" } }),
        )
        .await;
    expect_error(&body, "BAD_USER_INPUT");
    session_from(&app.login("gus@example.com", PASSWORD).await, "login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_profile_changes_the_display_name() {
    let app = TestApp::spawn().await;
    let s = app.register("hal@example.com").await;
    let q =
        "mutation($n: String!) { updateProfile(input: { displayName: $n }) { displayName email } }";
    let body = app
        .gql_as(Some(&s.access), q, json!({ "n": "  Hal 9000 " }))
        .await;
    assert_eq!(
        body["data"]["updateProfile"]["displayName"], "Hal 9000",
        "{body}"
    );
    let bad = app.gql_as(Some(&s.access), q, json!({ "n": "" })).await;
    expect_error(&bad, "BAD_USER_INPUT");
    let anon = app.gql(q, json!({ "n": "Nobody" })).await;
    expect_error(&anon, "UNAUTHENTICATED");
    let body = app
        .gql_as(Some(&s.access), "{ me { displayName } }", json!({}))
        .await;
    assert_eq!(body["data"]["me"]["displayName"], "Hal 9000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_reset_are_rate_limited_per_email_and_ip() {
    // Limits live in the shared Redis: a key prefix of its own keeps other tests (all from
    // 127.0.0.1) out of these small buckets.
    let prefix = format!("colloquy:rl-test:{}", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_with(&[
        ("LOGIN_LIMIT_PER_EMAIL", "3"),
        ("LOGIN_LIMIT_PER_IP", "6"),
        ("PASSWORD_RESET_LIMIT_PER_EMAIL", "2"),
        ("RATE_LIMIT_KEY_PREFIX", &prefix),
    ])
    .await;
    for _ in 0..3 {
        expect_error(
            &app.login("ivy@example.com", "wrong password!").await,
            "UNAUTHENTICATED",
        );
    }
    let limited = app.login("ivy@example.com", "wrong password!").await;
    let err = expect_error(&limited, "RATE_LIMITED");
    let retry = err["extensions"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!(retry > 1_000 && retry <= 20_000, "{retry}");
    // Another email still gets through, until the per-IP limit (6) is spent.
    for i in 0..2 {
        expect_error(
            &app.login(&format!("other{i}@example.com"), "wrong password!")
                .await,
            "UNAUTHENTICATED",
        );
    }
    expect_error(
        &app.login("other9@example.com", "wrong password!").await,
        "RATE_LIMITED",
    );

    let reset = "mutation($e: String!) { requestPasswordReset(email: $e) }";
    for _ in 0..2 {
        let body = app.gql(reset, json!({ "e": "ivy@example.com" })).await;
        assert_eq!(body["data"]["requestPasswordReset"], true, "{body}");
    }
    expect_error(
        &app.gql(reset, json!({ "e": "IVY@example.com" })).await,
        "RATE_LIMITED",
    );
}

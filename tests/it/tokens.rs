//! Access tokens that must be refused: expired, tampered, wrong audience or issuer, `alg:
//! none`, another algorithm, another secret, wrong type, revoked session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use colloquy::auth::tokens::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use crate::common::{TEST_JWT_SECRET, TestApp};

struct Forge {
    user: Uuid,
    session: Uuid,
}

impl Forge {
    fn claims(&self) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: self.user,
            exp: now + 600,
            iat: now,
            iss: "colloquy".into(),
            aud: "colloquy-api".into(),
            jti: Uuid::new_v4(),
            typ: "access".into(),
            sid: self.session,
        }
    }

    fn sign(&self, claims: &Claims, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_stale_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let s = app.register("tok@example.com").await;
    // Learn the session id from the real token, as an attacker who holds one could.
    let payload = s.access.split('.').nth(1).expect("payload");
    let real: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    let forge = Forge {
        user: s.user_id.parse().expect("uuid"),
        session: real["sid"].as_str().expect("sid").parse().expect("uuid"),
    };

    // Control: a correctly forged token with the real secret is accepted, so each rejection
    // below is caused by the one thing it changes.
    let good = forge.sign(&forge.claims(), TEST_JWT_SECRET);
    assert_eq!(app.me(&good).await, Ok("tok@example.com".to_owned()));

    let mut expired = forge.claims();
    expired.iat -= 3_600;
    expired.exp = chrono::Utc::now().timestamp() - 60; // beyond the 30 s leeway
    let mut wrong_aud = forge.claims();
    wrong_aud.aud = "someone-else".into();
    let mut wrong_iss = forge.claims();
    wrong_iss.iss = "evil".into();
    let mut wrong_typ = forge.claims();
    wrong_typ.typ = "refresh".into();
    let mut unknown_session = forge.claims();
    unknown_session.sid = Uuid::new_v4();
    let mut future = forge.claims();
    future.iat += 3_600;

    let mut tampered = s.access.clone();
    let last = tampered.pop().expect("char");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut swapped_payload: Vec<&str> = s.access.split('.').collect();
    let other_payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({ "sub": Uuid::new_v4(), "sid": forge.session, "exp": 9_999_999_999i64,
            "iat": 0, "iss": "colloquy", "aud": "colloquy-api", "jti": Uuid::new_v4(), "typ": "access" }))
        .expect("json"),
    );
    swapped_payload[1] = &other_payload;
    let swapped = swapped_payload.join(".");

    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forge.claims()).expect("json"));
    let alg_none = format!("{none_header}.{none_payload}.");
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &forge.claims(),
        &EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes()),
    )
    .expect("sign");

    let cases = [
        ("expired", forge.sign(&expired, TEST_JWT_SECRET)),
        ("wrong audience", forge.sign(&wrong_aud, TEST_JWT_SECRET)),
        ("wrong issuer", forge.sign(&wrong_iss, TEST_JWT_SECRET)),
        ("wrong type", forge.sign(&wrong_typ, TEST_JWT_SECRET)),
        (
            "unknown session",
            forge.sign(&unknown_session, TEST_JWT_SECRET),
        ),
        ("issued in the future", forge.sign(&future, TEST_JWT_SECRET)),
        (
            "other secret",
            forge.sign(&forge.claims(), "some-other-secret-some-other-secret"),
        ),
        ("tampered signature", tampered),
        ("swapped payload", swapped),
        ("alg none", alg_none),
        ("HS512", hs512),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in cases {
        let body = app
            .gql_as(Some(&token), "{ me { email } }", json!({}))
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{what}: {body}"
        );
        assert!(body["data"].is_null(), "{what}: {body}");
    }

    // A non-Bearer Authorization header is refused too, and so is none at all.
    let body: serde_json::Value = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", format!("Basic {}", s.access))
        .json(&json!({ "query": "{ me { email } }" }))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(app.me("").await, Err("UNAUTHENTICATED".to_owned()));

    // Public operations still work with a bad token attached.
    let body = app
        .gql_as(
            Some("not.a.jwt"),
            "mutation { requestPasswordReset(email: \"x@example.com\") }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["requestPasswordReset"], true, "{body}");
}

//! rest-auth over real sockets, against the real PostgreSQL, through a real
//! HTTP client: the contract of issue #4.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hub_core::{KeySet, RegisterUser};
use hub_runtime::config::BudgetConfig;
use hub_testkit::{Service, TestHub, TestSetup, key_files};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

const SERVICES: &[Service] = &[Service::RestAuth];

struct Api {
    base: String,
    client: Client,
}

impl Api {
    fn new(hub: &TestHub) -> Self {
        Self {
            base: hub.url(Service::RestAuth),
            client: Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        decode(resp).await
    }

    async fn get_auth(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        decode(resp).await
    }

    async fn register(&self, username: &str, password: &str) -> Value {
        let (status, body) = self
            .post(
                "/register",
                json!({"username": username, "email": format!("{username}@example.com"), "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/login",
                json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

async fn decode(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, body)
}

fn assert_error(status: StatusCode, body: &Value, expected_status: StatusCode, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_then_log_in_by_username_and_by_email() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    let registered = api.register("Alice", "correct horse battery").await;
    assert_eq!(registered["username"], "alice");
    assert_eq!(registered["role"], "user");
    assert!(registered.get("password").is_none() && registered.get("password_hash").is_none());

    for body in [
        json!({"username": "ALICE", "password": "correct horse battery"}),
        json!({"email": "Alice@Example.com", "password": "correct horse battery"}),
    ] {
        let (status, login) = api.post("/login", body).await;
        assert_eq!(status, StatusCode::OK, "{login}");
        assert_eq!(login["token_type"], "Bearer");
        assert_eq!(login["expires_in"], 900);
        let token = login["token"].as_str().unwrap();
        assert_eq!(claims_of(token)["sid"], login["session_id"]);
        let (status, profile) = api.get_auth("/profile", token).await;
        assert_eq!(status, StatusCode::OK, "{profile}");
        assert_eq!(profile["id"], registered["id"]);
        assert_eq!(profile["email"], "alice@example.com");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_registered_through_the_core_logs_in_over_rest() {
    let hub = TestHub::with(SERVICES).await;
    hub.hub
        .registration()
        .register(RegisterUser {
            username: "carol".into(),
            email: "carol@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap();
    let api = Api::new(&hub);
    let token = api.login("carol", "correct horse battery").await;
    let (status, profile) = api.get_auth("/profile", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["username"], "carol");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_errors_have_the_core_codes() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("dave", "correct horse battery").await;
    let cases = [
        (
            json!({"username": "DAVE", "email": "d2@example.com", "password": "correct horse"}),
            StatusCode::CONFLICT,
            "USERNAME_TAKEN",
        ),
        (
            json!({"username": "dave2", "email": "DAVE@example.com", "password": "correct horse"}),
            StatusCode::CONFLICT,
            "EMAIL_TAKEN",
        ),
        (
            json!({"username": "d w", "email": "d3@example.com", "password": "correct horse"}),
            StatusCode::BAD_REQUEST,
            "INVALID_USERNAME",
        ),
        (
            json!({"username": "dave3", "email": "nope", "password": "correct horse"}),
            StatusCode::BAD_REQUEST,
            "INVALID_EMAIL",
        ),
        (
            json!({"username": "dave4", "email": "d4@example.com", "password": "short"}),
            StatusCode::BAD_REQUEST,
            "WEAK_PASSWORD",
        ),
    ];
    for (body, status, code) in cases {
        let (got, resp) = api.post("/register", body).await;
        assert_error(got, &resp, status, code);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("erin", "correct horse battery").await;
    let (s1, wrong) = api
        .post(
            "/login",
            json!({"username": "erin", "password": "not the password"}),
        )
        .await;
    let (s2, unknown) = api
        .post(
            "/login",
            json!({"username": "nobody", "password": "not the password"}),
        )
        .await;
    assert_error(s1, &wrong, StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert_error(
        s2,
        &unknown,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    assert_eq!(
        wrong["error"], unknown["error"],
        "identical apart from the request id"
    );

    let (status, both) = api
        .post(
            "/login",
            json!({"username": "erin", "email": "erin@example.com", "password": "x"}),
        )
        .await;
    assert_error(status, &both, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    hub.stop().await;
}

/// Every forged, stale or foreign token is refused with INVALID_TOKEN.
#[tokio::test(flavor = "multi_thread")]
async fn forged_and_stale_tokens_are_refused() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("frank", "correct horse battery").await;
    let good = api.login("frank", "correct horse battery").await;
    let (status, _) = api.get_auth("/profile", &good).await;
    assert_eq!(status, StatusCode::OK);

    let claims = claims_of(&good);
    let now = claims["iat"].as_i64().unwrap();
    let our_key = EncodingKey::from_ed_pem(hub.keys.private_pem.as_bytes()).unwrap();
    let sign = |claims: &Value, key: &EncodingKey, kid: &str| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    };
    let with = |field: &str, value: Value| {
        let mut c = claims.clone();
        c[field] = value;
        c
    };
    let kid = hub.keys.kid.clone();

    let stranger = KeySet::generate().unwrap();
    let stranger_key = EncodingKey::from_ed_pem(stranger.private_pem.as_bytes()).unwrap();
    let public_pem = std::fs::read(&hub.keys.public).unwrap();
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public_pem)).unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims.to_string())
    );
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let forged = with("role", json!("admin"));
        format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(forged.to_string()),
            parts[2]
        )
    };

    let forged = [
        (
            "expired",
            sign(&with("exp", json!(now - 3600)), &our_key, &kid),
        ),
        (
            "wrong audience",
            sign(&with("aud", json!("someone-else")), &our_key, &kid),
        ),
        (
            "wrong issuer",
            sign(&with("iss", json!("evil")), &our_key, &kid),
        ),
        (
            "exp of the wrong type",
            sign(&with("exp", json!((now + 600).to_string())), &our_key, &kid),
        ),
        (
            "issued in the future",
            sign(&with("iat", json!(now + 3600)), &our_key, &kid),
        ),
        ("unknown kid", sign(&claims, &stranger_key, &stranger.kid)),
        (
            "stranger key under our kid",
            sign(&claims, &stranger_key, &kid),
        ),
        ("alg none", alg_none),
        ("HS256 keyed with the public key", hs256),
        ("tampered payload", tampered),
        ("not a JWT", "abc.def".to_owned()),
    ];
    for (what, token) in forged {
        let (status, body) = api.get_auth("/profile", &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_TOKEN", "{what}");
    }

    // A missing header and a wrong scheme are refused the same way.
    let resp = api
        .client
        .get(format!("{}/profile", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"polyhub\""
    );
    let (status, body) = decode(resp).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    let resp = api
        .client
        .get(format!("{}/profile", api.base))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_kills_the_token_everywhere() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("grace", "correct horse battery").await;
    let token = api.login("grace", "correct horse battery").await;
    let other = api.login("grace", "correct horse battery").await;
    let resp = api
        .client
        .post(format!("{}/logout", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) = api.get_auth("/profile", &token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    let resp = api
        .client
        .post(format!("{}/logout", api.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "a dead token cannot log out again"
    );
    let (status, _) = api.get_auth("/profile", &other).await;
    assert_eq!(status, StatusCode::OK, "only that session is revoked");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_password_revokes_the_other_sessions() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("heidi", "correct horse battery").await;
    let here = api.login("heidi", "correct horse battery").await;
    let elsewhere = api.login("heidi", "correct horse battery").await;

    let put = |token: String, body: Value| {
        let client = api.client.clone();
        let url = format!("{}/profile", api.base);
        async move {
            decode(
                client
                    .put(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let (status, body) = put(
        here.clone(),
        json!({"new_password": "battery staple horse"}),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    let (status, body) = put(
        here.clone(),
        json!({"current_password": "correct horse battery", "new_password": "battery staple horse", "email": "heidi@new.example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "heidi@new.example.com");

    assert_eq!(api.get_auth("/profile", &here).await.0, StatusCode::OK);
    let (status, body) = api.get_auth("/profile", &elsewhere).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    let (status, body) = api
        .post(
            "/login",
            json!({"username": "heidi", "password": "correct horse battery"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    api.login("heidi", "battery staple horse").await;
    hub.stop().await;
}

/// An email change needs the current password too; a combined change that
/// fails (the email is taken) changes nothing: not the password, not the
/// other sessions.
#[tokio::test(flavor = "multi_thread")]
async fn credential_changes_are_authorised_and_all_or_nothing() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("ines", "correct horse battery").await;
    api.register("otto", "correct horse battery").await;
    let here = api.login("ines", "correct horse battery").await;
    let elsewhere = api.login("ines", "correct horse battery").await;
    let put = |body: Value| {
        let (client, url, token) = (
            api.client.clone(),
            format!("{}/profile", api.base),
            here.clone(),
        );
        async move {
            decode(
                client
                    .put(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    // A token alone does not change the email.
    let (status, body) = put(json!({"email": "ines@new.example.com"})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    let (status, body) =
        put(json!({"email": "ines@new.example.com", "current_password": "not it at all"})).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    // New password and a taken email: 409, and nothing changed.
    let (status, body) = put(json!({
        "current_password": "correct horse battery",
        "new_password": "battery staple horse",
        "email": "OTTO@example.com",
    }))
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "EMAIL_TAKEN");
    let (status, profile) = api.get_auth("/profile", &elsewhere).await;
    assert_eq!(status, StatusCode::OK, "the other session lives: {profile}");
    assert_eq!(profile["email"], "ines@example.com");
    api.login("ines", "correct horse battery").await;
    let (status, body) = api
        .post(
            "/login",
            json!({"username": "ines", "password": "battery staple horse"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    // With the current password the email changes, and alone it revokes nothing.
    let (status, body) =
        put(json!({"email": "ines@new.example.com", "current_password": "correct horse battery"}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "ines@new.example.com");
    assert_eq!(api.get_auth("/profile", &elsewhere).await.0, StatusCode::OK);
    hub.stop().await;
}

/// Logins that verified the old password while a change landed do not
/// leave sessions behind: each either opened before the change (and was
/// revoked by it) or finds the hash replaced. Production hashing, so each
/// login's verification takes long enough for the change to land inside it.
#[tokio::test(flavor = "multi_thread")]
async fn no_session_opened_with_an_old_password_survives_the_change() {
    let mut setup = TestSetup::new(SERVICES).production_hashing();
    setup.config.hashing.max_per_client = 64;
    setup.config.hashing.max_wait_ms = 60_000;
    setup.config.services.rest_auth.login_limit.per_ip_burst = 1_000;
    setup.config.services.rest_auth.login_limit.per_user_burst = 1_000;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    let user = api.register("rosa", "correct horse battery").await;
    let changer = api.login("rosa", "correct horse battery").await;
    // Logins keep arriving before, during and after the change, each
    // reading the user (and its hash) first and verifying on the pool later.
    let logins: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (api.client.clone(), format!("{}/login", api.base));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * i)).await;
                let resp = client
                    .post(url)
                    .json(&json!({"username": "rosa", "password": "correct horse battery"}))
                    .send()
                    .await
                    .unwrap();
                decode(resp).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = api
        .client
        .put(format!("{}/profile", api.base))
        .bearer_auth(&changer)
        .json(&json!({"current_password": "correct horse battery", "new_password": "battery staple horse"}))
        .send()
        .await
        .unwrap();
    let (status, body) = decode(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut tokens = Vec::new();
    for login in logins {
        let (status, body) = login.await.unwrap();
        match status {
            StatusCode::OK => tokens.push(body["token"].as_str().unwrap().to_owned()),
            _ => assert_error(
                status,
                &body,
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
            ),
        }
    }
    for token in &tokens {
        let (status, _) = api.get_auth("/profile", token).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a session of the old password survived"
        );
    }
    let mut db = sqlx::PgConnection::connect(hub.config().database.url.expose())
        .await
        .unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE user_id = $1::uuid AND revoked_at IS NULL",
    )
    .bind(user["id"].as_str().unwrap())
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(open, 1, "only the changer's own session is open");
    hub.stop().await;
}

/// One account, one budget: guesses through its username and through its
/// email count together, so the two names cannot double an attacker's tries.
#[tokio::test(flavor = "multi_thread")]
async fn a_username_and_an_email_of_one_account_share_one_budget() {
    let mut setup = TestSetup::new(SERVICES);
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_user_burst = 4;
    limits.per_user_replenish_ms = 60_000;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("kate", "correct horse battery").await;
    for body in [
        json!({"username": "kate", "password": "wrong wrong"}),
        json!({"email": "KATE@example.com", "password": "wrong wrong"}),
        json!({"username": "Kate", "password": "wrong wrong"}),
        json!({"email": "kate@example.com", "password": "wrong wrong"}),
    ] {
        assert_eq!(api.post("/login", body).await.0, StatusCode::UNAUTHORIZED);
    }
    for body in [
        json!({"username": "kate", "password": "correct horse battery"}),
        json!({"email": "kate@example.com", "password": "correct horse battery"}),
    ] {
        let (status, body) = api.post("/login", body).await;
        assert_error(
            status,
            &body,
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_ATTEMPTS",
        );
    }
    let metrics = hub.metrics(Service::RestAuth).await;
    assert!(
        metrics.contains(r#"polyhub_limiter_keys{budget="login_account"} 1"#),
        "one account key for both names: {metrics}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_limited_and_the_limit_recovers() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.services.rest_auth.login_limit.per_user_burst = 3;
    setup
        .config
        .services
        .rest_auth
        .login_limit
        .per_user_replenish_ms = 1_500;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("ivan", "correct horse battery").await;
    let attempt = || {
        api.post(
            "/login",
            json!({"username": "ivan", "password": "wrong wrong"}),
        )
    };
    for _ in 0..3 {
        assert_eq!(attempt().await.0, StatusCode::UNAUTHORIZED);
    }
    let resp = api
        .client
        .post(format!("{}/login", api.base))
        .json(&json!({"username": "IVAN", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let (status, body) = decode(resp).await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );

    // Another user from the same address is not affected by ivan's limit.
    api.register("judy", "correct horse battery").await;
    api.login("judy", "correct horse battery").await;

    tokio::time::sleep(Duration::from_millis(1_600)).await;
    api.login("ivan", "correct horse battery").await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_get_400_in_the_hub_shape() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    let url = format!("{}/login", api.base);
    let huge = format!(r#"{{"username":"a","password":"{}"}}"#, "x".repeat(100_000));
    let cases: [(&str, &str, String); 4] = [
        (
            "malformed",
            "application/json",
            r#"{"username": "a", "password": "#.into(),
        ),
        (
            "wrong content type",
            "text/plain",
            r#"{"username":"a","password":"b"}"#.into(),
        ),
        (
            "missing field",
            "application/json",
            r#"{"username":"a"}"#.into(),
        ),
        (
            "unknown field",
            "application/json",
            r#"{"username":"a","password":"b","admin":true}"#.into(),
        ),
    ];
    for (what, content_type, body) in cases {
        let resp = api
            .client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = decode(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{what}");
    }
    // Over http.max_body_bytes: 413 with its own code.
    let resp = api
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let (status, body) = decode(resp).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "REQUEST_TOO_LARGE");
    hub.stop().await;
}

/// Rotation: a token signed by the previous key verifies while that key is in
/// the set, and fails once it is removed; the JWKS follows.
#[tokio::test(flavor = "multi_thread")]
async fn signing_keys_rotate_without_killing_live_tokens() {
    let setup = TestSetup::new(SERVICES);
    let database = setup.config.database.url.clone();
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("kim", "correct horse battery").await;
    let old_token = api.login("kim", "correct horse battery").await;
    let old_keys = hub.stop().await;

    let new_keys = key_files();
    let mut setup = TestSetup::new(SERVICES).with_keys(new_keys);
    setup.config.database.url = database.clone();
    setup.config.tokens.previous_public_key_paths = vec![old_keys.public.clone()];
    let hub = setup.start().await;
    let api = Api::new(&hub);
    assert_eq!(api.get_auth("/profile", &old_token).await.0, StatusCode::OK);
    let new_token = api.login("kim", "correct horse battery").await;
    let (_, jwks) = api.get_auth("/.well-known/jwks.json", "").await;
    // The access tokens' Ed25519 keys, the signing one first; then the ID
    // tokens' RSA key.
    let kids: Vec<(&str, &str)> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kty"].as_str().unwrap(), k["kid"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kids[..2],
        [
            ("OKP", hub.keys.kid.as_str()),
            ("OKP", old_keys.kid.as_str())
        ],
        "signing key first"
    );
    assert_eq!(kids.len(), 3, "{jwks}");
    assert_eq!(kids[2].0, "RSA");
    let new_keys = hub.stop().await;

    let mut setup = TestSetup::new(SERVICES).with_keys(new_keys);
    setup.config.database.url = database;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    let (status, body) = api.get_auth("/profile", &old_token).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    assert_eq!(api.get_auth("/profile", &new_token).await.0, StatusCode::OK);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_and_openapi_are_public() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let resp = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = resp.json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], hub.keys.kid.as_str());
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(jwks["keys"][0].get("d").is_none(), "never the private part");

    let doc: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/login",
        "/register",
        "/profile",
        "/logout",
        "/.well-known/jwks.json",
        "/test-db",
        "/health",
        "/ready",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_only_listed_origins() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.services.rest_auth.cors.allowed_origins = vec!["https://app.example.com".into()];
    let hub = setup.start().await;
    let client = Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/login", hub.url(Service::RestAuth)),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        allowed
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_is_away_gives_fast_503s() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.database.url =
        hub_runtime::Secret::new("postgres://postgres@127.0.0.1:1/polyhub".into());
    let hub = setup.without_migration().start().await;
    let api = Api::new(&hub);
    let started = std::time::Instant::now();
    let (status, body) = api
        .post(
            "/login",
            json!({"username": "alice", "password": "whatever it is"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let health = reqwest::get(format!("{}/health", api.base)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    hub.stop().await;
}

/// Hashing is fair across clients: one client flooding `PUT /profile` with
/// wrong current passwords (a full PBKDF2 each, production strength) is
/// refused on its own share of the pool, and another client's correct
/// login, from another address, still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_hashing_flood_from_one_client_leaves_room_for_another() {
    let mut setup = TestSetup::new(SERVICES).production_hashing();
    setup.config.hashing.workers = 1;
    setup.config.hashing.max_waiting = 11;
    setup.config.hashing.max_wait_ms = 30_000;
    // The pool's fairness is under test, not the password-check budgets
    // (tested on their own below): they are widened out of the way.
    let wide = BudgetConfig {
        burst: 1_000,
        replenish_ms: 1,
    };
    setup.config.limits.password_check_per_client = wide;
    setup.config.limits.password_check_per_account = wide;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("mallory", "correct horse battery").await;
    api.register("victor", "correct horse battery").await;
    let token = api.login("mallory", "correct horse battery").await;
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let (client, url, token) = (
                api.client.clone(),
                format!("{}/profile", api.base),
                token.clone(),
            );
            tokio::spawn(async move {
                let resp = client
                    .put(url)
                    .bearer_auth(token)
                    .json(&json!({"current_password": "not it at all", "new_password": "another horse battery"}))
                    .send()
                    .await
                    .unwrap();
                decode(resp).await
            })
        })
        .collect();
    // The flood is in the pool before the quiet client comes (one account
    // holds one place of this pool, so it runs rather than waits).
    hub_testkit::eventually(
        Duration::from_secs(20),
        "the flood to fill its share",
        || async {
            let metrics = reqwest::get(format!("{}/metrics", api.base))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|l| l.starts_with("polyhub_hashing_running") && !l.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    let quiet = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let resp = quiet
        .post(format!("{}/login", api.base))
        .json(&json!({"username": "victor", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let (status, body) = decode(resp).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the quiet client was refused: {body}"
    );
    let mut refused = 0;
    for answer in flood {
        let (status, body) = answer.await.unwrap();
        if body["error"]["code"] == "OVERLOADED" {
            refused += 1;
        } else {
            assert_error(
                status,
                &body,
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
            );
        }
    }
    assert!(
        refused >= 20,
        "the flood was refused on its own share: {refused} of 30"
    );
    hub.stop().await;
}

/// A client bound to another loopback address: another client to the hub.
fn client_from(address: &str) -> Client {
    Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login_with(
    client: &Client,
    base: &str,
    username: &str,
    password: &str,
    device: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = client
        .post(format!("{base}/login"))
        .json(&json!({"username": username, "password": password}));
    if let Some(device) = device {
        request = request.header("cookie", format!("theme=dark; polyhub_device={device}"));
    }
    let resp = request.send().await.unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = decode(resp).await;
    (status, body, cookie)
}

/// The device token in a `Set-Cookie` value.
fn device_token(set_cookie: &str) -> String {
    set_cookie
        .strip_prefix("polyhub_device=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned()
}

/// OWASP's device cookie: guesses from elsewhere lock the account for
/// unknown devices, but the owner's device, which signed in before, gets
/// through; it has its own failure budget, it is no bearer token, and it
/// speaks for its own account only.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_device_logs_in_through_an_attackers_lockout() {
    let mut setup = TestSetup::new(SERVICES);
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_user_burst = 3;
    limits.per_user_replenish_ms = 60_000;
    limits.per_device_burst = 2;
    limits.per_device_replenish_ms = 60_000;
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("olga", "correct horse battery").await;
    api.register("piotr", "correct horse battery").await;
    let owner = Client::new();
    let (status, body, cookie) =
        login_with(&owner, &api.base, "olga", "correct horse battery", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = cookie.expect("a login sets the device cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=7776000",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    let device = device_token(&cookie);

    // The attacker, from another address, guesses until olga's account is
    // locked (her own login above spent one of its three)...
    let attacker = client_from("127.0.0.2");
    for (name, guesses) in [("olga", 2), ("piotr", 3)] {
        for _ in 0..guesses {
            let (status, body, _) =
                login_with(&attacker, &api.base, name, "guess guess", None).await;
            assert_error(
                status,
                &body,
                StatusCode::UNAUTHORIZED,
                "INVALID_CREDENTIALS",
            );
        }
        let (status, body, _) = login_with(&attacker, &api.base, name, "guess guess", None).await;
        assert_error(
            status,
            &body,
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_ATTEMPTS",
        );
    }
    // ...so the owner on a new device is locked out too...
    let (status, body, _) =
        login_with(&owner, &api.base, "olga", "correct horse battery", None).await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );
    // ...but not on the device she signed in from, which gets a fresh token.
    let (status, body, renewed) = login_with(
        &owner,
        &api.base,
        "olga",
        "correct horse battery",
        Some(&device),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the known device was refused: {body}"
    );
    let renewed = device_token(&renewed.unwrap());
    assert_eq!(
        claims_of(&renewed)["dev"],
        claims_of(&device)["dev"],
        "a known device keeps its id, and so its failure budget"
    );

    // Olga's device does not open piotr's lockout.
    let (status, body, _) = login_with(
        &owner,
        &api.base,
        "piotr",
        "correct horse battery",
        Some(&device),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );
    // A device token is not a bearer token.
    let (status, body) = api.get_auth("/profile", &device).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    // A forged or foreign token is no device at all.
    let (status, _, _) = login_with(
        &owner,
        &api.base,
        "olga",
        "correct horse battery",
        Some("e30.e30.AAAA"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // The device's own budget: two failures are borne, the third locks it,
    // and then it counts as unknown, so the account's lockout applies.
    for _ in 0..3 {
        let (status, body, _) = login_with(
            &owner,
            &api.base,
            "olga",
            "not her password",
            Some(&renewed),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
        );
    }
    let (status, body, _) = login_with(
        &owner,
        &api.base,
        "olga",
        "correct horse battery",
        Some(&renewed),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );
    let metrics = hub.metrics(Service::RestAuth).await;
    assert!(
        metrics.contains(r#"polyhub_limiter_keys{budget="login_device_locked"} 1"#),
        "{metrics}"
    );
    hub.stop().await;
}

/// Each check of a current password is a full hash: one account's checks
/// are budgeted wherever they come from, and one client's across accounts.
#[tokio::test(flavor = "multi_thread")]
async fn current_password_checks_are_limited_per_account_and_per_client() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.limits.password_check_per_account = BudgetConfig {
        burst: 2,
        replenish_ms: 60_000,
    };
    setup.config.limits.password_check_per_client = BudgetConfig {
        burst: 3,
        replenish_ms: 60_000,
    };
    let hub = setup.start().await;
    let api = Api::new(&hub);
    api.register("quinn", "correct horse battery").await;
    api.register("rita", "correct horse battery").await;
    let here = Client::new();
    let there = client_from("127.0.0.2");
    let elsewhere = client_from("127.0.0.3");
    let quinn_here = api.login("quinn", "correct horse battery").await;
    let (_, body, _) = login_with(&there, &api.base, "quinn", "correct horse battery", None).await;
    let quinn_there = body["token"].as_str().unwrap().to_owned();
    let rita_here = api.login("rita", "correct horse battery").await;
    let (_, body, _) =
        login_with(&elsewhere, &api.base, "rita", "correct horse battery", None).await;
    let rita_elsewhere = body["token"].as_str().unwrap().to_owned();

    let check = |client: Client, token: String, current: &'static str| {
        let url = format!("{}/profile", api.base);
        async move {
            let resp = client
                .put(url)
                .bearer_auth(token)
                .json(
                    &json!({"current_password": current, "new_password": "another horse battery"}),
                )
                .send()
                .await
                .unwrap();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let (status, body) = decode(resp).await;
            (status, body, retry_after)
        }
    };
    for _ in 0..2 {
        let (status, body, _) = check(here.clone(), quinn_here.clone(), "wrong wrong").await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
        );
    }
    // Quinn's budget is spent, from another address too, even with the
    // right password.
    let (status, body, retry_after) =
        check(there.clone(), quinn_there, "correct horse battery").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    // This client has one check left, on another account; then none.
    let (status, body, _) = check(here.clone(), rita_here.clone(), "wrong wrong").await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    let (status, body, _) = check(here.clone(), rita_here, "correct horse battery").await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_ATTEMPTS",
    );
    // Rita, from her own address, still changes her password.
    let (status, body, _) = check(elsewhere, rita_elsewhere, "correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A request that checks no password spends nothing.
    let (status, body) = api.get_auth("/profile", &quinn_here).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    hub.stop().await;
}

/// `POST /admin/users/import`: what `hub users import` does, for a request
/// body, admins only, with the same report as JSON; the imported user then
/// logs in with the password behind the legacy hash.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_imports_users_over_rest_and_they_log_in() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("root", "correct horse battery").await;
    hub.hub
        .administration()
        .set_role("root", hub_core::Role::Admin)
        .await
        .unwrap();
    let admin = api.login("root", "correct horse battery").await;
    api.register("plain", "correct horse battery").await;
    let plain = api.login("plain", "correct horse battery").await;
    // Werkzeug's pbkdf2:sha256 of "password" with salt "salt", 1 iteration.
    let hash =
        "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
    let users = json!([
        {"username": "imported", "email": "imported@example.com", "password_hash": hash},
        {"username": "no way", "email": "no@example.com", "password_hash": hash},
        {"username": "other", "email": "other@example.com", "password_hash": "md5$x"},
        {"username": "plain", "email": "plain2@example.com", "password_hash": hash},
    ]);
    let import = |token: String, dry_run: bool| {
        let (client, url, users) = (
            api.client.clone(),
            format!("{}/admin/users/import?dry_run={dry_run}", api.base),
            users.clone(),
        );
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&users)
                .send()
                .await
                .unwrap();
            decode(resp).await
        }
    };
    let (status, body) = import(plain.clone(), false).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");

    let (status, body) = import(admin.clone(), true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["imported"].as_u64(), body["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    let (status, _) = api
        .post(
            "/login",
            json!({"username": "imported", "password": "password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a dry run keeps nothing");

    let (status, body) = import(admin.clone(), false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 1, "{body}");
    assert_eq!(body["already_present"], 1, "plain was here: {body}");
    let rejected: Vec<(u64, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rejected.len(), 2, "{body}");
    assert_eq!(rejected[0].0, 2);
    assert!(rejected[0].1.starts_with("bad username"), "{body}");
    assert_eq!(rejected[1].0, 3);
    assert!(
        rejected[1].1.contains("unknown password hash format"),
        "{body}"
    );
    api.login("imported", "password").await;

    let (status, body) = import(admin, false).await;
    assert_eq!(
        (status, &body["imported"]),
        (StatusCode::OK, &json!(0)),
        "{body}"
    );
    hub.stop().await;
}

/// Five failed logins from `client` (as `X-Forwarded-For` says), then the
/// status of a sixth.
async fn sixth_login_from(api: &Api, client: &str) -> StatusCode {
    let mut last = StatusCode::OK;
    for _ in 0..6 {
        last = api
            .client
            .post(format!("{}/login", api.base))
            .header("x-forwarded-for", client)
            .json(&json!({"username": "nobody-here", "password": "wrong wrong"}))
            .send()
            .await
            .unwrap()
            .status();
    }
    last
}

/// The status of one failed login sent without `X-Forwarded-For`.
async fn login_without_header(api: &Api) -> StatusCode {
    api.post(
        "/login",
        json!({"username": "nobody-here", "password": "wrong wrong"}),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_login_budget_is_the_forwarded_clients() {
    let limited = |trusted: &[&str]| {
        let mut setup = TestSetup::new(SERVICES);
        let limit = &mut setup.config.services.rest_auth.login_limit;
        limit.per_ip_burst = 5;
        limit.per_ip_replenish_ms = 60_000;
        limit.per_user_burst = 1_000;
        setup.config.http.trusted_proxies = trusted.iter().map(|p| p.parse().unwrap()).collect();
        setup
    };
    // The test's client is 127.0.0.1: trusted as a gateway, each forwarded
    // client has a budget of its own...
    let hub = limited(&["127.0.0.1"]).start().await;
    let api = Api::new(&hub);
    assert_eq!(
        sixth_login_from(&api, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        sixth_login_from(&api, "198.51.100.1, 203.0.113.2").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged entry left of the gateway's is not believed"
    );
    // ...and the gateway's own address is a client of its own too.
    let status = login_without_header(&api).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the gateway's own address still has its budget"
    );
    hub.stop().await;

    // Not trusted: the header is the client's word, ignored; one budget.
    let hub = limited(&["10.0.0.0/8"]).start().await;
    let api = Api::new(&hub);
    assert_eq!(
        sixth_login_from(&api, "203.0.113.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let status = login_without_header(&api).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "every attempt spent the peer's budget"
    );
    hub.stop().await;
}

/// `/profile` answers with the caller's email and id: no shared or private
/// cache may keep one, whether it says who the caller is or why not.
#[tokio::test(flavor = "multi_thread")]
async fn profile_answers_are_never_stored_by_a_cache() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("nora", "correct horse battery").await;
    let token = api.login("nora", "correct horse battery").await;
    let url = format!("{}/profile", api.base);
    let no_store = |resp: &reqwest::Response, what: &str| {
        assert_eq!(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{what}: {:?}",
            resp.headers()
        );
    };
    let get = |token: Option<&str>| {
        let mut request = api.client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let put = |token: Option<&str>, body: &str| {
        let mut request = api
            .client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let resp = get(Some(&token)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    no_store(&resp, "GET with a token");
    for (token, what) in [
        (None, "GET without a token"),
        (Some("nope"), "GET, a bad token"),
    ] {
        let resp = get(token).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        no_store(&resp, what);
    }

    let change =
        json!({"email": "nora@new.example.com", "current_password": "correct horse battery"});
    let resp = put(Some(&token), &change.to_string()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    no_store(&resp, "PUT with a token");
    for (token, body, status, what) in [
        (
            None,
            change.to_string(),
            StatusCode::UNAUTHORIZED,
            "PUT without a token",
        ),
        (
            Some("nope"),
            change.to_string(),
            StatusCode::UNAUTHORIZED,
            "PUT, a bad token",
        ),
        (
            Some(token.as_str()),
            "{".to_owned(),
            StatusCode::BAD_REQUEST,
            "PUT, a bad body",
        ),
        (
            Some(token.as_str()),
            json!({"email": "nora@new.example.com", "current_password": "wrong wrong"}).to_string(),
            StatusCode::UNAUTHORIZED,
            "PUT, a wrong current password",
        ),
    ] {
        let resp = put(token, &body).await.unwrap();
        assert_eq!(resp.status(), status, "{what}");
        no_store(&resp, what);
    }
    // Without a token the body is not looked at: 401 comes first.
    let resp = put(None, "{").await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    no_store(&resp, "PUT without a token, a bad body");
    hub.stop().await;
}

/// An address that only looks like a registered one (a Cyrillic `а`, a
/// fullwidth `ａ`) is refused as INVALID_EMAIL, as a look-alike username is
/// INVALID_USERNAME: 400 whether or not the original is registered, so the
/// answer tells nothing about who is, and never a second account that
/// reads the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_look_alike_email_is_refused() {
    let hub = TestHub::with(SERVICES).await;
    let api = Api::new(&hub);
    api.register("alice", "correct horse battery").await;
    for email in [
        "\u{430}lice@example.com",                         // Cyrillic а
        "\u{ff41}lice@example.com",                        // fullwidth ａ
        "\u{430}\u{4cf}\u{456}\u{441}\u{435}@example.com", // all Cyrillic: аӏісе
        "alice@ex\u{430}mple.com",
        "\"alice\"@example.com", // the same mailbox, quoted
    ] {
        let (status, body) = api
            .post(
                "/register",
                json!({"username": "mallory", "email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_EMAIL");
    }
    // Nor can an account move to one.
    api.register("mallory", "correct horse battery").await;
    let token = api.login("mallory", "correct horse battery").await;
    let (status, body) = decode(
        api.client
            .put(format!("{}/profile", api.base))
            .bearer_auth(&token)
            .json(&json!({"email": "\u{430}lice@example.com", "current_password": "correct horse battery"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_EMAIL");
    let (_, profile) = api.get_auth("/profile", &token).await;
    assert_eq!(profile["email"], "mallory@example.com");
    hub.stop().await;
}

//! The session service over real sockets: the session API (5004) and the
//! last-connection tracker (5020), against the real PostgreSQL and the
//! MongoDB-wire server, with users signed in through rest-auth.

use std::time::Duration;

use hub_core::Role;
use hub_testkit::{Service, TestHub, TestSetup, eventually};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Users sign in on rest-auth, then use the session API and the tracker.
const SERVICES: &[Service] = &[
    Service::RestAuth,
    Service::Sessions,
    Service::SessionTracker,
];

struct Hub {
    hub: TestHub,
    client: Client,
}

impl Hub {
    async fn start() -> Self {
        Self::from(TestHub::with(SERVICES).await)
    }

    fn from(hub: TestHub) -> Self {
        Self {
            hub,
            client: Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        service: Service,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.hub.url(service)));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn sessions(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call(method, Service::Sessions, path, token, None)
            .await
    }

    /// Registers `name` and logs in over rest-auth: (user id, token).
    async fn signed_in(&self, name: &str) -> (String, String) {
        let (status, user) = self
            .call(
                Method::POST,
                Service::RestAuth,
                "/register",
                None,
                Some(json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        (
            user["id"].as_str().unwrap().to_owned(),
            self.login(name).await,
        )
    }

    async fn login(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                Service::RestAuth,
                "/login",
                None,
                Some(json!({"username": name, "password": "correct horse"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn make_admin(&self, name: &str) -> String {
        self.hub
            .hub
            .administration()
            .set_role(name, Role::Admin)
            .await
            .unwrap();
        self.login(name).await
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["request_id"].is_string(), "{body}");
}

fn time_of(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().unwrap(), &Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_manages_their_sessions() {
    let hub = Hub::start().await;
    let (me, token) = hub.signed_in("alice").await;

    // Another device: 201 with a session and its own token.
    let (status, device) = hub
        .sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    assert_eq!(device["session"]["user_id"], me.as_str());
    assert_eq!(device["session"]["state"], "open");
    assert_eq!(device["token_type"], "Bearer");
    let device_token = device["token"].as_str().unwrap().to_owned();
    let device_id = device["session"]["id"].as_str().unwrap().to_owned();

    // Verify: what gateways call.
    let (status, verified) = hub
        .sessions(Method::GET, "/api/sessions/verify", Some(&device_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert_eq!(verified["valid"], true);
    assert_eq!(verified["user_id"], me.as_str());
    assert_eq!(verified["session_id"], device_id.as_str());
    assert!(time_of(&verified["expires_at"]) > OffsetDateTime::now_utc());

    // Listing: newest first, the asking session marked, paginated.
    let (status, list) = hub
        .sessions(Method::GET, &format!("/api/sessions/{me}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["id"], device_id.as_str(), "newest first");
    assert_eq!(sessions[0]["current"], false);
    assert_eq!(sessions[1]["current"], true);
    assert!(list.get("next_page_token").is_none());
    let (_, first) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{me}?page_size=1"),
            Some(&token),
        )
        .await;
    let next = first["next_page_token"].as_str().unwrap();
    let (_, second) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{me}?page_size=1&page_token={next}"),
            Some(&token),
        )
        .await;
    assert_eq!(first["sessions"][0]["id"], sessions[0]["id"]);
    assert_eq!(second["sessions"][0]["id"], sessions[1]["id"]);
    assert!(second.get("next_page_token").is_none());

    // Touch: last seen now, a fresh token that works.
    let before = time_of(&sessions[0]["last_seen_at"]);
    let (status, touched) = hub
        .sessions(
            Method::PUT,
            &format!("/api/sessions/{me}"),
            Some(&device_token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{touched}");
    assert_eq!(touched["session"]["id"], device_id.as_str());
    assert!(time_of(&touched["session"]["last_seen_at"]) >= before);
    let fresh = touched["token"].as_str().unwrap();
    let (status, _) = hub
        .sessions(Method::GET, "/api/sessions/verify", Some(fresh))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Revoking one session: its tokens die on the very next request.
    let (status, revoked) = hub
        .sessions(
            Method::DELETE,
            &format!("/api/sessions/{me}?session={device_id}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["revoked"], 1);
    for dead in [device_token.as_str(), fresh] {
        let (status, body) = hub
            .sessions(Method::GET, "/api/sessions/verify", Some(dead))
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    }
    // Revoking it again revokes nothing; the list shows it only with include=all.
    let (_, again) = hub
        .sessions(
            Method::DELETE,
            &format!("/api/sessions/{me}?session={device_id}"),
            Some(&token),
        )
        .await;
    assert_eq!(again["revoked"], 0);
    let (_, open) = hub
        .sessions(Method::GET, &format!("/api/sessions/{me}"), Some(&token))
        .await;
    assert_eq!(open["sessions"].as_array().unwrap().len(), 1);
    let (_, all) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{me}?include=all"),
            Some(&token),
        )
        .await;
    assert_eq!(all["sessions"][0]["state"], "revoked");
    assert!(all["sessions"][0]["revoked_at"].is_string());

    // Log out everywhere: the count, and the caller's own token is dead too.
    hub.sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    let (status, everywhere) = hub
        .sessions(Method::DELETE, &format!("/api/sessions/{me}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(everywhere["revoked"], 2);
    let (status, body) = hub
        .sessions(Method::GET, "/api/sessions/verify", Some(&token))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn others_sessions_are_forbidden_except_to_admins() {
    let hub = Hub::start().await;
    let (alice, alice_token) = hub.signed_in("alice").await;
    let (bob, _) = hub.signed_in("bob").await;

    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, body) = hub
            .sessions(
                method.clone(),
                &format!("/api/sessions/{bob}"),
                Some(&alice_token),
            )
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
        let (status, body) = hub
            .sessions(method.clone(), &format!("/api/sessions/{bob}"), None)
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
        let (status, body) = hub
            .sessions(method, "/api/sessions/not-a-uuid", Some(&alice_token))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_USER_ID");
    }
    let (status, body) = hub
        .sessions(Method::POST, "/api/sessions", Some("not.a.token"))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    let (status, body) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{alice}?include=everything"),
            Some(&alice_token),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{alice}?page_token=nope"),
            Some(&alice_token),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // A session id that is not the user's is not found, even by its owner's id.
    let (_, bob_sessions) = {
        let admin = hub.make_admin("bob").await;
        let (status, list) = hub
            .sessions(Method::GET, &format!("/api/sessions/{bob}"), Some(&admin))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        (admin, list)
    };
    let bob_session = bob_sessions["sessions"][0]["id"].as_str().unwrap();
    let (status, body) = hub
        .sessions(
            Method::DELETE,
            &format!("/api/sessions/{alice}?session={bob_session}"),
            Some(&alice_token),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    // The admin lists and revokes alice's sessions, but cannot touch them.
    let admin = hub.login("bob").await;
    let (status, list) = hub
        .sessions(Method::GET, &format!("/api/sessions/{alice}"), Some(&admin))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
    let (status, body) = hub
        .sessions(Method::PUT, &format!("/api/sessions/{alice}"), Some(&admin))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let nobody = uuid::Uuid::now_v7();
    let (status, body) = hub
        .sessions(
            Method::GET,
            &format!("/api/sessions/{nobody}"),
            Some(&admin),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "USER_NOT_FOUND");
    let (status, revoked) = hub
        .sessions(
            Method::DELETE,
            &format!("/api/sessions/{alice}"),
            Some(&admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revoked["revoked"], 1);
    let (status, _) = hub
        .sessions(Method::GET, "/api/sessions/verify", Some(&alice_token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_over_rest_shows_as_the_last_connection() {
    let hub = Hub::start().await;
    let (alice, token) = hub.signed_in("alice").await;
    let logged_in = OffsetDateTime::now_utc();
    // How fast is the benchmark's business; this only checks that it arrives.
    let last = eventually(
        Duration::from_secs(30),
        "the login reaches MongoDB",
        || async {
            let (status, body) = hub
                .call(
                    Method::GET,
                    Service::SessionTracker,
                    "/last-connection",
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            (!body["last_connection"].is_null()).then_some(body)
        },
    )
    .await;
    assert_eq!(last["user_id"], alice.as_str());
    assert_eq!(last["username"], "alice");
    let at = time_of(&last["last_connection"]);
    assert!((logged_in - at).abs() < time::Duration::seconds(5), "{at}");

    // Only admins ask about others, and a non-admin learns nothing of who exists.
    let (_, bob_token) = hub.signed_in("bob").await;
    for name in ["alice", "nobody"] {
        let (status, body) = hub
            .call(
                Method::GET,
                Service::SessionTracker,
                &format!("/last-connection?username={name}"),
                Some(&bob_token),
                None,
            )
            .await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let admin = hub.make_admin("bob").await;
    let (status, body) = hub
        .call(
            Method::GET,
            Service::SessionTracker,
            "/last-connection?username=alice",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.as_str());
    let (status, body) = hub
        .call(
            Method::GET,
            Service::SessionTracker,
            "/last-connection?username=nobody",
            Some(&admin),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "USER_NOT_FOUND");
    let (status, body) = hub
        .call(
            Method::GET,
            Service::SessionTracker,
            "/last-connection",
            None,
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");
    let (status, body) = hub
        .call(
            Method::GET,
            Service::SessionTracker,
            "/connected/health",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, ready) = hub
        .call(Method::GET, Service::SessionTracker, "/ready", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["mongodb"]["status"], "OK");
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_mongodb_sessions_work_and_the_tracker_says_503() {
    let mut setup = TestSetup::new(SERVICES);
    // Nothing listens on port 1.
    setup.config.mongo.url = hub_runtime::Secret::new("mongodb://127.0.0.1:1/".into());
    setup.config.mongo.server_selection_timeout_ms = 300;
    let hub = Hub::from(setup.start().await);
    let (me, token) = hub.signed_in("alice").await;
    let (status, _) = hub
        .sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, list) = hub
        .sessions(Method::GET, &format!("/api/sessions/{me}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let (status, _) = hub
        .sessions(Method::GET, "/api/sessions/verify", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);

    // 5004 stays ready and says what waits; the tracker does not.
    let ready = eventually(
        Duration::from_secs(10),
        "the relay reports its failure",
        || async {
            let (status, ready) = hub.sessions(Method::GET, "/ready", None).await;
            assert_eq!(status, StatusCode::OK, "{ready}");
            (ready["details"]["relay"]["status"] == "RETRYING").then_some(ready)
        },
    )
    .await;
    assert_eq!(ready["checks"]["mongodb"]["status"], "ERROR");
    assert_eq!(ready["checks"]["mongodb"]["required"], false);
    // The last error as a code and a time; the driver's text stays in the log.
    let last_error = &ready["details"]["relay"]["last_error"];
    assert_eq!(last_error["code"], "UNAVAILABLE", "{ready}");
    assert!(last_error["at"].is_string(), "{ready}");
    assert!(!ready.to_string().contains("127.0.0.1"), "{ready}");
    assert_eq!(ready["checks"]["postgres"]["status"], "OK");
    assert!(
        ready["details"]["relay"]["backlog"].as_u64().unwrap() >= 2,
        "{ready}"
    );
    let (status, body) = hub
        .call(
            Method::GET,
            Service::SessionTracker,
            "/last-connection",
            Some(&token),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
    );
    let (status, _) = hub
        .call(Method::GET, Service::SessionTracker, "/ready", None, None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let resp = reqwest::get(format!("{}/metrics", hub.hub.url(Service::Sessions)))
        .await
        .unwrap();
    let metrics = resp.text().await.unwrap();
    assert!(metrics.contains("polyhub_relay_failing 1"), "{metrics}");
    assert!(metrics.contains("polyhub_outbox_backlog "), "{metrics}");
    hub.hub.stop().await;
}

/// Every answer of the session API and the tracker is about one user (their
/// sessions, tokens, addresses, when they were last seen), so none may be
/// kept by a cache: 2xx, refusals and errors alike carry `no-store`.
#[tokio::test(flavor = "multi_thread")]
async fn personal_answers_are_never_stored_by_a_cache() {
    let hub = Hub::start().await;
    let (me, token) = hub.signed_in("alice").await;
    let (other, _) = hub.signed_in("bob").await;
    let answer = |method: Method, service: Service, path: String, token: Option<String>| {
        let mut request = hub
            .client
            .request(method, format!("{}{path}", hub.hub.url(service)));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    let cases = [
        (
            Method::POST,
            Service::Sessions,
            "/api/sessions".to_owned(),
            StatusCode::CREATED,
        ),
        (
            Method::GET,
            Service::Sessions,
            "/api/sessions/verify".to_owned(),
            StatusCode::OK,
        ),
        (
            Method::GET,
            Service::Sessions,
            format!("/api/sessions/{me}"),
            StatusCode::OK,
        ),
        (
            Method::PUT,
            Service::Sessions,
            format!("/api/sessions/{me}"),
            StatusCode::OK,
        ),
        (
            Method::GET,
            Service::Sessions,
            format!("/api/sessions/{other}"),
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            Service::Sessions,
            "/api/sessions/not-an-id".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            Service::SessionTracker,
            "/last-connection".to_owned(),
            StatusCode::OK,
        ),
        (
            Method::DELETE,
            Service::Sessions,
            format!("/api/sessions/{me}"),
            StatusCode::OK,
        ),
    ];
    for (method, service, path, status) in cases {
        for (token, expected) in [
            (Some(token.clone()), status),
            (None, StatusCode::UNAUTHORIZED),
            (Some("not-a-token".to_owned()), StatusCode::UNAUTHORIZED),
        ] {
            let what = format!("{method} {path} ({service}), token {}", token.is_some());
            // The DELETE revoked the token: it is last, and its refusals
            // are asked with no token or a bad one anyway.
            let resp = answer(method.clone(), service, path.clone(), token).await;
            assert_eq!(resp.status(), expected, "{what}");
            assert_eq!(
                resp.headers()
                    .get(reqwest::header::CACHE_CONTROL)
                    .and_then(|v| v.to_str().ok()),
                Some("no-store"),
                "{what}: {:?}",
                resp.headers()
            );
        }
    }
    hub.hub.stop().await;
}

/// Sessions opened from a token cost no password, so a user's open
/// sessions are bounded: past `sessions.max_open_per_user`, another is 429
/// QUOTA_EXCEEDED, saying what to do, until one is signed out.
#[tokio::test(flavor = "multi_thread")]
async fn open_sessions_are_bounded_per_user() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.sessions.max_open_per_user = 2;
    let hub = Hub::from(setup.start().await);
    let (me, token) = hub.signed_in("alice").await;
    let (status, opened) = hub
        .sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{opened}");
    let (status, body) = hub
        .sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "QUOTA_EXCEEDED",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{body}"
    );
    let device = opened["session"]["id"].as_str().unwrap();
    let (status, _) = hub
        .sessions(
            Method::DELETE,
            &format!("/api/sessions/{me}?session={device}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = hub
        .sessions(Method::POST, "/api/sessions", Some(&token))
        .await;
    assert_eq!(status, StatusCode::CREATED, "one signed out, one more");
    hub.hub.stop().await;
}

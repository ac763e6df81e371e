//! schemathesis, a property-based API tester no one here wrote, against the
//! running rest-auth's own `/openapi.json`: no 5xx, and every response must
//! match the document (status, content type, body schema).

use std::process::Command;

use base64::Engine;

use hub_testkit::{Service, TestHub};
use serde_json::{Value, json};

async fn token(base: &str, username: &str) -> String {
    let client = reqwest::Client::new();
    let body: Value = client
        .post(format!("{base}/login"))
        .json(&json!({"username": username, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// schemathesis over the operations `filter` selects, each request sent
/// with `Authorization: {authorization}`.
async fn run_schemathesis(
    base: String,
    authorization: String,
    filter: [&'static str; 2],
) -> String {
    let st = hub_testkit::venv_bin("st");
    tokio::task::spawn_blocking(move || {
        let out = Command::new(st)
            .args(["run", &format!("{base}/openapi.json")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--max-examples",
                "40",
                "--header",
                &format!("Authorization: {authorization}"),
            ])
            .args(filter)
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "schemathesis found problems:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_document() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    reqwest::Client::new()
        .post(format!("{base}/register"))
        .json(&json!({"username": "fuzz", "email": "fuzz@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    // An admin, so the admin-only import is exercised too, not only refused.
    hub.hub
        .administration()
        .set_role("fuzz", hub_core::Role::Admin)
        .await
        .unwrap();
    let main_token = token(&base, "fuzz").await;
    let logout_token = token(&base, "fuzz").await;

    // Everything but what ends sessions (logout; an admin's reset of a
    // user's factors, which the stateful phase aims at the caller's own id
    // from /profile), the second step of a sign-in (whose every random
    // ticket is a 401), the caller's own factors (each change asks for the
    // password, which a random one is not: 401) and OAuth, with a token that stays valid
    // throughout...
    let report = run_schemathesis(
        base.clone(),
        format!("Bearer {main_token}"),
        [
            "--exclude-path-regex",
            "^/(logout|login/mfa|mfa|oauth2/)|/factors$",
        ],
    )
    .await;
    assert!(
        !report.contains("Authentication failed"),
        "authenticated operations must really be exercised:\n{report}"
    );
    // ...then those, with a token of their own...
    run_schemathesis(
        base.clone(),
        format!("Bearer {logout_token}"),
        ["--include-path-regex", "^/(logout|login/mfa|mfa)|/factors$"],
    )
    .await;
    // ...and the OAuth endpoints, as a registered client authenticates at
    // them (userinfo refuses it: it wants an app's access token).
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(hub_core::NewClient {
            name: "fuzz".into(),
            grant_types: vec![hub_core::GrantType::ClientCredentials],
            scopes: vec!["images:read".into()],
            ..hub_core::NewClient::default()
        })
        .await
        .unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        client.id,
        secret.unwrap().shown()
    ));
    run_schemathesis(
        base,
        format!("Basic {basic}"),
        ["--include-path-regex", "^/oauth2/"],
    )
    .await;
    hub.stop().await;
}

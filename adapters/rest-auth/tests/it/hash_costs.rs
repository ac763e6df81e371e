//! Imported hashes over `POST /admin/users/import`, against what a login
//! may cost: the pen test's costly hashes are refused with the reason, and
//! a cheap one (`pbkdf2:sha256:1`) does not give its user away by refusing
//! a wrong password sooner than an unknown username is refused.

use std::time::{Duration, Instant};

use hub_testkit::{Service, TestSetup};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Werkzeug's pbkdf2:sha256 of "password" with salt "salt", 1 iteration.
const ONE_ITERATION: &str =
    "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
const FOUR_BLOCK_PBKDF2: &str = "$pbkdf2-sha256$i=2000000,l=128$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8";
const WERKZEUG_SCRYPT_P16: &str = "scrypt:65536:8:16$saltsaltsaltsalt$000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
const ARGON2_M256_T10_P8: &str = "$argon2id$v=19$m=262144,t=10,p=8$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

async fn post(
    client: &Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_hashes_cost_a_login_no_more_than_the_ceiling_and_no_less_than_ours() {
    let mut setup = TestSetup::new(&[Service::RestAuth]).production_hashing();
    let limits = &mut setup.config.services.rest_auth.login_limit;
    (limits.per_ip_burst, limits.per_user_burst) = (1_000, 1_000);
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let client = Client::new();
    let (status, body) = post(
        &client,
        format!("{base}/register"),
        None,
        json!({"username": "root", "email": "root@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    hub.hub
        .administration()
        .set_role("root", hub_core::Role::Admin)
        .await
        .unwrap();
    let (status, body) = post(
        &client,
        format!("{base}/login"),
        None,
        json!({"username": "root", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = body["token"].as_str().unwrap().to_owned();

    let users: Vec<Value> = [
        ("cheap", ONE_ITERATION),
        ("fourblocks", FOUR_BLOCK_PBKDF2),
        ("scryptp16", WERKZEUG_SCRYPT_P16),
        ("argonm256t10", ARGON2_M256_T10_P8),
    ]
    .iter()
    .map(|(name, hash)| {
        json!({"username": name, "email": format!("{name}@example.com"), "password_hash": hash})
    })
    .collect();
    let (status, body) = post(
        &client,
        format!("{base}/admin/users/import"),
        Some(&admin),
        Value::Array(users),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 1, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 3, "{body}");
    for (rejection, (user, what)) in rejected.iter().zip([
        (2, "pbkdf2-sha256, 2000000 iterations x 4 output blocks of 32 bytes is the work of 8000000"),
        (3, "scrypt N=65536, r=8, p=16 is the work of 25165824"),
        (4, "argon2 m=262144 KiB, t=10 (p=8) is the work of 7864320"),
    ]) {
        assert_eq!(rejection["user"], user, "{body}");
        let reason = rejection["reason"].as_str().unwrap();
        assert!(
            reason.starts_with(&format!(
                "password hash parameters over the ceiling: {what} PBKDF2-SHA256 iterations"
            )),
            "{reason}"
        );
    }

    // A wrong password for the cheap user, and any password for a username
    // no one has: the quickest of five each, taken in turns in the same
    // run. Without the padding the cheap user answers in a few ms, a
    // fraction of the unknown user's standard verification.
    let wrong_login = |username: &'static str| {
        let (client, url) = (client.clone(), format!("{base}/login"));
        async move {
            let started = Instant::now();
            let (status, body) = post(
                &client,
                url,
                None,
                json!({"username": username, "password": "not the password"}),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{username}: {body}");
            started.elapsed()
        }
    };
    let (mut cheap, mut unknown) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        cheap = cheap.min(wrong_login("cheap").await);
        unknown = unknown.min(wrong_login("nobody-here").await);
    }
    assert!(
        cheap * 2 >= unknown,
        "a wrong password for an imported pbkdf2:sha256:1 user took {cheap:?}, an unknown user {unknown:?}"
    );
    // And the right password still logs in (and upgrades the hash).
    let (status, body) = post(
        &client,
        format!("{base}/login"),
        None,
        json!({"username": "cheap", "password": "password"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    hub.stop().await;
}

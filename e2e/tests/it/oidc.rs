//! OpenID Connect with relying parties no one here wrote, through a real
//! browser: `openid-client` (npm) as a public app and `authlib` (PyPI) as a
//! confidential one each run discovery and the code flow with PKCE, the
//! user signing in (and consenting) on the console in Debian's Chromium,
//! then ID token checks, userinfo, refresh with rotation, introspection,
//! revocation and logout, against `hub serve`.

use std::path::Path;

use hub_e2e::{Environment, ROOT, python_json};
use serde_json::Value;

fn client_file(name: &str) -> String {
    Path::new(ROOT)
        .join("e2e/clients")
        .join(name)
        .display()
        .to_string()
}

/// `node oidc_rp.mjs args`: its JSON.
async fn rp(args: &[&str]) -> Value {
    let out = tokio::process::Command::new("node")
        .arg(client_file("oidc_rp.mjs"))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "oidc_rp.mjs {}: {}\n{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The browser's run from `url` to the app's redirect URI: where it landed.
async fn browse(url: &str, user: &str, password: &str, redirect: &str, consent: &str) -> String {
    let report = python_json(
        Path::new(&client_file("oidc_browser.py")),
        &[url, user, password, redirect, "--expect-consent", consent],
    )
    .await;
    report["callback_url"].as_str().unwrap().to_owned()
}

/// `hub clients create args`: its JSON.
fn create_client(environment: &Environment, args: &[&str]) -> Value {
    let mut all = vec!["clients", "create"];
    all.extend_from_slice(args);
    let out = environment.command("hub", &all).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn openid_client_and_authlib_sign_a_user_in_through_a_browser() {
    let environment = Environment::new();
    let hub = environment.start("hub", &["serve", "--only", "rest-auth"], 1);
    let issuer = hub.url("rest-auth").to_owned();
    let closed = hub_e2e::free_port();
    let redirect = format!("http://127.0.0.1:{closed}/cb");
    let bye = format!("http://127.0.0.1:{closed}/bye");
    let user = format!("rp-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let password = "rp correct horse battery";
    let registered = reqwest::Client::new()
        .post(format!("{issuer}/register"))
        .json(&serde_json::json!({
            "username": user, "email": format!("{user}@example.com"), "password": password,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    let public = create_client(
        &environment,
        &[
            "--name",
            "Photo app",
            "--public",
            "--redirect-uri",
            &redirect,
            "--post-logout-redirect-uri",
            &bye,
        ],
    );
    let public_id = public["client_id"].as_str().unwrap().to_owned();
    let confidential = create_client(
        &environment,
        &[
            "--name",
            "Reports",
            "--first-party",
            "--redirect-uri",
            &redirect,
        ],
    );
    let confidential_id = confidential["client_id"].as_str().unwrap().to_owned();
    let confidential_secret = confidential["client_secret"].as_str().unwrap().to_owned();

    let scratch =
        std::env::temp_dir().join(format!("polyhub-oidc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let state = |name: &str| scratch.join(name).display().to_string();

    // openid-client: sign-in and consent in the browser, then everything
    // the tokens allow, and logout.
    let started = rp(&["start", &issuer, &public_id, &redirect, &state("rp1.json")]).await;
    let url = started["authorization_url"].as_str().unwrap();
    let callback = browse(url, &user, password, &redirect, "yes").await;
    let finished = rp(&[
        "finish",
        &issuer,
        &public_id,
        &redirect,
        &bye,
        &state("rp1.json"),
        &callback,
    ])
    .await;
    assert!(finished.get("failed_step").is_none(), "{finished}");

    // A second sign-in (consent remembered): a refresh token used twice
    // revokes the grant.
    let started = rp(&["start", &issuer, &public_id, &redirect, &state("rp2.json")]).await;
    let url = started["authorization_url"].as_str().unwrap();
    let callback = browse(url, &user, password, &redirect, "no").await;
    let reused = rp(&[
        "reuse",
        &issuer,
        &public_id,
        &redirect,
        &state("rp2.json"),
        &callback,
    ])
    .await;
    assert!(reused.get("failed_step").is_none(), "{reused}");

    // authlib, a confidential first-party client with client_secret_basic.
    let script = client_file("oidc_authlib.py");
    let started = python_json(
        Path::new(&script),
        &[
            "start",
            &issuer,
            &confidential_id,
            &confidential_secret,
            &redirect,
            &state("authlib.json"),
        ],
    )
    .await;
    let url = started["authorization_url"].as_str().unwrap();
    let callback = browse(url, &user, password, &redirect, "no").await;
    let finished = python_json(
        Path::new(&script),
        &[
            "finish",
            &issuer,
            &confidential_id,
            &confidential_secret,
            &redirect,
            &state("authlib.json"),
            &callback,
        ],
    )
    .await;
    assert!(finished.get("failed_step").is_none(), "{finished}");
    let _ = std::fs::remove_dir_all(&scratch);
    drop(hub);
}

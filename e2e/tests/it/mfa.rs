//! Second factors in a real browser: Debian's Chromium, headless, driven by
//! selenium (e2e/clients/mfa_browser.py) against `hub serve`, with pyotp as
//! the authenticator app. A user sets up TOTP on the Security page and gets
//! ten recovery codes; signing in then asks for a code: a wrong one and a
//! replayed one are refused, a fresh one and each recovery code sign in
//! once. The second step and the Security page pass axe-core and their
//! CSP, and are photographed at 1280 and 390 px into
//! target/console-screenshots/.

use std::path::Path;

use hub_e2e::{Environment, ROOT, python_json, screenshots};

#[tokio::test(flavor = "multi_thread")]
async fn second_factors_in_a_real_browser() {
    let mut environment = Environment::new();
    // Secure cookies, as in production: browsers keep them over plain HTTP
    // on loopback (a secure context), as `scripts/up` serves it.
    environment.set("POLYHUB_HTTP__SECURE_COOKIES", "true");
    let hub = environment.start("hub", &["serve"], 6);
    let base = hub.url("rest-auth").to_owned();

    // The user: registered over the API, with no second factor yet.
    let name = format!("otto-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let password = "otto correct horse";
    let registered = reqwest::Client::new()
        .post(format!("{base}/register"))
        .json(&serde_json::json!({
            "username": name, "email": format!("{name}@example.com"), "password": password,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    let out = screenshots();
    let axe = Path::new(ROOT).join("e2e/clients/node_modules/axe-core/axe.min.js");
    assert!(
        axe.exists(),
        "axe-core is missing: scripts/test installs it (ensure_browser)"
    );
    let report = python_json(
        &Path::new(ROOT).join("e2e/clients/mfa_browser.py"),
        &[
            &base,
            &name,
            password,
            &out.display().to_string(),
            &axe.display().to_string(),
        ],
    )
    .await;

    for step in [
        "signed_in_with_password",
        "setup_shows_key_and_qr",
        "authenticator_on",
        "ten_recovery_codes",
        "security_offers_remove_and_new_codes",
        "password_asks_for_code",
        "wrong_code_refused",
        "signed_in_with_totp",
        "replayed_code_refused",
        "signed_in_with_recovery_code",
        "used_recovery_code_refused",
        "signed_in_with_second_recovery_code",
        "eight_recovery_codes_left",
    ] {
        assert_eq!(report["steps"][step], true, "{step}: {report}");
    }
    let pages: Vec<&str> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["page"].as_str().unwrap())
        .collect();
    for page in [
        "security-setup",
        "security-codes",
        "second-step",
        "second-step-error",
        "security-on",
    ] {
        assert!(pages.contains(&page), "{page} was not checked: {report}");
        for width in [1280, 390] {
            assert!(
                out.join(format!("{page}-{width}.png")).exists(),
                "{page} at {width}"
            );
        }
    }
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    assert_eq!(report["csp_reports"], serde_json::json!([]), "{report}");
}

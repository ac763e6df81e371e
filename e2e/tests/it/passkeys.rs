//! Passkeys in a real browser: Debian's Chromium, headless, driven by
//! selenium (e2e/clients/passkey_browser.py) against `hub serve`, with
//! Chromium's virtual authenticator (DevTools' WebAuthn domain) as the
//! user's device. A user adds a passkey on the Security page and renames
//! it; it then signs in alone (no name, no password) and answers the second
//! step after the password; it is removed. Refused: the removed passkey, a
//! browser with none, a forged answer (`INVALID_PASSKEY`, 401). The pages
//! with a passkey form pass axe-core, have the console's policy plus
//! `script-src 'self'; connect-src 'self'` and nothing else, and are
//! photographed at 1280 and 390 px into target/console-screenshots/.
//!
//! WebAuthn takes no IP address as the relying party: the hub's RP ID is
//! `localhost` (any port), and the browser goes to `localhost`, which
//! Chromium resolves to the loopback the hub listens on.

use std::path::Path;

use hub_e2e::{Environment, ROOT, python_json, screenshots};

#[tokio::test(flavor = "multi_thread")]
async fn passkeys_in_a_real_browser() {
    let mut environment = Environment::new();
    // Secure cookies, as in production: http://localhost is a secure
    // context, browsers keep them.
    environment.set("POLYHUB_HTTP__SECURE_COOKIES", "true");
    environment.set("POLYHUB_WEBAUTHN__RP_ID", "localhost");
    environment.set("POLYHUB_WEBAUTHN__ORIGIN", "http://localhost:5001");
    environment.set("POLYHUB_WEBAUTHN__ALLOW_ANY_PORT", "true");
    let hub = environment.start("hub", &["serve"], 6);
    let base = hub.url("rest-auth").to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let browser_base = base.replacen("127.0.0.1", "localhost", 1);

    // The user: registered over the API, with no second factor yet.
    let name = format!("pia-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let password = "pia correct horse";
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
        &Path::new(ROOT).join("e2e/clients/passkey_browser.py"),
        &[
            &browser_base,
            &name,
            password,
            &out.display().to_string(),
            &axe.display().to_string(),
        ],
    )
    .await;

    for step in [
        "signin_offers_passkey",
        "security_offers_passkey",
        "passkey_added",
        "authenticator_holds_resident_key",
        "passkey_renamed",
        "signed_in_with_passkey",
        "password_asks_for_passkey",
        "signed_in_with_password_and_passkey",
        "passkey_shows_last_use",
        "passkey_removed",
        "removed_passkey_refused",
        "removed_passkey_signs_nobody_in",
        "no_credential_refused",
        "no_credential_signs_nobody_in",
        "forged_answer_refused",
        "forged_answer_signs_nobody_in",
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
        "passkey-signin",
        "passkey-security-empty",
        "passkey-security",
        "passkey-second-step",
        "passkey-signin-error",
    ] {
        assert!(pages.contains(&page), "{page} was not checked: {report}");
        for width in [1280, 390] {
            assert!(
                out.join(format!("{page}-{width}.png")).exists(),
                "{page} at {width}"
            );
        }
    }

    // The policies: the console's own on a page with no passkey form (no
    // script at all), and exactly two directives more on a page with one.
    let console = report["policies"]["signup"].as_str().unwrap();
    assert!(!console.contains("script-src"), "{console}");
    assert_eq!(report["policies"]["account"], console, "{report}");
    for page in [
        "passkey-signin",
        "passkey-security",
        "passkey-second-step",
        "passkey-signin-error",
    ] {
        let policy = report["policies"][page].as_str().unwrap();
        assert_eq!(
            policy,
            format!("{console}; script-src 'self'; connect-src 'self'"),
            "{page}"
        );
        assert!(
            !policy.contains("unsafe-inline") && !policy.contains("unsafe-eval"),
            "{page}: {policy}"
        );
    }

    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    assert_eq!(report["csp_reports"], serde_json::json!([]), "{report}");
    assert_eq!(report["script_errors"], serde_json::json!([]), "{report}");
}

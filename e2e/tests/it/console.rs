//! The account console in a real browser: Debian's Chromium, headless,
//! driven by selenium (e2e/clients/console_browser.py) against `hub serve`.
//! A user signs up, signs in, changes email and password, uploads an image,
//! signs a second device out; an admin finds, revokes and promotes them;
//! forged forms are refused; every page passes axe-core and its CSP, and is
//! photographed at 1280 and 390 px into target/console-screenshots/.

use std::path::Path;

use hub_e2e::{Environment, ROOT, png_file, python_json, screenshots};

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let mut environment = Environment::new();
    // Secure cookies, as in production: browsers keep them over plain HTTP
    // on loopback (a secure context), as `scripts/up` serves it.
    environment.set("POLYHUB_HTTP__SECURE_COOKIES", "true");
    let hub = environment.start("hub", &["serve"], 6);
    let base = hub.url("rest-auth").to_owned();
    let http = reqwest::Client::new();

    // The admin: registered over the API, promoted by the operator's command.
    let admin = format!("root-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let admin_password = "admin correct horse";
    let registered = http
        .post(format!("{base}/register"))
        .json(&serde_json::json!({
            "username": admin, "email": format!("{admin}@example.com"), "password": admin_password,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let granted = environment
        .command("hub", &["users", "grant-admin", &admin])
        .output()
        .unwrap();
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );

    let out = screenshots();
    let axe = Path::new(ROOT).join("e2e/clients/node_modules/axe-core/axe.min.js");
    assert!(
        axe.exists(),
        "axe-core is missing: scripts/test installs it (ensure_browser)"
    );
    let report = python_json(
        &Path::new(ROOT).join("e2e/clients/console_browser.py"),
        &[
            &base,
            &admin,
            admin_password,
            &png_file("console-upload").display().to_string(),
            &out.display().to_string(),
            &axe.display().to_string(),
        ],
    )
    .await;

    let pages: Vec<&str> = report["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["page"].as_str().unwrap())
        .collect();
    for page in [
        "signup",
        "signin",
        "account",
        "images",
        "devices",
        "admin-users",
        "admin-user",
        "admin-system",
        "admin-webhooks",
        "admin-apps",
        "consent",
        "account-apps",
    ] {
        assert!(pages.contains(&page), "{page} was not checked: {report}");
        for width in [1280, 390] {
            assert!(
                out.join(format!("{page}-{width}.png")).exists(),
                "{page} at {width}"
            );
        }
    }
    assert_eq!(report["csp_reports"], serde_json::json!([]), "{report}");
    assert_eq!(report["refused"]["signed_out_token"], "INVALID_TOKEN");
    for forged in [
        "no_csrf",
        "wrong_csrf",
        "other_origin",
        "no_origin",
        "signin_no_csrf",
    ] {
        assert_eq!(report["refused"][forged], 403, "{forged}: {report}");
    }
}

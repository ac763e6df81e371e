use hub_testkit::{Service, TestHub, TestSetup};
use reqwest::{Client, StatusCode, header};
use serde_json::json;

pub(crate) const SERVICES: &[Service] = &[Service::RestAuth];
pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) use hub_testkit::console::{encoded, form_csrf, session_cookies, set_cookie};

pub(crate) async fn register(http: &Client, base: &str, name: &str) {
    let answer = http
        .post(format!("{base}/register"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
}

pub(crate) use hub_testkit::console::sign_in;

#[tokio::test]
async fn every_page_is_sent_with_the_browser_policies() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "pia").await;
    let signed_in = sign_in(&http, &base, "pia", PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("polyhub_session="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = session_cookies(&signed_in);
    for page in [
        "/account/signin",
        "/account/signup",
        "/account",
        "/account/devices",
        "/account/images",
    ] {
        let answer = http
            .get(format!("{base}{page}"))
            .header(header::COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{page}");
        let headers = answer.headers();
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'none';"),
            "{page}: {policy}"
        );
        for part in [
            "frame-ancestors 'none'",
            "form-action 'self'",
            "style-src 'self'",
        ] {
            assert!(policy.contains(part), "{page}: {policy}");
        }
        assert!(
            !policy.contains("script-src") && !policy.contains("unsafe"),
            "{policy}"
        );
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{page}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{page}");
        assert_eq!(headers[header::REFERRER_POLICY], "same-origin", "{page}");
        let body = answer.text().await.unwrap();
        assert!(
            !body.contains("<script") && !body.contains("style="),
            "{page}: inline script or style"
        );
        assert!(body.contains("<html lang=\"en\">"), "{page}");
    }
    let css = http
        .get(format!("{base}/account/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        css.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
}

#[tokio::test]
async fn pages_need_a_session_and_admin_pages_an_admin() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    for page in [
        "/account",
        "/account/devices",
        "/admin/users",
        "/admin/system",
    ] {
        let answer = http.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(answer.headers()[header::LOCATION], "/account/signin");
    }
    // A cookie that is not a live token is forgotten on the way to sign in.
    let answer = http
        .get(format!("{base}/account"))
        .header(header::COOKIE, "polyhub_session=not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(set_cookie(&answer, "polyhub_session").as_deref(), Some(""));

    register(&http, &base, "quinn").await;
    let signed_in = sign_in(&http, &base, "quinn", PASSWORD).await;
    let session = session_cookies(&signed_in);
    for page in ["/admin/users", "/admin/user/quinn", "/admin/system"] {
        let answer = http
            .get(format!("{base}{page}"))
            .header(header::COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{page}");
        assert!(answer.text().await.unwrap().contains("FORBIDDEN"));
    }
}

#[tokio::test]
async fn forged_and_oversized_forms_are_refused_before_they_act() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "rosa").await;
    let signed_in = sign_in(&http, &base, "rosa", PASSWORD).await;
    let session = session_cookies(&signed_in);
    let page = http
        .get(format!("{base}/account"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_csrf(&page, "/account/email");
    let post = |origin: Option<&str>, csrf: Option<&str>, extra: usize| {
        let padding = "x".repeat(extra);
        let mut form = vec![
            ("email", "new@example.com"),
            ("email_current_password", PASSWORD),
            ("padding", padding.as_str()),
        ];
        if let Some(csrf) = csrf {
            form.insert(0, ("csrf", csrf));
        }
        let mut request = http
            .post(format!("{base}/account/email"))
            .header(header::COOKIE, &session)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&form));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        request.send()
    };
    for (why, origin, token) in [
        ("no token", Some(base.as_str()), None),
        (
            "another session's token",
            Some(base.as_str()),
            Some("A".repeat(43)),
        ),
        (
            "another origin",
            Some("http://evil.example"),
            Some(csrf.clone()),
        ),
        ("no origin", None, Some(csrf.clone())),
    ] {
        let answer = post(origin, token.as_deref(), 0).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{why}");
    }
    let too_large = post(Some(&base), Some(&csrf), 32 * 1024).await.unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        too_large
            .text()
            .await
            .unwrap()
            .contains("REQUEST_TOO_LARGE")
    );
    let profile = http
        .get(format!("{base}/account"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !profile.contains("new@example.com"),
        "a refused form changed the email"
    );
    // The same form, whole, works.
    let done = post(Some(&base), Some(&csrf), 0).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[header::LOCATION], "/account?done=email");
}

#[tokio::test]
async fn sign_in_spends_the_api_login_budget_and_says_when_to_come_back() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "sami").await;
    let mut last = None;
    // The account's budget (10 by default) is shared with POST /login.
    for _ in 0..5 {
        let answer = http
            .post(format!("{base}/login"))
            .json(&json!({"username": "sami", "password": "wrong wrong wrong"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..10 {
        let answer = sign_in(&http, &base, "sami", "wrong wrong wrong").await;
        let status = answer.status();
        let body = answer.text().await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            last = Some(body);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            body.contains("INVALID_CREDENTIALS") && body.contains("id=\"password-error\""),
            "{body}"
        );
    }
    let limited = last.expect("the console's sign-in was never limited");
    assert!(
        limited.contains("TOO_MANY_ATTEMPTS") && limited.contains("Try again in"),
        "{limited}"
    );
}

#[tokio::test]
async fn a_session_in_use_is_renewed_and_its_open_forms_still_post() {
    let mut setup = TestSetup::new(SERVICES);
    // Tokens of five minutes: every page view is within the renewal window.
    setup.config.tokens.lifetime_secs = 300;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "tove").await;
    let signed_in = sign_in(&http, &base, "tove", PASSWORD).await;
    let first = set_cookie(&signed_in, "polyhub_session").unwrap();
    let secret = set_cookie(&signed_in, "polyhub_csrf").unwrap();
    // Tokens count in whole seconds: a renewal within the login's second
    // would sign the very same claims.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let page = http
        .get(format!("{base}/account"))
        .header(header::COOKIE, session_cookies(&signed_in))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let renewed = set_cookie(&page, "polyhub_session").expect("the token was not renewed");
    assert_ne!(renewed, first);
    let csrf = form_csrf(&page.text().await.unwrap(), "/account/email");
    // The renewed token is a live one for the API too.
    let profile = http
        .get(format!("{base}/profile"))
        .bearer_auth(&renewed)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::OK);
    // The form rendered before the renewal posts with the new cookie.
    let posted = http
        .post(format!("{base}/account/email"))
        .header(header::ORIGIN, &base)
        .header(
            header::COOKIE,
            format!("polyhub_session={renewed}; polyhub_csrf={secret}"),
        )
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[
            ("csrf", csrf.as_str()),
            ("email", "tove.new@example.com"),
            ("email_current_password", PASSWORD),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::SEE_OTHER);
    // A POST never renews: only page views do.
    assert!(set_cookie(&posted, "polyhub_session").is_none());
    // Without its CSRF secret a browser is sent to sign in again.
    let no_secret = http
        .get(format!("{base}/account"))
        .header(header::COOKIE, format!("polyhub_session={renewed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_secret.status(), StatusCode::SEE_OTHER);
}

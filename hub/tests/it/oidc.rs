//! The OpenID Connect code flow over plain HTTP, as a browser and an app
//! drive it: the console's sign-in and consent, codes bound to client,
//! redirect URI and PKCE, ID tokens, userinfo, refresh rotation, logout;
//! and every refusal the standard names, in its own shape.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hub::Service;
use hub_core::{GrantType, NewClient, OAuthClient};
use hub_testkit::console::{encoded, form_csrf, session_cookies, sign_in};
use hub_testkit::{TestHub, sign_up};
use reqwest::{Client, StatusCode, header};
use serde_json::Value;
use sha2::Digest;

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "http://127.0.0.1:9/cb";
const BYE: &str = "http://127.0.0.1:9/bye";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn browser() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn client(
    hub: &TestHub,
    name: &str,
    first_party: bool,
    public: bool,
) -> (OAuthClient, String) {
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: name.into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![BYE.into()],
            public,
            first_party,
            grant_types: vec![GrantType::AuthorizationCode, GrantType::RefreshToken],
            scopes: vec![
                "openid".into(),
                "profile".into(),
                "email".into(),
                "offline_access".into(),
            ],
            ..NewClient::default()
        })
        .await
        .unwrap();
    let secret = secret.map(|s| s.shown().to_owned()).unwrap_or_default();
    (client, secret)
}

/// A query string of `pairs`.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `GET /oauth2/authorize?pairs` with `cookies`: the answer.
async fn authorize(base: &str, cookies: Option<&str>, pairs: &[(&str, &str)]) -> reqwest::Response {
    let mut request = browser().get(format!("{base}/oauth2/authorize?{}", query(pairs)));
    if let Some(cookies) = cookies {
        request = request.header(header::COOKIE, cookies);
    }
    request.send().await.unwrap()
}

fn location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{response:?}");
    response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The query parameter `name` of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn request_for<'a>(
    client: &'a OAuthClient,
    state: &'a str,
    challenge: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client.id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid profile email offline_access"),
        ("state", state),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// POSTs a form to the token endpoint as `client` (Basic when it has a
/// secret): the status and the JSON.
async fn token(
    base: &str,
    client: &OAuthClient,
    secret: &str,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut pairs: Vec<(&str, &str)> = form.to_vec();
    let mut request = Client::new()
        .post(format!("{base}/oauth2/token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if secret.is_empty() {
        pairs.push(("client_id", client.id.as_str()));
    } else {
        request = request.basic_auth(client.id.as_str(), Some(secret));
    }
    let response = request.body(query(&pairs)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// The code's exchange by `client` (with the redirect URI and verifier the
/// tests authorize with): the status and the JSON.
async fn exchange(
    base: &str,
    client: &OAuthClient,
    secret: &str,
    code: &str,
) -> (StatusCode, Value) {
    token(
        base,
        client,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

/// The claims of a JWT, unverified (openid-client and authlib verify them
/// in the browser tests).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn profile(base: &str, token: &str) -> StatusCode {
    Client::new()
        .get(format!("{base}/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// A user signed in on the console: their cookies.
async fn signed_in(base: &str, name: &str) -> String {
    sign_up(base, name, PASSWORD).await;
    session_cookies(&sign_in(&browser(), base, name, PASSWORD).await)
}

/// A code for `client` through a first-party authorize step.
async fn code(base: &str, cookies: &str, client: &OAuthClient) -> String {
    let challenge = challenge(VERIFIER);
    let answer = authorize(base, Some(cookies), &request_for(client, "xyz", &challenge)).await;
    let to = location(&answer);
    assert!(to.starts_with(REDIRECT), "{to}");
    assert_eq!(param(&to, "state").as_deref(), Some("xyz"));
    param(&to, "code").unwrap_or_else(|| panic!("no code in {to}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_code_flow_end_to_end_for_a_first_party_app() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = client(&hub, "dashboard", true, false).await;
    let cookies = signed_in(&base, "oidcuser").await;

    // Signed out, the browser goes to the sign-in page, which comes back.
    let challenge = challenge(VERIFIER);
    let answer = authorize(&base, None, &request_for(&app, "xyz", &challenge)).await;
    let to = location(&answer);
    assert!(
        to.starts_with("/account/signin?next=%2Foauth2%2Fauthorize%3F"),
        "{to}"
    );
    let page = browser().get(format!("{base}{to}")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:9"),
        "{csp}"
    );
    let page = page.text().await.unwrap();
    assert!(page.contains("name=\"next\""), "{page}");

    // Signed in, a first-party app gets its code at once.
    let code = code(&base, &cookies, &app).await;
    let (status, tokens) = exchange(&base, &app, &secret, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let id = claims(&id_token);
    assert_eq!(id["aud"], app.id.as_str());
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["preferred_username"], "oidcuser");
    assert!(
        id["auth_time"].as_i64().is_some() && id["sid"].as_str().is_some(),
        "{id}"
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    let jwks: Value = Client::new()
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == header["kid"] && k["kty"] == "RSA"),
        "{jwks}"
    );
    // The access token is the app's: /profile (scope profile) takes it, no
    // endpoint that acts with the user's full rights does.
    assert_eq!(profile(&base, &access).await, StatusCode::OK);
    for (method, path) in [
        (reqwest::Method::GET, "/admin/webhooks"),
        (reqwest::Method::PUT, "/profile"),
    ] {
        let refused = Client::new()
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(&access)
            .json(&serde_json::json!({"email": "x@example.com", "current_password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    let console = browser()
        .get(format!("{base}/account"))
        .header(header::COOKIE, format!("polyhub_session={access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        console.status(),
        StatusCode::SEE_OTHER,
        "the console is not the app's"
    );
    let info: Value = Client::new()
        .get(format!("{base}/oauth2/userinfo"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], id["sub"]);
    assert_eq!(info["email"], "oidcuser@example.com");

    // The code again: refused, and what it issued is revoked.
    let (status, body) = exchange(&base, &app, &secret, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);
    let (status, _) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A new grant: refresh rotates; the old refresh token again ends it.
    let code = self::code(&base, &cookies, &app).await;
    let (_, tokens) = exchange(&base, &app, &secret, &code).await;
    let first = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(profile(&base, &access).await, StatusCode::OK);
    let (status, body) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, _) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &second)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the grant is revoked");
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);

    // A third grant, ended by polyhub's own logout with its token.
    let code = self::code(&base, &cookies, &app).await;
    let (_, tokens) = exchange(&base, &app, &secret, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let out = Client::new()
        .post(format!("{base}/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);
    let (status, body) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // RP-initiated logout: the grant ends and the browser goes back.
    let code = self::code(&base, &cookies, &app).await;
    let (_, tokens) = exchange(&base, &app, &secret, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let hint = tokens["id_token"].as_str().unwrap().to_owned();
    let out = browser()
        .get(format!(
            "{base}/oauth2/logout?{}",
            query(&[
                ("id_token_hint", &hint),
                ("post_logout_redirect_uri", BYE),
                ("state", "bye1")
            ])
        ))
        .header(header::COOKIE, &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(location(&out), format!("{BYE}?state=bye1"));
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);
    // The browser's own session ended too: signed out, prompt=none says so.
    let answer = authorize(
        &base,
        Some(&cookies),
        &[request_for(&app, "s", &challenge), vec![("prompt", "none")]].concat(),
    )
    .await;
    assert_eq!(
        param(&location(&answer), "error").as_deref(),
        Some("login_required")
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_follow_the_standard() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = client(&hub, "thirdparty", false, false).await;
    let (spa, _) = client(&hub, "spa", true, true).await;
    let cookies = signed_in(&base, "refuser").await;
    let challenge = challenge(VERIFIER);
    let good = request_for(&app, "st", &challenge);
    let with = |changes: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut pairs: Vec<(&str, &str)> = good
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .copied()
            .collect();
        pairs.extend(changes.iter().filter(|(_, v)| !v.is_empty()).copied());
        pairs
    };

    // A redirect URI not registered, an unknown client: a page, no redirect.
    for pairs in [
        with(&[("redirect_uri", "http://127.0.0.1:9/other")]),
        with(&[("client_id", "no-such-client")]),
    ] {
        let answer = authorize(&base, Some(&cookies), &pairs).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert!(answer.headers().get(header::LOCATION).is_none());
    }
    // The rest go back to the app in OAuth's shape, with state and iss.
    for (changes, error) in [
        (&[("code_challenge_method", "plain")][..], "invalid_request"),
        // PKCE for every client, this confidential one too (RFC 9700).
        (
            &[("code_challenge", ""), ("code_challenge_method", "")][..],
            "invalid_request",
        ),
        (
            &[("response_type", "token")][..],
            "unsupported_response_type",
        ),
        (
            &[("response_type", "code id_token")][..],
            "unsupported_response_type",
        ),
        (&[("scope", "openid admin")][..], "invalid_scope"),
        (&[("scope", "openid images:write")][..], "invalid_scope"),
        (&[("prompt", "none")][..], "consent_required"),
    ] {
        let answer = authorize(&base, Some(&cookies), &with(changes)).await;
        let to = location(&answer);
        assert!(to.starts_with(REDIRECT), "{changes:?}: {to}");
        assert_eq!(
            param(&to, "error").as_deref(),
            Some(error),
            "{changes:?}: {to}"
        );
        assert_eq!(param(&to, "state").as_deref(), Some("st"));
        assert_eq!(
            param(&to, "iss"),
            Some(hub.hub.config().oidc.settings().issuer)
        );
    }
    // A public client without PKCE; prompt=none while signed out.
    let public = request_for(&spa, "p", &challenge);
    let no_pkce: Vec<_> = public
        .iter()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .copied()
        .collect();
    let to = location(&authorize(&base, Some(&cookies), &no_pkce).await);
    assert_eq!(
        param(&to, "error").as_deref(),
        Some("invalid_request"),
        "{to}"
    );
    let to = location(
        &authorize(
            &base,
            None,
            &[public.clone(), vec![("prompt", "none")]].concat(),
        )
        .await,
    );
    assert_eq!(
        param(&to, "error").as_deref(),
        Some("login_required"),
        "{to}"
    );

    // A third-party app asks for consent; deny goes back as access_denied.
    let page = authorize(&base, Some(&cookies), &good).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:9"),
        "{csp}"
    );
    let page = page.text().await.unwrap();
    assert!(
        page.contains("Allow thirdparty to use your account?"),
        "{page}"
    );
    let csrf = form_csrf(&page, "/oauth2/consent");
    let request = query(&good);
    let decide = |decision: &'static str| {
        let body = encoded(&[
            ("csrf", &csrf),
            ("request", &request),
            ("decision", decision),
        ]);
        browser()
            .post(format!("{base}/oauth2/consent"))
            .header(header::ORIGIN, &base)
            .header(header::COOKIE, &cookies)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let to = location(&decide("deny").await.unwrap());
    assert_eq!(
        param(&to, "error").as_deref(),
        Some("access_denied"),
        "{to}"
    );
    let to = location(&decide("allow").await.unwrap());
    let code = param(&to, "code").unwrap();
    // Remembered: prompt=none now works.
    let to = location(&authorize(&base, Some(&cookies), &with(&[("prompt", "none")])).await);
    assert!(param(&to, "code").is_some(), "{to}");

    // At the token endpoint: the wrong secret, the wrong verifier, the
    // wrong redirect URI, and an expired code.
    let exchange =
        |code: String, verifier: &'static str, redirect: &'static str, secret: String| {
            let base = base.clone();
            let app = app.clone();
            async move {
                token(
                    &base,
                    &app,
                    &secret,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", redirect),
                        ("code_verifier", verifier),
                    ],
                )
                .await
            }
        };
    let (status, body) = exchange(code.clone(), VERIFIER, REDIRECT, "wrong".into()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let wrong_verifier = "wrong-verifier-wrong-verifier-wrong-verifier-xx";
    let (status, body) = exchange(code.clone(), wrong_verifier, REDIRECT, secret.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );

    let to = location(&authorize(&base, Some(&cookies), &good).await);
    let code = param(&to, "code").unwrap();
    let (status, body) = exchange(code, VERIFIER, "http://127.0.0.1:9/other", secret.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );

    let to = location(&authorize(&base, Some(&cookies), &good).await);
    let code = param(&to, "code").unwrap();
    let url = hub.hub.config().database.url.expose().clone();
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let (status, body) = exchange(code, VERIFIER, REDIRECT, secret.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Userinfo without a token: the Bearer challenge.
    let answer = Client::new()
        .get(format!("{base}/oauth2/userinfo"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    assert!(
        answer.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // Withdrawing access from the console: the consent is gone.
    let apps = browser()
        .get(format!("{base}/account/apps"))
        .header(header::COOKIE, &cookies)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(apps.contains("thirdparty"), "{apps}");
    let csrf = form_csrf(&apps, "/account/apps/withdraw");
    let withdrawn = browser()
        .post(format!("{base}/account/apps/withdraw"))
        .header(header::ORIGIN, &base)
        .header(header::COOKIE, &cookies)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[("csrf", &csrf), ("client_id", app.id.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(withdrawn.status(), StatusCode::SEE_OTHER);
    let to = location(&authorize(&base, Some(&cookies), &with(&[("prompt", "none")])).await);
    assert_eq!(
        param(&to, "error").as_deref(),
        Some("consent_required"),
        "{to}"
    );
    hub.stop().await;
}

/// `/admin/apps`: admins register, rotate and delete applications in the
/// console; anyone else is refused.
#[tokio::test(flavor = "multi_thread")]
async fn admins_manage_applications_in_the_console() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let user = signed_in(&base, "appuser").await;
    let refused = browser()
        .get(format!("{base}/admin/apps"))
        .header(header::COOKIE, &user)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    sign_up(&base, "appadmin", PASSWORD).await;
    hub.hub
        .administration()
        .set_role("appadmin", hub_core::Role::Admin)
        .await
        .unwrap();
    let admin = session_cookies(&sign_in(&browser(), &base, "appadmin", PASSWORD).await);
    let page = browser()
        .get(format!("{base}/admin/apps"))
        .header(header::COOKIE, &admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = form_csrf(&page, "/admin/apps");
    let post = |path: String, body: String| {
        browser()
            .post(format!("{base}{path}"))
            .header(header::ORIGIN, &base)
            .header(header::COOKIE, &admin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let answer = post(
        "/admin/apps".into(),
        encoded(&[
            ("csrf", &csrf),
            ("name", "Reports"),
            ("scopes", "images:read"),
            ("grant_client_credentials", "on"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let page = answer.text().await.unwrap();
    assert!(page.contains("shown this once"), "{page}");
    let clients = hub.hub.client_registry().clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    let id = clients[0].id.to_string();
    assert!(page.contains(&id));

    let answer = post(
        "/admin/apps".into(),
        encoded(&[
            ("csrf", &csrf),
            ("name", "Web"),
            ("redirect_uris", "http://app.example/cb"),
            ("grant_code", "on"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("http is only for loopback hosts")
    );

    let rotated = post(
        format!("/admin/apps/{id}/rotate"),
        encoded(&[("csrf", &csrf)]),
    )
    .await
    .unwrap();
    assert!(
        rotated
            .text()
            .await
            .unwrap()
            .contains("the old secret no longer works")
    );
    let deleted = post(
        format!("/admin/apps/{id}/delete"),
        encoded(&[("csrf", &csrf)]),
    )
    .await
    .unwrap();
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert!(
        hub.hub
            .client_registry()
            .clients()
            .await
            .unwrap()
            .is_empty()
    );
    hub.stop().await;
}

/// A grant is a session: codes, which cost no password, cannot open more
/// sessions than `sessions.max_open_per_user`.
#[tokio::test(flavor = "multi_thread")]
async fn code_exchanges_are_bounded_by_the_open_sessions_a_user_may_have() {
    let mut setup = hub_testkit::TestSetup::new(&[Service::RestAuth]);
    setup.config.sessions.max_open_per_user = 3;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = client(&hub, "bounded", true, false).await;
    // sign_up's login and the console's sign-in: two sessions open.
    let cookies = signed_in(&base, "bounded").await;
    let exchange = |code: String| {
        let (base, app, secret) = (base.clone(), app.clone(), secret.clone());
        async move { exchange(&base, &app, &secret, &code).await }
    };
    let (status, body) = exchange(code(&base, &cookies, &app).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = exchange(code(&base, &cookies, &app).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("open sessions"),
        "{body}"
    );
    hub.stop().await;
}

/// A client that registered EdDSA gets Ed25519-signed ID tokens, with the
/// kid of a key in the JWKS; logout takes them as hints too.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_may_ask_for_eddsa_id_tokens() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "edwards".into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![BYE.into()],
            first_party: true,
            id_token_alg: hub_core::IdTokenAlg::EdDsa,
            ..NewClient::default()
        })
        .await
        .unwrap();
    let secret = secret.unwrap().shown().to_owned();
    let cookies = signed_in(&base, "edwards").await;
    let code = code(&base, &cookies, &app).await;
    let (status, tokens) = exchange(&base, &app, &secret, &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(id_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], hub.keys.kid.as_str());
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let out = browser()
        .get(format!(
            "{base}/oauth2/logout?{}",
            query(&[
                ("id_token_hint", &id_token),
                ("post_logout_redirect_uri", BYE)
            ])
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&out), BYE);
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);
    hub.stop().await;
}

/// Deleting a client ends its grants: their access tokens stop at once.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_client_ends_its_grants() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = client(&hub, "doomed", true, false).await;
    let cookies = signed_in(&base, "doomeduser").await;
    let code = code(&base, &cookies, &app).await;
    let (_, tokens) = exchange(&base, &app, &secret, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(profile(&base, &access).await, StatusCode::OK);
    hub.hub
        .client_registry()
        .delete_client(&app.id)
        .await
        .unwrap();
    assert_eq!(profile(&base, &access).await, StatusCode::UNAUTHORIZED);
    // The browser's own session is not the app's: it stays.
    let page = browser()
        .get(format!("{base}/account"))
        .header(header::COOKIE, &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    hub.stop().await;
}

/// Two refreshes with one token at once: exactly one rotates it; the other
/// is reuse, which ends the grant (the winner's new token too).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_with_one_token_rotate_it_once() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = hub.url(Service::RestAuth);
    let (app, secret) = client(&hub, "racer", true, false).await;
    let cookies = signed_in(&base, "racer").await;
    let code = code(&base, &cookies, &app).await;
    let (_, tokens) = exchange(&base, &app, &secret, &code).await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let once = || {
        let (base, app, secret, refresh) =
            (base.clone(), app.clone(), secret.clone(), refresh.clone());
        tokio::spawn(async move {
            token(
                &base,
                &app,
                &secret,
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await
        })
    };
    let (a, b) = (once(), once());
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let ok: Vec<&(StatusCode, Value)> = [&a, &b]
        .into_iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .collect();
    assert_eq!(ok.len(), 1, "{a:?} {b:?}");
    let winner = ok[0].1["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = token(
        &base,
        &app,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &winner)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the reuse ended the grant");
    hub.stop().await;
}

//! Second factors through the whole wiring, with codes computed by pyotp
//! (an authenticator app's library no one here wrote): an authenticator
//! set up over REST, the sign-in's second step on REST, the console and
//! OpenID Connect's authorization, SOAP's refusal of a password alone, the
//! refusals (a replayed code, a used recovery code, a used ticket, a
//! ticket's and an account's wrong-code budgets) and an admin's reset.

use std::process::Command;

use hub::Service;
use hub_core::{GrantType, NewClient};
use hub_testkit::console::{encoded, form_csrf, session_cookies, set_cookie};
use hub_testkit::soap::{Soap, TEXT_XML, V11, lookup_op};
use hub_testkit::{TestHub, TestSetup, sign_up, venv_bin};
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";

/// pyotp's codes for `secret` at each offset (seconds from now).
fn codes(secret: &str, offsets: &[i64]) -> Vec<String> {
    let script = format!("{}/tests/clients/totp.py", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec![script, secret.to_owned()];
    args.extend(offsets.iter().map(i64::to_string));
    let out = Command::new(venv_bin("python"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A code of the step after the current one: accepted (one step of skew)
/// and later than any taken so far this step.
fn next_code(secret: &str) -> String {
    codes(secret, &[30]).remove(0)
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

async fn call(
    http: &Client,
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn login(http: &Client, rest: &str, name: &str) -> (StatusCode, Value) {
    call(
        http,
        reqwest::Method::POST,
        format!("{rest}/login"),
        None,
        Some(json!({"username": name, "password": PASSWORD})),
    )
    .await
}

/// The ticket of a sign-in that must take its second step.
async fn ticket(http: &Client, rest: &str, name: &str) -> String {
    let (status, body) = login(http, rest, name).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "MFA_REQUIRED", "{body}");
    body["mfa"]["ticket"].as_str().unwrap().to_owned()
}

async fn second_step(http: &Client, rest: &str, ticket: &str, code: &str) -> (StatusCode, Value) {
    call(
        http,
        reqwest::Method::POST,
        format!("{rest}/login/mfa"),
        None,
        Some(json!({"ticket": ticket, "code": code})),
    )
    .await
}

/// The console's sign-in with the password, as a browser: the CSRF secret
/// it holds, and the page answered (the second step's, for an account with
/// a factor).
async fn console_password(
    browser: &Client,
    rest: &str,
    name: &str,
    next: Option<&str>,
) -> (String, String) {
    let url = match next {
        Some(next) => format!("{rest}/account/signin?{}", encoded(&[("next", next)])),
        None => format!("{rest}/account/signin"),
    };
    let page = browser.get(url).send().await.unwrap();
    let csrf_cookie = set_cookie(&page, "polyhub_csrf").unwrap();
    let csrf = form_csrf(&page.text().await.unwrap(), "/account/signin");
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("login", name),
        ("password", PASSWORD),
    ];
    if let Some(next) = next {
        fields.push(("next", next));
    }
    let answer = browser
        .post(format!("{rest}/account/signin"))
        .header(header::ORIGIN, rest)
        .header(header::COOKIE, format!("polyhub_csrf={csrf_cookie}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&fields))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(
        set_cookie(&answer, "polyhub_session").is_none(),
        "no session before the second step"
    );
    (csrf_cookie, answer.text().await.unwrap())
}

/// The value of the hidden field `name` in `page`.
fn hidden(page: &str, name: &str) -> String {
    page.split(&format!("name=\"{name}\" value=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        .to_owned()
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Sets up an authenticator for the holder of `bearer`: its secret and
/// the recovery codes.
async fn enrol(http: &Client, rest: &str, bearer: &str) -> (String, Vec<String>) {
    let post = reqwest::Method::POST;
    let (status, setup) = call(
        http,
        post.clone(),
        format!("{rest}/mfa/totp"),
        Some(bearer),
        Some(json!({"current_password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let confirm = |code: String| {
        call(
            http,
            post.clone(),
            format!("{rest}/mfa/totp/confirm"),
            Some(bearer),
            Some(json!({ "code": code })),
        )
    };
    let now = codes(&secret, &[0]).remove(0);
    let (status, refused) = confirm(wrong(&now)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(code_of(&refused), "INVALID_MFA_CODE");
    let (status, confirmed) = confirm(now).await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    let recovery: Vec<String> =
        serde_json::from_value(confirmed["recovery_codes"].clone()).unwrap();
    (secret, recovery)
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_and_recovery_codes_on_every_entry_point() {
    let hub = TestHub::with(&[Service::RestAuth, Service::SoapLookup]).await;
    let rest = hub.url(Service::RestAuth);
    let http = Client::new();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let alice = sign_up(&rest, "alice", PASSWORD).await;
    let bearer = alice["token"].as_str().unwrap().to_owned();

    // Nothing yet: no factor, and no recovery codes without one.
    let (status, factors) = call(
        &http,
        get.clone(),
        format!("{rest}/mfa"),
        Some(&bearer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        factors,
        json!({"totp": false, "passkeys": 0, "recovery_codes_left": 0, "factors": []})
    );
    let (status, refused) = call(
        &http,
        post.clone(),
        format!("{rest}/mfa/recovery-codes"),
        Some(&bearer),
        Some(json!({"current_password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::BAD_REQUEST, "INVALID_REQUEST")
    );

    // Changing factors takes the password, not only a token.
    let (status, refused) = call(
        &http,
        post.clone(),
        format!("{rest}/mfa/totp"),
        Some(&bearer),
        Some(json!({"current_password": "not the password"})),
    )
    .await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );
    // The authenticator: the app's URI names the issuer and the account.
    let (status, setup) = call(
        &http,
        post.clone(),
        format!("{rest}/mfa/totp"),
        Some(&bearer),
        Some(json!({"current_password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let uri = setup["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/polyhub:alice?secret="),
        "{uri}"
    );
    assert!(uri.contains("&algorithm=SHA1&digits=6&period=30"), "{uri}");
    let (secret, recovery) = enrol(&http, &rest, &bearer).await;
    assert_eq!(recovery.len(), 10);
    let distinct: std::collections::HashSet<_> = recovery.iter().collect();
    assert_eq!(distinct.len(), 10);
    let (status, refused) = call(
        &http,
        post.clone(),
        format!("{rest}/mfa/totp"),
        Some(&bearer),
        Some(json!({"current_password": PASSWORD})),
    )
    .await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::CONFLICT, "TOTP_ALREADY_ENABLED")
    );
    let (_, factors) = call(
        &http,
        get.clone(),
        format!("{rest}/mfa"),
        Some(&bearer),
        None,
    )
    .await;
    assert_eq!(
        factors,
        json!({"totp": true, "passkeys": 0, "recovery_codes_left": 10, "factors": ["totp", "recovery_code"]})
    );

    // A password alone: MFA_REQUIRED with a ticket naming the factors; a
    // wrong password gets no ticket.
    let (status, step) = login(&http, &rest, "alice").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{step}");
    assert_eq!(code_of(&step), "MFA_REQUIRED");
    assert_eq!(step["mfa"]["factors"], json!(["totp", "recovery_code"]));
    assert_eq!(step["mfa"]["enrol"], false);
    assert!(step["mfa"]["expires_in"].as_u64().unwrap() <= 300);
    let (status, refused) = call(
        &http,
        post.clone(),
        format!("{rest}/login"),
        None,
        Some(json!({"username": "alice", "password": "wrong wrong wrong"})),
    )
    .await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );
    assert!(refused.get("mfa").is_none());

    // The code taken at setup is not taken again; a later one is, once.
    let ticket1 = step["mfa"]["ticket"].as_str().unwrap().to_owned();
    let setup_code = codes(&secret, &[0]).remove(0);
    let (status, refused) = second_step(&http, &rest, &ticket1, &setup_code).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_CODE"),
        "a replay"
    );
    let later = next_code(&secret);
    let (status, signed_in) = second_step(&http, &rest, &ticket1, &later).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    let token = signed_in["token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &http,
        get.clone(),
        format!("{rest}/profile"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = second_step(&http, &rest, &ticket1, &later).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_TICKET"),
        "a used ticket"
    );
    let (status, refused) = second_step(&http, &rest, "no-such-ticket", &later).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_TICKET")
    );

    // A TOTP code replayed on a new ticket; a recovery code, once.
    let ticket2 = ticket(&http, &rest, "alice").await;
    let (status, refused) = second_step(&http, &rest, &ticket2, &later).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_CODE")
    );
    let (status, signed_in) =
        second_step(&http, &rest, &ticket2, &recovery[0].to_uppercase()).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    let ticket3 = ticket(&http, &rest, "alice").await;
    let (status, refused) = second_step(&http, &rest, &ticket3, &recovery[0]).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_CODE"),
        "a used recovery code"
    );
    let (_, factors) = call(
        &http,
        get.clone(),
        format!("{rest}/mfa"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(factors["recovery_codes_left"], 9);

    // SOAP's UsernameToken carries a password only: a clear fault.
    let soap = Soap::new(&hub);
    let envelope = format!(
        "<e:Envelope xmlns:e=\"{V11}\" xmlns:wsse=\"{WSSE}\"><e:Header>\
         <wsse:Security e:mustUnderstand=\"1\"><wsse:UsernameToken><wsse:Username>alice</wsse:Username>\
         <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">{PASSWORD}</wsse:Password>\
         </wsse:UsernameToken></wsse:Security></e:Header><e:Body>{}</e:Body></e:Envelope>",
        lookup_op("alice")
    );
    let (status, fault) = soap.post(&soap.lookup, TEXT_XML, envelope).await;
    assert_ne!(status, StatusCode::OK, "{fault}");
    assert!(fault.contains("MFA_REQUIRED"), "{fault}");
    assert!(fault.contains("BinarySecurityToken"), "{fault}");

    // The console: the password, then the step's page, then a recovery code.
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (csrf_cookie, page) = console_password(&browser, &rest, "alice", None).await;
    assert!(page.contains("Second step"), "{page}");
    let console_ticket = hidden(&page, "ticket");
    let csrf = form_csrf(&page, "/account/signin/mfa");
    let step = |code: String| {
        browser
            .post(format!("{rest}/account/signin/mfa"))
            .header(header::ORIGIN, &rest)
            .header(header::COOKIE, format!("polyhub_csrf={csrf_cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&[
                ("csrf", &csrf),
                ("ticket", &console_ticket),
                ("code", &code),
            ]))
            .send()
    };
    let refused = step(recovery[0].clone()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.text().await.unwrap().contains("INVALID_MFA_CODE"));
    let done = step(recovery[1].clone()).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let cookies = session_cookies(&done);
    let security = browser
        .get(format!("{rest}/account/security"))
        .header(header::COOKIE, &cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(security.status(), StatusCode::OK);
    let security = security.text().await.unwrap();
    assert!(security.contains("8 unused"), "{security}");
    assert!(
        !security.contains(&secret),
        "the secret is never shown again"
    );

    // A ticket dies after five wrong codes; the account's budget (ten
    // per 15 minutes) refuses even a right code once spent.
    // Spent so far: the wrong code at setup, two replays, a used recovery
    // code on REST and one in the console: five.
    let dead = ticket(&http, &rest, "alice").await;
    for _ in 0..5 {
        let (status, _) = second_step(&http, &rest, &dead, "000000").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, refused) = second_step(&http, &rest, &dead, &recovery[2]).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_TICKET")
    );
    let last = ticket(&http, &rest, "alice").await;
    let answer = http
        .post(format!("{rest}/login/mfa"))
        .json(&json!({"ticket": last, "code": recovery[2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers().contains_key(header::RETRY_AFTER));

    // An admin sees the factors, never a secret, and resets them: every
    // session of the user ends, and the password alone signs in again.
    sign_up(&rest, "root", PASSWORD).await;
    hub.hub
        .administration()
        .set_role("root", hub_core::Role::Admin)
        .await
        .unwrap();
    let (_, root) = login(&http, &rest, "root").await;
    let root = root["token"].as_str().unwrap().to_owned();
    let (_, profile) = call(
        &http,
        get.clone(),
        format!("{rest}/profile"),
        Some(&token),
        None,
    )
    .await;
    let id = profile["id"].as_str().unwrap().to_owned();
    let (status, refused) = call(
        &http,
        get.clone(),
        format!("{rest}/admin/users/{id}/factors"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::FORBIDDEN, "FORBIDDEN")
    );
    let (status, seen) = call(
        &http,
        get.clone(),
        format!("{rest}/admin/users/{id}/factors"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["totp"], true);
    assert!(!seen.to_string().contains(&secret));
    let (status, _) = call(
        &http,
        reqwest::Method::DELETE,
        format!("{rest}/admin/users/{id}/factors"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &http,
        get.clone(),
        format!("{rest}/profile"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the reset ended every session"
    );
    let (status, signed_in) = login(&http, &rest, "alice").await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_set_up_a_factor_before_their_first_session_when_required() {
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.auth.require_mfa_for_admins = true;
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let http = Client::new();
    sign_up(&rest, "boss", PASSWORD).await;
    hub.hub
        .administration()
        .set_role("boss", hub_core::Role::Admin)
        .await
        .unwrap();

    let (status, step) = login(&http, &rest, "boss").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{step}");
    assert_eq!(step["mfa"]["enrol"], true);
    assert_eq!(step["mfa"]["factors"], json!(["totp"]));
    let ticket = step["mfa"]["ticket"].as_str().unwrap().to_owned();
    let (status, setup) = call(
        &http,
        reqwest::Method::POST,
        format!("{rest}/login/mfa/totp"),
        None,
        Some(json!({ "ticket": ticket })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let now = codes(&secret, &[0]).remove(0);
    let (status, refused) = second_step(&http, &rest, &ticket, &wrong(&now)).await;
    assert_eq!(
        (status, code_of(&refused)),
        (StatusCode::UNAUTHORIZED, "INVALID_MFA_CODE")
    );
    let (status, signed_in) = second_step(&http, &rest, &ticket, &now).await;
    assert_eq!(status, StatusCode::OK, "{signed_in}");
    assert_eq!(signed_in["recovery_codes"].as_array().unwrap().len(), 10);

    // From now on the authenticator is asked for, as for anyone with one;
    // an ordinary user is not asked to set one up.
    let (status, step) = login(&http, &rest, "boss").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(step["mfa"]["enrol"], false);
    sign_up(&rest, "staff", PASSWORD).await;

    // OpenID Connect's authorization goes through the same step.
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (app, _) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "dashboard".into(),
            redirect_uris: vec![REDIRECT.into()],
            first_party: true,
            public: true,
            grant_types: vec![GrantType::AuthorizationCode],
            scopes: vec!["openid".into(), "profile".into()],
            ..NewClient::default()
        })
        .await
        .unwrap();
    let authorize = format!(
        "/oauth2/authorize?{}",
        encoded(&[
            ("response_type", "code"),
            ("client_id", app.id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", "openid profile"),
            ("state", "s1"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
            ),
            ("code_challenge_method", "S256"),
        ])
    );
    let answer = browser
        .get(format!("{rest}{authorize}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let to = answer.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(to.starts_with("/account/signin?next="), "{to}");
    let next = authorize.as_str();
    let (csrf_cookie, page) = console_password(&browser, &rest, "boss", Some(next)).await;
    assert!(page.contains("action=\"/account/signin/mfa\""), "{page}");
    assert!(
        page.contains("name=\"next\""),
        "the step keeps where to go on: {page}"
    );
    let ticket = hidden(&page, "ticket");
    let csrf = form_csrf(&page, "/account/signin/mfa");
    let done = browser
        .post(format!("{rest}/account/signin/mfa"))
        .header(header::ORIGIN, &rest)
        .header(header::COOKIE, format!("polyhub_csrf={csrf_cookie}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &next_code(&secret)),
            ("next", next),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[header::LOCATION], next);
    // Back at the authorization, signed in: the app gets its code.
    let coded = browser
        .get(format!("{rest}{next}"))
        .header(header::COOKIE, session_cookies(&done))
        .send()
        .await
        .unwrap();
    assert_eq!(coded.status(), StatusCode::SEE_OTHER);
    let to = coded.headers()[header::LOCATION].to_str().unwrap();
    assert!(to.starts_with(REDIRECT) && to.contains("code="), "{to}");
    let (status, _) = login(&http, &rest, "staff").await;
    assert_eq!(status, StatusCode::OK);
    hub.stop().await;
}

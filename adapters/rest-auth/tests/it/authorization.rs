//! Authorization reads current state: a withdrawn admin is refused at once,
//! and a device token counts only while the account remembers its device.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hub_core::Role;
use hub_testkit::{Service, TestHub, TestSetup};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SERVICES: &[Service] = &[Service::RestAuth];
const PASSWORD: &str = "correct horse battery";

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value, Option<String>) {
    let resp = request.send().await.unwrap();
    let status = resp.status();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, cookie)
}

async fn register(client: &Client, base: &str, name: &str) {
    let (status, body, _) = call(client.post(format!("{base}/register")).json(&json!({
        "username": name, "email": format!("{name}@example.com"), "password": PASSWORD
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A login, with the device token `device` in its cookie when given: the
/// answer, and the device token the answer sets.
async fn login(
    client: &Client,
    base: &str,
    name: &str,
    password: &str,
    device: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = client
        .post(format!("{base}/login"))
        .json(&json!({"username": name, "password": password}));
    if let Some(device) = device {
        request = request.header("cookie", format!("polyhub_device={device}"));
    }
    let (status, body, cookie) = call(request).await;
    let device = cookie.map(|c| {
        c.strip_prefix("polyhub_device=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_owned()
    });
    (status, body, device)
}

fn device_id(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap();
    claims["dev"].clone()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Finding: a withdrawn admin's token still imported users, and a fresh
/// login of theirs was still admin. Now the withdrawal revokes their
/// sessions (401 at once), and a new login is a plain user (403).
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_admin_is_refused_at_once_over_rest() {
    let hub = TestHub::with(SERVICES).await;
    let (client, base) = (Client::new(), hub.url(Service::RestAuth));
    register(&client, &base, "bea").await;
    register(&client, &base, "root").await;
    let admin = hub.hub.administration();
    // root stays an admin: the last one's role cannot be withdrawn.
    admin.set_role("root", Role::Admin).await.unwrap();
    admin.set_role("bea", Role::Admin).await.unwrap();
    let (status, body, _) = login(&client, &base, "bea", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let import = |token: &str| {
        client
            .post(format!("{base}/admin/users/import?dry_run=true"))
            .bearer_auth(token)
            .json(&json!([]))
    };
    let (status, body, _) = call(import(&token)).await;
    assert_eq!(status, StatusCode::OK, "an admin imports: {body}");

    admin.set_role("bea", Role::User).await.unwrap();
    let (status, body, _) = call(import(&token)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_TOKEN"),
        "the token of the old role died with the change: {body}"
    );
    let (status, body, _) = login(&client, &base, "bea", PASSWORD, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body, _) = call(import(&token)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "FORBIDDEN"),
        "{body}"
    );
    hub.stop().await;
}

/// Findings: device tokens minted before a password change still spent
/// their own budgets past the account's lockout, and every login minted a
/// fresh budget. Now a password change forgets every device, a device
/// shown at login keeps its id, and an account keeps at most
/// `max_devices_per_user` devices.
#[tokio::test(flavor = "multi_thread")]
async fn device_tokens_die_with_the_password_and_are_bounded() {
    let mut setup = TestSetup::new(SERVICES);
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_user_burst = 4;
    limits.per_user_replenish_ms = 600_000;
    limits.per_device_burst = 3;
    limits.per_device_replenish_ms = 600_000;
    limits.max_devices_per_user = 2;
    let hub = setup.start().await;
    let (client, base) = (Client::new(), hub.url(Service::RestAuth));
    register(&client, &base, "olga").await;

    // Three logins from three new devices (three of the account's four
    // attempts): only the two newest stay known.
    let mut devices = Vec::new();
    let mut token = String::new();
    for _ in 0..3 {
        let (status, body, device) = login(&client, &base, "olga", PASSWORD, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        token = body["token"].as_str().unwrap().to_owned();
        devices.push(device.expect("a login sets a device token"));
    }
    // A known device shown at login keeps its id (and its budget).
    let (status, body, renewed) = login(&client, &base, "olga", PASSWORD, Some(&devices[2])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(device_id(&renewed.unwrap()), device_id(&devices[2]));

    // The account's last attempt, then its lockout.
    let (status, body, _) = login(&client, &base, "olga", "guess guess", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );
    let (status, body, _) = login(&client, &base, "olga", "guess guess", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_ATTEMPTS")
    );
    // The oldest device was forgotten: it counts as unknown.
    let (status, body, _) = login(&client, &base, "olga", "guess guess", Some(&devices[0])).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_ATTEMPTS")
    );
    // A remembered one still has its own budget.
    let (status, body, _) = login(&client, &base, "olga", "guess guess", Some(&devices[1])).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS")
    );

    // The password changes: every device token minted before is worthless.
    let (status, body, _) = call(
        client
            .put(format!("{base}/profile"))
            .bearer_auth(&token)
            .json(&json!({"current_password": PASSWORD, "new_password": "battery staple horse"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for device in &devices[1..] {
        for password in ["guess guess", "battery staple horse"] {
            let (status, body, _) = login(&client, &base, "olga", password, Some(device)).await;
            assert_eq!(
                (status, code(&body)),
                (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_ATTEMPTS"),
                "a device token from before the password change: {body}"
            );
        }
    }
    hub.stop().await;
}

/// Review finding: `POST /admin/users/import` read and parsed its whole
/// body (up to `import.max_body_bytes`) before checking the caller was an
/// admin, and any user's token passes the gateway's edge auth. A
/// non-admin is refused before the body is read: here a body that is
/// promised and never sent gets its 403 at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_admins_import_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let hub = TestHub::with(SERVICES).await;
    let (client, base) = (Client::new(), hub.url(Service::RestAuth));
    register(&client, &base, "walt").await;
    let (_, body, _) = login(&client, &base, "walt", PASSWORD, None).await;
    let token = body["token"].as_str().unwrap().to_owned();
    let address = base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /admin/users/import HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n[{{\"username\":"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("an answer while the body is still owed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("FORBIDDEN"), "{answer}");
    hub.stop().await;
}

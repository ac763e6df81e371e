//! Getting back in by mail, through a real SMTP server (aiosmtpd, which no
//! one here wrote) that receives every mail the hub sends; the test follows
//! the links in them. "Forgot password?" answers the same for an unknown
//! address; a reset link works once and not after it expired, and signs
//! every device out; a new address becomes the account's only through the
//! link mailed to it; a sign-in from a new device is noticed by mail; and
//! after a restart no mail goes out twice.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hub::Service;
use hub_runtime::config::SmtpSecurityConfig;
use hub_testkit::console::{encoded, form_csrf, set_cookie};
use hub_testkit::{TestSetup, sign_up, venv_bin};
use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};
use sqlx::Connection as _;

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "a brand new passphrase";

/// aiosmtpd on a free port, keeping mails in a file; stopped when dropped.
struct Sink {
    child: Child,
    mailbox: std::path::PathBuf,
    port: u16,
}

impl Sink {
    fn start() -> Self {
        let mailbox =
            std::env::temp_dir().join(format!("polyhub-mail-{}.jsonl", uuid::Uuid::now_v7()));
        let script = format!("{}/tests/clients/smtp_sink.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(venv_bin("python"))
            .arg(script)
            .arg(&mailbox)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port from the sink: {line:?}"));
        Self {
            child,
            mailbox,
            port,
        }
    }

    fn mails(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.mailbox)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The mails to `to` whose subject has `subject`, once there are `count`
    /// (ten seconds at most).
    async fn wait_for(&self, to: &str, subject: &str, count: usize) -> Vec<Value> {
        for _ in 0..200 {
            let found: Vec<Value> = self
                .mails()
                .into_iter()
                .filter(|m| {
                    m["to"] == json!([to]) && m["subject"].as_str().unwrap().contains(subject)
                })
                .collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail {subject:?} to {to}: {:#?}", self.mails());
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.mailbox);
    }
}

/// The `token` of the link in `mail`'s body that opens `path`.
fn link_token(mail: &Value, path: &str) -> String {
    let body = mail["body"].as_str().unwrap();
    let at = body
        .find(&format!("{path}?token="))
        .unwrap_or_else(|| panic!("no {path} link in {body}"));
    body[at + path.len() + 7..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn setup(sink: &Sink) -> TestSetup {
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.smtp.host = Some("127.0.0.1".into());
    setup.config.smtp.port = sink.port;
    setup.config.smtp.security = SmtpSecurityConfig::None;
    setup.config.smtp.from = "polyhub <no-reply@polyhub.test>".into();
    setup
}

#[tokio::test(flavor = "multi_thread")]
async fn users_get_back_in_by_mail_and_each_mail_goes_out_once() {
    let sink = Sink::start();
    let setup = setup(&sink);
    let config = setup.config.clone();
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let http = Client::new();
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A first sign-in is from a device the account did not know: a notice.
    let signed_up = sign_up(&rest, "alice", PASSWORD).await;
    let old_token = signed_up["token"].as_str().unwrap().to_owned();
    let notice = sink.wait_for("alice@example.com", "New sign-in", 1).await;
    assert!(
        notice[0]["body"].as_str().unwrap().contains("127.0.0.1"),
        "{notice:?}"
    );
    assert_eq!(notice[0]["from"], "no-reply@polyhub.test");

    // "Forgot password?": the same answer for an address that is no one's.
    let forgot = |email: &'static str| {
        let http = http.clone();
        let rest = rest.clone();
        async move {
            let answer = http
                .post(format!("{rest}/password/forgot"))
                .json(&json!({ "email": email }))
                .send()
                .await
                .unwrap();
            (answer.status(), answer.text().await.unwrap())
        }
    };
    let known = forgot("alice@example.com").await;
    let unknown = forgot("nobody@example.com").await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(
        known, unknown,
        "the same answer whether the address is anyone's"
    );
    let reset_mail = sink
        .wait_for("alice@example.com", "Reset your polyhub password", 1)
        .await;
    let token = link_token(&reset_mail[0], "/account/reset");

    // The link's page, then its form, in the console.
    let page = browser
        .get(format!("{rest}/account/reset?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf_cookie = set_cookie(&page, "polyhub_csrf").unwrap();
    let page = page.text().await.unwrap();
    let csrf = form_csrf(&page, "/account/reset");
    let post_reset = |password: &'static str| {
        browser
            .post(format!("{rest}/account/reset"))
            .header(header::ORIGIN, &rest)
            .header(header::COOKIE, format!("polyhub_csrf={csrf_cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&[
                ("csrf", &csrf),
                ("token", &token),
                ("new_password", password),
            ]))
            .send()
    };
    let weak = post_reset("short").await.unwrap();
    assert_eq!(weak.status(), StatusCode::BAD_REQUEST);
    assert!(weak.text().await.unwrap().contains("WEAK_PASSWORD"));
    let done = post_reset(NEW_PASSWORD).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[header::LOCATION], "/account/signin?reset=1");
    // Every session ended with it; the new password signs in.
    let profile = http
        .get(format!("{rest}/profile"))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::UNAUTHORIZED);
    let login = |password: &'static str| {
        http.post(format!("{rest}/login"))
            .json(&json!({"username": "alice", "password": password}))
            .send()
    };
    assert_eq!(
        login(PASSWORD).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let signed_in: Value = login(NEW_PASSWORD).await.unwrap().json().await.unwrap();
    let bearer = signed_in["token"].as_str().unwrap().to_owned();

    // A link works once.
    let reset = |token: String| {
        http.post(format!("{rest}/password/reset"))
            .json(&json!({"token": token, "new_password": "yet another passphrase"}))
            .send()
    };
    let reused = reset(token.clone()).await.unwrap();
    assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["error"]["code"],
        "INVALID_LINK"
    );

    // An expired link: a new one, aged past its 30 minutes in the database.
    forgot("alice@example.com").await;
    let mails = sink
        .wait_for("alice@example.com", "Reset your polyhub password", 2)
        .await;
    let second = link_token(&mails[1], "/account/reset");
    let mut db = sqlx::PgConnection::connect(config.database.url.expose())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let expired = reset(second).await.unwrap();
    assert_eq!(expired.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        expired.json::<Value>().await.unwrap()["error"]["code"],
        "INVALID_LINK"
    );
    // No secret is kept: only hashes of 32 bytes.
    let kept: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_hash FROM password_resets")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(
        kept.iter()
            .all(|h| h.len() == 32 && !String::from_utf8_lossy(h).contains(&token))
    );

    // A new address: mailed a link, and the account's only once followed.
    let changed: Value = http
        .put(format!("{rest}/profile"))
        .bearer_auth(&bearer)
        .json(&json!({"email": "alice@new.example", "current_password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(changed["email"], "alice@example.com", "{changed}");
    assert_eq!(changed["email_pending"], "alice@new.example");
    let verify_mail = sink
        .wait_for("alice@new.example", "Confirm your new polyhub address", 1)
        .await;
    let verify = link_token(&verify_mail[0], "/account/verify-email");
    let verified: Value = http
        .post(format!("{rest}/email/verify"))
        .json(&json!({ "token": verify }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["email"], "alice@new.example", "{verified}");
    let again = http
        .post(format!("{rest}/email/verify"))
        .json(&json!({ "token": verify }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    // Every mail once, and none more after a restart on the same database.
    let before = sink.mails();
    let ids: std::collections::HashSet<&str> = before
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), before.len(), "{before:#?}");
    assert!(
        before
            .iter()
            .all(|m| m["to"] != json!(["nobody@example.com"]))
    );
    let keys = hub.stop().await;
    let mut again = TestSetup::new(&[Service::RestAuth]).with_keys(keys);
    again.config = config;
    let hub = again.start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.mails().len(),
        before.len(),
        "a restart sent mail again"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mail_off_the_pages_say_so() {
    let hub = TestSetup::new(&[Service::RestAuth]).start().await;
    let rest = hub.url(Service::RestAuth);
    let answer = Client::new()
        .post(format!("{rest}/password/forgot"))
        .json(&json!({"email": "alice@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"]["code"],
        "MAIL_DISABLED"
    );
    let page = Client::new()
        .get(format!("{rest}/account/forgot"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("This server sends no mail"), "{page}");
    hub.stop().await;
}

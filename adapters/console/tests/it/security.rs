//! The console as an attacker tries it: an upload form that never ends its
//! token, a notice written into the address, the CSRF secret looked for in
//! a page, a form from another scheme, and a user whose name is a REST
//! route's.

use std::time::Duration;

use hub_testkit::{Service, TestHub};
use reqwest::{StatusCode, header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pages::{
    PASSWORD, SERVICES, client, encoded, form_csrf, register, session_cookies, set_cookie, sign_in,
};

const BOUNDARY: &str = "polyhub-test-boundary";

/// A multipart part's head: its delimiter and headers.
fn part(name: &str, extra: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n")
}

/// The head of an upload to the images page, as a browser signed in with
/// `session` sends it, for a body of `length` bytes.
fn upload_head(base: &str, session: &str, length: usize) -> String {
    let host = base.trim_start_matches("http://");
    format!(
        "POST /account/images HTTP/1.1\r\nHost: {host}\r\nOrigin: {base}\r\nCookie: {session}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// The status and body of a whole HTTP/1.1 answer in `bytes`, once they
/// are all there.
fn whole_answer(bytes: &[u8], closed: bool) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(length) if body.len() >= length => Some((status, body.to_owned())),
        _ if closed => Some((status, body.to_owned())),
        _ => None,
    }
}

/// Sends `head` and the `start` of a body that `head` says is longer, and
/// keeps the rest owed: the answer that comes meanwhile, or `None` if none
/// came within `within` (the server is still reading).
async fn answer_before_the_body_ends(
    base: &str,
    head: String,
    start: Vec<u8>,
    within: Duration,
) -> Option<(u16, String)> {
    let stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // Either may fail once the server has answered and closed.
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&start).await;
        // Never the end of the body: the writing half stays open.
        let _open = write;
        std::future::pending::<()>().await;
    });
    let answer = tokio::time::timeout(within, async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(answer) = whole_answer(&bytes, false) {
                return Some(answer);
            }
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return whole_answer(&bytes, true),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten();
    writer.abort();
    answer
}

/// A PNG of noise, larger than what the form may send before its token is
/// checked, so the file's bytes straddle that point.
fn png() -> Vec<u8> {
    let png = hub_testkit::console::noise_png();
    assert!(png.len() > 8 * 1024, "{}", png.len());
    png
}

#[tokio::test]
async fn an_upload_s_token_is_read_within_a_small_bound_and_checked_before_the_file() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "una").await;
    let session = session_cookies(&sign_in(&http, &base, "una", PASSWORD).await);
    let page = http
        .get(format!("{base}/account/images"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = form_csrf(&page, "/account/images");

    let mib = 1024 * 1024;
    let file_head = part("file", "; filename=\"a.png\"\r\nContent-Type: image/png");
    // Each with the reason it is refused for.
    let attempts: [(&str, Vec<u8>, &str); 5] = [
        (
            "a token field of several MiB",
            [part("csrf", "").into_bytes(), vec![b'A'; mib]].concat(),
            "longer than any token",
        ),
        (
            "a token field whose headers never end",
            [
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"; x=\"")
                    .into_bytes(),
                vec![b'a'; mib],
            ]
            .concat(),
            "within its first 4 KiB",
        ),
        (
            "a preamble that never ends",
            vec![b'p'; mib],
            "within its first 4 KiB",
        ),
        (
            "a wrong token, then the file",
            [
                part("csrf", "").into_bytes(),
                vec![b'A'; 43],
                b"\r\n".to_vec(),
                file_head.clone().into_bytes(),
                vec![0; 256 * 1024],
            ]
            .concat(),
            "not this session's",
        ),
        (
            "the file before the token",
            [file_head.clone().into_bytes(), vec![0; 256 * 1024]].concat(),
            "without its CSRF token",
        ),
    ];
    for (why, start, reason) in attempts {
        // The body promises 6 MiB (within the upload's limit) and never
        // sends them: only a server that stops reading early answers.
        let answer = answer_before_the_body_ends(
            &base,
            upload_head(&base, &session, 6 * mib),
            start,
            Duration::from_secs(5),
        )
        .await;
        let (status, body) = answer.unwrap_or_else(|| {
            panic!("{why}: no answer while the body was still owed (the form was read on)")
        });
        assert_eq!(status, 403, "{why}: {body}");
        assert!(body.contains("FORBIDDEN"), "{why}: {body}");
        assert!(body.contains(reason), "{why}: {body}");
    }

    // The user's own form still goes through: the token, then the file.
    let body = [
        part("csrf", "").into_bytes(),
        token.into_bytes(),
        b"\r\n".to_vec(),
        file_head.into_bytes(),
        png(),
        format!("\r\n--{BOUNDARY}--\r\n").into_bytes(),
    ]
    .concat();
    let stored = http
        .post(format!("{base}/account/images"))
        .header(header::ORIGIN, &base)
        .header(header::COOKIE, &session)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::SEE_OTHER);
    assert_eq!(stored.headers()[header::LOCATION], "/account/images?done=1");
    let page = http
        .get(format!("{base}/account/images"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page.matches("Public link").count(), 1, "{page}");
}

#[tokio::test]
async fn the_sign_in_page_s_notice_never_comes_from_the_address() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    let page = http
        .get(format!("{base}/account/signup"))
        .send()
        .await
        .unwrap();
    let secret = set_cookie(&page, "polyhub_csrf").unwrap();
    let csrf = form_csrf(&page.text().await.unwrap(), "/account/signup");
    let created = http
        .post(format!("{base}/account/signup"))
        .header(header::ORIGIN, &base)
        .header(header::COOKIE, format!("polyhub_csrf={secret}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[
            ("csrf", csrf.as_str()),
            ("username", "vera"),
            ("email", "vera@example.com"),
            ("password", PASSWORD),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::SEE_OTHER);
    let to = created.headers()[header::LOCATION].to_str().unwrap();
    assert_eq!(to, "/account/signin?created=1");
    let shown = http
        .get(format!("{base}{to}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        shown.contains("role=\"status\"") && shown.contains("Account created"),
        "{shown}"
    );

    let spoof = "Your password has expired: call +1 555 0100 to renew it";
    for query in ["created", "signed_out"] {
        let page = http
            .get(format!(
                "{base}/account/signin?{}",
                encoded(&[(query, spoof)])
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let page = page.text().await.unwrap();
        assert!(!page.contains("555 0100"), "{query}: {page}");
        assert!(!page.contains("role=\"status\""), "{query}: {page}");
    }
}

#[tokio::test]
async fn a_signed_in_browser_s_csrf_secret_is_in_no_page() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "wren").await;
    let signed_in = sign_in(&http, &base, "wren", PASSWORD).await;
    let secret = set_cookie(&signed_in, "polyhub_csrf").unwrap();
    let session = session_cookies(&signed_in);
    for page in [
        "/account/signin",
        "/account/signin?signed_out=1",
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
        // The secret stays the browser's: no page replaces it (the
        // session's forms in other tabs still post).
        let kept = set_cookie(&answer, "polyhub_csrf");
        let body = answer.text().await.unwrap();
        assert!(!body.contains(&secret), "{page} holds the CSRF secret");
        assert!(kept.is_none_or(|kept| kept == secret), "{page}");
    }

    // The sign-in form such a browser is shown still posts, and only with
    // the page's token.
    let page = http
        .get(format!("{base}/account/signin"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = form_csrf(&page, "/account/signin");
    let post = |csrf: String| {
        http.post(format!("{base}/account/signin"))
            .header(header::ORIGIN, &base)
            .header(header::COOKIE, &session)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&[
                ("csrf", csrf.as_str()),
                ("login", "wren"),
                ("password", PASSWORD),
            ]))
            .send()
    };
    let other = http
        .get(format!("{base}/account/signin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forged = post(form_csrf(&other, "/account/signin")).await.unwrap();
    assert_eq!(
        forged.status(),
        StatusCode::FORBIDDEN,
        "another browser's token"
    );
    let again = post(token).await.unwrap();
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(again.headers()[header::LOCATION], "/account");
}

#[tokio::test]
async fn a_form_s_origin_must_name_the_scheme_the_browser_used() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "xena").await;
    let session = session_cookies(&sign_in(&http, &base, "xena", PASSWORD).await);
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
    let https = base.replacen("http://", "https://", 1);
    let post = |origin: &str, proto: Option<&str>, email: &str| {
        let mut request = http
            .post(format!("{base}/account/email"))
            .header(header::ORIGIN, origin)
            .header(header::COOKIE, &session)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(encoded(&[
                ("csrf", csrf.as_str()),
                ("email", email),
                ("email_current_password", PASSWORD),
            ]));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        request.send()
    };
    for (why, origin, proto) in [
        ("https to the plain-HTTP listener", https.as_str(), None),
        (
            "http where the gateway took https",
            base.as_str(),
            Some("https"),
        ),
        ("a scheme no gateway names", base.as_str(), Some("gopher")),
    ] {
        let answer = post(origin, proto, "forged@example.com").await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{why}");
    }
    let direct = post(&base, None, "xena.http@example.com").await.unwrap();
    assert_eq!(direct.status(), StatusCode::SEE_OTHER, "this origin");
    let behind_tls = post(&https, Some("https"), "xena.https@example.com")
        .await
        .unwrap();
    assert_eq!(
        behind_tls.status(),
        StatusCode::SEE_OTHER,
        "through a gateway that took https"
    );
}

/// The `href` of the link whose text is `text` in `page`.
fn link(page: &str, text: &str) -> String {
    let end = page.find(&format!(">{text}</a>")).unwrap();
    let start = page[..end].rfind("href=\"").unwrap() + 6;
    page[start..start + page[start..].find('"').unwrap()].to_owned()
}

/// The `action` of the form in `page` whose action ends with `tail`.
fn action(page: &str, tail: &str) -> String {
    let end = page.find(&format!("{tail}\"")).unwrap() + tail.len();
    let start = page[..end].rfind("action=\"").unwrap() + 8;
    page[start..end].to_owned()
}

#[tokio::test]
async fn an_admin_opens_and_promotes_a_user_named_import() {
    let hub = TestHub::with(SERVICES).await;
    let base = hub.url(Service::RestAuth);
    let http = client();
    register(&http, &base, "root").await;
    register(&http, &base, "import").await;
    hub.hub
        .administration()
        .set_role("root", hub_core::Role::Admin)
        .await
        .unwrap();
    let session = session_cookies(&sign_in(&http, &base, "root", PASSWORD).await);
    let get = |path: String| {
        http.get(format!("{base}{path}"))
            .header(header::COOKIE, &session)
            .send()
    };
    let users = get("/admin/users?q=import".to_owned())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let user_page = link(&users, "import");
    let page = get(user_page.clone()).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "{user_page}");
    let page = page.text().await.unwrap();
    assert!(page.contains("User import"), "{page}");
    let role = action(&page, "/role");
    let promoted = http
        .post(format!("{base}{role}"))
        .header(header::ORIGIN, &base)
        .header(header::COOKIE, &session)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[
            ("csrf", form_csrf(&page, &role).as_str()),
            ("role", "admin"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.status(), StatusCode::SEE_OTHER, "{role}");
    let to = promoted.headers()[header::LOCATION].to_str().unwrap();
    assert!(to.starts_with(&user_page), "{to}");
    let after = get(to.to_owned()).await.unwrap().text().await.unwrap();
    assert!(after.contains("Role changed."), "{after}");
    assert!(after.contains("<dd>admin</dd>"), "{after}");

    // The REST import keeps its address.
    let token = http
        .post(format!("{base}/login"))
        .json(&json!({"username": "root", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let imported = http
        .post(format!("{base}/admin/users/import?dry_run=true"))
        .bearer_auth(token)
        .json(&json!([{
            "username": "imported",
            "email": "imported@example.com",
            "password_hash": "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
        }]))
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::OK);
}

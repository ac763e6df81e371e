//! The account console by hand, as a browser drives it: url-encoded forms,
//! the cookies an answer sets, a form's CSRF field, signing in, and an image
//! to upload. One copy for the console's tests and the hub's.

use reqwest::{Client, Response, header};

/// A form body, url-encoded.
pub fn encoded(fields: &[(&str, &str)]) -> String {
    let escape = |raw: &str| -> String {
        raw.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of cookie `name` that `response` sets.
pub fn set_cookie(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
}

/// The `Cookie` header a browser sends after `signed_in` (the session and
/// its CSRF secret).
pub fn session_cookies(signed_in: &Response) -> String {
    format!(
        "polyhub_session={}; polyhub_csrf={}",
        set_cookie(signed_in, "polyhub_session").expect("a session cookie"),
        set_cookie(signed_in, "polyhub_csrf").expect("a CSRF cookie")
    )
}

/// The `csrf` hidden field of the form posting to `action` in `page`.
pub fn form_csrf(page: &str, action: &str) -> String {
    let form = &page[page
        .find(&format!("action=\"{action}\""))
        .unwrap_or_else(|| panic!("no form posting to {action}"))..];
    let start = form.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    let end = form[start..].find('"').expect("the csrf field's end");
    form[start..start + end].to_owned()
}

/// Signs in through the console's form at `base`, as a browser: the answer
/// (303 and the session's cookies when it worked).
pub async fn sign_in(http: &Client, base: &str, name: &str, password: &str) -> Response {
    let page = http
        .get(format!("{base}/account/signin"))
        .send()
        .await
        .expect("the sign-in page");
    let secret = set_cookie(&page, "polyhub_csrf").expect("a CSRF cookie");
    let csrf = form_csrf(&page.text().await.expect("its body"), "/account/signin");
    http.post(format!("{base}/account/signin"))
        .header(header::ORIGIN, base)
        .header(header::COOKIE, format!("polyhub_csrf={secret}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded(&[
            ("csrf", csrf.as_str()),
            ("login", name),
            ("password", password),
        ]))
        .send()
        .await
        .expect("the sign-in post")
}

/// A 64 x 64 PNG of noise: some KiB that no compression shrinks, the same
/// bytes every time.
pub fn noise_png() -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(64, 64, |_, _| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let [r, g, b, _] = seed.to_be_bytes();
        image::Rgb([r, g, b])
    })
    .write_to(&mut bytes, image::ImageFormat::Png)
    .expect("a PNG");
    bytes.into_inner()
}

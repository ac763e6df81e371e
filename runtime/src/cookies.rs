//! Cookies as every HTTP port reads and sets them: reading one from a
//! request, and the device token's cookie, which the JSON login and the
//! account console set alike, so a device that signed in through one is
//! known to the other.

use axum::http::{HeaderMap, HeaderValue, header};
use hub_core::IssuedToken;

/// The device token's cookie (see hub-core's `SignIn`).
pub const DEVICE_COOKIE: &str = "polyhub_device";

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// The `Set-Cookie` that hands `device` to the browser: HttpOnly, so no
/// script reads it; SameSite=Strict, so no other site's request shows it;
/// `Secure` unless `http.secure_cookies` is off; kept as long as the token
/// is valid.
pub fn device_cookie(device: &IssuedToken, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        device.token, device.expires_in
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_among_others_and_headers() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; polyhub_device=xyz"),
        );
        assert_eq!(cookie(&headers, DEVICE_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "theme"), Some("dark"));
        assert_eq!(cookie(&headers, "polyhub"), None);
    }

    #[test]
    fn the_device_cookie_is_httponly_strict_and_secure_unless_off() {
        let token = IssuedToken {
            token: "t0k".into(),
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_in: 86_400,
        };
        let set = device_cookie(&token, true).unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            "polyhub_device=t0k; Path=/; Max-Age=86400; HttpOnly; SameSite=Strict; Secure"
        );
        let plain = device_cookie(&token, false).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
    }
}

//! What stands between a browser and the pages: the session cookie, the
//! CSRF tokens, the origin check on every POST, and the headers every page
//! is sent with.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hub_core::{Error, ErrorCode, Principal, SessionId};
use hub_runtime::cookies::cookie;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ConsoleState;
use crate::pages::{self, Early};

/// The session's token: HttpOnly, SameSite=Strict, so no script and no
/// other site's request carries it.
pub const SESSION_COOKIE: &str = "polyhub_session";
/// The browser's CSRF secret (HttpOnly, SameSite=Strict): every form's
/// token is derived from it, and no page holds it.
pub const CSRF_COOKIE: &str = "polyhub_csrf";

/// Every console page is sent with these: nothing loads but this origin's
/// stylesheet and images, no frame may hold it, no address leaks to
/// another site as a referrer, and nothing personal is cached.
pub(crate) async fn page_headers(policy: HeaderValue, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A page whose forms end at an application (the OpenID Connect steps)
    // set a wider form-action already.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(policy);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends
    // `Origin: null` with the page's own forms, and the origin check needs
    // the real one. Nothing goes to another site either way.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A cookie's header value; `max_age` `Some(0)` removes it.
pub(crate) fn set_cookie(
    state: &ConsoleState,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> Option<HeaderValue> {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let max_age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{max_age}"
    ))
    .ok()
}

/// The CSRF token of a signed-in session: derived from this browser's own
/// random secret (the HttpOnly `polyhub_csrf` cookie, fresh at every
/// sign-in) and the session's id. Bound to the session, needs no storage,
/// the same on every instance behind a gateway, and unchanged when the
/// session's token is renewed, so a page open in another tab still posts.
pub(crate) fn session_csrf(secret: &str, session: SessionId) -> String {
    let mut hash = Sha256::new();
    hash.update(b"polyhub console csrf\0");
    hash.update(secret.as_bytes());
    hash.update(b"\0");
    hash.update(session.as_uuid().as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// The CSRF token of the forms shown before signing in (sign in, sign up):
/// derived from the browser's secret, never the secret itself. A
/// signed-in browser may open those pages too, and its secret is the one
/// its session's tokens come from: a page holds only what a page may leak.
pub(crate) fn form_csrf(secret: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"polyhub console form csrf\0");
    hash.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// A fresh random CSRF secret for a browser's cookie.
pub(crate) fn fresh_csrf() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for a CSRF token: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn equal(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a POST was refused before it was read.
pub(crate) fn refused(why: &str) -> Response {
    tracing::warn!(why, "console form refused");
    pages::problem_page(
        StatusCode::FORBIDDEN,
        &Error::with_message(ErrorCode::Forbidden, why),
    )
}

/// The scheme the browser reached the hub with. The hub's listeners speak
/// plain HTTP, so a request straight from a browser came over `http`; a
/// gateway that terminates TLS says so in `X-Forwarded-Proto` (the bundled
/// nginx sets it from `$scheme`, replacing whatever the client sent; so do
/// Kubernetes ingress controllers). Its first value is the scheme of the
/// proxy nearest the browser; one that is neither `http` nor `https` is
/// `None`, and the form is refused.
///
/// It is believed from any peer, not only from `http.trusted_proxies`:
/// this check stands against a page of another origin making a browser
/// post here, and no page can make a browser send `X-Forwarded-Proto` (it
/// is not CORS-safelisted, and no CORS allow-list of the hub's lets it
/// through); a client that can set it can set `Origin` as well.
/// `http.secure_cookies` says nothing of the scheme: browsers keep Secure
/// cookies over plain HTTP on loopback.
fn request_scheme(headers: &HeaderMap) -> Option<&'static str> {
    let Some(forwarded) = headers.get("x-forwarded-proto") else {
        return Some("http");
    };
    let first = forwarded.to_str().ok()?.split(',').next()?.trim();
    ["http", "https"]
        .into_iter()
        .find(|scheme| first.eq_ignore_ascii_case(scheme))
}

/// The POST comes from a page of this origin: its `Origin` names the
/// scheme the browser used and the host the request was sent to (port
/// included). Without the scheme, a page on `http://host` (which anyone on
/// the path can write) could post to `https://host`. A browser sends
/// `Origin` with every POST; one without it, or from elsewhere, is refused.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Early> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Early::from(refused("the form was posted without an Origin")))?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Early::from(refused("the request names no host")))?;
    let scheme = request_scheme(headers).ok_or_else(|| {
        Early::from(refused(
            "the gateway's X-Forwarded-Proto is neither http nor https",
        ))
    })?;
    let same = origin.split_once("://").is_some_and(|(theirs, authority)| {
        theirs.eq_ignore_ascii_case(scheme) && authority.eq_ignore_ascii_case(host)
    });
    if same {
        Ok(())
    } else {
        Err(refused("the form was posted from another origin").into())
    }
}

/// The form's CSRF token is the one expected.
pub(crate) fn check_csrf(expected: &str, given: Option<&str>) -> Result<(), Early> {
    match given {
        Some(given) if equal(expected, given) => Ok(()),
        Some(_) => Err(refused("the form's CSRF token is not this session's").into()),
        None => Err(refused("the form was posted without its CSRF token").into()),
    }
}

/// A signed-in browser: who it is, and its CSRF secret.
#[derive(Debug)]
pub(crate) struct Signed {
    pub principal: Principal,
    secret: String,
}

impl Signed {
    pub fn csrf(&self) -> String {
        session_csrf(&self.secret, self.principal.session_id)
    }
}

/// A well-formed CSRF secret from the browser's cookie.
fn csrf_secret(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, CSRF_COOKIE).filter(|t| t.len() == 43)
}

/// Back to the sign-in page, forgetting a cookie that no longer works.
fn to_sign_in(state: &ConsoleState) -> Response {
    let mut response = Redirect::to("/account/signin").into_response();
    if let Some(clear) = set_cookie(state, SESSION_COOKIE, "", Some(0)) {
        response.headers_mut().insert(header::SET_COOKIE, clear);
    }
    response
}

/// The signed-in browser, checked as every API request is (signature,
/// claims, an open session); anything else goes to the sign-in page. A
/// browser without its CSRF secret signs in again: its forms could not be
/// told from forged ones.
pub(crate) async fn signed_in(state: &ConsoleState, headers: &HeaderMap) -> Result<Signed, Early> {
    let Some(token) = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return Err(Redirect::to("/account/signin").into_response().into());
    };
    let Some(secret) = csrf_secret(headers) else {
        return Err(to_sign_in(state).into());
    };
    match state.authentication.authenticate(token).await {
        Ok(principal) => Ok(Signed {
            principal,
            secret: secret.to_owned(),
        }),
        Err(e) if e.code() == ErrorCode::InvalidToken => Err(to_sign_in(state).into()),
        Err(e) => Err(e.into()),
    }
}

/// How close to its end a session's token is renewed on a page view.
const RENEW_WITHIN: time::Duration = time::Duration::minutes(10);

/// Keeps a browser's session alive while it is used: a page view (GET)
/// whose token ends within [`RENEW_WITHIN`] slides the session (as
/// `PUT /api/sessions/{id}` does, never past its maximum lifetime) and
/// gets a fresh token in the cookie. Without it a console session would end
/// with its first token, whatever the user was doing.
pub(crate) async fn keep_alive(
    state: axum::extract::State<std::sync::Arc<ConsoleState>>,
    request: Request,
    next: Next,
) -> Response {
    let renewed = match (request.method() == axum::http::Method::GET)
        .then(|| cookie(request.headers(), SESSION_COOKIE))
        .flatten()
        .filter(|t| !t.is_empty())
    {
        Some(token) => renew(&state, token).await,
        None => None,
    };
    let mut response = next.run(request).await;
    if let Some(cookie) = renewed {
        let sets_session = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|v| v.as_bytes().starts_with(SESSION_COOKIE.as_bytes()));
        if !sets_session {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
    response
}

async fn renew(state: &ConsoleState, token: &str) -> Option<HeaderValue> {
    let principal = state.lifecycle.verify(token).await.ok()?;
    if principal.expires_at - state.lifecycle.now() > RENEW_WITHIN {
        return None;
    }
    match state.lifecycle.touch(&principal, principal.user_id).await {
        Ok((_, fresh)) => set_cookie(state, SESSION_COOKIE, &fresh.token, None),
        Err(e) => {
            tracing::debug!(error = %e, "console session not renewed");
            None
        }
    }
}

/// A signed-in POST: from this origin, signed in, with the session's CSRF
/// token.
pub(crate) async fn signed_post(
    state: &ConsoleState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Signed, Early> {
    same_origin(headers)?;
    let signed = signed_in(state, headers).await?;
    check_csrf(&signed.csrf(), csrf)?;
    Ok(signed)
}

/// The browser's CSRF secret, or a fresh one for it: `(secret, fresh)`. A
/// signed-in browser keeps its own, so its session's forms in other tabs
/// still post.
pub(crate) fn browser_secret(headers: &HeaderMap) -> Result<(String, bool), Error> {
    match csrf_secret(headers) {
        Some(secret) => Ok((secret.to_owned(), false)),
        None => fresh_csrf().map(|secret| (secret, true)),
    }
}

/// A POST from a form shown before signing in: from this origin, with the
/// token derived from the `polyhub_csrf` cookie ([`form_csrf`]). A client
/// that reads its own cookie (a script, not a page) may send the secret
/// itself: knowing it is knowing the token, so this opens nothing.
pub(crate) fn anonymous_post(headers: &HeaderMap, csrf: Option<&str>) -> Result<(), Early> {
    same_origin(headers)?;
    let secret = csrf_secret(headers);
    if let (Some(secret), Some(given)) = (secret, csrf)
        && equal(secret, given)
    {
        return Ok(());
    }
    check_csrf(&secret.map(form_csrf).unwrap_or_default(), csrf)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderName;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_post_must_name_this_origin() {
        let ok = headers(&[
            (header::ORIGIN, "http://127.0.0.1:5001"),
            (header::HOST, "127.0.0.1:5001"),
        ]);
        assert!(same_origin(&ok).is_ok());
        let behind_tls = headers(&[
            (header::ORIGIN, "https://hub.example"),
            (header::HOST, "hub.example"),
            (HeaderName::from_static("x-forwarded-proto"), "https"),
        ]);
        assert!(same_origin(&behind_tls).is_ok());
        for bad in [
            headers(&[
                (header::ORIGIN, "https://127.0.0.1:5001"),
                (header::HOST, "127.0.0.1:5001"),
            ]),
            headers(&[
                (header::ORIGIN, "http://hub.example"),
                (header::HOST, "hub.example"),
                (HeaderName::from_static("x-forwarded-proto"), "https"),
            ]),
            headers(&[
                (header::ORIGIN, "https://hub.example"),
                (header::HOST, "hub.example"),
                (HeaderName::from_static("x-forwarded-proto"), "wss"),
            ]),
            headers(&[
                (header::ORIGIN, "127.0.0.1:5001"),
                (header::HOST, "127.0.0.1:5001"),
            ]),
            headers(&[(header::HOST, "127.0.0.1:5001")]),
            headers(&[
                (header::ORIGIN, "http://evil.example"),
                (header::HOST, "127.0.0.1:5001"),
            ]),
            headers(&[
                (header::ORIGIN, "http://127.0.0.1:5002"),
                (header::HOST, "127.0.0.1:5001"),
            ]),
            headers(&[(header::ORIGIN, "null"), (header::HOST, "127.0.0.1:5001")]),
        ] {
            let refused = same_origin(&bad).unwrap_err().into_response();
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn csrf_tokens_are_bound_and_compared_whole() {
        let (one, two) = (SessionId::generate(), SessionId::generate());
        let secret = fresh_csrf().unwrap();
        let a = session_csrf(&secret, one);
        assert_eq!(a, session_csrf(&secret, one));
        assert_ne!(a, session_csrf(&secret, two), "another session");
        assert_ne!(
            a,
            session_csrf(&fresh_csrf().unwrap(), one),
            "another browser"
        );
        assert!(check_csrf(&a, Some(&a)).is_ok());
        assert!(check_csrf(&a, Some(&session_csrf(&secret, two))).is_err());
        assert!(check_csrf(&a, Some(&a[..10])).is_err());
        assert!(check_csrf(&a, None).is_err());
        // No cookie means no token matches, not even an empty one.
        assert!(check_csrf("", Some("")).is_err());
        assert_ne!(fresh_csrf().unwrap(), fresh_csrf().unwrap());
        // The pre-sign-in token is the secret's, and is not the secret.
        assert_eq!(form_csrf(&secret), form_csrf(&secret));
        assert_ne!(form_csrf(&secret), secret);
        assert_ne!(form_csrf(&secret), session_csrf(&secret, one));
    }

    #[test]
    fn a_pre_sign_in_form_proves_it_knows_the_browser_s_secret() {
        let secret = fresh_csrf().unwrap();
        let with = |cookie: Option<&str>| {
            let mut map = headers(&[
                (header::ORIGIN, "http://127.0.0.1:5001"),
                (header::HOST, "127.0.0.1:5001"),
            ]);
            if let Some(cookie) = cookie {
                map.insert(
                    header::COOKIE,
                    HeaderValue::from_str(&format!("{CSRF_COOKIE}={cookie}")).unwrap(),
                );
            }
            map
        };
        let cookie = with(Some(&secret));
        assert!(anonymous_post(&cookie, Some(&form_csrf(&secret))).is_ok());
        assert!(anonymous_post(&cookie, Some(&secret)).is_ok());
        let other = fresh_csrf().unwrap();
        for given in [Some(form_csrf(&other)), Some(String::new()), None] {
            assert!(anonymous_post(&cookie, given.as_deref()).is_err());
        }
        // Without the cookie nothing matches, not the hash of no secret.
        assert!(anonymous_post(&with(None), Some(&form_csrf(""))).is_err());
        assert!(anonymous_post(&with(None), Some("")).is_err());
    }
}

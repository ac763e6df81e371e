//! The account console: polyhub in a browser. Server-rendered pages (maud,
//! compiled with the crate; no script, no build step) for a user under
//! `/account` (sign up, sign in, profile, devices, images) and for an admin
//! under `/admin` (users, their sessions and role, the system's state).
//!
//! It is mounted on rest-auth's port ([`routes`], merged by rest-auth's
//! `router_with`), so it works with or without the gateway, and it depends
//! on no other adapter: it signs in, signs up and changes profiles through
//! hub-core's `SignIn`, the use case the JSON API calls too, so the same
//! limits, the same hashing budgets, the same device cookie and the same
//! error codes hold for both.
//!
//! Browser security: the session's token lives in an HttpOnly,
//! SameSite=Strict cookie (`Secure` unless `http.secure_cookies` is off);
//! every form carries a CSRF token derived from the browser's HttpOnly
//! secret (and bound to the session once signed in), never the secret
//! itself, and every POST must come from this origin, scheme included;
//! every page is sent with a strict Content-Security-Policy, `frame-ancestors
//! 'none'`, no referrer and `Cache-Control: no-store`.

mod account;
mod admin;
mod clients;
mod guard;
mod oidc;
mod pages;
mod passkey;
mod recover;
mod security;
mod upload_form;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post};
use hub_core::{
    Administration, Authentication, ImageLibrary, PublicUrls, SessionLifecycle, SignIn,
};

pub use crate::guard::{CSRF_COOKIE, SESSION_COOKIE};

/// The largest form the console reads, except the upload.
const FORM_MAX_BYTES: usize = 16 * 1024;
/// What the upload form may add around the image itself.
const UPLOAD_FORM_OVERHEAD: usize = 64 * 1024;

/// What the pages need.
#[derive(Clone)]
pub struct ConsoleState {
    /// Who a session cookie's token speaks for, and signing out.
    pub authentication: Authentication,
    /// Sign-in, sign-up and profile changes: the process's one use case,
    /// with the same budgets as the JSON API's.
    pub sign_in: SignIn,
    pub lifecycle: SessionLifecycle,
    pub administration: Administration,
    pub library: ImageLibrary,
    /// Where a stored image is shown from.
    pub urls: PublicUrls,
    /// An upload that sends nothing for this long is ended.
    pub stall_timeout: Duration,
    /// Cookies (the session's, the CSRF secret's, the device token's) carry
    /// `Secure` (off only for plain-HTTP loopback use).
    pub secure_cookies: bool,
    /// Every service and the address its `/ready` is read at, for the
    /// admin's system page.
    pub readiness: Vec<(String, String)>,
    /// The client that reads them (short timeouts).
    pub http: reqwest::Client,
    /// Webhook endpoints, for the admin's page.
    pub webhooks: hub_core::Webhooks,
    /// OpenID Connect's browser steps: authorize, consent, logout, apps.
    pub oidc: hub_core::Oidc,
    /// Registered applications, for admins (`/admin/apps`).
    pub clients: hub_core::ClientRegistry,
    /// The pages' Content-Security-Policy (set by [`routes`]).
    pub policy: String,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState")
            .field("secure_cookies", &self.secure_cookies)
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// The origin images are shown from, for the policy's `img-src`: `'self'`
/// when they are relative, else the scheme and authority of their address.
fn image_origin(urls: &PublicUrls) -> String {
    let sample = urls.url("x");
    match sample.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{authority}")
        }
        None => "'self'".to_owned(),
    }
}

/// The console's routes, to be mounted on rest-auth's router (inside its
/// request ids, tracing, connection limits and CORS).
pub fn routes(state: ConsoleState) -> Router {
    let policy = format!(
        "default-src 'none'; style-src 'self'; img-src 'self' {}; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
        image_origin(&state.urls)
    );
    let mut state = state;
    state.policy.clone_from(&policy);
    let policy = HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let state = Arc::new(state);
    let upload_max = state
        .library
        .limits()
        .max_bytes
        .saturating_add(UPLOAD_FORM_OVERHEAD);
    let pages = Router::new()
        .route("/account", get(account::overview))
        .route(
            "/account/signup",
            get(account::signup_page).post(account::signup),
        )
        .route(
            "/account/signin",
            get(account::signin_page).post(account::signin),
        )
        .route("/account/signin/mfa", post(security::step))
        .route(
            "/account/signin/mfa/passkey-options",
            post(passkey::step_options),
        )
        .route(
            "/account/signin/passkey/options",
            post(passkey::signin_options),
        )
        .route("/account/signin/passkey", post(passkey::signin))
        .route(
            "/account/security/passkeys/options",
            post(passkey::register_options),
        )
        .route("/account/security/passkeys", post(passkey::register))
        .route(
            "/account/security/passkeys/{id}/{action}",
            post(passkey::act),
        )
        .route(
            "/account/forgot",
            get(recover::forgot_page).post(recover::forgot),
        )
        .route(
            "/account/reset",
            get(recover::reset_page).post(recover::reset),
        )
        .route(
            "/account/verify-email",
            get(recover::verify_page).post(recover::verify),
        )
        .route("/account/signout", post(account::signout))
        .route(security::PAGE, get(security::page))
        .route("/account/security/totp", post(security::begin))
        .route("/account/security/totp/confirm", post(security::confirm))
        .route("/account/security/totp/remove", post(security::remove))
        .route(
            "/account/security/recovery-codes",
            post(security::regenerate),
        )
        .route("/account/apps", get(oidc::apps))
        .route("/account/apps/withdraw", post(oidc::withdraw))
        .route(oidc::AUTHORIZE, get(oidc::authorize))
        .route("/oauth2/consent", post(oidc::consent))
        .route("/oauth2/logout", get(oidc::logout))
        .route("/account/email", post(account::change_email))
        .route("/account/password", post(account::change_password))
        .route("/account/devices", get(account::devices))
        .route("/account/devices/signout", post(account::sign_device_out))
        .route(
            "/account/devices/signout-others",
            post(account::sign_others_out),
        )
        .route(
            "/account/images",
            get(account::images)
                .post(account::upload)
                .layer(DefaultBodyLimit::max(upload_max)),
        )
        .route("/admin", get(admin::home))
        .route("/admin/users", get(admin::users))
        // One user's pages share no path with rest-auth's API (see
        // `admin::user_page`).
        .route("/admin/user/{username}", get(admin::user))
        .route(
            "/admin/user/{username}/sessions/revoke",
            post(admin::revoke_sessions),
        )
        .route("/admin/user/{username}/role", post(admin::set_role))
        .route(
            "/admin/user/{username}/factors/reset",
            post(admin::reset_factors),
        )
        .route("/admin/system", get(admin::system))
        .route(webhooks::PAGE, get(webhooks::page).post(webhooks::add))
        .route("/admin/hooks/{id}/{action}", post(webhooks::act))
        .route(clients::PAGE, get(clients::page).post(clients::register))
        .route("/admin/apps/{id}/{action}", post(clients::act))
        .layer(DefaultBodyLimit::max(FORM_MAX_BYTES))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            guard::keep_alive,
        ))
        .layer(middleware::from_fn(move |request, next| {
            guard::page_headers(policy.clone(), request, next)
        }))
        .with_state(state);
    Router::new()
        .route("/account/console.css", get(stylesheet))
        .route(passkey::SCRIPT, get(passkey::script))
        .merge(pages)
}

/// The one stylesheet, compiled in.
async fn stylesheet() -> impl axum::response::IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("console.css"),
    )
}

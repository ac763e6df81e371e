//! A user's pages: sign up, sign in and out, the profile with its email and
//! password forms, the devices signed in, and the images.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hub_core::{
    Credential, Error, ErrorCode, LoginAttempt, LoginName, ProfileChange, RegisterUser, Session,
    SessionId, SignInStep, User,
};
use hub_runtime::HttpError;
use hub_runtime::cookies::{DEVICE_COOKIE, cookie};
use hub_runtime::upload::receive;
use maud::{Markup, html};
use serde::Deserialize;

use crate::guard::{self, CSRF_COOKIE, SESSION_COOKIE, Signed};
use crate::pages::{
    self, Early, Field, Nav, Page, Problem, csrf, field, form_problem, layout, notice, when,
};
use crate::{ConsoleState, upload_form};

/// A form that could not be read at all (not url-encoded, too large).
pub(crate) fn unreadable(rejection: &impl std::fmt::Display) -> Response {
    pages::problem_page(
        StatusCode::BAD_REQUEST,
        &Error::with_message(
            ErrorCode::InvalidRequest,
            format!("the form could not be read: {rejection}"),
        ),
    )
}

/// Reads a form, or answers the page saying why it could not.
pub(crate) fn read<T>(form: Result<Form<T>, FormRejection>) -> Result<T, Early> {
    form.map(|Form(form)| form).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            pages::error_page(&Error::new(ErrorCode::RequestTooLarge)).into()
        } else {
            unreadable(&e).into()
        }
    })
}

/// The signed-in user's record and the navigation for a page.
pub(crate) async fn whoami(state: &ConsoleState, signed: &Signed) -> Result<User, Early> {
    state
        .authentication
        .profile(&signed.principal)
        .await
        .map_err(Early::from)
}

pub(crate) fn nav<'a>(user: &'a User, csrf: &'a str, current: &'a str) -> Nav<'a> {
    Nav {
        username: user.username.as_str(),
        admin: user.role == hub_core::Role::Admin,
        csrf,
        current,
    }
}

fn redirect(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn see_other(to: &str) -> Page {
    Ok(redirect(to))
}

/// `page` with the pre-sign-in CSRF token, derived from the browser's
/// secret: its own if it has a well-formed one (a signed-in browser keeps
/// its session's), else a fresh one set in the cookie. The page holds the
/// token only, never the HttpOnly secret.
pub(crate) fn anonymous_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    status: StatusCode,
    page: impl FnOnce(&str) -> Markup,
) -> Page {
    let (secret, fresh) = guard::browser_secret(headers)?;
    let mut response = (status, page(&guard::form_csrf(&secret))).into_response();
    if fresh && let Some(cookie) = guard::set_cookie(state, CSRF_COOKIE, &secret, None) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

// ---- sign up ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SignupForm {
    csrf: Option<String>,
    username: String,
    email: String,
    password: String,
}

fn signup_field(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidUsername | ErrorCode::UsernameTaken => Some("username"),
        ErrorCode::InvalidEmail | ErrorCode::EmailTaken => Some("email"),
        ErrorCode::WeakPassword => Some("password"),
        _ => None,
    }
}

fn signup_view(token: &str, form: &SignupForm, problem: Option<&Problem>) -> Markup {
    layout(
        "Create an account",
        None,
        html! {
            (form_problem(problem))
            form.card method="post" action="/account/signup" {
                (csrf(token))
                (field(&Field { name: "username", label: "Username", kind: "text", autocomplete: "username",
                    value: Some(&form.username), hint: Some("1 to 256 characters: a-z, 0-9 and . _ - @ + ' ! # ^ ~") }, problem))
                (field(&Field { name: "email", label: "Email", kind: "email", autocomplete: "email",
                    value: Some(&form.email), hint: None }, problem))
                (field(&Field { name: "password", label: "Password", kind: "password", autocomplete: "new-password",
                    value: None, hint: Some("8 to 128 characters, not your username.") }, problem))
                button type="submit" { "Create account" }
            }
            p { "Already have an account? " a href="/account/signin" { "Sign in" } }
        },
    )
}

/// `GET /account/signup`
pub(crate) async fn signup_page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
) -> Page {
    anonymous_page(&state, &headers, StatusCode::OK, |token| {
        signup_view(token, &SignupForm::default(), None)
    })
}

/// `POST /account/signup`: registers, then sends the user to sign in.
pub(crate) async fn signup(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<SignupForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let registered = state
        .sign_in
        .sign_up(
            addr.ip(),
            RegisterUser {
                username: form.username.clone(),
                email: form.email.clone(),
                password: form.password.clone(),
            },
        )
        .await;
    match registered {
        // The notice is the server's own words (see `SigninQuery`).
        Ok(_) => see_other("/account/signin?created=1"),
        Err(e) => {
            let problem = Problem::from_error(e, signup_field);
            anonymous_page(&state, &headers, problem.status, |token| {
                signup_view(token, &form, Some(&problem))
            })
        }
    }
}

// ---- sign in and out ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SigninForm {
    csrf: Option<String>,
    login: String,
    password: String,
    /// Where to continue once signed in: only the OpenID Connect
    /// authorization step ([`crate::oidc::safe_next`]).
    next: Option<String>,
}

/// What the sign-in page was sent to say: flags only, never words. A
/// notice on this origin is believed, so its text is always the server's.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SigninQuery {
    created: Option<String>,
    signed_out: Option<String>,
    reset: Option<String>,
    next: Option<String>,
}

impl SigninQuery {
    fn notice(&self) -> Option<&'static str> {
        let set = |flag: &Option<String>| flag.as_deref() == Some("1");
        if set(&self.created) {
            Some("Account created: sign in with it.")
        } else if set(&self.signed_out) {
            Some("You are signed out.")
        } else if set(&self.reset) {
            Some(
                "Your password is changed, and every device is signed out: sign in with the new one.",
            )
        } else {
            None
        }
    }
}

fn signin_field(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidCredentials => Some("password"),
        _ => None,
    }
}

fn signin_view(
    token: &str,
    login: &str,
    problem: Option<&Problem>,
    note: Option<&str>,
    next: Option<&str>,
    passkeys: bool,
) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            (notice(note))
            @if next.is_some() {
                p.notice { "Sign in to continue to the application." }
            }
            (form_problem(problem))
            form.card method="post" action="/account/signin" {
                (csrf(token))
                @if let Some(next) = next {
                    input type="hidden" name="next" value=(next);
                }
                (field(&Field { name: "login", label: "Username or email", kind: "text", autocomplete: "username",
                    value: Some(login), hint: None }, problem))
                (field(&Field { name: "password", label: "Password", kind: "password", autocomplete: "current-password",
                    value: None, hint: None }, problem))
                button type="submit" { "Sign in" }
            }
            @if passkeys {
                (crate::passkey::signin_form(token, next))
            }
            p { a href="/account/forgot" { "Forgot password?" } }
            p { "New here? " a href="/account/signup" { "Create an account" } }
        },
    )
}

/// `GET /account/signin`
pub(crate) async fn signin_page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<SigninQuery>,
) -> Page {
    let next = crate::oidc::safe_next(query.next.as_deref());
    signin_answer(&state, &headers, StatusCode::OK, next, |token, passkeys| {
        signin_view(token, "", None, query.notice(), next, passkeys)
    })
    .await
}

/// The sign-in page: its policy widened for an OpenID Connect step's
/// application, and for the passkey script when passkeys are on.
async fn signin_answer(
    state: &ConsoleState,
    headers: &HeaderMap,
    status: StatusCode,
    next: Option<&str>,
    view: impl FnOnce(&str, bool) -> Markup,
) -> Page {
    let policy = crate::oidc::next_policy(state, next).await;
    let passkeys = crate::passkey::passkeys(state).is_some();
    let mut page = anonymous_page(state, headers, status, |token| view(token, passkeys))?;
    if let Some(policy) = policy {
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    Ok(if passkeys {
        crate::passkey::scripted(state, page)
    } else {
        page
    })
}

/// `POST /account/signin`: the JSON login's use case, budgets and device
/// cookie included; the session's token goes into the session cookie.
pub(crate) async fn signin(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<SigninForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let login = form.login.trim();
    let name = if login.contains('@') {
        LoginName::Email(login.to_owned())
    } else {
        LoginName::Username(login.to_owned())
    };
    let attempt = LoginAttempt {
        name,
        credential: Credential::Password(form.password),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        device_token: cookie(&headers, DEVICE_COOKIE).map(str::to_owned),
    };
    let next = crate::oidc::safe_next(form.next.as_deref());
    match state.sign_in.sign_in(addr.ip(), attempt).await {
        Ok(SignInStep::Done(signed_in)) => {
            crate::security::signed_in_response(&state, *signed_in, next)
        }
        Ok(SignInStep::SecondFactor(challenge)) => {
            crate::security::step_page(&state, &headers, challenge, None, next).await
        }
        Err(e) => {
            let problem = Problem::from_error(e, signin_field);
            signin_problem(&state, &headers, login, &problem, next).await
        }
    }
}

/// The sign-in page again, saying why it did not go through.
pub(crate) async fn signin_problem(
    state: &ConsoleState,
    headers: &HeaderMap,
    login: &str,
    problem: &Problem,
    next: Option<&str>,
) -> Page {
    signin_answer(state, headers, problem.status, next, |token, passkeys| {
        signin_view(token, login, Some(problem), None, next, passkeys)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

impl CsrfOnly {
    pub(crate) fn csrf(&self) -> Option<&str> {
        self.csrf.as_deref()
    }
}

/// `POST /account/signout`: the session is revoked on the server, so its
/// token is dead everywhere, not only forgotten by this browser.
pub(crate) async fn signout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<CsrfOnly>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    state.authentication.logout(&signed.principal).await?;
    let mut response = redirect("/account/signin?signed_out=1");
    if let Some(clear) = guard::set_cookie(&state, SESSION_COOKIE, "", Some(0)) {
        response.headers_mut().insert(header::SET_COOKIE, clear);
    }
    Ok(response)
}

// ---- profile ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Done {
    done: Option<String>,
    before: Option<String>,
}

/// Which of the profile's forms a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileForm {
    Email,
    Password,
}

fn email_field(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidEmail | ErrorCode::EmailTaken => Some("email"),
        ErrorCode::InvalidCredentials => Some("email_current_password"),
        _ => None,
    }
}

fn password_field(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::WeakPassword => Some("new_password"),
        ErrorCode::InvalidCredentials => Some("current_password"),
        _ => None,
    }
}

/// When `username` (or the caller) was last seen, as a page says it; the
/// page still shows when the tracker's store is away.
pub(crate) async fn last_seen(
    state: &ConsoleState,
    signed: &Signed,
    username: Option<&str>,
) -> String {
    match state
        .lifecycle
        .last_connection(&signed.principal, username)
        .await
    {
        Ok((_, _, Some(last))) => when(last.at),
        Ok((_, _, None)) => "Not recorded yet".to_owned(),
        Err(e) => format!("Not available right now (code {})", e.code()),
    }
}

/// A user's details: the profile's card, and the admin's view of a user.
pub(crate) fn details(user: &User, last: &str) -> Markup {
    html! {
        h2 id="details" { "Details" }
        dl {
            dt { "Username" } dd { (user.username.as_str()) }
            dt { "Email" } dd { (user.email.as_str()) }
            dt { "Role" } dd { (user.role.as_str()) }
            dt { "Member since" } dd { (when(user.created_at)) }
            dt { "Last connection" } dd { (last) }
        }
    }
}

async fn profile_page(
    state: &ConsoleState,
    signed: &Signed,
    note: Option<&str>,
    problem: Option<(ProfileForm, &Problem)>,
) -> Page {
    let user = whoami(state, signed).await?;
    let last = last_seen(state, signed, None).await;
    let token = signed.csrf();
    let for_form = |which| problem.filter(|(w, _)| *w == which).map(|(_, p)| p);
    let status = problem.map_or(StatusCode::OK, |(_, p)| p.status);
    let page = layout(
        "Your account",
        Some(&nav(&user, &token, "/account")),
        html! {
            (notice(note))
            section.card aria-labelledby="details" {
                (details(&user, &last))
            }
            section.card aria-labelledby="change-email" {
                h2 id="change-email" { "Change your email" }
                (form_problem(for_form(ProfileForm::Email)))
                form method="post" action="/account/email" {
                    (csrf(&token))
                    (field(&Field { name: "email", label: "New email", kind: "email", autocomplete: "email",
                        value: None, hint: None }, for_form(ProfileForm::Email)))
                    (field(&Field { name: "email_current_password", label: "Current password", kind: "password",
                        autocomplete: "current-password", value: None, hint: None }, for_form(ProfileForm::Email)))
                    button type="submit" { "Change email" }
                }
            }
            section.card aria-labelledby="change-password" {
                h2 id="change-password" { "Change your password" }
                (form_problem(for_form(ProfileForm::Password)))
                form method="post" action="/account/password" {
                    (csrf(&token))
                    (field(&Field { name: "current_password", label: "Current password", kind: "password",
                        autocomplete: "current-password", value: None, hint: None }, for_form(ProfileForm::Password)))
                    (field(&Field { name: "new_password", label: "New password", kind: "password",
                        autocomplete: "new-password", value: None,
                        hint: Some("8 to 128 characters. Your other devices are signed out.") }, for_form(ProfileForm::Password)))
                    button type="submit" { "Change password" }
                }
            }
        },
    );
    Ok((status, page).into_response())
}

/// `GET /account`
pub(crate) async fn overview(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<Done>,
) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let note = match query.done.as_deref() {
        Some("email") => Some("Your email is changed."),
        Some("verify") => Some(
            "We mailed a link to the new address. Your email changes when you open it (within 30 minutes).",
        ),
        Some("password") => {
            Some("Your password is changed, and your other devices are signed out.")
        }
        _ => None,
    };
    profile_page(&state, &signed, note, None).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct EmailForm {
    csrf: Option<String>,
    email: String,
    email_current_password: String,
}

/// `POST /account/email`
pub(crate) async fn change_email(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<EmailForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let change = ProfileChange {
        email: Some(form.email),
        current_password: Some(form.email_current_password),
        new_password: None,
    };
    change_profile(&state, addr, &signed, change, ProfileForm::Email).await
}

/// A profile form's change through the use case the JSON API calls: on
/// success back to the profile saying so, else the profile with the
/// problem at its form.
async fn change_profile(
    state: &ConsoleState,
    addr: SocketAddr,
    signed: &Signed,
    change: ProfileChange,
    which: ProfileForm,
) -> Page {
    let (done, field_of): (_, fn(ErrorCode) -> Option<&'static str>) = match which {
        ProfileForm::Email => ("/account?done=email", email_field),
        ProfileForm::Password => ("/account?done=password", password_field),
    };
    match state
        .sign_in
        .change_profile(addr.ip(), &signed.principal, change)
        .await
    {
        Ok(changed) if changed.email_pending.is_some() => see_other("/account?done=verify"),
        Ok(_) => see_other(done),
        Err(e) => {
            let problem = Problem::from_error(e, field_of);
            profile_page(state, signed, None, Some((which, &problem))).await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PasswordForm {
    csrf: Option<String>,
    current_password: String,
    new_password: String,
}

/// `POST /account/password`: every other session is revoked with it.
pub(crate) async fn change_password(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<PasswordForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let change = ProfileChange {
        email: None,
        current_password: Some(form.current_password),
        new_password: Some(form.new_password),
    };
    change_profile(&state, addr, &signed, change, ProfileForm::Password).await
}

// ---- devices ----

/// A user agent in a few words: the browser and system it names, or the
/// whole string cut short.
pub(crate) fn device_name(session: &Session) -> String {
    let Some(agent) = session.client.user_agent.as_deref() else {
        return "Unknown client".to_owned();
    };
    let browser = [
        "Edg/",
        "Firefox/",
        "Chrome/",
        "Safari/",
        "curl/",
        "python-requests/",
    ]
    .into_iter()
    .find(|b| agent.contains(b))
    .map(|b| b.trim_end_matches('/'));
    let system = ["Windows", "Android", "iPhone", "Mac OS X", "Linux"]
        .into_iter()
        .find(|s| agent.contains(s));
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_owned(),
        _ => agent.chars().take(60).collect(),
    }
}

/// Every open session of `user`, newest first (pages of the use case's
/// largest size, so a user with many devices sees them all).
pub(crate) async fn open_sessions(
    state: &ConsoleState,
    signed: &Signed,
    user: hub_core::UserId,
) -> Result<Vec<Session>, Error> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .lifecycle
            .list(
                &signed.principal,
                user,
                false,
                hub_core::lifecycle::MAX_PAGE,
                before,
            )
            .await?;
        all.extend(page.sessions);
        match page.next {
            // At most ten pages: past that, the list says how many it shows.
            Some(next) if all.len() < 10 * hub_core::lifecycle::MAX_PAGE as usize => {
                before = Some(next)
            }
            _ => return Ok(all),
        }
    }
}

/// One session as a card, with `action` (a form) beside it.
pub(crate) fn session_card(session: &Session, current: bool, action: Markup) -> Markup {
    html! {
        li.device {
            h3 {
                (device_name(session))
                @if current { " " span.badge { "This device" } }
            }
            dl {
                dt { "Address" } dd { (session.client.ip.map_or("unknown".to_owned(), |ip| ip.to_string())) }
                dt { "Signed in" } dd { (when(session.created_at)) }
                dt { "Last seen" } dd { (when(session.last_seen_at)) }
            }
            (action)
        }
    }
}

/// `GET /account/devices`
pub(crate) async fn devices(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<Done>,
) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let user = whoami(&state, &signed).await?;
    let sessions = open_sessions(&state, &signed, user.id).await?;
    let token = signed.csrf();
    let note = match query.done.as_deref() {
        Some("one") => Some("That device is signed out."),
        Some("others") => Some("Every other device is signed out."),
        _ => None,
    };
    let others = sessions
        .iter()
        .filter(|s| s.id != signed.principal.session_id)
        .count();
    Ok(layout(
        "Devices",
        Some(&nav(&user, &token, "/account/devices")),
        html! {
            (notice(note))
            p { "Signed in on " (sessions.len()) " device" @if sessions.len() != 1 { "s" } "." }
            ul.devices {
                @for session in &sessions {
                    @let current = session.id == signed.principal.session_id;
                    (session_card(session, current, html! {
                        @if !current {
                            form method="post" action="/account/devices/signout" {
                                (csrf(&token))
                                input type="hidden" name="session" value=(session.id.as_uuid());
                                button type="submit" aria-label={ "Sign out " (device_name(session)) ", signed in " (when(session.created_at)) } { "Sign out" }
                            }
                        }
                    }))
                }
            }
            @if others > 0 {
                form method="post" action="/account/devices/signout-others" {
                    (csrf(&token))
                    button.danger type="submit" { "Sign out everywhere else" }
                }
            }
        },
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DeviceForm {
    csrf: Option<String>,
    session: String,
}

/// `POST /account/devices/signout`
pub(crate) async fn sign_device_out(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let id = SessionId::parse(&form.session)?;
    state
        .lifecycle
        .revoke(&signed.principal, signed.principal.user_id, Some(id))
        .await?;
    see_other("/account/devices?done=one")
}

/// `POST /account/devices/signout-others`
pub(crate) async fn sign_others_out(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<CsrfOnly>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let me = signed.principal.user_id;
    let mut revoked = 0;
    for session in open_sessions(&state, &signed, me).await? {
        if session.id != signed.principal.session_id {
            revoked += state
                .lifecycle
                .revoke(&signed.principal, me, Some(session.id))
                .await?;
        }
    }
    tracing::info!(user_id = %me, revoked, "signed out everywhere else from the console");
    see_other("/account/devices?done=others")
}

// ---- images ----

/// The images page's size.
const IMAGES_PAGE: u32 = 24;

fn upload_field(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::EmptyUpload
        | ErrorCode::UnsupportedImageType
        | ErrorCode::CorruptImage
        | ErrorCode::ImageTooManyPixels
        | ErrorCode::ImageTooLarge
        | ErrorCode::SanitizedTooLarge
        | ErrorCode::QuotaExceeded
        | ErrorCode::UploadsInProgress
        | ErrorCode::RequestTimeout => Some("file"),
        _ => None,
    }
}

async fn images_page(
    state: &ConsoleState,
    signed: &Signed,
    before: Option<&str>,
    note: Option<&str>,
    problem: Option<&Problem>,
) -> Page {
    let user = whoami(state, signed).await?;
    let before = before.and_then(|b| uuid::Uuid::parse_str(b).ok());
    let (images, next) = state
        .library
        .list(&signed.principal, None, IMAGES_PAGE, before)
        .await?;
    let token = signed.csrf();
    let limits = state.library.limits();
    let error = problem.filter(|p| p.field == Some("file"));
    let status = problem.map_or(StatusCode::OK, |p| p.status);
    let page = layout(
        "Images",
        Some(&nav(&user, &token, "/account/images")),
        html! {
            (notice(note))
            (form_problem(problem))
            section.card aria-labelledby="upload" {
                h2 id="upload" { "Upload an image" }
                form method="post" action="/account/images" enctype="multipart/form-data" {
                    (csrf(&token))
                    div.field {
                        label for="file" { "Image file" }
                        input id="file" name="file" type="file" required
                            accept="image/png,image/jpeg,image/gif,image/webp"
                            aria-describedby={ "file-hint" @if error.is_some() { " file-error" } }
                            aria-invalid=[error.map(|_| "true")];
                        p.hint id="file-hint" {
                            "PNG, JPEG, GIF or WebP, up to " (limits.max_bytes / (1024 * 1024)) " MiB and "
                            (limits.max_pixels / 1_000_000) " megapixels. Metadata is removed before it is stored."
                        }
                        @if let Some(error) = error {
                            p.error id="file-error" role="alert" {
                                (error.message) " " span.code { "Code " code { (error.code) } }
                            }
                        }
                    }
                    button type="submit" { "Upload" }
                }
            }
            section aria-labelledby="yours" {
                h2 id="yours" { "Your images" }
                @if images.is_empty() {
                    p { "No images yet." }
                } @else {
                    ul.images {
                        @for image in &images {
                            @let url = state.urls.url(&image.key);
                            li {
                                figure {
                                    img src=(url) alt={ "Image uploaded " (when(image.created_at)) }
                                        width=(image.width.min(320)) loading="lazy";
                                    figcaption {
                                        (image.width) "×" (image.height) ", " (size(image.size_bytes)) " · "
                                        a href=(url) { "Public link" }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(next) = next {
                        p { a href={ "/account/images?before=" (next) } { "Older images" } }
                    }
                }
            }
        },
    );
    Ok((status, page).into_response())
}

/// A size as people read it.
fn size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// `GET /account/images`
pub(crate) async fn images(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<Done>,
) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let note = query.done.as_deref().map(|_| "Your image is stored.");
    images_page(&state, &signed, query.before.as_deref(), note, None).await
}

/// `POST /account/images`: a multipart form whose first field is the CSRF
/// token and whose second is the file. The token is read within a few KiB
/// of the body and checked, and one of the user's uploads in progress
/// taken, before a byte of the file is read (`upload_form`). The file then
/// goes through the HTTP upload's own path: the size cap the moment it is
/// passed, the stall timeout, sanitizing and the quota.
pub(crate) async fn upload(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    request: Request,
) -> Page {
    guard::same_origin(&headers)?;
    let signed = guard::signed_in(&state, &headers).await?;
    let (mut multipart, gate) = upload_form::read(request).await?;
    let token = upload_form::token(&mut multipart, &gate).await?;
    guard::check_csrf(&signed.csrf(), Some(&token))?;
    let stored = async {
        let slot = state.library.begin_upload(&signed.principal)?;
        gate.open();
        let field = match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("file") => field,
            Ok(_) => return Err(HttpError::from(Error::new(ErrorCode::EmptyUpload))),
            Err(e) => {
                return Err(Error::with_message(
                    ErrorCode::InvalidRequest,
                    format!("the form could not be read: {e}"),
                )
                .into());
            }
        };
        let buffer = receive(field, state.library.new_upload(), state.stall_timeout).await?;
        let image = state.library.upload(&signed.principal, buffer).await?;
        drop(slot);
        Ok(image)
    }
    .await;
    match stored {
        Ok(_) => see_other("/account/images?done=1"),
        Err(e) => {
            let problem = Problem::new(&e, upload_field);
            images_page(&state, &signed, None, None, Some(&problem)).await
        }
    }
}

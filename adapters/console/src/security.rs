//! Second factors in the browser: the sign-in's second step, and the
//! Security page where a user sets up an authenticator app, makes recovery
//! codes and removes the app. The rules are hub-core's
//! ([`hub_core::Factors`], [`hub_core::SignIn::complete`]); the QR code is
//! drawn here, as inline SVG (no script, no image request).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use hub_core::factors::{Answer, TotpEnrolment};
use hub_core::{Challenge, Error, ErrorCode, Factors, SecondStep, SignedIn};
use hub_runtime::cookies::{DEVICE_COOKIE, cookie, device_cookie};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::account::{nav, read, whoami};
use crate::guard::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::pages::{Field, Page, Problem, csrf, field, form_problem, layout, notice};

/// The page of the Security settings.
pub(crate) const PAGE: &str = "/account/security";

fn factors(state: &ConsoleState) -> Result<&Factors, Error> {
    state.sign_in.factors().ok_or_else(|| {
        Error::with_message(ErrorCode::NotFound, "second factors are not configured")
    })
}

/// `uri` as a QR code, inline SVG; nothing when it cannot be drawn (the
/// secret is shown as text beside it anyway).
fn qr(uri: &str) -> Markup {
    let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) else {
        return html! {};
    };
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // The renderer's XML declaration has no place inside HTML.
    let svg = svg.find("<svg").map_or("", |at| &svg[at..]);
    html! {
        figure.qr {
            span role="img" aria-label="QR code of the authenticator's setup address" {
                (PreEscaped(svg))
            }
        }
    }
}

fn enrolment_view(enrolment: &TotpEnrolment) -> Markup {
    html! {
        ol {
            li { "Open your authenticator app and scan this code." }
            li { "Or type in this key: " code.secret { (enrolment.secret) } }
            li { "Enter the six-digit code the app shows." }
        }
        (qr(&enrolment.uri))
    }
}

/// What the code field takes: the app's code alone, or a recovery code too.
const APP_CODE: &str = "Six digits from your authenticator app";
const ANY_CODE: &str = "Six digits from your authenticator app, or a recovery code";

fn code_field(hint: &str, problem: Option<&Problem>) -> Markup {
    field(
        &Field {
            name: "code",
            label: "Code",
            kind: "text",
            autocomplete: "one-time-code",
            value: None,
            hint: Some(hint),
        },
        problem,
    )
}

fn code_problem(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidMfaCode | ErrorCode::TooManyAttempts => Some("code"),
        _ => None,
    }
}

// ---- the sign-in's second step ----

/// The second step's page: the code field, or, for an account that must
/// set up an authenticator first, the QR code and the field for its first
/// code.
pub(crate) fn step_view(
    token: &str,
    challenge: &Challenge,
    enrolment: Option<&TotpEnrolment>,
    problem: Option<&Problem>,
    next: Option<&str>,
) -> Markup {
    layout(
        "Second step",
        None,
        html! {
            @if challenge.enrol {
                p.notice { "Your account needs an authenticator app before you can sign in." }
            }
            (form_problem(problem))
            @if let Some(enrolment) = enrolment {
                (enrolment_view(enrolment))
            }
            form.card method="post" action="/account/signin/mfa" {
                (csrf(token))
                input type="hidden" name="ticket" value=(challenge.ticket);
                @if let Some(next) = next {
                    input type="hidden" name="next" value=(next);
                }
                (code_field(if challenge.enrol { APP_CODE } else { ANY_CODE }, problem))
                button type="submit" { "Continue" }
            }
            @if challenge.factors.contains(&"passkey") {
                (crate::passkey::step_form(token, &challenge.ticket, next))
            }
            @if !challenge.enrol {
                p { "Lost your authenticator? Enter one of your recovery codes instead." }
            }
            p { a href="/account/signin" { "Start again" } }
        },
    )
}

/// The answer to a sign-in that needs its second step.
pub(crate) async fn step_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    challenge: Challenge,
    problem: Option<&Problem>,
    next: Option<&str>,
) -> Page {
    let enrolment = if challenge.enrol {
        Some(state.sign_in.enrol(&challenge.ticket).await?)
    } else {
        None
    };
    let status = problem.map_or(StatusCode::OK, |p| p.status);
    let with_passkey = challenge.factors.contains(&"passkey");
    let page = crate::account::anonymous_page(state, headers, status, |token| {
        step_view(token, &challenge, enrolment.as_ref(), problem, next)
    })?;
    Ok(if with_passkey {
        crate::passkey::scripted(state, page)
    } else {
        page
    })
}

/// Cookies for a completed sign-in, and the way on.
pub(crate) fn signed_in_response(
    state: &ConsoleState,
    signed_in: SignedIn,
    next: Option<&str>,
) -> Page {
    // The session's cookie ends with the browser: the server decides how
    // long the session lives (renewed while used, see
    // `guard::keep_alive`). A fresh CSRF secret for the new session.
    let secret = guard::fresh_csrf()?;
    let mut response = crate::oidc::after_sign_in(next);
    let cookies = response.headers_mut();
    for cookie in [
        guard::set_cookie(state, SESSION_COOKIE, &signed_in.outcome.token.token, None),
        guard::set_cookie(state, CSRF_COOKIE, &secret, None),
    ]
    .into_iter()
    .flatten()
    {
        cookies.append(header::SET_COOKIE, cookie);
    }
    if let Some(device) = signed_in
        .device_token
        .and_then(|device| device_cookie(&device, state.secure_cookies))
    {
        cookies.append(header::SET_COOKIE, device);
    }
    Ok(response)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct StepForm {
    csrf: Option<String>,
    ticket: String,
    code: String,
    /// A passkey's answer instead of a code (filled in by the script).
    ceremony: String,
    credential: String,
    next: Option<String>,
}

/// `POST /account/signin/mfa`
pub(crate) async fn step(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<StepForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let next = crate::oidc::safe_next(form.next.as_deref());
    let answer = if form.credential.is_empty() {
        Answer::Code(form.code)
    } else {
        match crate::passkey::ceremony_of(&form.ceremony, &form.credential) {
            Ok(ceremony) => Answer::Passkey {
                ceremony,
                answer: form.credential,
            },
            Err(e) => Answer::Passkey {
                ceremony: uuid::Uuid::nil(),
                answer: e.to_string(),
            },
        }
    };
    let attempt = SecondStep {
        ticket: form.ticket.clone(),
        answer,
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        device_token: cookie(&headers, DEVICE_COOKIE).map(str::to_owned),
    };
    match state.sign_in.complete(addr.ip(), attempt).await {
        Ok(done) => {
            let mut response = signed_in_response(&state, done.signed_in, next)?;
            if let Some(codes) = done.recovery_codes {
                // The first factor was set up at this step: its codes are
                // shown once, before going on.
                let go_on = next.unwrap_or("/account");
                let cookies: Vec<_> = response
                    .headers()
                    .get_all(header::SET_COOKIE)
                    .iter()
                    .cloned()
                    .collect();
                response = codes_page(&codes, go_on).into_response();
                for cookie in cookies {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
            }
            Ok(response)
        }
        Err(e) if e.code() == ErrorCode::InvalidMfaTicket => {
            // Nothing to continue: back to the password.
            let problem = Problem::from_error(e, |_| None);
            crate::account::signin_problem(&state, &headers, "", &problem, next).await
        }
        Err(e) => {
            let problem = Problem::from_error(e, code_problem);
            match factors(&state)?.challenge_again(&form.ticket).await {
                Ok(challenge) => step_page(&state, &headers, challenge, Some(&problem), next).await,
                // The wrong code was the ticket's last try.
                Err(dead) => {
                    let problem = Problem::from_error(dead, |_| None);
                    crate::account::signin_problem(&state, &headers, "", &problem, next).await
                }
            }
        }
    }
}

/// Recovery codes, shown once.
fn codes_page(codes: &[String], go_on: &str) -> Markup {
    layout(
        "Recovery codes",
        None,
        html! {
            (codes_view(codes))
            p { a href=(go_on) { "Continue" } }
        },
    )
}

fn codes_view(codes: &[String]) -> Markup {
    html! {
        p.notice { "Save these recovery codes somewhere safe. Each one signs you in once if you lose your authenticator. They are shown only now." }
        ul.codes aria-label="Recovery codes" {
            @for code in codes {
                li { code { (code) } }
            }
        }
    }
}

// ---- the Security page ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SecurityQuery {
    done: Option<String>,
}

/// `GET /account/security`
pub(crate) async fn page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<SecurityQuery>,
) -> Page {
    let note = match query.done.as_deref() {
        Some("removed") => {
            Some("The authenticator app is removed, and your recovery codes with it.")
        }
        _ => None,
    };
    security_page(&state, &headers, note, None, None, None).await
}

/// The Security page, with what the last action showed: a setup in
/// progress, new recovery codes, or a problem.
async fn security_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    note: Option<&str>,
    enrolment: Option<&TotpEnrolment>,
    codes: Option<&[String]>,
    problem: Option<&Problem>,
) -> Page {
    let signed = guard::signed_in(state, headers).await?;
    let user = whoami(state, &signed).await?;
    let factors = factors(state)?;
    let summary = factors.summary(user.id).await?;
    let pending = match enrolment {
        Some(_) => None,
        None if !summary.totp => factors.pending(&user).await?,
        None => None,
    };
    let enrolment = enrolment.or(pending.as_ref());
    let passkeys = match crate::passkey::passkeys(state) {
        Some(passkeys) => Some(passkeys.list(user.id).await?),
        None => None,
    };
    let token = signed.csrf();
    let status = problem.map_or(StatusCode::OK, |p| p.status);
    let markup = layout(
        "Security",
        Some(&nav(&user, &token, PAGE)),
        html! {
            (notice(note))
            (form_problem(problem))
            @if let Some(codes) = codes {
                (codes_view(codes))
            }
            section aria-labelledby="totp" {
                h2 #totp { "Authenticator app" }
                @if summary.totp {
                    p { "On. Signing in asks for a code from your app after your password." }
                    form.card method="post" action="/account/security/totp/remove" {
                        (csrf(&token))
                        (password_field("remove_password", problem))
                        (code_field(APP_CODE, problem))
                        button type="submit" { "Remove the authenticator app" }
                    }
                } @else if let Some(enrolment) = enrolment {
                    (enrolment_view(enrolment))
                    form.card method="post" action="/account/security/totp/confirm" {
                        (csrf(&token))
                        (code_field(APP_CODE, problem))
                        button type="submit" { "Turn on" }
                    }
                } @else {
                    p { "Off. With an authenticator app, a stolen password is not enough to sign in." }
                    form.card method="post" action="/account/security/totp" {
                        (csrf(&token))
                        (password_field("setup_password", problem))
                        button type="submit" { "Set up an authenticator app" }
                    }
                }
            }
            @if let Some(list) = &passkeys {
                (crate::passkey::security_section(&token, list))
            }
            section aria-labelledby="recovery" {
                h2 #recovery { "Recovery codes" }
                @if summary.any() {
                    p { (summary.recovery_codes_left) " unused." }
                    form.card method="post" action="/account/security/recovery-codes" {
                        (csrf(&token))
                        (password_field("codes_password", problem))
                        button type="submit" { "Make new recovery codes" }
                    }
                } @else {
                    p { "Made when you set up an authenticator app or a passkey." }
                }
            }
        },
    );
    let page = (status, markup).into_response();
    Ok(if passkeys.is_some() {
        crate::passkey::scripted(state, page)
    } else {
        page
    })
}

/// The Security page after an action elsewhere (a passkey's), saying so.
pub(crate) async fn after(
    state: &ConsoleState,
    headers: &HeaderMap,
    note: &str,
    codes: Option<&[String]>,
) -> Page {
    security_page(state, headers, Some(note), None, codes, None).await
}

/// The Security page with a refusal.
pub(crate) async fn refused(state: &ConsoleState, headers: &HeaderMap, error: Error) -> Page {
    let problem = Problem::from_error(error, |_| None);
    security_page(state, headers, None, None, None, Some(&problem)).await
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct CodeForm {
    csrf: Option<String>,
    code: String,
    /// Each form names its password field apart (one page holds two).
    #[serde(
        alias = "setup_password",
        alias = "remove_password",
        alias = "codes_password"
    )]
    current_password: Option<String>,
}

impl std::fmt::Debug for CodeForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeForm(<redacted>)")
    }
}

/// Where a refusal of a form that changes factors goes: the password's
/// field (`field`), the code's, or above the form.
fn placed(code: ErrorCode, field: &'static str) -> Option<&'static str> {
    match code {
        ErrorCode::InvalidCredentials => Some(field),
        ErrorCode::InvalidMfaCode => Some("code"),
        _ => None,
    }
}

/// The current password's field: what a change of factors asks for, so
/// a stolen session alone cannot make one.
fn password_field(name: &'static str, problem: Option<&Problem>) -> Markup {
    field(
        &Field {
            name,
            label: "Current password",
            kind: "password",
            autocomplete: "current-password",
            value: None,
            hint: None,
        },
        problem,
    )
}

/// The signed-in user of a form that changes factors, once its current
/// password checks out (within the current-password budgets).
async fn proven(
    state: &ConsoleState,
    addr: SocketAddr,
    signed: &guard::Signed,
    password: Option<String>,
) -> Result<hub_core::User, Error> {
    state
        .sign_in
        .confirm_password(addr.ip(), &signed.principal, password)
        .await
}

/// `POST /account/security/totp`: a new secret awaiting its first code.
pub(crate) async fn begin(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let result = match proven(&state, addr, &signed, form.current_password).await {
        Ok(user) => factors(&state)?.begin_totp(&user).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(enrolment) => security_page(&state, &headers, None, Some(&enrolment), None, None).await,
        Err(e) => {
            let problem = Problem::from_error(e, |c| placed(c, "setup_password"));
            security_page(&state, &headers, None, None, None, Some(&problem)).await
        }
    }
}

/// `POST /account/security/totp/confirm`
pub(crate) async fn confirm(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let result = factors(&state)?
        .confirm(
            signed.principal.user_id,
            &form.code,
            Some(signed.principal.session_id),
        )
        .await;
    match result {
        Ok(codes) => {
            let note = "The authenticator app is on. Your other devices are signed out.";
            security_page(&state, &headers, Some(note), None, codes.as_deref(), None).await
        }
        Err(e) => {
            let problem = Problem::from_error(e, code_problem);
            security_page(&state, &headers, None, None, None, Some(&problem)).await
        }
    }
}

/// `POST /account/security/totp/remove`: proven with the password and a
/// current code from the app.
pub(crate) async fn remove(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let result = match proven(&state, addr, &signed, form.current_password).await {
        Ok(user) => factors(&state)?.remove_totp(user.id, &form.code).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            Ok(axum::response::Redirect::to("/account/security?done=removed").into_response())
        }
        Err(e) => {
            let problem = Problem::from_error(e, |c| placed(c, "remove_password"));
            security_page(&state, &headers, None, None, None, Some(&problem)).await
        }
    }
}

/// `POST /account/security/recovery-codes`: ten new codes, shown once.
pub(crate) async fn regenerate(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let result = match proven(&state, addr, &signed, form.current_password).await {
        Ok(user) => factors(&state)?.regenerate_recovery_codes(user.id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(codes) => {
            let note = "New recovery codes; the earlier ones no longer work.";
            security_page(&state, &headers, Some(note), None, Some(&codes), None).await
        }
        Err(e) => {
            let problem = Problem::from_error(e, |c| placed(c, "codes_password"));
            security_page(&state, &headers, None, None, None, Some(&problem)).await
        }
    }
}

impl std::fmt::Debug for StepForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepForm(<redacted>)")
    }
}

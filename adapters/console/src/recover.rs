//! Getting back in by mail: "Forgot password?", the reset link's page, and
//! the page of a link that verifies a new address. The rules are
//! hub-core's ([`hub_core::recovery::Recovery`]); with mail off, the pages
//! say so.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use hub_core::ErrorCode;
use maud::{Markup, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::account::{anonymous_page, read};
use crate::guard;
use crate::pages::{Field, Page, Problem, csrf, field, form_problem, layout, notice};

const MAIL_OFF: &str =
    "This server sends no mail, so a password cannot be reset by mail here. Ask an operator.";

fn mail_on(state: &ConsoleState) -> bool {
    state.sign_in.recovery().is_some_and(|r| r.mail_on())
}

fn forgot_view(token: &str, on: bool, sent: bool, problem: Option<&Problem>) -> Markup {
    layout(
        "Forgot password",
        None,
        html! {
            @if !on {
                p.notice { (MAIL_OFF) }
            } @else if sent {
                p.notice role="status" { "If an account has this address, a link to reset its password is on its way. It works once, for 30 minutes." }
            } @else {
                (form_problem(problem))
                form.card method="post" action="/account/forgot" {
                    (csrf(token))
                    (field(&Field { name: "email", label: "Your account's email", kind: "email", autocomplete: "email",
                        value: None, hint: None }, problem))
                    button type="submit" { "Mail me a link" }
                }
            }
            p { a href="/account/signin" { "Back to sign in" } }
        },
    )
}

/// `GET /account/forgot`
pub(crate) async fn forgot_page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
) -> Page {
    let on = mail_on(&state);
    anonymous_page(&state, &headers, StatusCode::OK, |token| {
        forgot_view(token, on, false, None)
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ForgotForm {
    csrf: Option<String>,
    email: String,
}

/// `POST /account/forgot`: the same page whether the address is anyone's.
pub(crate) async fn forgot(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<ForgotForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let on = mail_on(&state);
    match state.sign_in.forgot_password(addr.ip(), &form.email) {
        Ok(()) => anonymous_page(&state, &headers, StatusCode::OK, |token| {
            forgot_view(token, on, true, None)
        }),
        Err(e) => {
            let problem = Problem::from_error(e, |code| {
                (code == ErrorCode::InvalidEmail).then_some("email")
            });
            anonymous_page(&state, &headers, problem.status, |token| {
                forgot_view(token, on, false, Some(&problem))
            })
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LinkQuery {
    token: String,
}

fn reset_view(token: &str, link: &str, problem: Option<&Problem>) -> Markup {
    layout(
        "Choose a new password",
        None,
        html! {
            (form_problem(problem))
            form.card method="post" action="/account/reset" {
                (csrf(token))
                input type="hidden" name="token" value=(link);
                (field(&Field { name: "new_password", label: "New password", kind: "password", autocomplete: "new-password",
                    value: None, hint: Some("8 to 128 characters; every device is signed out") }, problem))
                button type="submit" { "Set the password" }
            }
        },
    )
}

/// `GET /account/reset?token=`: the form; the link is used only by the
/// form's POST (a mail scanner that opens links spends nothing).
pub(crate) async fn reset_page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<LinkQuery>,
) -> Page {
    anonymous_page(&state, &headers, StatusCode::OK, |token| {
        reset_view(token, &query.token, None)
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct ResetForm {
    csrf: Option<String>,
    token: String,
    new_password: String,
}

/// `POST /account/reset`
pub(crate) async fn reset(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let Some(recovery) = state.sign_in.recovery() else {
        return Err(hub_core::Error::new(ErrorCode::MailDisabled).into());
    };
    match recovery.reset(&form.token, &form.new_password).await {
        Ok(()) => Ok(Redirect::to("/account/signin?reset=1").into_response()),
        Err(e) => {
            let problem = Problem::from_error(e, |code| {
                (code == ErrorCode::WeakPassword).then_some("new_password")
            });
            anonymous_page(&state, &headers, problem.status, |token| {
                reset_view(token, &form.token, Some(&problem))
            })
        }
    }
}

fn verify_view(token: &str, link: &str, done: Option<&str>, problem: Option<&Problem>) -> Markup {
    layout(
        "Confirm your address",
        None,
        html! {
            (notice(done))
            (form_problem(problem))
            @if done.is_none() {
                form.card method="post" action="/account/verify-email" {
                    (csrf(token))
                    input type="hidden" name="token" value=(link);
                    button type="submit" { "Confirm the new address" }
                }
            }
            p { a href="/account" { "Your account" } }
        },
    )
}

/// `GET /account/verify-email?token=`
pub(crate) async fn verify_page(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(query): Query<LinkQuery>,
) -> Page {
    anonymous_page(&state, &headers, StatusCode::OK, |token| {
        verify_view(token, &query.token, None, None)
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct VerifyForm {
    csrf: Option<String>,
    token: String,
}

/// `POST /account/verify-email`
pub(crate) async fn verify(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<VerifyForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let Some(recovery) = state.sign_in.recovery() else {
        return Err(hub_core::Error::new(ErrorCode::MailDisabled).into());
    };
    match recovery.verify_email(&form.token).await {
        Ok(user) => {
            let done = format!("{} is your account's address now.", user.email.as_str());
            anonymous_page(&state, &headers, StatusCode::OK, |token| {
                verify_view(token, "", Some(&done), None)
            })
        }
        Err(e) => {
            let problem = Problem::from_error(e, |_| None);
            anonymous_page(&state, &headers, problem.status, |token| {
                verify_view(token, &form.token, None, Some(&problem))
            })
        }
    }
}

impl std::fmt::Debug for ResetForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetForm(<redacted>)")
    }
}

impl std::fmt::Debug for VerifyForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyForm(<redacted>)")
    }
}

//! Passkeys in the console: the one script (`/account/passkeys.js`), the
//! ceremonies' options, and the forms that carry an authenticator's answer
//! (register on the Security page, a sign-in's second step, a sign-in with
//! no password). The rules are hub-core's ([`hub_core::passkeys`]).
//!
//! Only the pages with a passkey form allow a script, and only this
//! origin's: their policy adds `script-src 'self'; connect-src 'self'`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use hub_core::passkeys::{Ceremony, PasskeySummary, Passkeys};
use hub_core::{Error, ErrorCode};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::ConsoleState;
use crate::account::read;
use crate::guard;
use crate::pages::{Page, Problem, csrf, when};

/// Where the script is served.
pub(crate) const SCRIPT: &str = "/account/passkeys.js";

/// `GET /account/passkeys.js`
pub(crate) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("passkeys.js"),
    )
}

/// The passkey use case, when a relying party is configured.
pub(crate) fn passkeys(state: &ConsoleState) -> Option<&Passkeys> {
    state.sign_in.factors().and_then(|f| f.passkeys())
}

fn not_configured() -> Error {
    Error::with_message(ErrorCode::NotFound, "passkeys are not configured here")
}

/// `page`, allowed this origin's script (and its requests): for a page
/// with a passkey form.
pub(crate) fn scripted(state: &ConsoleState, mut page: Response) -> Response {
    let base = page
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| state.policy.clone(), str::to_owned);
    if let Ok(policy) =
        HeaderValue::from_str(&format!("{base}; script-src 'self'; connect-src 'self'"))
    {
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    page
}

/// A passkey form: the button, and the fields the script fills in.
fn form(
    token: &str,
    kind: &str,
    options: &str,
    action: &str,
    label: &str,
    extra: Markup,
) -> Markup {
    html! {
        form.card data-passkey=(kind) data-options=(options) method="post" action=(action) {
            (csrf(token))
            input type="hidden" name="ceremony" value="";
            input type="hidden" name="credential" value="";
            (extra)
            button type="submit" { (label) }
            p role="status" aria-live="polite" {}
        }
        script src=(SCRIPT) defer {}
    }
}

/// The sign-in page's "Sign in with a passkey".
pub(crate) fn signin_form(token: &str, next: Option<&str>) -> Markup {
    form(
        token,
        "get",
        "/account/signin/passkey/options",
        "/account/signin/passkey",
        "Sign in with a passkey",
        html! {
            @if let Some(next) = next {
                input type="hidden" name="next" value=(next);
            }
        },
    )
}

/// The second step's "Use a passkey".
pub(crate) fn step_form(token: &str, ticket: &str, next: Option<&str>) -> Markup {
    form(
        token,
        "get",
        "/account/signin/mfa/passkey-options",
        "/account/signin/mfa",
        "Use a passkey",
        html! {
            input type="hidden" name="ticket" value=(ticket);
            @if let Some(next) = next {
                input type="hidden" name="next" value=(next);
            }
        },
    )
}

/// The Security page's passkeys: each with its name, rename and remove,
/// then "Add a passkey".
pub(crate) fn security_section(token: &str, list: &[PasskeySummary]) -> Markup {
    html! {
        section aria-labelledby="passkeys" {
            h2 #passkeys { "Passkeys" }
            @if list.is_empty() {
                p { "None. A passkey signs you in with your device's lock (a fingerprint, a face, a PIN) instead of a password, and counts as a second factor." }
            }
            ul.devices {
                @for passkey in list {
                    li.card {
                        p { strong { (passkey.name) } }
                        p { "Added " (when(passkey.created_at)) ". "
                            @match passkey.last_used_at {
                                Some(at) => { "Last used " (when(at)) "." }
                                None => { "Not used yet." }
                            }
                        }
                        form method="post" action={ "/account/security/passkeys/" (passkey.id) "/rename" } {
                            (csrf(token))
                            label for={ "name-" (passkey.id) } { "Name" }
                            input id={ "name-" (passkey.id) } type="text" name="name" value=(passkey.name) maxlength="64" required;
                            button type="submit" { "Rename" }
                        }
                        form method="post" action={ "/account/security/passkeys/" (passkey.id) "/remove" } {
                            (csrf(token))
                            button.danger type="submit" aria-label={ "Remove the passkey " (passkey.name) } { "Remove" }
                        }
                    }
                }
            }
            (form(
                token,
                "create",
                "/account/security/passkeys/options",
                "/account/security/passkeys",
                "Add a passkey",
                html! {
                    label for="passkey-name" { "Name" }
                    input #passkey-name type="text" name="name" value="Passkey" maxlength="64" required;
                    label for="passkey_password" { "Current password" }
                    input #passkey_password type="password" name="passkey_password" autocomplete="current-password" required;
                },
            ))
        }
    }
}

fn options(ceremony: Ceremony) -> Response {
    let mut response = Json(serde_json::json!({
        "ceremony": ceremony.id,
        "options": ceremony.options,
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal as JSON, for the script to show.
fn refusal(error: Error) -> Response {
    let problem = Problem::from_error(error, |_| None);
    (
        problem.status,
        Json(serde_json::json!({
            "error": { "code": problem.code, "message": problem.message }
        })),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct OptionsForm {
    csrf: Option<String>,
    ticket: Option<String>,
}

/// `POST /account/signin/passkey/options`: a sign-in with no name, within
/// the client's login budget (each one keeps a ceremony for five minutes).
pub(crate) async fn signin_options(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<OptionsForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let Some(passkeys) = passkeys(&state) else {
        return Ok(refusal(not_configured()));
    };
    if let Err(e) = state.sign_in.spend_client(addr.ip()) {
        return Ok(refusal(e));
    }
    Ok(match passkeys.begin_sign_in().await {
        Ok(ceremony) => options(ceremony),
        Err(e) => refusal(e),
    })
}

/// `POST /account/signin/mfa/passkey-options`: the second step's, for its
/// ticket.
pub(crate) async fn step_options(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<OptionsForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let Some(factors) = state.sign_in.factors() else {
        return Ok(refusal(not_configured()));
    };
    Ok(
        match factors
            .passkey_options(form.ticket.as_deref().unwrap_or_default())
            .await
        {
            Ok(ceremony) => options(ceremony),
            Err(e) => refusal(e),
        },
    )
}

/// `POST /account/security/passkeys/options`
pub(crate) async fn register_options(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<OptionsForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let user = crate::account::whoami(&state, &signed).await?;
    let Some(passkeys) = passkeys(&state) else {
        return Ok(refusal(not_configured()));
    };
    Ok(match passkeys.begin_registration(&user).await {
        Ok(ceremony) => options(ceremony),
        Err(e) => refusal(e),
    })
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct AnswerForm {
    csrf: Option<String>,
    ceremony: String,
    credential: String,
    name: String,
    /// Adding a passkey asks for the password: a stolen session alone
    /// cannot give itself a way back in.
    passkey_password: Option<String>,
    next: Option<String>,
}

impl std::fmt::Debug for AnswerForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerForm")
            .field("ceremony", &self.ceremony)
            .finish_non_exhaustive()
    }
}

/// The ceremony a form names; a form posted without the script has none.
pub(crate) fn ceremony_of(ceremony: &str, credential: &str) -> Result<Uuid, Error> {
    if credential.is_empty() {
        return Err(Error::with_message(
            ErrorCode::InvalidPasskey,
            "no passkey answered: passkeys need the page's script, which this browser did not run",
        ));
    }
    Uuid::parse_str(ceremony.trim()).map_err(|_| Error::new(ErrorCode::InvalidPasskey))
}

/// `POST /account/signin/passkey`: signed in with the passkey alone.
pub(crate) async fn signin(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<AnswerForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    guard::anonymous_post(&headers, form.csrf.as_deref())?;
    let next = crate::oidc::safe_next(form.next.as_deref());
    let result = match ceremony_of(&form.ceremony, &form.credential) {
        Ok(ceremony) => {
            state
                .sign_in
                .sign_in_with_passkey(
                    addr.ip(),
                    ceremony,
                    &form.credential,
                    headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    hub_runtime::cookies::cookie(&headers, hub_runtime::cookies::DEVICE_COOKIE)
                        .map(str::to_owned),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(signed_in) => crate::security::signed_in_response(&state, signed_in, next),
        Err(e) => {
            let problem = Problem::from_error(e, |_| None);
            crate::account::signin_problem(&state, &headers, "", &problem, next).await
        }
    }
}

/// `POST /account/security/passkeys`: the new passkey's answer, with the
/// current password; the user's other sessions end with it.
pub(crate) async fn register(
    State(state): State<Arc<ConsoleState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<AnswerForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let user = match state
        .sign_in
        .confirm_password(addr.ip(), &signed.principal, form.passkey_password.clone())
        .await
    {
        Ok(user) => user,
        Err(e) => return crate::security::refused(&state, &headers, e).await,
    };
    let Some(passkeys) = passkeys(&state) else {
        return Err(not_configured().into());
    };
    let factors = state.sign_in.factors().ok_or_else(not_configured)?;
    let first = !factors.summary(user.id).await?.any();
    let result = match ceremony_of(&form.ceremony, &form.credential) {
        Ok(ceremony) => {
            passkeys
                .finish_registration(
                    &user,
                    ceremony,
                    &form.name,
                    &form.credential,
                    Some(signed.principal.session_id),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(passkey) => {
            let note = format!("The passkey {} is added.", passkey.name);
            // The account's first factor: its recovery codes, shown once.
            let codes = if first {
                Some(factors.regenerate_recovery_codes(user.id).await?)
            } else {
                None
            };
            crate::security::after(&state, &headers, &note, codes.as_deref()).await
        }
        Err(e) => crate::security::refused(&state, &headers, e).await,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NameForm {
    csrf: Option<String>,
    name: String,
}

/// `POST /account/security/passkeys/{id}/{action}`: rename or remove.
pub(crate) async fn act(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<NameForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let Some(passkeys) = passkeys(&state) else {
        return Err(not_configured().into());
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(Error::with_message(ErrorCode::NotFound, "no such passkey").into());
    };
    let me = signed.principal.user_id;
    let result = match action.as_str() {
        "rename" => passkeys
            .rename(me, id, &form.name)
            .await
            .map(|()| "The passkey is renamed."),
        "remove" => passkeys
            .remove(me, id)
            .await
            .map(|()| "The passkey is removed."),
        _ => Err(Error::new(ErrorCode::NotFound)),
    };
    match result {
        Ok(note) => crate::security::after(&state, &headers, note, None).await,
        Err(e) => crate::security::refused(&state, &headers, e).await,
    }
}

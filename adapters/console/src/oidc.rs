//! The browser's side of OpenID Connect: the authorization step (sign-in
//! through the console's own page, with all its limits), the consent page,
//! RP-initiated logout, and the user's "apps with access".
//!
//! An authorization request whose client or redirect URI is wrong is
//! answered with a page, never redirected; every other refusal goes back
//! to the client's registered redirect URI in OAuth's shape.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hub_core::{AuthorizationRequest, AuthorizeParams, AuthorizeRefusal, Error, ErrorCode, Next};
use hub_runtime::cookies::cookie;
use maud::html;
use serde::Deserialize;

use crate::ConsoleState;
use crate::account::read;
use crate::guard::{self, SESSION_COOKIE};
use crate::pages::{self, Early, Page, layout};

/// Where the authorization step lives; the sign-in page returns only here.
pub(crate) const AUTHORIZE: &str = "/oauth2/authorize";

/// What each scope lets an application do, in words for the consent page.
fn scope_words(scope: &str) -> &'static str {
    match scope {
        "openid" => "Know who you are on polyhub (your user id)",
        "profile" => "See your username",
        "email" => "See your email address",
        "offline_access" => "Stay signed in while you are away (refresh tokens)",
        "images:read" => "See your images",
        "images:write" => "Upload images for you",
        "events:read" => "Follow changes to users and sessions",
        "scim" => "Manage users through SCIM",
        _ => "A permission of polyhub",
    }
}

/// The origin a form on the page may end up at after its redirects: the
/// console's CSP allows forms to post only to 'self', and browsers apply
/// that to the redirects that follow too.
fn redirect_source(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    match rest.strip_prefix("//") {
        Some(rest) if scheme == "http" || scheme == "https" => {
            let authority = rest.split(['/', '?']).next()?;
            Some(format!("{scheme}://{authority}"))
        }
        _ => Some(format!("{scheme}:")),
    }
}

/// The console's policy, with forms allowed to end at `redirect_uri`.
pub(crate) fn policy_for(state: &ConsoleState, redirect_uri: &str) -> Option<HeaderValue> {
    let source = redirect_source(redirect_uri)?;
    HeaderValue::from_str(&state.policy.replace(
        "form-action 'self'",
        &format!("form-action 'self' {source}"),
    ))
    .ok()
}

fn with_policy(mut response: Response, policy: Option<HeaderValue>) -> Response {
    if let Some(policy) = policy {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// A refusal: a page (bad client or redirect URI) or a redirect.
fn refusal(state: &ConsoleState, refused: &AuthorizeRefusal) -> Response {
    match refused.location(state.oidc.issuer()) {
        Some(location) => see_other(&location),
        None => {
            let AuthorizeRefusal::Page(why) = refused else {
                return see_other("/account");
            };
            tracing::info!(why, "authorization request refused with a page");
            pages::problem_page(
                StatusCode::BAD_REQUEST,
                &Error::with_message(ErrorCode::InvalidRequest, why),
            )
        }
    }
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => pages::problem_page(
            StatusCode::BAD_REQUEST,
            &Error::with_message(ErrorCode::InvalidRequest, "the redirect cannot be sent"),
        ),
    }
}

/// The authorization request's parameters, each at most once.
fn params(query: Option<&str>) -> Result<AuthorizeParams, AuthorizeRefusal> {
    let query = query.unwrap_or_default();
    if query.len() > 8 * 1024 {
        return Err(AuthorizeRefusal::Page(
            "The authorization request is longer than 8 KiB.".into(),
        ));
    }
    serde_urlencoded::from_str(query).map_err(|e| {
        AuthorizeRefusal::Page(format!("The authorization request cannot be read: {e}."))
    })
}

/// The browser's session, if signed in: who, and when they signed in.
async fn browser(
    state: &ConsoleState,
    headers: &HeaderMap,
) -> Result<Option<(hub_core::Principal, time::OffsetDateTime)>, Error> {
    let Some(token) = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let principal = match state.authentication.authenticate(token).await {
        Ok(principal) => principal,
        Err(e) if e.code() == ErrorCode::InvalidToken => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(state
        .authentication
        .open_session_with_user(principal.session_id)
        .await?
        .map(|(session, _)| (principal, session.created_at)))
}

/// A session this young has just signed in: `prompt=login` and `max_age`
/// are satisfied by it (the sign-in page sends the browser straight back).
const FRESH: time::Duration = time::Duration::seconds(30);

/// `GET /oauth2/authorize`
pub(crate) async fn authorize(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Page {
    let request = match params(query.as_deref()) {
        Ok(params) => state.oidc.authorization_request(&params).await,
        Err(refused) => Err(refused),
    };
    let request = match request {
        Ok(request) => request,
        Err(refused) => return Ok(refusal(&state, &refused)),
    };
    let signed_in = browser(&state, &headers).await?;
    let fresh = signed_in
        .as_ref()
        .is_some_and(|(_, at)| state.lifecycle.now() - *at < FRESH);
    match state.oidc.next(&request, signed_in.as_ref(), fresh).await {
        Ok(Next::Redirect(location)) => Ok(see_other(&location)),
        Ok(Next::SignIn) => {
            // Back here once signed in; `prompt=login` was just honoured.
            let back: Vec<(String, String)> =
                serde_urlencoded::from_str::<Vec<(String, String)>>(query.as_deref().unwrap_or(""))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(k, v)| !(k == "prompt" && v == "login"))
                    .collect();
            let back = format!(
                "{AUTHORIZE}?{}",
                serde_urlencoded::to_string(&back).unwrap_or_default()
            );
            let to = format!(
                "/account/signin?{}",
                serde_urlencoded::to_string([("next", back.as_str())]).unwrap_or_default()
            );
            Ok(see_other(&to))
        }
        Ok(Next::Consent) => {
            let Some((principal, _)) = signed_in else {
                return Ok(see_other("/account/signin"));
            };
            consent_page(&state, &headers, &request, &principal, query.as_deref()).await
        }
        Err(refused) => Ok(refusal(&state, &refused)),
    }
}

async fn consent_page(
    state: &ConsoleState,
    headers: &HeaderMap,
    request: &AuthorizationRequest,
    principal: &hub_core::Principal,
    query: Option<&str>,
) -> Page {
    let signed = guard::signed_in(state, headers).await?;
    let user = state
        .authentication
        .user(principal.user_id)
        .await?
        .ok_or_else(|| Early::from(Error::new(ErrorCode::InvalidToken)))?;
    let client = &request.client;
    let markup = layout(
        "Allow access",
        None,
        html! {
            section.card {
                h2 { "Allow " (client.name) " to use your account?" }
                p { "Signed in as " strong { (user.username.as_str()) } ". "
                    (client.name) " asks to:" }
                ul.scopes {
                    @for scope in request.scopes.iter() {
                        li { (scope_words(scope)) " " code { (scope) } }
                    }
                }
                p.hint { "You will be sent back to " code { (request.redirect_uri) }
                    ". You can withdraw this at any time under Apps." }
                form method="post" action="/oauth2/consent" {
                    (pages::csrf(&signed.csrf()))
                    input type="hidden" name="request" value=(query.unwrap_or_default());
                    button type="submit" name="decision" value="allow" { "Allow" }
                    " "
                    button.secondary type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        },
    );
    Ok(with_policy(
        markup.into_response(),
        policy_for(state, &request.redirect_uri),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConsentForm {
    csrf: Option<String>,
    request: String,
    decision: String,
}

/// `POST /oauth2/consent`: the user allowed or denied; the request is
/// checked again from what the page carried.
pub(crate) async fn consent(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let request = match params(Some(&form.request)) {
        Ok(params) => state.oidc.authorization_request(&params).await,
        Err(refused) => Err(refused),
    };
    let request = match request {
        Ok(request) => request,
        Err(refused) => return Ok(refusal(&state, &refused)),
    };
    let location = match form.decision.as_str() {
        "allow" => {
            let auth_time = state
                .authentication
                .open_session_with_user(signed.principal.session_id)
                .await?
                .map(|(session, _)| session.created_at)
                .ok_or_else(|| Early::from(Error::new(ErrorCode::InvalidToken)))?;
            match state
                .oidc
                .allow(&request, &signed.principal, auth_time)
                .await
            {
                Ok(location) => location,
                Err(refused) => return Ok(refusal(&state, &refused)),
            }
        }
        "deny" => state.oidc.deny(&request),
        _ => {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "decision must be allow or deny",
            )
            .into());
        }
    };
    Ok(see_other(&location))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LogoutQuery {
    id_token_hint: Option<String>,
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// `GET /oauth2/logout` (OIDC RP-Initiated Logout 1.0): with the ID token
/// the app holds, its grant ends, and so does this browser's session; then
/// back to the app's registered post-logout URI, or the signed-out page.
pub(crate) async fn logout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Page {
    let query: LogoutQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
            Early::from(Error::with_message(
                ErrorCode::InvalidRequest,
                format!("the logout request cannot be read: {e}"),
            ))
        })?;
    if query.id_token_hint.is_none() {
        // Without it anyone's page could sign this browser out.
        return Err(Error::with_message(
            ErrorCode::InvalidRequest,
            "id_token_hint is required: the ID token the application was given",
        )
        .into());
    }
    let signed_in = browser(&state, &headers).await?;
    let target = state
        .oidc
        .end_session(
            query.id_token_hint.as_deref(),
            query.client_id.as_deref(),
            query.post_logout_redirect_uri.as_deref(),
            query.state.as_deref(),
            signed_in.as_ref().map(|(principal, _)| principal),
        )
        .await?;
    let mut response = see_other(target.as_deref().unwrap_or("/account/signin?signed_out=1"));
    if let Some(clear) = guard::set_cookie(&state, SESSION_COOKIE, "", Some(0)) {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    Ok(response)
}

/// The `next` of the sign-in page: only the authorization step, as a path
/// of this origin; anything else is dropped (no open redirect).
pub(crate) fn safe_next(next: Option<&str>) -> Option<&str> {
    let next = next?;
    let ok = next.starts_with(&format!("{AUTHORIZE}?"))
        && next.len() <= 8 * 1024
        && !next.contains(['\\', '#'])
        && !next.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then_some(next)
}

/// The CSP of a sign-in page that continues to `next`: its form's
/// redirects end at the client's redirect URI.
pub(crate) async fn next_policy(state: &ConsoleState, next: Option<&str>) -> Option<HeaderValue> {
    let query = safe_next(next)?.split_once('?')?.1;
    let params = params(Some(query)).ok()?;
    let request = state.oidc.authorization_request(&params).await.ok()?;
    policy_for(state, &request.redirect_uri)
}

/// Redirects to `next` (checked) or `/account`.
pub(crate) fn after_sign_in(next: Option<&str>) -> Response {
    Redirect::to(safe_next(next).unwrap_or("/account")).into_response()
}

// ---- apps with access ----

/// `GET /account/apps`: the applications the user allowed.
pub(crate) async fn apps(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let user = crate::account::whoami(&state, &signed).await?;
    let consents = state.oidc.consents(user.id).await?;
    let csrf = signed.csrf();
    let nav = crate::account::nav(&user, &csrf, "/account/apps");
    Ok(layout(
        "Apps with access",
        Some(&nav),
        html! {
            @if consents.is_empty() {
                p { "No application has access to your account." }
            }
            @for (client, scopes, at) in &consents {
                section.card {
                    h2 { (client.name) }
                    p { "Allowed " (pages::when(*at)) ": " }
                    ul.scopes { @for scope in scopes.iter() { li { (scope_words(scope)) } } }
                    form method="post" action="/account/apps/withdraw" {
                        (pages::csrf(&csrf))
                        input type="hidden" name="client_id" value=(client.id.as_str());
                        button.secondary type="submit" { "Withdraw access" }
                    }
                }
            }
        },
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WithdrawForm {
    csrf: Option<String>,
    client_id: String,
}

/// `POST /account/apps/withdraw`: the consent is forgotten and the app's
/// grants end (their tokens stop at once).
pub(crate) async fn withdraw(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<WithdrawForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let client = hub_core::ClientId::parse(&form.client_id)?;
    state
        .oidc
        .withdraw(signed.principal.user_id, &client)
        .await?;
    Ok(Redirect::to("/account/apps").into_response())
}

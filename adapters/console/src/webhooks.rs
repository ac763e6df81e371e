//! An admin's webhook page, `/admin/hooks` (rest-auth's JSON API owns
//! `/admin/webhooks` on the same port): every endpoint with its state and
//! why it is failing or disabled, adding one (its secret shown once),
//! rotating a secret, enabling and deleting. hub-core's `Webhooks` checks
//! the caller's current role on every call.

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use hub_core::{EndpointId, Error, EventTypes, WebhookEndpoint};
use maud::{Markup, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::account::{nav, read, whoami};
use crate::guard::{self, Signed};
use crate::pages::{Page, csrf, layout, when};

/// Where the page lives.
pub(crate) const PAGE: &str = "/admin/hooks";

/// What the page shows above the list after an action.
enum Outcome {
    None,
    /// A secret to copy now: it is never shown again.
    Secret {
        what: &'static str,
        secret: String,
    },
    Refused(Error),
}

async fn render(
    state: &ConsoleState,
    signed: &Signed,
    outcome: Outcome,
    status: StatusCode,
) -> Page {
    let me = whoami(state, signed).await?;
    let endpoints = state.webhooks.list(Some(&signed.principal)).await?;
    let token = signed.csrf();
    let page = layout(
        "Webhooks",
        Some(&nav(&me, &token, PAGE)),
        html! {
            @match &outcome {
                Outcome::Secret { what, secret } => {
                    div.card role="status" {
                        p { (what) " Its signing secret, shown this once: give it to the receiver's Standard Webhooks library." }
                        p { code.secret { (secret) } }
                    }
                }
                Outcome::Refused(error) => {
                    p.error role="alert" {
                        (error.message()) " " span.code { "Code " code { (error.code().as_str()) } }
                    }
                }
                Outcome::None => {}
            }
            @if endpoints.is_empty() {
                p { "No webhook endpoint yet." }
            } @else {
                ul.services {
                    @for endpoint in &endpoints {
                        (card(endpoint, &token))
                    }
                }
            }
            form.card method="post" action=(PAGE) {
                h2 { "Add an endpoint" }
                (csrf(&token))
                div.field {
                    label for="url" { "URL" }
                    input id="url" name="url" type="url" required autocomplete="off"
                        aria-describedby="url-hint";
                    p.hint id="url-hint" { "An https:// URL on a public address; private addresses need webhooks.allowed_networks." }
                }
                div.field {
                    label for="events" { "Event types" }
                    input id="events" name="events" type="text" required autocomplete="off"
                        value="user.*" aria-describedby="events-hint";
                    p.hint id="events-hint" { "Separated by spaces: user.created, a prefix such as user.* or session.*, or * for every event." }
                }
                div.field {
                    label for="description" { "Description" }
                    input id="description" name="description" type="text" autocomplete="off" maxlength="200";
                }
                button type="submit" { "Add" }
            }
        },
    );
    Ok((status, page).into_response())
}

fn card(endpoint: &WebhookEndpoint, token: &str) -> Markup {
    let (state, class) = match (endpoint.disabled_at, endpoint.failing_since) {
        (Some(_), _) => ("Disabled", "bad"),
        (None, Some(_)) => ("Failing, retrying", "bad"),
        (None, None) => ("Active", "ok"),
    };
    let action = |verb: &str| format!("{PAGE}/{}/{verb}", endpoint.id);
    html! {
        li.card {
            h2 { (endpoint.url) " " span class={ "state " (class) } { (state) } }
            dl.ready {
                dt { "Events" } dd { (endpoint.types.as_slice().join(" ")) }
                @if !endpoint.description.is_empty() {
                    dt { "Description" } dd { (endpoint.description) }
                }
                dt { "Added" } dd { (when(endpoint.created_at)) }
                @if let Some(since) = endpoint.failing_since {
                    dt { "Failing since" } dd { (when(since)) }
                }
                @if let Some(error) = &endpoint.last_error {
                    dt { "Last error" } dd { (error) }
                }
                @if let (Some(at), Some(reason)) = (endpoint.disabled_at, &endpoint.disabled_reason) {
                    dt { "Disabled" } dd { (when(at)) ": " (reason) }
                }
                @if let Some(until) = endpoint.previous_secret_until {
                    dt { "Previous secret signs until" } dd { (when(until)) }
                }
                dt { "Id" } dd { code { (endpoint.id.to_string()) } }
            }
            div.actions {
                @if endpoint.disabled_at.is_some() {
                    form method="post" action=(action("enable")) {
                        (csrf(token))
                        button type="submit" { "Enable" }
                    }
                }
                form method="post" action=(action("rotate")) {
                    (csrf(token))
                    button type="submit" { "Rotate secret" }
                }
                form method="post" action=(action("delete")) {
                    (csrf(token))
                    button type="submit" { "Delete" }
                }
            }
        }
    }
}

/// `GET /admin/hooks`
pub(crate) async fn page(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    render(&state, &signed, Outcome::None, StatusCode::OK).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct AddForm {
    csrf: Option<String>,
    url: String,
    events: String,
    description: String,
}

/// `POST /admin/hooks`: the page again, with the new secret or why not.
pub(crate) async fn add(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<AddForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let added = match EventTypes::parse(form.events.split_whitespace()) {
        Ok(types) => {
            state
                .webhooks
                .add(
                    Some(&signed.principal),
                    &form.url,
                    types,
                    form.description.trim(),
                )
                .await
        }
        Err(e) => Err(e),
    };
    match added {
        Ok(created) => {
            let outcome = Outcome::Secret {
                what: "Added.",
                secret: created.secret.shown(),
            };
            render(&state, &signed, outcome, StatusCode::OK).await
        }
        Err(e)
            if e.kind() == hub_core::ErrorKind::Invalid
                || e.kind() == hub_core::ErrorKind::TooMany =>
        {
            render(
                &state,
                &signed,
                Outcome::Refused(e),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ActionForm {
    csrf: Option<String>,
}

/// `POST /admin/hooks/{id}/{action}`: enable, rotate or delete.
pub(crate) async fn act(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let id = EndpointId::parse(&id)?;
    let principal = Some(&signed.principal);
    match action.as_str() {
        "enable" => state.webhooks.enable(principal, id).await?,
        "delete" => state.webhooks.delete(principal, id).await?,
        "rotate" => {
            let (secret, _) = state.webhooks.rotate_secret(principal, id).await?;
            let outcome = Outcome::Secret {
                what: "Rotated: the old secret keeps signing beside the new one for a while.",
                secret: secret.shown(),
            };
            return render(&state, &signed, outcome, StatusCode::OK).await;
        }
        _ => return Err(Error::new(hub_core::ErrorCode::NotFound).into()),
    }
    Ok(Redirect::to(PAGE).into_response())
}

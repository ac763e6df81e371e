//! An admin's page of OpenID Connect and OAuth clients, `/admin/apps`: every
//! registered application, registering one (its secret shown once),
//! rotating a secret and deleting; what `hub clients` does for operators.
//! The caller's role is checked against the directory on every request.

use std::sync::Arc;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use hub_core::{ClientId, Error, GrantType, NewClient, OAuthClient};
use maud::{Markup, html};
use serde::Deserialize;

use crate::ConsoleState;
use crate::account::{nav, read, whoami};
use crate::guard::{self, Signed};
use crate::pages::{Early, Page, csrf, layout, when};

/// Where the page lives.
pub(crate) const PAGE: &str = "/admin/apps";

const ADMINS_ONLY: &str = "managing applications is for admins";

/// What the page shows above the list after an action.
enum Outcome {
    None,
    /// A client's id and secret to copy now: the secret is never shown again.
    Secret {
        what: &'static str,
        client_id: String,
        secret: Option<String>,
    },
    Refused(Error),
}

/// The signed-in browser, when its user is an admin now.
async fn admin(state: &ConsoleState, signed: Signed) -> Result<Signed, Early> {
    state
        .authentication
        .require_admin(&signed.principal, ADMINS_ONLY)
        .await?;
    Ok(signed)
}

async fn render(
    state: &ConsoleState,
    signed: &Signed,
    outcome: Outcome,
    status: StatusCode,
) -> Page {
    let me = whoami(state, signed).await?;
    let clients = state.clients.clients().await?;
    let token = signed.csrf();
    let page = layout(
        "Applications",
        Some(&nav(&me, &token, PAGE)),
        html! {
            @match &outcome {
                Outcome::Secret { what, client_id, secret } => {
                    div.card role="status" {
                        p { (what) " Its client id: " code { (client_id) } }
                        @if let Some(secret) = secret {
                            p { "Its client secret, shown this once:" }
                            p { code.secret { (secret) } }
                        }
                    }
                }
                Outcome::Refused(error) => {
                    p.error role="alert" {
                        (error.message()) " " span.code { "Code " code { (error.code().as_str()) } }
                    }
                }
                Outcome::None => {}
            }
            @if clients.is_empty() {
                p { "No application is registered yet." }
            } @else {
                ul.services {
                    @for client in &clients {
                        (card(client, &token))
                    }
                }
            }
            (register_form(&token))
        },
    );
    Ok((status, page).into_response())
}

fn register_form(token: &str) -> Markup {
    html! {
        form.card method="post" action=(PAGE) {
            h2 { "Register an application" }
            (csrf(token))
            div.field {
                label for="name" { "Name" }
                input id="name" name="name" type="text" required maxlength="100" autocomplete="off"
                    aria-describedby="name-hint";
                p.hint id="name-hint" { "Shown to users on the consent page and under Apps." }
            }
            div.field {
                label for="redirect_uris" { "Redirect URIs" }
                textarea id="redirect_uris" name="redirect_uris" rows="2" aria-describedby="redirect-hint" {}
                p.hint id="redirect-hint" { "One per line, matched exactly: https, http on 127.0.0.1 or localhost, or an app's own scheme such as com.example.app:/cb." }
            }
            div.field {
                label for="post_logout_redirect_uris" { "Post-logout redirect URIs" }
                textarea id="post_logout_redirect_uris" name="post_logout_redirect_uris" rows="1" {}
            }
            div.field {
                label for="scopes" { "Scopes" }
                input id="scopes" name="scopes" type="text" autocomplete="off"
                    value="openid profile email offline_access" aria-describedby="scopes-hint";
                p.hint id="scopes-hint" { "Separated by spaces: openid profile email offline_access images:read images:write events:read scim." }
            }
            fieldset {
                legend { "Grants" }
                label { input type="checkbox" name="grant_code" value="on" checked; " Authorization code (users sign in)" }
                label { input type="checkbox" name="grant_refresh" value="on" checked; " Refresh tokens" }
                label { input type="checkbox" name="grant_client_credentials" value="on"; " Client credentials (a service's own token)" }
            }
            fieldset {
                legend { "Kind" }
                label { input type="checkbox" name="public" value="on"; " Public: a browser or mobile app that keeps no secret (PKCE required)" }
                label { input type="checkbox" name="first_party" value="on"; " First-party: users are not asked for consent" }
            }
            div.field {
                label for="id_token_alg" { "ID token signature" }
                select id="id_token_alg" name="id_token_alg" {
                    option value="RS256" selected { "RS256 (what every OpenID Connect library expects)" }
                    option value="EdDSA" { "EdDSA (Ed25519)" }
                }
            }
            button type="submit" { "Register" }
        }
    }
}

fn card(client: &OAuthClient, token: &str) -> Markup {
    let action = |verb: &str| format!("{PAGE}/{}/{verb}", client.id);
    let kind = match (client.is_public(), client.first_party) {
        (true, true) => "Public, first-party",
        (true, false) => "Public",
        (false, true) => "Confidential, first-party",
        (false, false) => "Confidential",
    };
    html! {
        li.card {
            h2 { (client.name) }
            dl.ready {
                dt { "Client id" } dd { code { (client.id.as_str()) } }
                dt { "Kind" } dd { (kind) }
                dt { "Grants" } dd { (client.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(" ")) }
                dt { "Scopes" } dd { (client.scopes.to_string()) }
                @for uri in &client.redirect_uris {
                    dt { "Redirect URI" } dd { code { (uri) } }
                }
                @for uri in &client.post_logout_redirect_uris {
                    dt { "Post-logout URI" } dd { code { (uri) } }
                }
                dt { "Registered" } dd { (when(client.created_at)) }
                @if let Some(at) = client.secret_rotated_at {
                    dt { "Secret rotated" } dd { (when(at)) }
                }
            }
            div.actions {
                @if !client.is_public() {
                    form method="post" action=(action("rotate")) {
                        (csrf(token))
                        button type="submit" { "Rotate secret" }
                    }
                }
                form method="post" action=(action("delete")) {
                    (csrf(token))
                    button type="submit" { "Delete" }
                }
            }
        }
    }
}

/// `GET /admin/apps`
pub(crate) async fn page(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Page {
    let signed = admin(&state, guard::signed_in(&state, &headers).await?).await?;
    render(&state, &signed, Outcome::None, StatusCode::OK).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RegisterForm {
    csrf: Option<String>,
    name: String,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    scopes: String,
    grant_code: Option<String>,
    grant_refresh: Option<String>,
    grant_client_credentials: Option<String>,
    public: Option<String>,
    first_party: Option<String>,
    id_token_alg: String,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `POST /admin/apps`: the page again, with the new client or why not.
pub(crate) async fn register(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    form: Result<Form<RegisterForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let signed = admin(&state, signed).await?;
    let grant_types: Vec<GrantType> = [
        (form.grant_code.is_some(), GrantType::AuthorizationCode),
        (form.grant_refresh.is_some(), GrantType::RefreshToken),
        (
            form.grant_client_credentials.is_some(),
            GrantType::ClientCredentials,
        ),
    ]
    .into_iter()
    .filter_map(|(on, grant)| on.then_some(grant))
    .collect();
    if grant_types.is_empty() {
        let refused = Error::with_message(
            hub_core::ErrorCode::InvalidRequest,
            "choose at least one grant",
        );
        return render(
            &state,
            &signed,
            Outcome::Refused(refused),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let registered = state
        .clients
        .create_client(NewClient {
            name: form.name,
            redirect_uris: lines(&form.redirect_uris),
            post_logout_redirect_uris: lines(&form.post_logout_redirect_uris),
            public: form.public.is_some(),
            first_party: form.first_party.is_some(),
            grant_types,
            scopes: form.scopes.split_whitespace().map(str::to_owned).collect(),
            id_token_alg: hub_core::IdTokenAlg::parse(&form.id_token_alg).unwrap_or_default(),
        })
        .await;
    match registered {
        Ok((client, secret)) => {
            tracing::info!(by = %signed.principal.user_id, client_id = %client.id, "client registered in the console");
            let outcome = Outcome::Secret {
                what: "Registered.",
                client_id: client.id.to_string(),
                secret: secret.map(|s| s.shown().to_owned()),
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

/// `POST /admin/apps/{id}/{action}`: rotate or delete.
pub(crate) async fn act(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let signed = admin(&state, signed).await?;
    let id = ClientId::parse(&id)?;
    match action.as_str() {
        "delete" => {
            state.clients.delete_client(&id).await?;
            tracing::info!(by = %signed.principal.user_id, client_id = %id, "client deleted in the console");
        }
        "rotate" => {
            let secret = state.clients.rotate_secret(&id).await?;
            let outcome = Outcome::Secret {
                what: "Rotated: the old secret no longer works.",
                client_id: id.to_string(),
                secret: Some(secret.shown().to_owned()),
            };
            return render(&state, &signed, outcome, StatusCode::OK).await;
        }
        _ => return Err(Error::new(hub_core::ErrorCode::NotFound).into()),
    }
    Ok(Redirect::to(PAGE).into_response())
}

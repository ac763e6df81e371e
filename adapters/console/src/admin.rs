//! An admin's pages: find users, see and revoke a user's sessions, grant and
//! withdraw admin, and the system's state as `/ready` and `/metrics` tell
//! it. Every call is checked by hub-core's use cases (FORBIDDEN for anyone
//! but an admin); the pages only show what they answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use hub_core::{Role, SessionId};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use crate::ConsoleState;
use crate::account::{details, last_seen, nav, open_sessions, read, session_card, whoami};
use crate::guard;
use crate::pages::{Page, csrf, layout, notice, when};

/// Where an admin's page of one user lives: `/admin/user/{username}`, not
/// under `/admin/users/`, whose names rest-auth's API shares (`POST
/// /admin/users/import`): there a user named `import` would have no page.
pub(crate) fn user_page(username: &str) -> String {
    // A name may hold `#`, `^` or `'`: one path segment, percent-encoded.
    let segment =
        percent_encoding::utf8_percent_encode(username, percent_encoding::NON_ALPHANUMERIC);
    format!("/admin/user/{segment}")
}

/// Users per page of a search.
const USERS_PAGE: u32 = 20;
/// How long the system page waits for one service.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The `/metrics` families the system page shows: the pools and the relay.
const SHOWN_METRICS: [&str; 5] = ["hashing", "sanitiz", "upload", "relay", "outbox"];
/// At most this many metric lines per service.
const MAX_METRIC_LINES: usize = 40;

/// `GET /admin`
pub(crate) async fn home() -> Redirect {
    Redirect::to("/admin/users")
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Search {
    q: String,
    after: Option<String>,
}

/// `GET /admin/users?q=&after=`
pub(crate) async fn users(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let me = whoami(&state, &signed).await?;
    let page = state
        .administration
        .search_as(
            &signed.principal,
            &search.q,
            search.after.as_deref(),
            USERS_PAGE,
        )
        .await?;
    let token = signed.csrf();
    Ok(layout(
        "Users",
        Some(&nav(&me, &token, "/admin/users")),
        html! {
            form.card.search method="get" action="/admin/users" role="search" {
                div.field {
                    label for="q" { "Username or email starts with" }
                    input id="q" name="q" type="search" value=(search.q) autocomplete="off";
                }
                button type="submit" { "Search" }
            }
            @if page.users.is_empty() {
                p { "No user matches." }
            } @else {
                table.users {
                    caption { "Users, by username" }
                    thead { tr { th scope="col" { "Username" } th scope="col" { "Email" } th scope="col" { "Role" } th scope="col" { "Since" } } }
                    tbody {
                        @for user in &page.users {
                            tr {
                                td { a href=(user_page(user.username.as_str())) { (user.username.as_str()) } }
                                td { (user.email.as_str()) }
                                td { (user.role.as_str()) }
                                td { (when(user.created_at)) }
                            }
                        }
                    }
                }
                @if let Some(next) = &page.next {
                    p { a href={ "/admin/users?q=" (encode(&search.q)) "&after=" (next.as_str()) } { "Next page" } }
                }
            }
        },
    )
    .into_response())
}

/// A query value, percent-encoded.
fn encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Done {
    done: Option<String>,
}

/// `GET /admin/user/{username}`
pub(crate) async fn user(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(username): Path<String>,
    Query(query): Query<Done>,
) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    let me = whoami(&state, &signed).await?;
    let user = state
        .administration
        .find_as(&signed.principal, &username)
        .await?;
    let sessions = open_sessions(&state, &signed, user.id).await?;
    let last = last_seen(&state, &signed, Some(user.username.as_str())).await;
    let factors = match state.sign_in.factors() {
        Some(factors) => Some(factors.summary(user.id).await?),
        None => None,
    };
    let token = signed.csrf();
    let base = user_page(user.username.as_str());
    let note = match query.done.as_deref() {
        Some("revoked") => Some("Sessions revoked."),
        Some("role") => Some("Role changed."),
        Some("factors") => Some("Second factors reset; every session of the user is revoked."),
        _ => None,
    };
    let (role_to, role_label) = match user.role {
        Role::Admin => ("user", "Withdraw admin"),
        Role::User => ("admin", "Grant admin"),
    };
    Ok(layout(
        &format!("User {}", user.username.as_str()),
        Some(&nav(&me, &token, "/admin/users")),
        html! {
            (notice(note))
            section.card aria-labelledby="details" {
                (details(&user, &last))
                @if user.id != me.id {
                    form method="post" action={ (base) "/role" } {
                        (csrf(&token))
                        input type="hidden" name="role" value=(role_to);
                        button type="submit" { (role_label) }
                    }
                }
            }
            @if let Some(factors) = factors {
                section aria-labelledby="factors" {
                    h2 id="factors" { "Second factors" }
                    ul {
                        li { "Authenticator app: " @if factors.totp { "on" } @else { "off" } }
                        li { "Passkeys: " (factors.passkeys) }
                        li { "Recovery codes unused: " (factors.recovery_codes_left) }
                    }
                    @if factors.any() || factors.recovery_codes_left > 0 {
                        form method="post" action={ (base) "/factors/reset" } {
                            (csrf(&token))
                            button.danger type="submit" { "Reset second factors" }
                        }
                    }
                }
            }
            section aria-labelledby="sessions" {
                h2 id="sessions" { "Open sessions (" (sessions.len()) ")" }
                ul.devices {
                    @for session in &sessions {
                        (session_card(session, session.id == signed.principal.session_id, html! {
                            form method="post" action={ (base) "/sessions/revoke" } {
                                (csrf(&token))
                                input type="hidden" name="session" value=(session.id.as_uuid());
                                button type="submit" aria-label={ "Revoke the session signed in " (when(session.created_at)) } { "Revoke" }
                            }
                        }))
                    }
                }
                @if !sessions.is_empty() {
                    form method="post" action={ (base) "/sessions/revoke" } {
                        (csrf(&token))
                        button.danger type="submit" { "Revoke every session" }
                    }
                }
            }
        },
    )
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RevokeForm {
    csrf: Option<String>,
    session: Option<String>,
}

/// `POST /admin/user/{username}/sessions/revoke`: one session, or all.
pub(crate) async fn revoke_sessions(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(username): Path<String>,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let user = state
        .administration
        .find_as(&signed.principal, &username)
        .await?;
    let session = form
        .session
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(SessionId::parse)
        .transpose()?;
    state
        .lifecycle
        .revoke(&signed.principal, user.id, session)
        .await?;
    let to = format!("{}?done=revoked", user_page(user.username.as_str()));
    Ok(Redirect::to(&to).into_response())
}

/// `POST /admin/user/{username}/factors/reset`: every factor of the user
/// removed, every session and device revoked (for a user who lost their
/// authenticator and their recovery codes).
pub(crate) async fn reset_factors(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(username): Path<String>,
    form: Result<Form<crate::account::CsrfOnly>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf()).await?;
    let user = state
        .administration
        .find_as(&signed.principal, &username)
        .await?;
    let Some(factors) = state.sign_in.factors() else {
        return Err(hub_core::Error::new(hub_core::ErrorCode::NotFound).into());
    };
    factors.reset(user.id, signed.principal.user_id).await?;
    let to = format!("{}?done=factors", user_page(user.username.as_str()));
    Ok(Redirect::to(&to).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RoleForm {
    csrf: Option<String>,
    role: String,
}

/// `POST /admin/user/{username}/role`
pub(crate) async fn set_role(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(username): Path<String>,
    form: Result<Form<RoleForm>, FormRejection>,
) -> Page {
    let form = read(form)?;
    let signed = guard::signed_post(&state, &headers, form.csrf.as_deref()).await?;
    let role = Role::parse(&form.role)?;
    let user = state
        .administration
        .set_role_as(&signed.principal, &username, role)
        .await?;
    let to = format!("{}?done=role", user_page(user.username.as_str()));
    Ok(Redirect::to(&to).into_response())
}

/// One service as the system page shows it.
struct ServiceState {
    name: String,
    ready: Result<(u16, Value), String>,
    metrics: Vec<String>,
}

async fn probe(http: &reqwest::Client, name: &str, base: &str) -> ServiceState {
    let ready = async {
        let response = http
            .get(format!("{base}/ready"))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("unreachable: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .json::<Value>()
            .await
            .map_err(|e| format!("not JSON: {e}"))?;
        Ok((status, body))
    }
    .await;
    let metrics = async {
        let text = http
            .get(format!("{base}/metrics"))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                .filter(|l| {
                    let name = l.split(['{', ' ']).next().unwrap_or_default();
                    SHOWN_METRICS.iter().any(|m| name.contains(m))
                })
                .take(MAX_METRIC_LINES)
                .map(str::to_owned)
                .collect(),
        )
    }
    .await
    .unwrap_or_default();
    ServiceState {
        name: name.to_owned(),
        ready,
        metrics,
    }
}

/// `/ready`'s JSON as `path: value` lines.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, value, out);
            }
        }
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// `GET /admin/system`: every service's readiness, the relay's backlog and
/// lag, and the pools' load, read from the services' own `/ready` and
/// `/metrics`.
pub(crate) async fn system(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Page {
    let signed = guard::signed_in(&state, &headers).await?;
    state
        .administration
        .admin_only(&signed.principal, "the system's state is for admins")
        .await?;
    let me = whoami(&state, &signed).await?;
    let services = futures_util::future::join_all(
        state
            .readiness
            .iter()
            .map(|(name, base)| probe(&state.http, name, base)),
    )
    .await;
    let token = signed.csrf();
    Ok(layout(
        "System",
        Some(&nav(&me, &token, "/admin/system")),
        html! {
            ul.services {
                @for service in &services {
                    (service_card(service))
                }
            }
        },
    )
    .into_response())
}

fn service_card(service: &ServiceState) -> Markup {
    let (verdict, class) = match &service.ready {
        Ok((200, _)) => ("Ready".to_owned(), "ok"),
        Ok((status, _)) => (format!("Not ready (HTTP {status})"), "bad"),
        Err(e) => (format!("Not reachable: {e}"), "bad"),
    };
    let mut fields = Vec::new();
    if let Ok((_, body)) = &service.ready {
        flatten("", body, &mut fields);
    }
    html! {
        li.card {
            h2 { (service.name) " " span class={ "state " (class) } { (verdict) } }
            @if !fields.is_empty() {
                dl.ready {
                    @for (key, value) in &fields {
                        dt { (key) } dd { (value) }
                    }
                }
            }
            @if !service.metrics.is_empty() {
                details open {
                    summary { "Pools and relay in /metrics" }
                    pre { @for line in &service.metrics { (line) "\n" } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_shown_as_paths() {
        let mut out = Vec::new();
        flatten(
            "",
            &serde_json::json!({"status": "ready", "relay": {"backlog": 3, "lag_ms": 12}}),
            &mut out,
        );
        assert!(out.contains(&("relay.backlog".to_owned(), "3".to_owned())));
        assert!(out.contains(&("status".to_owned(), "ready".to_owned())));
        assert_eq!(encode("a b&c@d"), "a%20b%26c%40d");
    }
}

//! soap-lookup: `LookupUser` over SOAP 1.1 and 1.2 (port 5016), and the
//! legacy `GET /user/soap?username=NAME`, which answers the same SOAP 1.1
//! envelope. Lookup never returns an email or anything about a password.
//!
//! CORS is strict here: only origins listed in config get CORS headers, and a
//! preflight from any other origin is refused with 403.
//!
//! A caller may authenticate with a WS-Security header
//! (`soap.security.lookup_user`): `optional` (the default) serves anonymous
//! callers within a per-client budget against username enumeration
//! (`limits.anonymous_lookup_per_client`), `required` refuses them (the
//! legacy GET, which carries no header, included).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hub_core::{Directory, ErrorCode};
use hub_runtime::ServiceContext;
use hub_runtime::budgets::AttemptBudgets;
use hub_soap::wsse::SecurityFault;
use hub_soap::{
    Answer, Call, Dispatcher, Fault, Limits, SecurityPolicy, SoapVersion, USERS_NS, WsSecurity,
    escape_text,
};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use yaserde::YaDeserialize;

#[derive(Clone)]
pub struct SoapLookupState {
    pub directory: Directory,
    pub wsdl: Arc<str>,
    pub limits: Limits,
    /// LookupUser's WS-Security policy.
    pub policy: SecurityPolicy,
    /// The header processor; `None` serves every call anonymously.
    pub security: Option<Arc<WsSecurity>>,
    /// The anonymous lookups' per-client budget (the process's one).
    pub budgets: Arc<AttemptBudgets>,
}

impl std::fmt::Debug for SoapLookupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapLookupState")
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, YaDeserialize)]
#[yaserde(rename = "LookupUser")]
struct LookupUserRequest {
    username: String,
}

#[derive(Debug, Deserialize)]
struct LegacyQuery {
    username: Option<String>,
}

async fn lookup(state: &SoapLookupState, version: SoapVersion, username: &str) -> Answer {
    let user = state
        .directory
        .lookup(username)
        .await
        .map_err(|e| Fault::from_error(version, &e))?;
    let created_at = user
        .created_at
        .format(&Rfc3339)
        .map_err(|e| Fault::from_error(version, &hub_core::Error::internal(e)))?;
    Ok(format!(
        "<tns:LookupUserResponse xmlns:tns=\"{USERS_NS}\"><tns:userId>{}</tns:userId>\
         <tns:username>{}</tns:username><tns:createdAt>{}</tns:createdAt></tns:LookupUserResponse>",
        user.id,
        escape_text(user.username.as_str()),
        created_at,
    ))
}

/// Spends one anonymous lookup of `client`'s budget.
fn anonymous(
    state: &SoapLookupState,
    version: SoapVersion,
    client: Option<SocketAddr>,
) -> Result<(), Fault> {
    let client = client.map_or(hub_soap::UNKNOWN_CLIENT, |client| client.ip());
    state
        .budgets
        .anonymous_lookup(client)
        .map_err(|wait| Fault::from_error(version, &hub_core::Error::too_many_attempts(wait)))
}

/// `LookupUser`, POSTed in either version. An authenticated caller spends
/// no budget; an anonymous one spends its client's.
async fn lookup_user(state: Arc<SoapLookupState>, call: Call<LookupUserRequest>) -> Answer {
    if call.caller.is_none() {
        anonymous(&state, call.version(), call.client)?;
    }
    lookup(&state, call.version(), &call.request.username).await
}

/// The legacy `GET /user/soap?username=NAME`, answered in SOAP 1.1. It
/// carries no header, so it is anonymous: refused where LookupUser
/// requires WS-Security.
async fn legacy_lookup(
    state: Arc<SoapLookupState>,
    uri: Uri,
    client: Option<SocketAddr>,
) -> Answer {
    if state.policy == SecurityPolicy::Required {
        return Err(Fault::security(
            SoapVersion::V11,
            SecurityFault::InvalidSecurity,
            &hub_core::Error::with_message(
                ErrorCode::AuthenticationRequired,
                "LookupUser requires a WS-Security header here: POST a SOAP envelope with one",
            ),
        ));
    }
    match Query::<LegacyQuery>::try_from_uri(&uri) {
        Ok(Query(LegacyQuery {
            username: Some(username),
        })) => {
            anonymous(&state, SoapVersion::V11, client)?;
            lookup(&state, SoapVersion::V11, &username).await
        }
        _ => Err(Fault::client(
            SoapVersion::V11,
            "give ?username=NAME, or ?wsdl",
        )),
    }
}

/// Refuses a CORS preflight from an origin that is not listed, before the CORS
/// layer (which only answers listed origins) sees it.
async fn refuse_unlisted_preflight(
    State(allowed): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let is_preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if is_preflight {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !allowed.iter().any(|o| o.trim_end_matches('/') == origin) {
            tracing::info!(origin, "CORS preflight refused");
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    next.run(request).await
}

/// The whole service: `POST /user/soap` (LookupUser), `GET /user/soap?wsdl`,
/// the legacy `GET /user/soap?username=NAME`, `/health` and `/ready`, behind
/// strict CORS.
pub fn router(state: SoapLookupState, context: ServiceContext) -> Result<Router, hub_core::Error> {
    let allowed = context
        .cors
        .as_ref()
        .map(|cors| cors.allowed_origins.clone())
        .unwrap_or_default();
    let (wsdl, limits, policy) = (Arc::clone(&state.wsdl), state.limits, state.policy);
    let security = state.security.clone();
    let routes = Dispatcher::new(state, wsdl, limits)
        .with_security(security)
        .operation("LookupUser", policy, lookup_user)
        .get(legacy_lookup)
        .into_router("/user/soap");
    Ok(context.serve(routes).layer(middleware::from_fn_with_state(
        Arc::new(allowed),
        refuse_unlisted_preflight,
    )))
}

//! soap-lookup: `LookupUser` over SOAP 1.1 and 1.2 (port 5016), and the
//! legacy `GET /user/soap?username=NAME`, which answers the same SOAP 1.1
//! envelope. Lookup never returns an email or anything about a password.
//!
//! CORS is strict here: only origins listed in config get CORS headers, and a
//! preflight from any other origin is refused with 403.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hub_core::Directory;
use hub_runtime::ServiceContext;
use hub_soap::{Answer, Call, Dispatcher, Fault, Limits, SoapVersion, USERS_NS, escape_text};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use yaserde::YaDeserialize;

#[derive(Clone)]
pub struct SoapLookupState {
    pub directory: Directory,
    pub wsdl: Arc<str>,
    pub limits: Limits,
}

impl std::fmt::Debug for SoapLookupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapLookupState")
            .field("limits", &self.limits)
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

/// `LookupUser`, POSTed in either version.
async fn lookup_user(state: Arc<SoapLookupState>, call: Call<LookupUserRequest>) -> Answer {
    lookup(&state, call.version(), &call.request.username).await
}

/// The legacy `GET /user/soap?username=NAME`, answered in SOAP 1.1.
async fn legacy_lookup(state: Arc<SoapLookupState>, uri: Uri) -> Answer {
    match Query::<LegacyQuery>::try_from_uri(&uri) {
        Ok(Query(LegacyQuery {
            username: Some(username),
        })) => lookup(&state, SoapVersion::V11, &username).await,
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
    let (wsdl, limits) = (Arc::clone(&state.wsdl), state.limits);
    let routes = Dispatcher::new(state, wsdl, limits)
        .operation("LookupUser", lookup_user)
        .get(legacy_lookup)
        .into_router("/user/soap");
    Ok(context.serve(routes).layer(middleware::from_fn_with_state(
        Arc::new(allowed),
        refuse_unlisted_preflight,
    )))
}

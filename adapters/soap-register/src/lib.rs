//! soap-register: `RegisterUser` over SOAP 1.1 and 1.2 (port 5002), for
//! legacy enterprise clients generated from wsdl/users.wsdl.
//!
//! A library: [`router`] builds the service apart from running it. Every rule
//! is hub-core's `Registration`: the same username rules, hashing and codes as
//! every other protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::response::Response;
use axum::routing::any;
use hub_core::{ErrorCode, RegisterUser, Registration};
use hub_runtime::ServiceContext;
use hub_runtime::limits::HashingLimits;
use hub_soap::{Fault, Limits, OperationCall, USERS_NS, escape_text};
use time::format_description::well_known::Rfc3339;
use yaserde::YaDeserialize;

pub const SERVICE: &str = "soap-register";

/// What the handler needs.
#[derive(Clone)]
pub struct SoapRegisterState {
    pub registration: Registration,
    /// wsdl/users.wsdl with this deployment's addresses.
    pub wsdl: Arc<str>,
    pub limits: Limits,
    /// Registrations per client, shared with rest-auth's.
    pub budgets: Arc<HashingLimits>,
}

impl std::fmt::Debug for SoapRegisterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapRegisterState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The `RegisterUser` payload, as the envelope reader hands it on.
#[derive(Default, YaDeserialize)]
#[yaserde(rename = "RegisterUser")]
struct RegisterUserRequest {
    username: String,
    email: String,
    password: String,
}

impl std::fmt::Debug for RegisterUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterUserRequest")
            .field("username", &self.username)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

async fn register(
    state: &SoapRegisterState,
    client: Option<SocketAddr>,
    call: OperationCall,
) -> Result<Response, Fault> {
    let version = call.version;
    if call.operation != "RegisterUser" {
        return Err(Fault::client(
            version,
            format!("this endpoint offers RegisterUser, not {}", call.operation),
        ));
    }
    let request: RegisterUserRequest = yaserde::de::from_str(&call.payload)
        .map_err(|e| Fault::client(version, format!("RegisterUser is malformed: {e}")))?;
    if let Some(client) = client {
        state.budgets.register(client.ip()).map_err(|wait| {
            Fault::from_error(version, &ErrorCode::TooManyAttempts.into()).retry_after(wait)
        })?;
    }
    let user = state
        .registration
        .register(RegisterUser {
            username: request.username,
            email: request.email,
            password: request.password,
        })
        .await
        .map_err(|e| Fault::from_error(version, &e))?;
    let created_at = user
        .created_at
        .format(&Rfc3339)
        .map_err(|e| Fault::from_error(version, &hub_core::Error::internal(e)))?;
    let body = format!(
        "<tns:RegisterUserResponse xmlns:tns=\"{USERS_NS}\"><tns:userId>{}</tns:userId>\
         <tns:username>{}</tns:username><tns:email>{}</tns:email><tns:createdAt>{}</tns:createdAt>\
         </tns:RegisterUserResponse>",
        user.id,
        escape_text(user.username.as_str()),
        escape_text(user.email.as_str()),
        created_at,
    );
    Ok(hub_soap::envelope_response(version, &body))
}

/// `POST /register` (RegisterUser) and `GET /register?wsdl`.
async fn endpoint(State(state): State<Arc<SoapRegisterState>>, request: Request) -> Response {
    let request_id = hub_soap::request_id(request.headers());
    let outcome = match *request.method() {
        Method::GET if hub_soap::wants_wsdl(request.uri()) => {
            Ok(hub_soap::wsdl_response(&state.wsdl))
        }
        Method::POST => {
            let (parts, body) = request.into_parts();
            let client = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0);
            match hub_soap::read_request(&parts.headers, body, &state.limits).await {
                Ok(call) => register(&state, client, call).await,
                Err(fault) => Err(fault),
            }
        }
        _ => Err(hub_soap::method_not_allowed()),
    };
    outcome.unwrap_or_else(|fault| fault.into_response_for(request_id.as_deref()))
}

/// The whole service: `/register`, `/health` and `/ready`.
pub fn router(
    state: SoapRegisterState,
    context: ServiceContext,
) -> Result<Router, hub_core::Error> {
    let routes = Router::new()
        .route("/register", any(endpoint))
        .with_state(Arc::new(state));
    Ok(context.serve(routes))
}

//! soap-register: `RegisterUser` over SOAP 1.1 and 1.2 (port 5002), for
//! legacy enterprise clients generated from wsdl/users.wsdl.
//!
//! A library: [`router`] builds the service apart from running it. Every rule
//! is hub-core's `SignUp`: the same username rules, hashing, codes and
//! per-client budget as every other protocol.

use std::sync::Arc;

use axum::Router;
use hub_core::{RegisterUser, SignUp};
use hub_runtime::ServiceContext;
use hub_soap::{Answer, Call, Dispatcher, Fault, Limits, USERS_NS, escape_text};
use time::format_description::well_known::Rfc3339;
use yaserde::YaDeserialize;

pub const SERVICE: &str = "soap-register";

/// What the handler needs.
#[derive(Clone)]
pub struct SoapRegisterState {
    /// Registration with the per-client budget every port shares.
    pub sign_up: SignUp,
    /// wsdl/users.wsdl with this deployment's addresses.
    pub wsdl: Arc<str>,
    pub limits: Limits,
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

async fn register(state: Arc<SoapRegisterState>, call: Call<RegisterUserRequest>) -> Answer {
    let version = call.version();
    let fault = |e: &hub_core::Error| Fault::from_error(version, e);
    let RegisterUserRequest {
        username,
        email,
        password,
    } = call.request;
    let user = state
        .sign_up
        .sign_up(
            call.client.map(|client| client.ip()),
            RegisterUser {
                username,
                email,
                password,
            },
        )
        .await
        .map_err(|e| fault(&e))?;
    let created_at = user
        .created_at
        .format(&Rfc3339)
        .map_err(|e| fault(&hub_core::Error::internal(e)))?;
    Ok(format!(
        "<tns:RegisterUserResponse xmlns:tns=\"{USERS_NS}\"><tns:userId>{}</tns:userId>\
         <tns:username>{}</tns:username><tns:email>{}</tns:email><tns:createdAt>{}</tns:createdAt>\
         </tns:RegisterUserResponse>",
        user.id,
        escape_text(user.username.as_str()),
        escape_text(user.email.as_str()),
        created_at,
    ))
}

/// The whole service: `POST /register` (RegisterUser), `GET /register?wsdl`,
/// `/health` and `/ready`.
pub fn router(
    state: SoapRegisterState,
    context: ServiceContext,
) -> Result<Router, hub_core::Error> {
    let (wsdl, limits) = (Arc::clone(&state.wsdl), state.limits);
    let routes = Dispatcher::new(state, wsdl, limits)
        .operation("RegisterUser", register)
        .into_router("/register");
    Ok(context.serve(routes))
}

//! soap-register: `RegisterUser` over SOAP 1.1 and 1.2 (port 5002), for
//! legacy enterprise clients generated from wsdl/users.wsdl.
//!
//! A library: [`router`] builds the service apart from running it. Every rule
//! is hub-core's `SignUp`: the same username rules, hashing, codes and
//! per-client budget as every other protocol. A caller authenticated by a
//! WS-Security header (`soap.security.register_user`) is named in the
//! access log; an admin among them may set the new user's role, and
//! registers without the per-client budget.

use std::sync::Arc;

use axum::Router;
use hub_core::{ErrorCode, RegisterUser, Role, SignUp};
use hub_runtime::ServiceContext;
use hub_soap::{
    Answer, Call, Dispatcher, Fault, Limits, SecurityPolicy, USERS_NS, WsSecurity, escape_text,
};
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
    /// RegisterUser's WS-Security policy.
    pub policy: SecurityPolicy,
    /// The header processor; `None` serves every call anonymously.
    pub security: Option<Arc<WsSecurity>>,
}

impl std::fmt::Debug for SoapRegisterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoapRegisterState")
            .field("limits", &self.limits)
            .field("policy", &self.policy)
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
    /// `user` or `admin`: only an authenticated admin may send it.
    role: Option<String>,
}

impl std::fmt::Debug for RegisterUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterUserRequest")
            .field("username", &self.username)
            .field("email", &self.email)
            .field("role", &self.role)
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
        role,
    } = call.request;
    let request = RegisterUser {
        username,
        email,
        password,
    };
    let admin = call.caller.as_ref().filter(|caller| caller.is_admin());
    let user = match (admin, role) {
        (Some(admin), role) => {
            let role = match role {
                Some(role) => Role::parse(role.trim()).map_err(|e| fault(&e))?,
                None => Role::User,
            };
            let user = state
                .sign_up
                .provision(request, role, admin.user_id)
                .await
                .map_err(|e| fault(&e))?;
            tracing::info!(user_id = %user.id, by = %admin.user_id, role = role.as_str(), "user registered by an admin");
            user
        }
        (None, Some(_)) => {
            return Err(fault(&hub_core::Error::with_message(
                ErrorCode::Forbidden,
                "only an admin authenticated by a WS-Security header may set a role",
            )));
        }
        (None, None) => state
            .sign_up
            .sign_up(call.client.map(|client| client.ip()), request)
            .await
            .map_err(|e| fault(&e))?,
    };
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
    let (wsdl, limits, policy) = (Arc::clone(&state.wsdl), state.limits, state.policy);
    let security = state.security.clone();
    let routes = Dispatcher::new(state, wsdl, limits)
        .with_security(security)
        .operation("RegisterUser", policy, register)
        .into_router("/register");
    Ok(context.serve(routes))
}

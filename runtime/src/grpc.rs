//! What every gRPC service shares: the hub's errors as gRPC statuses, and
//! bearer-token authentication in an interceptor.

use std::sync::Arc;

use hub_core::{ClientPrincipal, Clock, Error, ErrorCode, ErrorKind, Principal, Tokens};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

/// The gRPC status code of each error kind ([`crate::errors::mapping`]).
pub fn code_for(kind: ErrorKind) -> Code {
    crate::errors::mapping(kind).grpc
}

/// The status for `error`: its code in the message (`CODE: message`) and in
/// the `x-error-code` trailer; internal causes are logged, never sent.
pub fn status(error: &Error) -> Status {
    crate::errors::log_failure(error);
    let mut status = Status::new(
        code_for(error.kind()),
        format!("{}: {}", error.code(), error.message()),
    );
    status.metadata_mut().insert(
        "x-error-code",
        MetadataValue::from_static(error.code().as_str()),
    );
    status
}

/// The status for a bare code, with its default message.
pub fn status_of(code: ErrorCode) -> Status {
    status(&Error::new(code))
}

/// Verifies `authorization: Bearer <jwt>` (signature, algorithm, claims,
/// expiry: exactly as rest-auth does) and puts the [`Principal`] in the
/// request's extensions; UNAUTHENTICATED otherwise. Whether the token's
/// session is still open needs a store, so the handler checks that (see
/// `hub_core::Authentication::ensure_open`): interceptors cannot wait.
///
/// With [`BearerAuth::with_clients`], a client-credentials token of that
/// issuer is taken too, as a [`ClientPrincipal`]; whether it was revoked is
/// again the handler's question (`hub_core::OAuth::ensure_active`).
#[derive(Clone)]
pub struct BearerAuth {
    tokens: Arc<Tokens>,
    clock: Arc<dyn Clock>,
    client_issuer: Option<Arc<str>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").finish_non_exhaustive()
    }
}

impl BearerAuth {
    pub fn new(tokens: Arc<Tokens>, clock: Arc<dyn Clock>) -> Self {
        Self {
            tokens,
            clock,
            client_issuer: None,
        }
    }

    /// Also takes client-credentials tokens issued by `issuer`.
    pub fn with_clients(mut self, issuer: &str) -> Self {
        self.client_issuer = Some(issuer.into());
        self
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let refused =
            |why: &'static str| status(&Error::with_message(ErrorCode::InvalidToken, why));
        let value = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| refused("an authorization: Bearer token is required"))?
            .to_str()
            .map_err(|_| refused("the authorization metadata must be 'Bearer <token>'"))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(refused(
                "the authorization metadata must be 'Bearer <token>'",
            ));
        }
        let now = self.clock.now();
        match self.tokens.verify(token.trim(), now) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
            }
            Err(refused) => {
                if let Ok(app) = self.tokens.verify_app(token.trim(), now) {
                    // An app's token acts for its user within its scopes,
                    // and never with an admin's rights.
                    let mut principal = app.principal;
                    principal.role = hub_core::Role::User;
                    request.extensions_mut().insert(principal);
                    request.extensions_mut().insert(AppScopes(app.scopes));
                    return Ok(request);
                }
                let client = self
                    .client_issuer
                    .as_deref()
                    .and_then(|issuer| self.tokens.verify_client(issuer, token.trim(), now).ok())
                    .ok_or_else(|| status(&refused))?;
                request.extensions_mut().insert(client);
            }
        }
        Ok(request)
    }
}

/// The scopes of an app's token (an OpenID Connect grant), beside its
/// user's [`Principal`].
#[derive(Debug, Clone)]
pub struct AppScopes(pub hub_core::Scopes);

/// PERMISSION_DENIED when the call came with an app's token that lacks
/// `scope`; a user's own token passes.
pub fn require_app_scope<T>(request: &Request<T>, scope: &str) -> Result<(), Status> {
    match request.extensions().get::<AppScopes>() {
        Some(AppScopes(scopes)) if !scopes.contains(scope) => Err(status(&Error::with_message(
            ErrorCode::Forbidden,
            format!("the application's token lacks the scope {scope}"),
        ))),
        _ => Ok(()),
    }
}

/// Who a call is for: a signed-in user, or a client acting for itself.
#[derive(Debug, Clone)]
pub enum Caller {
    User(Principal),
    Client(ClientPrincipal),
}

/// The caller the interceptor found; UNAUTHENTICATED when it did not run.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return Ok(Caller::User(*principal));
    }
    request
        .extensions()
        .get::<ClientPrincipal>()
        .cloned()
        .map(Caller::Client)
        .ok_or_else(|| status_of(ErrorCode::InvalidToken))
}

/// The signed-in user the interceptor found: UNAUTHENTICATED when it did
/// not run, PERMISSION_DENIED for a client's own token (the call acts for a
/// user).
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    match caller(request)? {
        Caller::User(principal) => Ok(principal),
        Caller::Client(_) => Err(status(&Error::with_message(
            ErrorCode::Forbidden,
            "this call acts for a user: a client-credentials token cannot make it",
        ))),
    }
}

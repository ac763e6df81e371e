//! rest-auth: the REST/JSON face of polyhub (port 5001): register, log in and
//! out, read and change one's profile, and the public keys that verify tokens.
//!
//! A library: [`router`] builds the service apart from running it, so the
//! `hub` binary and the tests mount the same handlers. Handlers only turn JSON
//! into domain calls and back; every rule lives in hub-core.

pub mod api;
pub mod feed;
pub mod mfa;
pub mod oauth;
mod openapi;
mod scim;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use hub_core::{
    Authentication, Credential, DependencyProbe, Error, ErrorCode, LoginAttempt, LoginName,
    ProfileChange, RegisterUser, SignIn, SignInStep,
};
use hub_runtime::cookies::{DEVICE_COOKIE, cookie, device_cookie};
use hub_runtime::{BearerToken, HttpError, JsonBody, ServiceContext};

use crate::api::{
    DatabaseCheck, JwkSet, LoginRequest, LoginResponse, Profile, ProfileUpdate, RegisterRequest,
};

/// What the handlers need.
#[derive(Clone)]
pub struct RestAuthState {
    pub authentication: Authentication,
    /// Sign-in, sign-up and profile changes with their budgets: the same
    /// use case (and the same budgets) as the account console's.
    pub sign_in: SignIn,
    /// The user database, for `/test-db`.
    pub database: Arc<dyn DependencyProbe>,
    /// The device token's cookie carries `Secure` (off only for plain-HTTP
    /// loopback use).
    pub secure_cookies: bool,
    pub importer: hub_core::Importer,
    /// Users stored per database batch, and the largest import body.
    pub import_batch: usize,
    pub import_max_bytes: usize,
    /// Webhook endpoints, for admins.
    pub webhooks: hub_core::Webhooks,
    /// The live event feed's opener (one per process).
    pub feeds: hub_core::feed::EventFeeds,
    /// OAuth 2.0 clients and grants.
    pub oauth: hub_core::OAuth,
    /// OpenID Connect's code flow, ID tokens and userinfo.
    pub oidc: hub_core::Oidc,
    /// SCIM 2.0 provisioning, under `/scim/v2`.
    pub scim: hub_core::scim::Scim,
}

impl std::fmt::Debug for RestAuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestAuthState").finish_non_exhaustive()
    }
}

/// `POST /login`
#[utoipa::path(
    post, path = "/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in; a new session and its token, and a device token in the `polyhub_device` cookie that lets this device through the account's lockout next time", body = LoginResponse),
        (status = 400, description = "Malformed body, or not exactly one of username/email", body = api::ErrorBody),
        (status = 401, description = "INVALID_CREDENTIALS: wrong password or unknown user; MFA_REQUIRED: the password is right and the account has a second factor: the body's `mfa` holds a ticket for `POST /login/mfa`", body = mfa::MfaRequiredBody),
        (status = 403, description = "ACCOUNT_DISABLED: the password is right and the account is deactivated", body = api::ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS or OVERLOADED; see Retry-After", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE: the database cannot be reached", body = api::ErrorBody),
    )
)]
async fn login(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, HttpError> {
    let name = match (request.username, request.email) {
        (Some(username), None) => LoginName::Username(username),
        (None, Some(email)) => LoginName::Email(email),
        _ => {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "give exactly one of username and email",
            )
            .into());
        }
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let step = state
        .sign_in
        .sign_in(
            addr.ip(),
            LoginAttempt {
                name,
                credential: Credential::Password(request.password),
                user_agent,
                device_token: cookie(&headers, DEVICE_COOKIE).map(str::to_owned),
            },
        )
        .await?;
    let signed_in = match step {
        SignInStep::Done(signed_in) => *signed_in,
        SignInStep::SecondFactor(challenge) => return Ok(mfa::mfa_required(challenge, &headers)),
    };
    let mut response = Json(LoginResponse {
        token: signed_in.outcome.token.token,
        token_type: "Bearer".to_owned(),
        expires_in: signed_in.outcome.token.expires_in,
        session_id: signed_in.outcome.session.id.as_uuid(),
    })
    .into_response();
    // The device's token, for its next login: past the account's lockout.
    if let Some(value) = signed_in
        .device_token
        .and_then(|device| device_cookie(&device, state.secure_cookies))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /register`
#[utoipa::path(
    post, path = "/register", tag = "users",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered", body = Profile),
        (status = 400, description = "INVALID_USERNAME, INVALID_EMAIL, WEAK_PASSWORD or a malformed body", body = api::ErrorBody),
        (status = 409, description = "USERNAME_TAKEN or EMAIL_TAKEN", body = api::ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: this client's registrations are limited; OVERLOADED: the hashing pool is full; see Retry-After", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn register(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<Profile>), HttpError> {
    let user = state
        .sign_in
        .sign_up(
            addr.ip(),
            RegisterUser {
                username: request.username,
                email: request.email,
                password: request.password,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// `GET /profile`
#[utoipa::path(
    get, path = "/profile", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's profile", body = Profile),
        (status = 401, description = "INVALID_TOKEN", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn profile(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
) -> Result<Json<Profile>, HttpError> {
    // The user's own token (one query), or an app's with scope `profile`.
    let user = match state.authentication.authenticate_user(&token).await {
        Ok((_, user)) => user,
        Err(refused) if refused.code() == ErrorCode::InvalidToken => {
            let principal = state
                .authentication
                .authenticate_for(&token, Some("profile"))
                .await?;
            state.authentication.profile(&principal).await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(user.into()))
}

/// `PUT /profile`
#[utoipa::path(
    put, path = "/profile", tag = "users",
    security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "Changed; a password change revokes the caller's other sessions. With mail on, a new email is not changed yet: `email_pending` names it, and the link mailed to it changes it", body = api::ProfileUpdated),
        (status = 400, description = "INVALID_EMAIL, WEAK_PASSWORD, nothing to change, or a malformed body", body = api::ErrorBody),
        (status = 401, description = "INVALID_TOKEN, or INVALID_CREDENTIALS for a missing or wrong current_password", body = api::ErrorBody),
        (status = 409, description = "EMAIL_TAKEN; nothing was changed", body = api::ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: current-password checks are limited for this client or account; OVERLOADED", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn update_profile(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    BearerToken(token): BearerToken,
    JsonBody(update): JsonBody<ProfileUpdate>,
) -> Result<Json<api::ProfileUpdated>, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let changed = state
        .sign_in
        .change_profile(
            addr.ip(),
            &principal,
            ProfileChange {
                email: update.email,
                current_password: update.current_password,
                new_password: update.new_password,
            },
        )
        .await?;
    Ok(Json(api::ProfileUpdated {
        profile: changed.user.into(),
        email_pending: changed.email_pending,
    }))
}

/// `POST /admin/users/import`
#[utoipa::path(
    post, path = "/admin/users/import", tag = "users",
    security(("bearer" = [])),
    params(api::ImportOptions),
    request_body = Vec<api::ImportUser>,
    responses(
        (status = 200, description = "What became of each user; refused ones by their place in the list", body = api::ImportResult),
        (status = 400, description = "A malformed body", body = api::ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = api::ErrorBody),
        (status = 403, description = "FORBIDDEN: importing users is for admins", body = api::ErrorBody),
        (status = 413, description = "REQUEST_TOO_LARGE: more than import.max_body_bytes", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn import_users(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    hub_runtime::QueryParams(options): hub_runtime::QueryParams<api::ImportOptions>,
    request: axum::extract::Request,
) -> Result<Json<api::ImportResult>, HttpError> {
    // The caller is an admin before a byte of the (up to
    // import.max_body_bytes) body is read: any user's token passes the
    // gateway's edge auth, and must not make this instance hold it.
    let principal = state.authentication.authenticate(&token).await?;
    state
        .authentication
        .require_admin(&principal, "importing users is for admins")
        .await?;
    let JsonBody(users) = JsonBody::<Vec<api::ImportUser>>::from_request(request, &()).await?;
    let report = state
        .importer
        .import_as(
            &principal,
            users.into_iter().map(Into::into).collect(),
            state.import_batch,
            options.dry_run,
        )
        .await?;
    Ok(Json(api::ImportResult {
        imported: report.imported,
        already_present: report.already_present,
        rejected: report
            .rejected
            .into_iter()
            .map(|(user, reason)| api::ImportRejection { user, reason })
            .collect(),
        dry_run: options.dry_run,
    }))
}

/// `POST /logout`
#[utoipa::path(
    post, path = "/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token's session is revoked: the token is dead everywhere"),
        (status = 401, description = "INVALID_TOKEN", body = api::ErrorBody),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn logout(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
) -> Result<StatusCode, HttpError> {
    // A user's token, or an app's (which ends only its own grant).
    let principal = state.authentication.authenticate_for(&token, None).await?;
    state.authentication.logout(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /.well-known/jwks.json`
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The keys that verify our tokens", body = JwkSet))
)]
async fn jwks(State(state): State<Arc<RestAuthState>>) -> Response {
    let keys: JwkSet = state.oidc.jwks().into();
    let mut response = Json(keys).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /test-db`: one round trip to the database, for operators.
#[utoipa::path(
    get, path = "/test-db", tag = "operations",
    responses(
        (status = 200, description = "The database answered", body = DatabaseCheck),
        (status = 503, description = "UNAVAILABLE", body = api::ErrorBody),
    )
)]
async fn test_db(
    State(state): State<Arc<RestAuthState>>,
) -> Result<Json<DatabaseCheck>, HttpError> {
    let latency = state.database.probe().await?;
    Ok(Json(DatabaseCheck {
        database: "ok".to_owned(),
        latency_ms: latency.as_secs_f64() * 1000.0,
    }))
}

/// The whole service: its routes, `/openapi.json`, `/health` and `/ready`,
/// behind the configured CORS allow-list.
pub fn router(state: RestAuthState, context: ServiceContext) -> Result<Router, Error> {
    router_with(state, context, Router::new())
}

/// As [`router`], with `mounted` (the account console) served on the same
/// port, inside the same layers.
pub fn router_with(
    state: RestAuthState,
    context: ServiceContext,
    mounted: Router,
) -> Result<Router, Error> {
    let document: Arc<str> = openapi::document().into();
    let import_max_bytes = state.import_max_bytes;
    let routes = Router::new()
        .route("/login", post(login))
        .route("/login/mfa", post(mfa::login_mfa))
        .route("/login/mfa/totp", post(mfa::login_enrol))
        .route("/password/forgot", post(mfa::forgot))
        .route("/password/reset", post(mfa::reset))
        .route("/email/verify", post(mfa::verify_email))
        .route("/mfa", get(mfa::list))
        .route("/mfa/totp", post(mfa::begin_totp))
        .route("/mfa/totp/confirm", post(mfa::confirm_totp))
        .route("/mfa/totp/remove", post(mfa::remove_totp))
        .route("/mfa/recovery-codes", post(mfa::recovery_codes))
        .route(
            "/admin/users/{id}/factors",
            get(mfa::admin_list).delete(mfa::admin_reset),
        )
        .route("/register", post(register))
        // A profile is personal, and so is why it is refused: no cache
        // keeps either (the layer covers the extractors' refusals too).
        .route(
            "/profile",
            get(profile)
                .put(update_profile)
                .layer(axum::middleware::map_response(hub_runtime::no_store)),
        )
        .route("/logout", post(logout))
        .route(
            "/admin/users/import",
            post(import_users).layer(axum::extract::DefaultBodyLimit::max(import_max_bytes)),
        )
        // A new secret is shown once and never cached (nor is a refusal).
        .route(
            "/admin/webhooks",
            get(webhooks::list)
                .post(webhooks::add.layer(axum::middleware::map_response(hub_runtime::no_store))),
        )
        .route(
            "/admin/webhooks/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route(
            "/admin/webhooks/{id}/rotate-secret",
            post(
                webhooks::rotate_secret
                    .layer(axum::middleware::map_response(hub_runtime::no_store)),
            ),
        )
        .route("/admin/webhooks/{id}/replay", post(webhooks::replay))
        .route("/admin/webhooks/{id}/enable", post(webhooks::enable))
        .route("/events/ws", get(feed::events_ws))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route(
            "/oauth2/userinfo",
            get(oauth::userinfo).post(oauth::userinfo_post),
        )
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .nest("/scim/v2", scim::routes())
        .route("/test-db", get(test_db))
        .route(
            "/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .with_state(Arc::new(state))
        .merge(mounted);
    Ok(context.serve(routes))
}

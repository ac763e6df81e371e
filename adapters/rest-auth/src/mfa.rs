//! Second factors over REST: the sign-in's second step (`/login/mfa`), a
//! signed-in user's own factors (`/mfa`), and an admin's view and reset of
//! anyone's (`/admin/users/{id}/factors`). Every rule is hub-core's
//! [`hub_core::Factors`]; these only carry JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use hub_core::{Challenge, Error, ErrorCode, Factors, SecondStep, UserId};
use hub_runtime::cookies::{DEVICE_COOKIE, cookie, device_cookie};
use hub_runtime::{BearerToken, HttpError, JsonBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::RestAuthState;
use crate::api::{ErrorBody, LoginResponse};

/// Debug for bodies that carry a ticket, a code or a secret: their name only.
macro_rules! redacted_debug {
    ($($name:ident),+) => {$(
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    )+};
}

redacted_debug!(
    MfaRequiredBody,
    MfaChallenge,
    MfaLoginRequest,
    MfaLoginResponse,
    TicketRequest,
    CodeRequest,
    TotpSetup,
    RecoveryCodes,
    TotpConfirmed
);

/// The 401 of a sign-in that needs its second step: the hub's error shape,
/// with the ticket and what it can be answered with.
#[derive(Serialize, ToSchema)]
pub struct MfaRequiredBody {
    pub error: crate::api::ErrorDetail,
    pub request_id: Option<String>,
    /// Only with `MFA_REQUIRED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa: Option<MfaChallenge>,
}

#[derive(Serialize, ToSchema)]
pub struct MfaChallenge {
    /// Single use; send it to `POST /login/mfa` with a code.
    pub ticket: String,
    /// What the step takes: `totp`, `recovery_code`.
    #[schema(example = json!(["totp", "recovery_code"]))]
    pub factors: Vec<String>,
    /// The account must set up an authenticator first
    /// (`POST /login/mfa/totp`), then send its first code.
    pub enrol: bool,
    /// Seconds the ticket lives.
    pub expires_in: u64,
}

/// The second step's answer: a TOTP code or a recovery code.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    pub ticket: String,
    /// Six digits from the authenticator app, or a recovery code
    /// (`xxxx-xxxx-xxxx`).
    #[schema(example = "123456", max_length = 64)]
    pub code: String,
}

/// A sign-in completed by its second step.
#[derive(Serialize, ToSchema)]
pub struct MfaLoginResponse {
    #[serde(flatten)]
    pub login: LoginResponse,
    /// Made when this step set up the account's first factor: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    pub ticket: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    #[schema(example = "123456", max_length = 64)]
    pub code: String,
}

/// The current password: what a change of the account's factors asks for,
/// so a stolen token alone cannot make one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    #[schema(max_length = 1024)]
    pub current_password: String,
}

/// Removing the authenticator app: the password and a current code from
/// the app (a recovery code does not do).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveTotpRequest {
    #[schema(max_length = 1024)]
    pub current_password: String,
    #[schema(example = "123456", max_length = 64)]
    pub code: String,
}

/// An authenticator being set up: what the app is shown.
#[derive(Serialize, ToSchema)]
pub struct TotpSetup {
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The `otpauth://` URI, for a QR code.
    pub otpauth_uri: String,
}

/// Which factors an account has; never their secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct FactorList {
    pub totp: bool,
    /// Passkeys registered (in the console).
    pub passkeys: u32,
    pub recovery_codes_left: u32,
    /// What a sign-in's second step takes now.
    pub factors: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten codes, each usable once; shown once, stored hashed.
    pub recovery_codes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TotpConfirmed {
    /// Made when the account had none: shown once.
    pub recovery_codes: Option<Vec<String>>,
}

fn factors(state: &RestAuthState) -> Result<&Factors, HttpError> {
    state.sign_in.factors().ok_or_else(|| {
        Error::with_message(ErrorCode::NotFound, "second factors are not configured").into()
    })
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The caller of `token`, once `password` is theirs: what a change of the
/// account's factors asks for (within the current-password budgets).
async fn proven(
    state: &RestAuthState,
    addr: SocketAddr,
    token: &str,
    password: String,
) -> Result<hub_core::User, HttpError> {
    let principal = state.authentication.authenticate(token).await?;
    Ok(state
        .sign_in
        .confirm_password(addr.ip(), &principal, Some(password))
        .await?)
}

/// The 401 `MFA_REQUIRED` answer to `POST /login`.
pub(crate) fn mfa_required(challenge: Challenge, headers: &HeaderMap) -> Response {
    let body = MfaRequiredBody {
        error: crate::api::ErrorDetail {
            code: ErrorCode::MfaRequired.as_str().to_owned(),
            message: ErrorCode::MfaRequired.default_message().to_owned(),
        },
        request_id: headers
            .get(&hub_runtime::http::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        mfa: Some(MfaChallenge {
            ticket: challenge.ticket,
            factors: challenge.factors.iter().map(|f| (*f).to_owned()).collect(),
            enrol: challenge.enrol,
            expires_in: challenge.expires_in,
        }),
    };
    no_store((StatusCode::UNAUTHORIZED, Json(body)).into_response())
}

/// `POST /login/mfa`
#[utoipa::path(
    post, path = "/login/mfa", tag = "auth",
    request_body = MfaLoginRequest,
    responses(
        (status = 200, description = "Signed in, as `POST /login` does", body = MfaLoginResponse),
        (status = 400, description = "A malformed body", body = ErrorBody),
        (status = 401, description = "INVALID_MFA_CODE: wrong, expired or already used; INVALID_MFA_TICKET: unknown, used, expired or out of tries; INVALID_CREDENTIALS: the password changed since the first step", body = ErrorBody),
        (status = 403, description = "ACCOUNT_DISABLED", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: this client's or this account's wrong codes; see Retry-After", body = ErrorBody),
    )
)]
pub(crate) async fn login_mfa(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<MfaLoginRequest>,
) -> Result<Response, HttpError> {
    let done = state
        .sign_in
        .complete(
            addr.ip(),
            SecondStep {
                ticket: request.ticket,
                answer: hub_core::factors::Answer::Code(request.code),
                user_agent: headers
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                device_token: cookie(&headers, DEVICE_COOKIE).map(str::to_owned),
            },
        )
        .await?;
    let outcome = done.signed_in.outcome;
    let mut response = Json(MfaLoginResponse {
        login: LoginResponse {
            token: outcome.token.token,
            token_type: "Bearer".to_owned(),
            expires_in: outcome.token.expires_in,
            session_id: outcome.session.id.as_uuid(),
        },
        recovery_codes: done.recovery_codes,
    })
    .into_response();
    if let Some(value) = done
        .signed_in
        .device_token
        .and_then(|device| device_cookie(&device, state.secure_cookies))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(no_store(response))
}

/// `POST /login/mfa/totp`
#[utoipa::path(
    post, path = "/login/mfa/totp", tag = "auth",
    request_body = TicketRequest,
    responses(
        (status = 200, description = "The authenticator to set up, for a ticket whose `enrol` is true; its first code goes to `POST /login/mfa`", body = TotpSetup),
        (status = 400, description = "INVALID_REQUEST: the account has a factor already, or a malformed body", body = ErrorBody),
        (status = 401, description = "INVALID_MFA_TICKET", body = ErrorBody),
    )
)]
pub(crate) async fn login_enrol(
    State(state): State<Arc<RestAuthState>>,
    JsonBody(request): JsonBody<TicketRequest>,
) -> Result<Response, HttpError> {
    let enrolment = state.sign_in.enrol(&request.ticket).await?;
    Ok(no_store(
        Json(TotpSetup {
            secret: enrolment.secret,
            otpauth_uri: enrolment.uri,
        })
        .into_response(),
    ))
}

/// `GET /mfa`
#[utoipa::path(
    get, path = "/mfa", tag = "mfa",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's factors", body = FactorList),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
) -> Result<Json<FactorList>, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    Ok(Json(summary(factors(&state)?, principal.user_id).await?))
}

async fn summary(factors: &Factors, user: UserId) -> Result<FactorList, HttpError> {
    let summary = factors.summary(user).await?;
    Ok(FactorList {
        totp: summary.totp,
        passkeys: summary.passkeys,
        recovery_codes_left: summary.recovery_codes_left,
        factors: summary.names().iter().map(|f| (*f).to_owned()).collect(),
    })
}

/// `POST /mfa/totp`
#[utoipa::path(
    post, path = "/mfa/totp", tag = "mfa",
    security(("bearer" = [])),
    request_body = PasswordRequest,
    responses(
        (status = 200, description = "A new secret, awaiting its first code at `POST /mfa/totp/confirm` (within ten minutes)", body = TotpSetup),
        (status = 400, description = "A malformed body", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN, or INVALID_CREDENTIALS: the current password is wrong", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: current-password checks", body = ErrorBody),
        (status = 409, description = "TOTP_ALREADY_ENABLED", body = ErrorBody),
    )
)]
pub(crate) async fn begin_totp(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    BearerToken(token): BearerToken,
    JsonBody(request): JsonBody<PasswordRequest>,
) -> Result<Response, HttpError> {
    let user = proven(&state, addr, &token, request.current_password).await?;
    let enrolment = factors(&state)?.begin_totp(&user).await?;
    Ok(no_store(
        Json(TotpSetup {
            secret: enrolment.secret,
            otpauth_uri: enrolment.uri,
        })
        .into_response(),
    ))
}

/// `POST /mfa/totp/confirm`
#[utoipa::path(
    post, path = "/mfa/totp/confirm", tag = "mfa",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "The authenticator is the account's; every other session is revoked", body = TotpConfirmed),
        (status = 400, description = "INVALID_REQUEST: no authenticator is being set up, or a malformed body", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN or INVALID_MFA_CODE", body = ErrorBody),
        (status = 409, description = "TOTP_ALREADY_ENABLED", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: the account's wrong codes", body = ErrorBody),
    )
)]
pub(crate) async fn confirm_totp(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    JsonBody(request): JsonBody<CodeRequest>,
) -> Result<Response, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let recovery_codes = factors(&state)?
        .confirm(principal.user_id, &request.code, Some(principal.session_id))
        .await?;
    Ok(no_store(
        Json(TotpConfirmed { recovery_codes }).into_response(),
    ))
}

/// `POST /mfa/totp/remove`
#[utoipa::path(
    post, path = "/mfa/totp/remove", tag = "mfa",
    security(("bearer" = [])),
    request_body = RemoveTotpRequest,
    responses(
        (status = 204, description = "Removed, with the recovery codes"),
        (status = 400, description = "A malformed body", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no authenticator app is set up", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN, INVALID_CREDENTIALS (the current password) or INVALID_MFA_CODE", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS", body = ErrorBody),
    )
)]
pub(crate) async fn remove_totp(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    BearerToken(token): BearerToken,
    JsonBody(request): JsonBody<RemoveTotpRequest>,
) -> Result<StatusCode, HttpError> {
    let user = proven(&state, addr, &token, request.current_password).await?;
    factors(&state)?.remove_totp(user.id, &request.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /mfa/recovery-codes`
#[utoipa::path(
    post, path = "/mfa/recovery-codes", tag = "mfa",
    security(("bearer" = [])),
    request_body = PasswordRequest,
    responses(
        (status = 200, description = "Ten new codes; every earlier one stops working", body = RecoveryCodes),
        (status = 400, description = "INVALID_REQUEST: no factor to recover, or a malformed body", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN, or INVALID_CREDENTIALS: the current password is wrong", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: current-password checks", body = ErrorBody),
    )
)]
pub(crate) async fn recovery_codes(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    BearerToken(token): BearerToken,
    JsonBody(request): JsonBody<PasswordRequest>,
) -> Result<Response, HttpError> {
    let user = proven(&state, addr, &token, request.current_password).await?;
    let recovery_codes = factors(&state)?.regenerate_recovery_codes(user.id).await?;
    Ok(no_store(
        Json(RecoveryCodes { recovery_codes }).into_response(),
    ))
}

async fn admin_target(
    state: &RestAuthState,
    token: &str,
    id: &str,
) -> Result<(UserId, UserId), HttpError> {
    let principal = state.authentication.authenticate(token).await?;
    state
        .authentication
        .require_admin(&principal, "an account's factors are for admins")
        .await?;
    let user = UserId::parse(id)?;
    if state.authentication.user(user).await?.is_none() {
        return Err(ErrorCode::UserNotFound.into());
    }
    Ok((principal.user_id, user))
}

/// `GET /admin/users/{id}/factors`
#[utoipa::path(
    get, path = "/admin/users/{id}/factors", tag = "mfa",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Which factors the account has; never a secret", body = FactorList),
        (status = 400, description = "INVALID_USER_ID", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: for admins", body = ErrorBody),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn admin_list(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<Json<FactorList>, HttpError> {
    let (_, user) = admin_target(&state, &token, &id).await?;
    Ok(Json(summary(factors(&state)?, user).await?))
}

/// `DELETE /admin/users/{id}/factors`
#[utoipa::path(
    delete, path = "/admin/users/{id}/factors", tag = "mfa",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Every factor removed; every session and device of the user revoked"),
        (status = 400, description = "INVALID_USER_ID", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: for admins", body = ErrorBody),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn admin_reset(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let (admin, user) = admin_target(&state, &token, &id).await?;
    factors(&state)?.reset(user, admin).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- getting back in by mail ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotRequest {
    #[schema(example = "alice@example.com", max_length = 254)]
    pub email: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForgotAnswer {
    #[schema(
        example = "if an account has this address, a reset link is on its way; it works once, for 30 minutes"
    )]
    pub status: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The `token` of the mailed link.
    pub token: String,
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The `token` of the mailed link.
    pub token: String,
}

redacted_debug!(
    ResetRequest,
    VerifyRequest,
    PasswordRequest,
    RemoveTotpRequest
);

fn recovery(state: &RestAuthState) -> Result<&hub_core::recovery::Recovery, HttpError> {
    state
        .sign_in
        .recovery()
        .ok_or_else(|| Error::new(ErrorCode::MailDisabled).into())
}

/// `POST /password/forgot`
#[utoipa::path(
    post, path = "/password/forgot", tag = "auth",
    request_body = ForgotRequest,
    responses(
        (status = 202, description = "The same answer, at once, whether the address is anyone's or not", body = ForgotAnswer),
        (status = 400, description = "INVALID_EMAIL", body = ErrorBody),
        (status = 429, description = "TOO_MANY_ATTEMPTS: this client's requests are limited", body = ErrorBody),
        (status = 404, description = "MAIL_DISABLED: this server sends no mail", body = ErrorBody),
    )
)]
pub(crate) async fn forgot(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    JsonBody(request): JsonBody<ForgotRequest>,
) -> Result<Response, HttpError> {
    state.sign_in.forgot_password(addr.ip(), &request.email)?;
    Ok(no_store(
        (
            StatusCode::ACCEPTED,
            Json(ForgotAnswer {
                status: "if an account has this address, a reset link is on its way; it works once, for 30 minutes".to_owned(),
            }),
        )
            .into_response(),
    ))
}

/// `POST /password/reset`
#[utoipa::path(
    post, path = "/password/reset", tag = "auth",
    request_body = ResetRequest,
    responses(
        (status = 204, description = "The password is changed; every session and device of the account is signed out"),
        (status = 400, description = "INVALID_LINK: unknown, used or expired; WEAK_PASSWORD", body = ErrorBody),
        (status = 404, description = "MAIL_DISABLED", body = ErrorBody),
    )
)]
pub(crate) async fn reset(
    State(state): State<Arc<RestAuthState>>,
    JsonBody(request): JsonBody<ResetRequest>,
) -> Result<StatusCode, HttpError> {
    recovery(&state)?
        .reset(&request.token, &request.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /email/verify`
#[utoipa::path(
    post, path = "/email/verify", tag = "users",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The mailed address is the account's now", body = crate::api::Profile),
        (status = 400, description = "INVALID_LINK: unknown, used or expired; a malformed body", body = ErrorBody),
        (status = 404, description = "MAIL_DISABLED", body = ErrorBody),
        (status = 409, description = "EMAIL_TAKEN: another account took the address meanwhile", body = ErrorBody),
    )
)]
pub(crate) async fn verify_email(
    State(state): State<Arc<RestAuthState>>,
    JsonBody(request): JsonBody<VerifyRequest>,
) -> Result<Json<crate::api::Profile>, HttpError> {
    let user = recovery(&state)?.verify_email(&request.token).await?;
    Ok(Json(user.into()))
}

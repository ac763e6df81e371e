//! The OAuth 2.0 and OpenID Connect endpoints that need no browser:
//! discovery, `POST /oauth2/token` (authorization code with PKCE, refresh
//! with rotation, client credentials), `/oauth2/userinfo`,
//! `POST /oauth2/introspect` (RFC 7662) and `POST /oauth2/revoke` (RFC 7009).
//! The browser's steps (authorize, consent, logout) are the console's.
//!
//! They speak OAuth, not polyhub's JSON: form-encoded requests, and errors
//! as `{"error", "error_description"}` with RFC 6749's codes. Clients
//! authenticate with HTTP Basic (`client_secret_basic`, id and secret
//! form-encoded first, §2.3.1) or in the body (`client_secret_post`), never
//! both.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hub_core::{ClientAuthMethod, OAuthClient, OAuthError, OAuthErrorCode, PresentedClient};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::RestAuthState;

/// An OAuth error (RFC 6749 §5.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// An RFC 6749, 7009 or 7662 error code.
    #[schema(example = "invalid_client")]
    pub error: String,
    pub error_description: String,
}

/// A token endpoint's success (RFC 6749 §5.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    /// A JWT (EdDSA): a client's own (`typ: at+jwt`) or, from a code or a
    /// refresh, the user's polyhub token for the grant's session.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    #[schema(example = "images:read")]
    pub scope: String,
    /// A new refresh token (each refresh rotates it; a used one presented
    /// again revokes the grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// An RS256 ID token, with scope `openid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// The form of a token, introspection or revocation request (only the
/// parameters polyhub reads; others are ignored, as RFC 6749 §3.2 asks).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OAuthForm {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    /// The token to introspect or revoke.
    token: Option<String>,
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// An error answer: 401 with `WWW-Authenticate` for a client that failed
/// to authenticate, 503 when the store is away, 500 for the rest of the
/// server's failures, 400 otherwise.
#[derive(Debug)]
pub struct OAuthFailure(OAuthError);

impl From<OAuthError> for OAuthFailure {
    fn from(error: OAuthError) -> Self {
        Self(error)
    }
}

fn failure(code: OAuthErrorCode, description: impl Into<String>) -> OAuthFailure {
    OAuthError::new(code, description).into()
}

impl IntoResponse for OAuthFailure {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (
            status,
            Json(OAuthErrorBody {
                error: self.0.code.as_str().to_owned(),
                error_description: self.0.description,
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            // §5.2: the scheme the endpoint takes.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"polyhub\", charset=\"UTF-8\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The longest value of any parameter read; an access token is ~400 bytes.
const MAX_PARAMETER: usize = 4096;

/// The form's parameters: `application/x-www-form-urlencoded`, each at most
/// once (RFC 6749 §3.1, §3.2).
fn form(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HashMap<String, String>, OAuthFailure> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_type {
        return Err(failure(
            OAuthErrorCode::InvalidRequest,
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let body = body.map_err(|e| failure(OAuthErrorCode::InvalidRequest, e.body_text()))?;
    let mut parameters = HashMap::new();
    for (name, value) in form_urlencoded::parse(&body) {
        if value.len() > MAX_PARAMETER {
            return Err(failure(
                OAuthErrorCode::InvalidRequest,
                format!("the parameter {name:.32} is longer than {MAX_PARAMETER} bytes"),
            ));
        }
        if value.is_empty() {
            // RFC 6749 §3.1: a parameter sent without a value is omitted.
            continue;
        }
        if parameters
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(failure(
                OAuthErrorCode::InvalidRequest,
                format!("the parameter {name:.32} is given more than once"),
            ));
        }
    }
    Ok(parameters)
}

/// How the client presented itself (RFC 6749 §2.3.1).
fn presented_client(
    headers: &HeaderMap,
    parameters: &mut HashMap<String, String>,
) -> Result<PresentedClient, OAuthFailure> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, value) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| value.trim())
        });
    let body_id = parameters.remove("client_id");
    let body_secret = parameters.remove("client_secret");
    let Some(basic) = basic else {
        let id = body_id.ok_or_else(|| {
            failure(
                OAuthErrorCode::InvalidClient,
                "authenticate the client: HTTP Basic (client_secret_basic) or client_id and client_secret in the body (client_secret_post)",
            )
        })?;
        let method = if body_secret.is_some() {
            ClientAuthMethod::Post
        } else {
            ClientAuthMethod::None
        };
        return Ok(PresentedClient {
            id,
            secret: body_secret,
            method,
        });
    };
    let malformed = || {
        failure(
            OAuthErrorCode::InvalidClient,
            "the Basic credentials are not base64 of form-encoded client_id:client_secret",
        )
    };
    let decoded = STANDARD.decode(basic).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| malformed())
    };
    let (id, secret) = (unescape(id)?, unescape(secret)?);
    if body_secret.is_some() {
        return Err(failure(
            OAuthErrorCode::InvalidRequest,
            "use one client authentication method: HTTP Basic or client_secret in the body, not both",
        ));
    }
    if body_id.as_ref().is_some_and(|body_id| *body_id != id) {
        return Err(failure(
            OAuthErrorCode::InvalidRequest,
            "client_id in the body is not the client of the Basic credentials",
        ));
    }
    Ok(PresentedClient {
        id,
        secret: Some(secret),
        method: ClientAuthMethod::Basic,
    })
}

/// The client, authenticated.
async fn client(
    state: &RestAuthState,
    headers: &HeaderMap,
    parameters: &mut HashMap<String, String>,
) -> Result<OAuthClient, OAuthFailure> {
    let presented = presented_client(headers, parameters)?;
    Ok(state.oauth.authenticate_client(&presented).await?)
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `POST /oauth2/token`
#[utoipa::path(
    post, path = "/oauth2/token", tag = "oauth",
    request_body(content = OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "An access token (RFC 6749 §5.1)", body = TokenBody),
        (status = 400, description = "invalid_request, unauthorized_client, unsupported_grant_type or invalid_scope", body = OAuthErrorBody),
        (status = 401, description = "invalid_client: unknown client, wrong secret or wrong method", body = OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable: the database cannot be reached", body = OAuthErrorBody),
    )
)]
pub async fn token(
    State(state): State<Arc<RestAuthState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthFailure> {
    let mut parameters = form(&headers, body)?;
    let client = client(&state, &headers, &mut parameters).await?;
    let grant = parameters
        .get("grant_type")
        .ok_or_else(|| failure(OAuthErrorCode::InvalidRequest, "grant_type is required"))?;
    let required = |name: &str| {
        parameters.get(name).map(String::as_str).ok_or_else(|| {
            failure(
                OAuthErrorCode::InvalidRequest,
                format!("{name} is required"),
            )
        })
    };
    let user_tokens = |tokens: hub_core::UserTokens| {
        no_store(
            Json(TokenBody {
                access_token: tokens.access_token,
                token_type: "Bearer",
                expires_in: tokens.expires_in,
                scope: tokens.scope.to_string(),
                refresh_token: tokens.refresh_token,
                id_token: tokens.id_token,
            })
            .into_response(),
        )
    };
    match grant.as_str() {
        "authorization_code" => {
            let tokens = state
                .oidc
                .exchange_code(
                    &client,
                    required("code")?,
                    parameters.get("redirect_uri").map(String::as_str),
                    parameters.get("code_verifier").map(String::as_str),
                    Some(addr.ip()),
                )
                .await?;
            Ok(user_tokens(tokens))
        }
        "refresh_token" => {
            let tokens = state
                .oidc
                .refresh(
                    &client,
                    required("refresh_token")?,
                    parameters.get("scope").map(String::as_str),
                )
                .await?;
            Ok(user_tokens(tokens))
        }
        "client_credentials" => {
            let issued = state
                .oauth
                .client_credentials(&client, parameters.get("scope").map(String::as_str))?;
            tracing::info!(client_id = %client.id, scope = %issued.scope, "client credentials granted");
            Ok(no_store(
                Json(TokenBody {
                    access_token: issued.access_token,
                    token_type: "Bearer",
                    expires_in: issued.expires_in,
                    scope: issued.scope.to_string(),
                    refresh_token: None,
                    id_token: None,
                })
                .into_response(),
            ))
        }
        other => Err(failure(
            OAuthErrorCode::UnsupportedGrantType,
            format!(
                "grant_type {:?} is not served; use authorization_code, refresh_token or client_credentials",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// `POST /oauth2/introspect`
#[utoipa::path(
    post, path = "/oauth2/introspect", tag = "oauth",
    request_body(content = OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{\"active\": false}` for any token that is not active; otherwise its claims (RFC 7662 §2.2)", body = Object),
        (status = 400, description = "invalid_request: no token", body = OAuthErrorBody),
        (status = 401, description = "invalid_client: the client must authenticate (a public one sees only its own tokens)", body = OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable", body = OAuthErrorBody),
    )
)]
pub async fn introspect(
    State(state): State<Arc<RestAuthState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthFailure> {
    let mut parameters = form(&headers, body)?;
    let client = client(&state, &headers, &mut parameters).await?;
    let token = parameters
        .get("token")
        .ok_or_else(|| failure(OAuthErrorCode::InvalidRequest, "token is required"))?;
    let answer: Value = state.oauth.introspect(&client, token).await?;
    Ok(no_store(Json(answer).into_response()))
}

/// `POST /oauth2/revoke`
#[utoipa::path(
    post, path = "/oauth2/revoke", tag = "oauth",
    request_body(content = OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or not a valid token (RFC 7009 §2.2)"),
        (status = 400, description = "invalid_request: no token; unauthorized_client: the token is another client's", body = OAuthErrorBody),
        (status = 401, description = "invalid_client", body = OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable", body = OAuthErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<Arc<RestAuthState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthFailure> {
    let mut parameters = form(&headers, body)?;
    let client = client(&state, &headers, &mut parameters).await?;
    let token = parameters
        .get("token")
        .ok_or_else(|| failure(OAuthErrorCode::InvalidRequest, "token is required"))?;
    // A grant's refresh or access token ends the grant; otherwise a
    // client's own token.
    if !state.oidc.revoke(&client, token).await? {
        state.oauth.revoke(&client, token).await?;
    }
    Ok(no_store(StatusCode::OK.into_response()))
}

/// `GET /.well-known/openid-configuration` (OpenID Connect Discovery 1.0
/// §3, and RFC 8414's fields): what this provider serves, truthfully.
#[utoipa::path(
    get, path = "/.well-known/openid-configuration", tag = "oauth",
    responses((status = 200, description = "The provider's metadata", body = Object))
)]
pub async fn discovery(State(state): State<Arc<RestAuthState>>) -> Response {
    let issuer = state.oidc.issuer();
    let at = |path: &str| format!("{issuer}{path}");
    let methods = ["client_secret_basic", "client_secret_post", "none"];
    let document = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": at("/oauth2/authorize"),
        "token_endpoint": at("/oauth2/token"),
        "userinfo_endpoint": at("/oauth2/userinfo"),
        "jwks_uri": at("/.well-known/jwks.json"),
        "end_session_endpoint": at("/oauth2/logout"),
        "introspection_endpoint": at("/oauth2/introspect"),
        "revocation_endpoint": at("/oauth2/revoke"),
        "scopes_supported": hub_core::oauth::SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "EdDSA"],
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash",
                             "sid", "preferred_username", "updated_at", "email", "email_verified"],
        "authorization_response_iss_parameter_supported": true,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
    });
    let mut response = Json(document).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A userinfo refusal (RFC 6750 §3): 401 `invalid_token` or 403
/// `insufficient_scope`, with the Bearer challenge.
fn bearer_refusal(error: &hub_core::Error) -> Response {
    let (status, code) = match error.kind() {
        hub_core::ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "insufficient_scope"),
        hub_core::ErrorKind::Unavailable | hub_core::ErrorKind::TooMany => {
            return OAuthFailure(OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "the service is unavailable; try again shortly",
            ))
            .into_response();
        }
        hub_core::ErrorKind::Internal => {
            hub_runtime::errors::log_failure(error);
            return OAuthFailure(OAuthError::new(
                OAuthErrorCode::ServerError,
                "the request could not be served",
            ))
            .into_response();
        }
        _ => (StatusCode::UNAUTHORIZED, "invalid_token"),
    };
    let mut response = (
        status,
        Json(OAuthErrorBody {
            error: code.to_owned(),
            error_description: error.message().to_owned(),
        }),
    )
        .into_response();
    let challenge = format!("Bearer realm=\"polyhub\", error=\"{code}\"");
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    no_store(response)
}

/// The bearer token of a userinfo request: the Authorization header, or
/// `access_token` in a POST's form (RFC 6750 §2.2), not both.
fn userinfo_token(headers: &HeaderMap, form_token: Option<String>) -> Option<String> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    match (header, form_token) {
        (Some(token), None) | (None, Some(token)) => Some(token),
        _ => None,
    }
}

async fn userinfo_of(state: &RestAuthState, token: Option<String>) -> Response {
    let Some(token) = token else {
        return bearer_refusal(&hub_core::Error::with_message(
            hub_core::ErrorCode::InvalidToken,
            "send the access token once: Authorization: Bearer, or access_token in a POST form",
        ));
    };
    match state.oidc.userinfo(&token).await {
        Ok(claims) => no_store(Json(claims).into_response()),
        Err(e) => bearer_refusal(&e),
    }
}

/// `GET /oauth2/userinfo` (OIDC Core §5.3)
#[utoipa::path(
    get, path = "/oauth2/userinfo", tag = "oauth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`sub` and the claims the grant's scopes allow", body = Object),
        (status = 401, description = "invalid_token, with a Bearer challenge", body = OAuthErrorBody),
        (status = 403, description = "insufficient_scope: the grant lacks openid", body = OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable", body = OAuthErrorBody),
    )
)]
pub async fn userinfo(State(state): State<Arc<RestAuthState>>, headers: HeaderMap) -> Response {
    userinfo_of(&state, userinfo_token(&headers, None)).await
}

/// `POST /oauth2/userinfo`
#[utoipa::path(
    post, path = "/oauth2/userinfo", tag = "oauth",
    security(("bearer" = [])),
    request_body(content = OAuthForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "As GET", body = Object),
        (status = 400, description = "invalid_request: a body that is not a form", body = OAuthErrorBody),
        (status = 401, description = "invalid_token", body = OAuthErrorBody),
        (status = 403, description = "insufficient_scope", body = OAuthErrorBody),
        (status = 503, description = "temporarily_unavailable", body = OAuthErrorBody),
    )
)]
pub async fn userinfo_post(
    State(state): State<Arc<RestAuthState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form_token = if headers.contains_key(header::CONTENT_TYPE) {
        match form(&headers, body) {
            Ok(mut parameters) => parameters.remove("access_token"),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };
    userinfo_of(&state, userinfo_token(&headers, form_token)).await
}

//! The OAuth 2.0 endpoints that need no browser: `POST /oauth2/token`
//! (client credentials, RFC 6749 §4.4), `POST /oauth2/introspect` (RFC 7662)
//! and `POST /oauth2/revoke` (RFC 7009).
//!
//! They speak OAuth, not polyhub's JSON: form-encoded requests, and errors
//! as `{"error", "error_description"}` with RFC 6749's codes. Clients
//! authenticate with HTTP Basic (`client_secret_basic`, id and secret
//! form-encoded first, §2.3.1) or in the body (`client_secret_post`), never
//! both.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
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
    /// A JWT (`typ: at+jwt`, EdDSA) naming the client and its scopes.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    #[schema(example = "images:read")]
    pub scope: String,
}

/// The form of a token, introspection or revocation request (only the
/// parameters polyhub reads; others are ignored, as RFC 6749 §3.2 asks).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct OAuthForm {
    /// `client_credentials`.
    grant_type: Option<String>,
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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthFailure> {
    let mut parameters = form(&headers, body)?;
    let client = client(&state, &headers, &mut parameters).await?;
    let grant = parameters
        .get("grant_type")
        .ok_or_else(|| failure(OAuthErrorCode::InvalidRequest, "grant_type is required"))?;
    match grant.as_str() {
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
                })
                .into_response(),
            ))
        }
        other => Err(failure(
            OAuthErrorCode::UnsupportedGrantType,
            format!(
                "grant_type {:?} is not served here; this endpoint grants client_credentials",
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
        (status = 401, description = "invalid_client: a confidential client must authenticate", body = OAuthErrorBody),
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
    if client.is_public() {
        return Err(failure(
            OAuthErrorCode::InvalidClient,
            "introspection is for confidential clients",
        ));
    }
    let token = parameters
        .get("token")
        .ok_or_else(|| failure(OAuthErrorCode::InvalidRequest, "token is required"))?;
    let answer: Value = state.oauth.introspect(token).await?;
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
    state.oauth.revoke(&client, token).await?;
    Ok(no_store(StatusCode::OK.into_response()))
}

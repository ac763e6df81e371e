//! SCIM 2.0 (RFC 7644) under `/scim/v2`: what an enterprise directory
//! provisions users and groups through. It speaks SCIM, not polyhub's
//! JSON: `application/scim+json` (plain `application/json` is accepted
//! too), errors as `urn:ietf:params:scim:api:messages:2.0:Error` with
//! `status` and `scimType`, ETags with `If-Match`.
//!
//! Access: a client-credentials bearer token with the scope `scim`, and
//! nothing else (a user's token is refused, an admin's too). Every answer,
//! refusals included, is in SCIM's shape, and none is cached.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get};
use hub_core::ErrorCode;
use hub_core::scim::{AttrPath, Filter, ListQuery, Resource, ScimError, etag, parse_etag, project};
use serde_json::Value;

use crate::RestAuthState;

const SCIM_JSON: &str = "application/scim+json";
/// The largest request body: a group of many members, a large PATCH.
pub const MAX_BODY: usize = 1 << 20;
/// A page's size when the client names none.
const DEFAULT_COUNT: u32 = 100;

type Shared = State<Arc<RestAuthState>>;

/// A SCIM answer: a status, a body, and an ETag for one resource.
struct Answer {
    status: StatusCode,
    body: Value,
    version: Option<i64>,
    location: Option<String>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            version: None,
            location: None,
        }
    }

    fn resource(status: StatusCode, body: Value, version: i64) -> Self {
        let location = body
            .pointer("/meta/location")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            status,
            body,
            version: Some(version),
            location: (status == StatusCode::CREATED)
                .then_some(location)
                .flatten(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(v) = self.version
            && let Ok(value) = HeaderValue::from_str(&etag(v))
        {
            headers.insert(header::ETAG, value);
        }
        if let Some(l) = self.location
            && let Ok(value) = HeaderValue::from_str(&l)
        {
            headers.insert(header::LOCATION, value);
        }
        response
    }
}

/// A refusal in SCIM's shape.
struct Refusal(ScimError);

impl From<ScimError> for Refusal {
    fn from(e: ScimError) -> Self {
        Self(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.0.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scim\""),
            );
        }
        response
    }
}

type Result<T> = std::result::Result<T, Refusal>;

/// The calling client's id, once its bearer token is a live
/// client-credentials token with the scope `scim`.
async fn client(state: &RestAuthState, headers: &HeaderMap) -> Result<String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ScimError::new(
                401,
                None,
                "a bearer token is required: a client-credentials token with the scope scim",
            )
        })?;
    let principal = state
        .oauth
        .machine(token)
        .await
        .map_err(|e| match e.code() {
            ErrorCode::InvalidToken => ScimError::new(
                401,
                None,
                "the token is invalid, expired or revoked, or not a client-credentials token",
            ),
            _ => ScimError::from(e),
        })?;
    if !principal.scopes.contains("scim") {
        tracing::info!(client = %principal.client_id, "SCIM refused: the token lacks the scope scim");
        return Err(ScimError::new(403, None, "the token lacks the scope scim").into());
    }
    Ok(principal.client_id)
}

fn json_body(body: &Bytes) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ScimError::invalid_syntax(format!("the body is not JSON: {e}")).into())
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) if v.trim() == "*" => Ok(None),
        Some(Ok(v)) => match parse_etag(v) {
            Some(n) => Ok(Some(n)),
            None => Err(ScimError::precondition_failed().into()),
        },
        Some(Err(_)) => Err(ScimError::precondition_failed().into()),
    }
}

fn paths(list: Option<&str>) -> Result<Vec<AttrPath>> {
    list.map(|l| {
        l.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                AttrPath::parse(p)
                    .map_err(|_| ScimError::invalid_value(format!("{p:?} is not an attribute")))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
    })
    .transpose()
    .map(Option::unwrap_or_default)
    .map_err(Refusal)
}

/// A list request's parameters, from the query string or a `.search` body.
struct Listing {
    query: ListQuery,
    attributes: Vec<AttrPath>,
    excluded: Vec<AttrPath>,
}

fn listing(get: &dyn Fn(&str) -> Option<String>, max: u32) -> Result<Listing> {
    let filter = match get("filter") {
        Some(f) if !f.trim().is_empty() => Some(Filter::parse(&f)?),
        _ => None,
    };
    let sort_by = match get("sortBy") {
        Some(s) if !s.trim().is_empty() => Some(
            AttrPath::parse(s.trim())
                .map_err(|_| ScimError::invalid_value(format!("cannot sort by {s:?}")))?,
        ),
        _ => None,
    };
    let descending = match get("sortOrder").as_deref() {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(other) => {
            return Err(ScimError::invalid_value(format!(
                "sortOrder is ascending or descending, not {other:?}"
            ))
            .into());
        }
    };
    let number = |name: &str| -> Result<Option<i64>> {
        get(name)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    Refusal(ScimError::invalid_value(format!(
                        "{name} must be an integer"
                    )))
                })
            })
            .transpose()
    };
    // RFC 7644 §3.4.2.4: below 1 is 1; a negative count is 0.
    let start_index = number("startIndex")?.unwrap_or(1).max(1) as u64;
    let count = number("count")?
        .map(|c| c.clamp(0, i64::from(max)) as u32)
        .unwrap_or(DEFAULT_COUNT.min(max));
    Ok(Listing {
        query: ListQuery {
            filter,
            sort_by,
            descending,
            start_index,
            count,
        },
        attributes: paths(get("attributes").as_deref())?,
        excluded: paths(get("excludedAttributes").as_deref())?,
    })
}

fn query_listing(raw: Option<String>, max: u32) -> Result<Listing> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    listing(
        &|name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        },
        max,
    )
}

fn body_listing(body: &Value, max: u32) -> Result<Listing> {
    listing(
        &|name| {
            let v = hub_core::scim::filter::get_ci(body, name)?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                _ => None,
            }
        },
        max,
    )
}

fn projected(mut list: Value, listing: &Listing) -> Value {
    if let Some(Value::Array(items)) = list.get_mut("Resources") {
        for item in items {
            project(item, &listing.attributes, &listing.excluded);
        }
    }
    list
}

fn single(raw: Option<String>) -> Result<(Vec<AttrPath>, Vec<AttrPath>)> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    Ok((
        paths(get("attributes").as_deref())?,
        paths(get("excludedAttributes").as_deref())?,
    ))
}

// ----- Users and Groups -----

async fn list(
    State(state): Shared,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    kind: Resource,
) -> Result<Answer> {
    client(&state, &headers).await?;
    let listing = query_listing(raw, state.scim.settings().max_results)?;
    let list = state.scim.list(kind, &listing.query).await?;
    Ok(Answer::ok(projected(list, &listing)))
}

async fn search(
    State(state): Shared,
    headers: HeaderMap,
    body: Bytes,
    kind: Resource,
) -> Result<Answer> {
    client(&state, &headers).await?;
    let listing = body_listing(&json_body(&body)?, state.scim.settings().max_results)?;
    let list = state.scim.list(kind, &listing.query).await?;
    Ok(Answer::ok(projected(list, &listing)))
}

async fn create(
    State(state): Shared,
    headers: HeaderMap,
    body: Bytes,
    kind: Resource,
) -> Result<Answer> {
    let client = client(&state, &headers).await?;
    let created = state.scim.create(kind, &json_body(&body)?, &client).await?;
    let version = created
        .pointer("/meta/version")
        .and_then(Value::as_str)
        .and_then(parse_etag)
        .unwrap_or(1);
    Ok(Answer::resource(StatusCode::CREATED, created, version))
}

async fn get_one(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    kind: Resource,
) -> Result<Answer> {
    client(&state, &headers).await?;
    let (attributes, excluded) = single(raw)?;
    let (mut resource, version) = state.scim.get(kind, &id).await?;
    project(&mut resource, &attributes, &excluded);
    Ok(Answer::resource(StatusCode::OK, resource, version))
}

/// PUT (`patch` false) or PATCH of one resource.
async fn change(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
    kind: Resource,
    patch: bool,
) -> Result<Answer> {
    let client = client(&state, &headers).await?;
    let body = json_body(&body)?;
    let if_match = if_match(&headers)?;
    let (resource, version) = if patch {
        state
            .scim
            .patch(kind, &id, &body, if_match, &client)
            .await?
    } else {
        state
            .scim
            .replace(kind, &id, &body, if_match, &client)
            .await?
    };
    Ok(Answer::resource(StatusCode::OK, resource, version))
}

async fn delete(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    kind: Resource,
) -> Result<StatusCode> {
    let client = client(&state, &headers).await?;
    state
        .scim
        .delete(kind, &id, if_match(&headers)?, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/Users` or `/Groups`, `/.search` below it, and `/{id}`.
fn resource_routes(
    router: Router<Arc<RestAuthState>>,
    endpoint: &str,
    kind: Resource,
) -> Router<Arc<RestAuthState>> {
    router
        .route(
            endpoint,
            get(move |s: Shared, h: HeaderMap, q: RawQuery| list(s, h, q, kind))
                .post(move |s: Shared, h: HeaderMap, b: Bytes| create(s, h, b, kind))
                .fallback(method_not_allowed),
        )
        .route(
            &format!("{endpoint}/.search"),
            axum::routing::post(move |s: Shared, h: HeaderMap, b: Bytes| search(s, h, b, kind))
                .fallback(method_not_allowed),
        )
        .route(
            &format!("{endpoint}/{{id}}"),
            get(
                move |s: Shared, h: HeaderMap, id: Path<String>, q: RawQuery| {
                    get_one(s, h, id, q, kind)
                },
            )
            .put(move |s: Shared, h: HeaderMap, id: Path<String>, b: Bytes| {
                change(s, h, id, b, kind, false)
            })
            .patch(move |s: Shared, h: HeaderMap, id: Path<String>, b: Bytes| {
                change(s, h, id, b, kind, true)
            })
            .delete(move |s: Shared, h: HeaderMap, id: Path<String>| delete(s, h, id, kind))
            .fallback(method_not_allowed),
        )
}

// ----- discovery -----

async fn service_provider_config(State(state): Shared, headers: HeaderMap) -> Result<Answer> {
    client(&state, &headers).await?;
    Ok(Answer::ok(state.scim.service_provider_config()))
}

fn list_of(items: Vec<Value>) -> Value {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": items.len(),
        "startIndex": 1,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

async fn resource_types(State(state): Shared, headers: HeaderMap) -> Result<Answer> {
    client(&state, &headers).await?;
    Ok(Answer::ok(list_of(state.scim.resource_types())))
}

async fn resource_type(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer> {
    client(&state, &headers).await?;
    state
        .scim
        .resource_types()
        .into_iter()
        .find(|r| r["id"].as_str() == Some(id.as_str()))
        .map(Answer::ok)
        .ok_or_else(|| ScimError::not_found("ResourceType", &id).into())
}

async fn schemas(State(state): Shared, headers: HeaderMap) -> Result<Answer> {
    client(&state, &headers).await?;
    Ok(Answer::ok(list_of(state.scim.schemas())))
}

async fn schema(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Answer> {
    client(&state, &headers).await?;
    state
        .scim
        .schemas()
        .into_iter()
        .find(|s| s["id"].as_str() == Some(id.as_str()))
        .map(Answer::ok)
        .ok_or_else(|| ScimError::not_found("Schema", &id).into())
}

async fn not_supported(State(state): Shared, headers: HeaderMap) -> Result<Answer> {
    client(&state, &headers).await?;
    Err(ScimError::new(
        501,
        None,
        "not supported here: see /scim/v2/ServiceProviderConfig",
    )
    .into())
}

async fn method_not_allowed() -> Refusal {
    Refusal(ScimError::new(
        405,
        None,
        "this method is not allowed on this endpoint",
    ))
}

async fn not_found() -> Refusal {
    Refusal(ScimError::new(404, None, "no such SCIM endpoint"))
}

fn read_only(route: MethodRouter<Arc<RestAuthState>>) -> MethodRouter<Arc<RestAuthState>> {
    route.fallback(method_not_allowed)
}

/// The routes, to nest under `/scim/v2`.
pub(crate) fn routes() -> Router<Arc<RestAuthState>> {
    let router = resource_routes(Router::new(), "/Users", Resource::User);
    resource_routes(router, "/Groups", Resource::Group)
        .route(
            "/ServiceProviderConfig",
            read_only(get(service_provider_config)),
        )
        .route("/ResourceTypes", read_only(get(resource_types)))
        .route("/ResourceTypes/{id}", read_only(get(resource_type)))
        .route("/Schemas", read_only(get(schemas)))
        .route("/Schemas/{id}", read_only(get(schema)))
        // Bulk, the root search and /Me: answered, in SCIM's shape, as
        // not supported (the configuration says so too).
        .route("/.search", any(not_supported))
        .route("/Bulk", any(not_supported))
        .route("/Me", any(not_supported))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

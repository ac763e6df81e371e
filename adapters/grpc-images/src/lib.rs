//! grpc-images: image delivery over gRPC (port 5015), with the images
//! themselves readable by anyone over plain HTTP on the same port
//! (`GET /images/{key}`).
//!
//! A library: [`router`] builds the service apart from running it, so the
//! `hub` binary and the tests mount the same thing. It speaks gRPC
//! (`polyhub.images.v1.ImageDelivery`), the standard health protocol
//! (`grpc.health.v1`, NOT_SERVING while the store is unreachable) and server
//! reflection (v1), and HTTP/1.1 for image delivery, `/health` and `/ready`.

pub mod pb {
    //! The generated protocol types and service traits.
    #![allow(clippy::all, missing_debug_implementations, unused_qualifications)]
    tonic::include_proto!("polyhub.images.v1");

    pub mod events {
        //! polyhub.events.v1: the live event feed.
        #![allow(clippy::all, missing_debug_implementations, unused_qualifications)]
        tonic::include_proto!("polyhub.events.v1");
    }

    /// The encoded descriptor set of images.proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/images_descriptor.bin"));
}

mod delivery;
pub mod events;
mod upload;

/// Where stored images are read from; hub-core's, so the console shows the
/// same addresses this service answers with.
pub use hub_core::PublicUrls;

/// The OpenAPI 3.1 document of 5015's HTTP side (the gRPC side is
/// described by proto/ and reflection).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "polyhub grpc-images, HTTP side", description = "The HTTP upload and public delivery beside the gRPC ImageDelivery service."),
    paths(upload::upload, delivery::deliver),
    components(schemas(upload::ImageJson, upload::ErrorBody)),
    modifiers(&BearerScheme),
)]
struct HttpApi;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    Http::builder()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    Authentication, DependencyProbe, ErrorCode, ImageLibrary, Principal, StoredImage, UserId,
};
use hub_runtime::ServiceContext;
use hub_runtime::grpc::{BearerAuth, Caller, caller, principal, require_app_scope, status};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::image_delivery_server::{ImageDelivery, ImageDeliveryServer};
use crate::pb::upload_image_request::Data;

/// What the service needs.
#[derive(Clone)]
pub struct ImagesState {
    pub library: ImageLibrary,
    pub authentication: Authentication,
    pub urls: PublicUrls,
    /// The object store, for the health service.
    pub store_probe: Arc<dyn DependencyProbe>,
    /// The largest gRPC message accepted (an upload's chunks must fit).
    pub max_message_bytes: usize,
    /// How long an upload stream may send nothing before it is ended.
    pub stall_timeout: std::time::Duration,
    /// Checks the bearer token of every call before it reaches a handler.
    pub auth: BearerAuth,
    /// The live event feed's opener (one per process), for Events/Watch.
    pub feeds: hub_core::feed::EventFeeds,
    /// Whether a client-credentials token is still good (revocations).
    pub oauth: hub_core::OAuth,
}

/// `polyhub_image_uploads_in_progress`: uploads streaming in or being
/// stored, all users together (each user holds at most
/// `images.max_uploads_per_user`).
#[derive(Debug)]
pub struct UploadMetrics(pub ImageLibrary);

#[async_trait::async_trait]
impl hub_runtime::metrics::MetricsSource for UploadMetrics {
    async fn collect(&self, out: &mut hub_runtime::metrics::Exposition) {
        out.family(
            "gauge",
            "polyhub_image_uploads_in_progress",
            "Image uploads streaming in or being stored.",
        )
        .sample(
            "polyhub_image_uploads_in_progress",
            &[],
            self.0.uploads_in_progress() as f64,
        );
        let load = self.0.sanitizing_load();
        out.family(
            "gauge",
            "polyhub_sanitizing_running",
            "Uploads being sanitized now, on the sanitizing pool's own threads.",
        )
        .sample("polyhub_sanitizing_running", &[], load.running as f64);
        out.family(
            "gauge",
            "polyhub_sanitizing_waiting",
            "Uploads waiting for a sanitizing thread (past the pool's places: OVERLOADED).",
        )
        .sample("polyhub_sanitizing_waiting", &[], load.waiting as f64);
        out.family(
            "gauge",
            "polyhub_image_buffer_pool_bytes",
            "Idle upload buffers kept for the next uploads, in bytes (at most images.buffer_pool_bytes).",
        )
        .sample(
            "polyhub_image_buffer_pool_bytes",
            &[],
            self.0.pooled_buffer_bytes() as f64,
        );
    }
}

impl std::fmt::Debug for ImagesState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesState")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

struct Images {
    state: ImagesState,
}

fn to_pb(image: &StoredImage, urls: &PublicUrls) -> pb::Image {
    let nanos = image.created_at.unix_timestamp_nanos();
    pb::Image {
        id: image.id.to_string(),
        url: urls.url(&image.key),
        content_type: image.content_type.clone(),
        size_bytes: i64::try_from(image.size_bytes).unwrap_or(i64::MAX),
        width: i32::try_from(image.width).unwrap_or(i32::MAX),
        height: i32::try_from(image.height).unwrap_or(i32::MAX),
        sha256: image.sha256.clone(),
        created_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0),
            nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
        }),
        owner_id: image.owner_id.to_string(),
    }
}

fn invalid(message: &'static str) -> Status {
    status(&hub_core::Error::with_message(
        ErrorCode::InvalidRequest,
        message,
    ))
}

impl Images {
    /// The caller, whose token the interceptor verified, once its session is
    /// known to be open (an interceptor cannot wait on the store).
    async fn signed_in<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = principal(request)?;
        self.state
            .authentication
            .ensure_open(&principal)
            .await
            .map_err(|e| status(&e))?;
        Ok(principal)
    }
}

#[tonic::async_trait]
impl ImageDelivery for Images {
    async fn upload_image(
        &self,
        request: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::Image>, Status> {
        require_app_scope(&request, "images:write")?;
        let principal = self.signed_in(&request).await?;
        // Held until the upload is stored or refused: one user's uploads in
        // progress are capped, whatever their state.
        let _slot = self
            .state
            .library
            .begin_upload(&principal)
            .map_err(|e| status(&e))?;
        let mut stream = request.into_inner();
        let mut buffer = self.state.library.new_upload();
        // A stream that ends at once is an empty upload, which the library
        // refuses (EMPTY_UPLOAD) as it does one without chunks.
        let max = self.state.max_message_bytes;
        let stall = self.state.stall_timeout;
        // The next message, or DEADLINE_EXCEEDED when none comes in time:
        // a stalled stream is ended and its buffer freed with it.
        let next = async |stream: &mut Streaming<pb::UploadImageRequest>| {
            match tokio::time::timeout(stall, stream.message()).await {
                Ok(message) => message.map_err(|s| own_status(s, max)),
                Err(_) => {
                    tracing::info!(owner = %principal.user_id, ?stall, "upload stream stalled; ended");
                    let mut stalled = Status::deadline_exceeded(format!(
                        "REQUEST_TIMEOUT: no upload message for {} ms",
                        stall.as_millis()
                    ));
                    stalled.metadata_mut().insert(
                        "x-error-code",
                        tonic::metadata::MetadataValue::from_static(
                            ErrorCode::RequestTimeout.as_str(),
                        ),
                    );
                    Err(stalled)
                }
            }
        };
        match next(&mut stream).await? {
            Some(pb::UploadImageRequest {
                data: Some(Data::Metadata(metadata)),
            }) => {
                // The client's claims are hints, logged (escaped) and never trusted.
                tracing::debug!(filename = ?metadata.filename, claimed = ?metadata.content_type, "upload started");
            }
            Some(_) => {
                return Err(invalid(
                    "the first message must carry the upload's metadata",
                ));
            }
            None => {}
        }
        while let Some(message) = next(&mut stream).await? {
            match message.data {
                Some(Data::Chunk(chunk)) => buffer.push(chunk).map_err(|e| status(&e))?,
                Some(Data::Metadata(_)) => {
                    return Err(invalid("metadata may only be the first message"));
                }
                None => {}
            }
        }
        let image = self
            .state
            .library
            .upload(&principal, buffer)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(to_pb(&image, &self.state.urls)))
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let caller = match caller(&request)? {
            Caller::User(_) => {
                require_app_scope(&request, "images:read")?;
                Caller::User(self.signed_in(&request).await?)
            }
            Caller::Client(client) => {
                self.state
                    .oauth
                    .ensure_active(&client)
                    .await
                    .map_err(|e| status(&e))?;
                Caller::Client(client)
            }
        };
        let request = request.into_inner();
        let owner = if request.owner_id.is_empty() {
            None
        } else {
            Some(UserId::parse(&request.owner_id).map_err(|e| status(&e))?)
        };
        let before = if request.page_token.is_empty() {
            None
        } else {
            Some(
                uuid::Uuid::try_parse(&request.page_token)
                    .map_err(|_| invalid("page_token is not one this service gave"))?,
            )
        };
        if request.page_size < 0 {
            return Err(invalid("page_size must not be negative"));
        }
        let page_size = u32::try_from(request.page_size).unwrap_or(0);
        let library = &self.state.library;
        let (images, next) = match &caller {
            Caller::User(principal) => library.list(principal, owner, page_size, before).await,
            Caller::Client(client) => {
                library
                    .list_for_client(client, owner, page_size, before)
                    .await
            }
        }
        .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(|i| to_pb(i, &self.state.urls)).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}

/// Keeps `grpc.health.v1` in step with the store: SERVING while it answers,
/// NOT_SERVING while it does not. Runs until the reporter's service is gone.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    probe: Arc<dyn DependencyProbe>,
    every: Duration,
) {
    let mut serving = None;
    loop {
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(3), probe.probe()).await,
            Ok(Ok(_))
        );
        if serving != Some(up) {
            let status = if up {
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!(
                    "object store not usable (unreachable, refusing our keys, or no bucket yet): gRPC health NOT_SERVING"
                );
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status("polyhub.images.v1.ImageDelivery", status)
                .await;
            serving = Some(up);
        }
        tokio::time::sleep(every).await;
    }
}

/// The whole service on one port: gRPC (images, health, reflection) and
/// HTTP/1.1 (`GET /images/{key}`, `/health`, `/ready`).
pub fn router(
    state: ImagesState,
    context: ServiceContext,
) -> Result<axum::Router, hub_core::Error> {
    use tonic::server::NamedService;

    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        reporter,
        Arc::clone(&state.store_probe),
        Duration::from_secs(2),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| hub_core::Error::internal(format!("building gRPC reflection: {e}")))?;
    // Set deliberately: an upload arrives in chunks, each one message.
    let max = state.max_message_bytes;
    let images = tonic::service::interceptor::InterceptedService::new(
        ImageDeliveryServer::new(Images {
            state: state.clone(),
        })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max),
        state.auth.clone(),
    );
    let events = tonic::service::interceptor::InterceptedService::new(
        pb::events::events_server::EventsServer::new(events::Events {
            feeds: state.feeds.clone(),
        }),
        state.auth.clone(),
    );
    fn path<S: NamedService>(_: &S) -> String {
        format!("/{}/{{*rpc}}", S::NAME)
    }
    let images_path = path(&images);
    let events_path = path(&events);
    let images = tower::ServiceExt::<axum::http::Request<axum::body::Body>>::map_response(
        images,
        move |r| own_refusal(r, max),
    );
    let routes = delivery::routes(state.library.clone())
        .merge(
            axum::Router::new()
                .route("/v1/images", axum::routing::post(upload::upload))
                .route(
                    "/openapi.json",
                    axum::routing::get(|| async {
                        use utoipa::OpenApi;
                        axum::Json(HttpApi::openapi())
                    }),
                )
                .with_state(state.clone()),
        )
        .route_service(&images_path, images)
        .route_service(&events_path, events)
        .route_service(&path(&health), health)
        .route_service(&path(&reflection), reflection);
    let methods = grpc_methods(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ])?;
    Ok(context.serve_grpc(routes, methods))
}

/// tonic's own refusal of a message over the size limit (`OUT_OF_RANGE`,
/// no code of ours) as the hub's: `REQUEST_TOO_LARGE`, `RESOURCE_EXHAUSTED`
/// with `x-error-code`. Any other status passes as it is.
fn own_status(status: Status, max_message_bytes: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        tracing::debug!(
            message = status.message(),
            "a gRPC message over the size limit"
        );
        return hub_runtime::grpc::status(&hub_core::Error::with_message(
            hub_core::ErrorCode::RequestTooLarge,
            format!("a message is larger than {max_message_bytes} bytes"),
        ));
    }
    status
}

/// The same for a call refused before its handler ran (a unary request
/// over the limit): tonic answers in the headers alone.
fn own_refusal<B>(
    mut response: axum::http::Response<B>,
    max_message_bytes: usize,
) -> axum::http::Response<B> {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    if out_of_range {
        let status = own_status(Status::out_of_range(""), max_message_bytes);
        let headers = response.headers_mut();
        let own = status.into_http::<()>();
        for name in ["grpc-status", "grpc-message", "x-error-code"] {
            if let Some(value) = own.headers().get(name) {
                headers.insert(name, value.clone());
            }
        }
    }
    response
}

/// Every method the descriptor sets declare, as gRPC paths
/// (`/package.Service/Method`): what this port answers, and so the only
/// gRPC method labels its metrics may carry.
fn grpc_methods(sets: &[&[u8]]) -> Result<std::collections::BTreeSet<String>, hub_core::Error> {
    use prost::Message;
    let mut methods = std::collections::BTreeSet::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(*set)
            .map_err(|e| hub_core::Error::internal(format!("reading a descriptor set: {e}")))?;
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    Ok(methods)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_metric_labels_are_the_methods_this_port_serves() {
        let methods = super::grpc_methods(&[
            super::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .unwrap();
        for method in [
            "/polyhub.images.v1.ImageDelivery/UploadImage",
            "/polyhub.images.v1.ImageDelivery/ListImages",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(methods.contains(method), "{method}: {methods:?}");
        }
    }
}

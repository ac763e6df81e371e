//! Objects in S3, or anything speaking its API (MinIO, s3s-fs, moto), through
//! aws-sdk-s3. Endpoint, region, bucket and keys come from configuration, so
//! any S3 store can be swapped in.
//!
//! Two settings matter for S3-compatible stores: path-style addressing
//! (`http://host/bucket/key`, no per-bucket DNS names), and checksums only
//! when an operation requires them (newer SDKs add CRC checksums by default,
//! which many compatible stores reject).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
/// The SDK's client, for tools and tests that talk to the same store.
pub use aws_sdk_s3::Client as S3Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use hub_core::{ByteStream, Error, ErrorCode, ObjectStore, StoredObject};
use secrecy::{ExposeSecret, SecretString};

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://host:port` for a compatible store; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    /// Never printed.
    pub secret_key: SecretString,
    /// How long one operation may take before the store counts as away.
    pub timeout: Duration,
}

/// A storage failure with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {detail}")]
pub struct S3Error {
    doing: &'static str,
    detail: String,
}

/// Classifies an SDK error once: a store that cannot be reached, that times
/// out, or that refuses our credentials is `UNAVAILABLE` (an operator must
/// act; the request can be retried); anything else `INTERNAL`.
fn classify<E, R>(doing: &'static str, error: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let (code, detail) = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
            ErrorCode::Unavailable,
            format!("the store cannot be reached ({error:?})"),
        ),
        SdkError::ServiceError(service) => {
            let remote = service.err().code().unwrap_or("unknown");
            let refused = matches!(
                remote,
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidSecurity"
            );
            let detail = format!(
                "the store answered {remote}: {}",
                service.err().message().unwrap_or("")
            );
            if refused {
                tracing::error!(
                    code = remote,
                    "the S3 store refuses our credentials: check images.s3.access_key and secret_key"
                );
                (ErrorCode::Unavailable, detail)
            } else {
                (ErrorCode::Internal, detail)
            }
        }
        _ => (ErrorCode::Unavailable, format!("{error:?}")),
    };
    Error::from_source(code, S3Error { doing, detail })
}

/// Objects in one bucket.
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
}

/// An aws-sdk-s3 client configured as the hub configures its own (path
/// style, checksums only when required, timeouts, a rustls HTTP client), for
/// tools and tests that talk to the same store.
pub fn sdk_client(settings: &S3Settings) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(settings.region.clone()))
        .credentials_provider(Credentials::new(
            settings.access_key.clone(),
            settings.secret_key.expose_secret().to_owned(),
            None,
            None,
            "polyhub-config",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(settings.timeout)
                .operation_attempt_timeout(settings.timeout)
                .build(),
        )
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

impl S3ObjectStore {
    pub fn new(settings: &S3Settings) -> Self {
        Self {
            client: sdk_client(settings),
            bucket: settings.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket when it is missing; says whether it did.
    pub async fn ensure_bucket(&self) -> Result<bool, Error> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(false),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                match self
                    .client
                    .create_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                {
                    Ok(_) => Ok(true),
                    // Another instance made it first.
                    Err(SdkError::ServiceError(e))
                        if matches!(
                            e.err().code(),
                            Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                        ) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(classify("creating the bucket", e)),
                }
            }
            Err(e) => Err(classify("checking the bucket", e)),
        }
    }

    /// What the service needs of the store before it serves: the bucket,
    /// and with `public_read` its anonymous-read policy. Safe at every start.
    pub async fn prepare(&self, public_read: bool) -> Result<(), Error> {
        if self.ensure_bucket().await? {
            tracing::info!(bucket = self.bucket, "created the image bucket");
        }
        if public_read {
            self.allow_public_read().await?;
            tracing::info!(
                bucket = self.bucket,
                "anonymous read allowed on the image bucket"
            );
        }
        Ok(())
    }

    /// Lets anyone read every object of the bucket (an anonymous-read bucket
    /// policy), for stores that serve `public_base_url` themselves.
    pub async fn allow_public_read(&self) -> Result<(), Error> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "PolyhubPublicRead",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject"],
                "Resource": [format!("arn:aws:s3:::{}/*", self.bucket)],
            }],
        });
        self.client
            .put_bucket_policy()
            .bucket(&self.bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| classify("setting the public-read bucket policy", e))?;
        Ok(())
    }

    /// One cheap round trip: the readiness probe.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = std::time::Instant::now();
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| classify("checking the bucket", e))?;
        Ok(started.elapsed())
    }
}

/// Tells the SigV4 signer the payload's SHA-256 instead of letting it hash
/// the body (`x-amz-content-sha256` is then the given value).
#[derive(Debug)]
struct PrecomputedPayloadHash(String);

impl aws_smithy_runtime_api::client::interceptors::Intercept for PrecomputedPayloadHash {
    fn name(&self) -> &'static str {
        "PrecomputedPayloadHash"
    }

    fn modify_before_signing(
        &self,
        _context: &mut aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state()
            .store_put(aws_runtime::auth::PayloadSigningOverride::Precomputed(
                self.0.clone(),
            ));
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        content_type: &str,
        sha256: Option<&str>,
    ) -> Result<(), Error> {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(SdkByteStream::from(bytes));
        let sent = match sha256 {
            // The signature covers the payload's SHA-256: the caller's, so
            // the SDK does not hash the bytes a second time.
            Some(sha256) => {
                put.customize()
                    .interceptor(PrecomputedPayloadHash(sha256.to_owned()))
                    .send()
                    .await
            }
            None => put.send().await,
        };
        sent.map_err(|e| classify("storing an object", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<StoredObject>, Error> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => return Err(classify("reading an object", e)),
        };
        let length = object
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        let content_type = object
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let etag = object.e_tag().map(str::to_owned);
        let body: ByteStream = Box::pin(futures_util::stream::unfold(
            object.body,
            |mut body| async move {
                match body.next().await {
                    Some(Ok(chunk)) => Some((Ok(chunk), body)),
                    Some(Err(e)) => Some((
                        Err(Error::from_source(
                            ErrorCode::Unavailable,
                            S3Error {
                                doing: "streaming an object",
                                detail: e.to_string(),
                            },
                        )),
                        body,
                    )),
                    None => None,
                }
            },
        ));
        Ok(Some(StoredObject {
            content_type,
            length,
            etag,
            body,
        }))
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => Ok(false),
            Err(e) => Err(classify("checking an object", e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("deleting an object", e))?;
        Ok(())
    }
}

/// The store as a readiness dependency.
#[derive(Debug, Clone)]
pub struct S3Probe {
    store: S3ObjectStore,
}

impl S3Probe {
    pub fn new(store: S3ObjectStore) -> Self {
        Self { store }
    }
}

#[async_trait]
impl hub_core::DependencyProbe for S3Probe {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn probe(&self) -> Result<Duration, Error> {
        self.store.ping().await
    }
}

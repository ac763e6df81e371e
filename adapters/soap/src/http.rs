//! The HTTP side of a SOAP endpoint: reading a POSTed message under the size
//! limit, the request id, and what a GET may ask.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};

use crate::SoapVersion;
use crate::envelope::{Limits, OperationCall, read_call, version_of};
use crate::fault::Fault;

/// The request id the shared middleware gave this request.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether a GET asks for the WSDL (`?wsdl`, any case, with or without a value).
pub fn wants_wsdl(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|p| {
            p.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("wsdl"))
        })
    })
}

/// A POSTed SOAP message: version from the content type, the body read up to
/// the size limit (never further), then the envelope.
pub async fn read_request(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
) -> Result<OperationCall, Fault> {
    let version = version_of(headers)?;
    let too_large = || {
        Fault::client(
            version,
            format!("the message is larger than {} bytes", limits.max_bytes),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    // A declared length over the limit is refused before a byte of it is read.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max_bytes) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limits.max_bytes)
        .await
        .map_err(|e| {
            if hub_runtime::pacing::is_slow_body(&e) {
                let slow = hub_core::Error::with_message(
                    hub_core::ErrorCode::RequestTimeout,
                    e.to_string(),
                );
                Fault::from_error(version, &slow).with_status(StatusCode::REQUEST_TIMEOUT)
            } else {
                too_large()
            }
        })?;
    read_call(version, bytes, limits)
}

/// Whether a fault with `status` may leave the request's body unread (too
/// large, or too slow): the connection then cannot carry another request,
/// and the answer says so, so a client does not reuse it.
pub(crate) fn body_left_unread(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    )
}

/// 405 for anything but the endpoint's methods, as a SOAP 1.1 fault.
pub fn method_not_allowed() -> Fault {
    Fault::client(
        SoapVersion::V11,
        "use POST for operations, or GET ?wsdl for the WSDL",
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

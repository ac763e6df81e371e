//! Writing responses: envelopes around a body, and WSDL documents.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::SoapVersion;

/// Text escaped for XML element content and attribute values.
pub fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

/// A 200 response carrying `body` (already XML) in an envelope of `version`.
pub fn envelope_response(version: SoapVersion, body: &str) -> Response {
    let prefix = match version {
        SoapVersion::V11 => "soap",
        SoapVersion::V12 => "env",
    };
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><{prefix}:Envelope xmlns:{prefix}=\"{}\"><{prefix}:Body>{body}</{prefix}:Body></{prefix}:Envelope>",
        version.envelope_ns()
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, version.content_type())],
        xml,
    )
        .into_response()
}

/// A WSDL document.
pub fn wsdl_response(wsdl: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        wsdl.to_owned(),
    )
        .into_response()
}

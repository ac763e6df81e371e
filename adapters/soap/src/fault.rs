//! One fault shape for every error: the fault code from the error table, a
//! human reason, and a `detail` carrying the stable `ErrorCode` and the
//! `RequestId`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_core::{ErrorCode, ErrorKind};
use hub_runtime::errors::{FaultClass, log_failure, mapping};

use crate::header::QName;
use crate::write::escape_text;
use crate::wsse::{SecurityFault, WSSE_NS};
use crate::{SoapVersion, USERS_NS};

/// SOAP's own fault codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultCode {
    /// The request was wrong (1.1 `Client`, 1.2 `Sender`).
    Client,
    /// We failed (1.1 `Server`, 1.2 `Receiver`).
    Server,
    VersionMismatch,
    MustUnderstand,
}

impl FaultCode {
    fn name(self, version: SoapVersion) -> &'static str {
        match (self, version) {
            (FaultCode::Client, SoapVersion::V11) => "Client",
            (FaultCode::Client, SoapVersion::V12) => "Sender",
            (FaultCode::Server, SoapVersion::V11) => "Server",
            (FaultCode::Server, SoapVersion::V12) => "Receiver",
            (FaultCode::VersionMismatch, _) => "VersionMismatch",
            (FaultCode::MustUnderstand, _) => "MustUnderstand",
        }
    }

    /// A core error kind's fault code, from the one mapping
    /// ([`hub_runtime::errors::mapping`], shown in docs/ERRORS.md).
    pub fn for_kind(kind: ErrorKind) -> Self {
        match mapping(kind).soap {
            FaultClass::Client => FaultCode::Client,
            FaultClass::Server => FaultCode::Server,
        }
    }
}

/// A fault on its way to a SOAP client.
#[derive(Debug, Clone)]
pub struct Fault {
    version: SoapVersion,
    code: FaultCode,
    reason: String,
    error_code: ErrorCode,
    status: Option<StatusCode>,
    retry_after: Option<std::time::Duration>,
    /// The header blocks a `MustUnderstand` fault is about.
    not_understood: Vec<QName>,
    /// WS-Security's fault code, for a refusal by the Security header.
    security: Option<SecurityFault>,
}

impl Fault {
    pub fn new(version: SoapVersion, code: FaultCode, reason: impl Into<String>) -> Self {
        let error_code = match code {
            FaultCode::Server => ErrorCode::Internal,
            _ => ErrorCode::InvalidRequest,
        };
        Self {
            version,
            code,
            reason: reason.into(),
            error_code,
            status: None,
            retry_after: None,
            not_understood: Vec::new(),
            security: None,
        }
    }

    /// The request was malformed: `INVALID_REQUEST`.
    pub fn client(version: SoapVersion, reason: impl Into<String>) -> Self {
        Self::new(version, FaultCode::Client, reason)
    }

    /// SOAP's `MustUnderstand`: header blocks meant for us, marked
    /// `mustUnderstand`, that no one here understands. SOAP 1.2's fault names
    /// each in an `env:NotUnderstood` header block (Part 1, 5.4.8).
    pub fn must_understand(version: SoapVersion, names: Vec<QName>) -> Self {
        let list = names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let reason = if names.len() == 1 {
            format!("the header block {list} must be understood and is not")
        } else {
            format!("the header blocks {list} must be understood and are not")
        };
        Self {
            not_understood: names,
            ..Self::new(version, FaultCode::MustUnderstand, reason)
        }
    }

    /// A domain error: its kind picks the fault code, its code goes in the
    /// detail, its client message is the reason, and a budget's wait is the
    /// `Retry-After`. Internal causes are logged here, inside the request's
    /// span, and never sent.
    pub fn from_error(version: SoapVersion, error: &hub_core::Error) -> Self {
        log_failure(error);
        Self {
            version,
            code: FaultCode::for_kind(error.kind()),
            reason: error.message().to_owned(),
            error_code: error.code(),
            status: None,
            retry_after: error.retry_after(),
            not_understood: Vec::new(),
            security: None,
        }
    }

    /// A refusal by the `wsse:Security` header: WS-Security's fault code
    /// (SOAP 1.1's fault code, SOAP 1.2's subcode of `env:Sender`), with
    /// the domain error's code in the detail and its wait as `Retry-After`.
    pub fn security(version: SoapVersion, fault: SecurityFault, error: &hub_core::Error) -> Self {
        Self {
            code: FaultCode::Client,
            security: Some(fault),
            ..Self::from_error(version, error)
        }
    }

    /// The WS-Security fault code, for a refusal by the Security header.
    pub fn security_fault(&self) -> Option<SecurityFault> {
        self.security
    }

    /// An HTTP status other than the binding's default (415, 405, 413).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Tells the client when to come back (sent as `Retry-After`).
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn with_version(mut self, version: SoapVersion) -> Self {
        self.version = version;
        self
    }

    pub fn code(&self) -> FaultCode {
        self.code
    }

    pub fn error_code(&self) -> ErrorCode {
        self.error_code
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The header blocks a `MustUnderstand` fault names.
    pub fn not_understood(&self) -> &[QName] {
        &self.not_understood
    }

    /// SOAP 1.1 answers every fault with 500; SOAP 1.2's HTTP binding answers
    /// Sender faults with 400 and the rest with 500.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(match (self.version, self.code) {
            (SoapVersion::V12, FaultCode::Client) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        })
    }

    /// The whole fault envelope.
    pub fn to_xml(&self, request_id: Option<&str>) -> String {
        let ns = self.version.envelope_ns();
        let detail = format!(
            "<tns:ServiceFault xmlns:tns=\"{USERS_NS}\"><tns:ErrorCode>{}</tns:ErrorCode><tns:RequestId>{}</tns:RequestId></tns:ServiceFault>",
            self.error_code.as_str(),
            escape_text(request_id.unwrap_or("")),
        );
        let reason = escape_text(&self.reason);
        let code = self.code.name(self.version);
        match self.version {
            SoapVersion::V11 => {
                let faultcode = match self.security {
                    Some(fault) => format!(
                        "<faultcode xmlns:wsse=\"{WSSE_NS}\">wsse:{}</faultcode>",
                        fault.local_name()
                    ),
                    None => format!("<faultcode>soap:{code}</faultcode>"),
                };
                format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
                     <soap:Envelope xmlns:soap=\"{ns}\"><soap:Body><soap:Fault>\
                     {faultcode}<faultstring>{reason}</faultstring>\
                     <detail>{detail}</detail></soap:Fault></soap:Body></soap:Envelope>"
                )
            }
            SoapVersion::V12 => {
                // A version mismatch tells the client which envelope we speak;
                // a MustUnderstand fault, which blocks it did not understand.
                let header = if self.code == FaultCode::VersionMismatch {
                    format!(
                        "<env:Header><env:Upgrade><env:SupportedEnvelope qname=\"ns1:Envelope\" xmlns:ns1=\"{ns}\"/>\
                         <env:SupportedEnvelope qname=\"ns2:Envelope\" xmlns:ns2=\"{}\"/></env:Upgrade></env:Header>",
                        SoapVersion::V11.envelope_ns()
                    )
                } else if self.not_understood.is_empty() {
                    String::new()
                } else {
                    not_understood_header(&self.not_understood)
                };
                let subcode = match self.security {
                    Some(fault) => format!(
                        "<env:Subcode><env:Value xmlns:wsse=\"{WSSE_NS}\">wsse:{}</env:Value></env:Subcode>",
                        fault.local_name()
                    ),
                    None => String::new(),
                };
                format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
                     <env:Envelope xmlns:env=\"{ns}\">{header}<env:Body><env:Fault>\
                     <env:Code><env:Value>env:{code}</env:Value>{subcode}</env:Code>\
                     <env:Reason><env:Text xml:lang=\"en\">{reason}</env:Text></env:Reason>\
                     <env:Detail>{detail}</env:Detail></env:Fault></env:Body></env:Envelope>"
                )
            }
        }
    }

    /// The HTTP response for this fault, with the request id in the detail.
    pub fn into_response_for(self, request_id: Option<&str>) -> Response {
        let mut response = (
            self.status(),
            [(header::CONTENT_TYPE, self.version.content_type())],
            self.to_xml(request_id),
        )
            .into_response();
        if self.status() == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if crate::http::body_left_unread(self.status()) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// SOAP 1.2's `env:NotUnderstood` header blocks, one per name, each
/// declaring its own prefix for the name's namespace.
fn not_understood_header(names: &[QName]) -> String {
    let mut header = String::from("<env:Header>");
    for (i, name) in names.iter().enumerate() {
        let local = escape_text(name.local());
        if name.namespace().is_empty() {
            header.push_str(&format!("<env:NotUnderstood qname=\"{local}\"/>"));
        } else {
            header.push_str(&format!(
                "<env:NotUnderstood qname=\"ns{n}:{local}\" xmlns:ns{n}=\"{}\"/>",
                escape_text(name.namespace()),
                n = i + 1,
            ));
        }
    }
    header.push_str("</env:Header>");
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code's fault, written in each version, carries the fault code
    /// the one mapping (and so docs/ERRORS.md) gives its kind.
    #[test]
    fn written_faults_follow_the_mapping() {
        for code in ErrorCode::ALL {
            let error = hub_core::Error::new(*code);
            let class = mapping(code.kind()).soap;
            let v11 = Fault::from_error(SoapVersion::V11, &error).to_xml(None);
            assert!(
                v11.contains(&format!("<faultcode>{}</faultcode>", class.soap11())),
                "{code}: {v11}"
            );
            let v12 = Fault::from_error(SoapVersion::V12, &error).to_xml(None);
            assert!(
                v12.contains(&format!("<env:Value>{}</env:Value>", class.soap12())),
                "{code}: {v12}"
            );
        }
    }

    #[test]
    fn statuses_follow_each_binding() {
        let taken = hub_core::Error::new(ErrorCode::UsernameTaken);
        assert_eq!(
            Fault::from_error(SoapVersion::V11, &taken).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            Fault::from_error(SoapVersion::V12, &taken).status(),
            StatusCode::BAD_REQUEST
        );
        let down = hub_core::Error::new(ErrorCode::Unavailable);
        assert_eq!(
            Fault::from_error(SoapVersion::V12, &down).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn the_detail_carries_code_and_request_id_and_reasons_are_escaped() {
        let fault = Fault::client(SoapVersion::V12, "a <b> & c");
        let xml = fault.to_xml(Some("req-1"));
        assert!(xml.contains("<env:Value>env:Sender</env:Value>"), "{xml}");
        assert!(xml.contains("a &lt;b&gt; &amp; c"), "{xml}");
        assert!(
            xml.contains(
                "<tns:ErrorCode>INVALID_REQUEST</tns:ErrorCode><tns:RequestId>req-1</tns:RequestId>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn a_budgets_wait_is_the_retry_after() {
        let limited = hub_core::Error::too_many_attempts(std::time::Duration::from_secs(42));
        let response = Fault::from_error(SoapVersion::V11, &limited).into_response_for(None);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        let busy = hub_core::Error::new(ErrorCode::TooManyAttempts);
        let response = Fault::from_error(SoapVersion::V11, &busy).into_response_for(None);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn an_internal_cause_never_reaches_the_fault() {
        let err = hub_core::Error::internal("password=hunter2 at db:5432");
        let xml = Fault::from_error(SoapVersion::V11, &err).to_xml(None);
        assert!(!xml.contains("hunter2"), "{xml}");
        assert!(xml.contains("<faultcode>soap:Server</faultcode>"), "{xml}");
    }

    #[test]
    fn a_security_refusal_has_the_ws_security_code_in_each_version() {
        let error = hub_core::Error::new(ErrorCode::InvalidCredentials);
        let v11 = Fault::security(
            SoapVersion::V11,
            SecurityFault::FailedAuthentication,
            &error,
        );
        assert_eq!(v11.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let xml = v11.to_xml(None);
        assert!(
            xml.contains(&format!(
                "<faultcode xmlns:wsse=\"{WSSE_NS}\">wsse:FailedAuthentication</faultcode>"
            )),
            "{xml}"
        );
        assert!(
            xml.contains("<tns:ErrorCode>INVALID_CREDENTIALS</tns:ErrorCode>"),
            "{xml}"
        );
        let v12 = Fault::security(SoapVersion::V12, SecurityFault::MessageExpired, &error);
        assert_eq!(v12.status(), StatusCode::BAD_REQUEST);
        let xml = v12.to_xml(None);
        assert!(
            xml.contains(&format!(
                "<env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value xmlns:wsse=\"{WSSE_NS}\">wsse:MessageExpired</env:Value></env:Subcode></env:Code>"
            )),
            "{xml}"
        );
        let limited = hub_core::Error::too_many_attempts(std::time::Duration::from_secs(9));
        let response = Fault::security(
            SoapVersion::V11,
            SecurityFault::FailedAuthentication,
            &limited,
        )
        .into_response_for(None);
        assert_eq!(response.headers()[header::RETRY_AFTER], "9");
    }
}

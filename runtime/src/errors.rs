//! The one mapping of the core's error kinds onto every protocol, side by
//! side: the HTTP status, the gRPC code, the SOAP fault class (named per
//! SOAP version), and the level a failure of that kind is logged at. The
//! HTTP errors, the gRPC statuses and hub-soap's faults all read
//! [`mapping`]; docs/ERRORS.md shows the same table, and a test here holds
//! the two together, column by column.

use axum::http::StatusCode;
use hub_core::{Error, ErrorKind};
use tonic::Code;

/// Who a SOAP fault blames: 1.1 `Client`/`Server`, 1.2 `Sender`/`Receiver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// The request was wrong.
    Client,
    /// We failed, or cannot serve it now.
    Server,
}

impl FaultClass {
    /// The SOAP 1.1 fault code, as written in a fault.
    pub const fn soap11(self) -> &'static str {
        match self {
            FaultClass::Client => "soap:Client",
            FaultClass::Server => "soap:Server",
        }
    }

    /// The SOAP 1.2 fault code, as written in a fault.
    pub const fn soap12(self) -> &'static str {
        match self {
            FaultClass::Client => "env:Sender",
            FaultClass::Server => "env:Receiver",
        }
    }
}

/// How loudly a failure of a kind is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Ours to fix: logged with its cause.
    Error,
    /// A dependency is away: logged with its cause.
    Warn,
    /// The client's doing: logged without a cause, at debug.
    Debug,
}

impl LogLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Debug => "debug",
        }
    }
}

/// Everything a protocol needs to know about a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub http: StatusCode,
    pub grpc: Code,
    pub soap: FaultClass,
    pub log: LogLevel,
}

/// The table: each kind on every protocol.
pub const fn mapping(kind: ErrorKind) -> Mapping {
    use FaultClass::{Client, Server};
    use LogLevel::{Debug, Error, Warn};
    let (http, grpc, soap, log) = match kind {
        ErrorKind::Invalid => (
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            Client,
            Debug,
        ),
        ErrorKind::Conflict => (StatusCode::CONFLICT, Code::AlreadyExists, Client, Debug),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, Code::NotFound, Client, Debug),
        ErrorKind::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            Client,
            Debug,
        ),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, Code::PermissionDenied, Client, Debug),
        ErrorKind::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            Client,
            Debug,
        ),
        ErrorKind::TooMany => (
            StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            Server,
            Debug,
        ),
        ErrorKind::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            Server,
            Warn,
        ),
        ErrorKind::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            Server,
            Error,
        ),
    };
    Mapping {
        http,
        grpc,
        soap,
        log,
    }
}

/// Logs a failed request at its kind's level, inside the request's span (so
/// with its request id): the internal cause goes to the log, never to the
/// client.
pub fn log_failure(error: &Error) {
    match mapping(error.kind()).log {
        LogLevel::Error => tracing::error!(code = %error.code(), error = %error, "request failed"),
        LogLevel::Warn => {
            tracing::warn!(code = %error.code(), error = %error, "dependency unavailable")
        }
        LogLevel::Debug => tracing::debug!(code = %error.code(), "request refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 9] = [
        ErrorKind::Invalid,
        ErrorKind::Conflict,
        ErrorKind::NotFound,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::TooLarge,
        ErrorKind::TooMany,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The gRPC code as the docs write it: `INVALID_ARGUMENT`.
    fn grpc_name(code: Code) -> String {
        let mut name = String::new();
        for (i, c) in format!("{code:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
        name
    }

    /// docs/ERRORS.md's kind table is what client developers read: every
    /// kind once, and each of its protocol columns as the code maps it.
    #[test]
    fn the_docs_kind_table_is_the_mapping() {
        let doc = include_str!("../../docs/ERRORS.md");
        let header = "| kind | HTTP | gRPC | SOAP 1.1 fault | SOAP 1.2 fault | logged at |";
        let rows = crate::doc_table::rows(doc, header);
        let expected: Vec<Vec<String>> = ALL
            .iter()
            .map(|kind| {
                let m = mapping(*kind);
                vec![
                    kind.as_str().to_owned(),
                    m.http.as_u16().to_string(),
                    grpc_name(m.grpc),
                    m.soap.soap11().to_owned(),
                    m.soap.soap12().to_owned(),
                    m.log.as_str().to_owned(),
                ]
            })
            .collect();
        assert_eq!(rows, expected, "docs/ERRORS.md's kind table ({header})");
    }

    #[test]
    fn grpc_names_are_the_specs() {
        assert_eq!(grpc_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(grpc_name(Code::Internal), "INTERNAL");
    }
}

//! SOAP by hand for the SOAP services' tests: envelopes of both versions,
//! the two operations, a client of both endpoints, and the fault checks.

use reqwest::{Client, StatusCode};

use crate::{Service, TestHub};

pub const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const V12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const TEXT_XML: &str = "text/xml; charset=utf-8";
pub const SOAP12: &str = "application/soap+xml; charset=utf-8";

pub fn v11(operation: &str) -> String {
    format!(
        "<soapenv:Envelope xmlns:soapenv=\"{V11}\"><soapenv:Body>{operation}</soapenv:Body></soapenv:Envelope>"
    )
}

pub fn v12(operation: &str) -> String {
    format!("<env:Envelope xmlns:env=\"{V12}\"><env:Body>{operation}</env:Body></env:Envelope>")
}

pub fn register_op(username: &str, email: &str, password: &str) -> String {
    format!(
        "<u:RegisterUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>{username}</u:username>\
         <u:email>{email}</u:email><u:password>{password}</u:password></u:RegisterUser>"
    )
}

pub fn lookup_op(username: &str) -> String {
    format!(
        "<u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>{username}</u:username></u:LookupUser>"
    )
}

/// A SOAP client of a test hub's two SOAP endpoints.
#[derive(Debug)]
pub struct Soap {
    pub client: Client,
    pub register: String,
    pub lookup: String,
}

impl Soap {
    /// The endpoints of whichever of the two services `hub` started (one
    /// not started is an address that refuses connections).
    pub fn new(hub: &TestHub) -> Self {
        let base = |service| {
            hub.try_url(service)
                .unwrap_or_else(|| format!("http://{}", crate::CLOSED))
        };
        Self {
            client: Client::new(),
            register: format!("{}/register", base(Service::SoapRegister)),
            lookup: format!("{}/user/soap", base(Service::SoapLookup)),
        }
    }

    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, String) {
        let resp = self
            .client
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }
}

/// The text of the first `<...local>` element, whatever its prefix.
pub fn element(xml: &str, local: &str) -> Option<String> {
    let start = xml
        .find(&format!(":{local}>"))
        .or_else(|| xml.find(&format!("<{local}>")))?;
    let rest = &xml[start..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find("</")?;
    Some(rest[open_end..open_end + close].to_owned())
}

pub fn assert_fault(
    status: StatusCode,
    xml: &str,
    expected_status: StatusCode,
    fault_code: &str,
    error_code: &str,
) {
    assert_eq!(status, expected_status, "{xml}");
    assert!(xml.contains(fault_code), "expected {fault_code}: {xml}");
    assert_eq!(
        element(xml, "ErrorCode").as_deref(),
        Some(error_code),
        "{xml}"
    );
    assert!(
        element(xml, "RequestId").is_some_and(|r| !r.is_empty()),
        "{xml}"
    );
}

/// A POST over a bare socket that declares `content_length` bytes but sends
/// only `prefix`, then reads whatever the server answers.
pub async fn raw_post(
    addr: std::net::SocketAddr,
    path: &str,
    content_length: usize,
    prefix: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml; charset=utf-8\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(prefix).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

//! soap-register and soap-lookup over real sockets, against the real
//! PostgreSQL: both SOAP versions, every prefix style, hostile documents, and
//! zeep (a SOAP client no one here wrote) generated from our WSDL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{TestHub, test_config};
use reqwest::{Client, StatusCode};

const V11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const V12: &str = "http://www.w3.org/2003/05/soap-envelope";
const TEXT_XML: &str = "text/xml; charset=utf-8";
const SOAP12: &str = "application/soap+xml; charset=utf-8";

fn v11(operation: &str) -> String {
    format!(
        "<soapenv:Envelope xmlns:soapenv=\"{V11}\"><soapenv:Body>{operation}</soapenv:Body></soapenv:Envelope>"
    )
}

fn v12(operation: &str) -> String {
    format!("<env:Envelope xmlns:env=\"{V12}\"><env:Body>{operation}</env:Body></env:Envelope>")
}

fn register_op(username: &str, email: &str, password: &str) -> String {
    format!(
        "<u:RegisterUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>{username}</u:username>\
         <u:email>{email}</u:email><u:password>{password}</u:password></u:RegisterUser>"
    )
}

fn lookup_op(username: &str) -> String {
    format!(
        "<u:LookupUser xmlns:u=\"urn:polyhub:users:v1\"><u:username>{username}</u:username></u:LookupUser>"
    )
}

struct Soap {
    client: Client,
    register: String,
    lookup: String,
}

impl Soap {
    fn new(hub: &TestHub) -> Self {
        Self {
            client: Client::new(),
            register: format!("{}/register", hub.url("soap-register")),
            lookup: format!("{}/user/soap", hub.url("soap-lookup")),
        }
    }

    async fn post(
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
fn element(xml: &str, local: &str) -> Option<String> {
    let start = xml
        .find(&format!(":{local}>"))
        .or_else(|| xml.find(&format!("<{local}>")))?;
    let rest = &xml[start..];
    let open_end = rest.find('>')? + 1;
    let close = rest[open_end..].find("</")?;
    Some(rest[open_end..open_end + close].to_owned())
}

fn assert_fault(
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

#[tokio::test(flavor = "multi_thread")]
async fn register_and_look_up_over_both_soap_versions() {
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);

    let (status, xml) = soap
        .post(
            &soap.register,
            TEXT_XML,
            v11(&register_op(
                "Olga",
                "olga@example.com",
                "correct horse battery",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    assert!(xml.contains(V11));
    assert_eq!(element(&xml, "username").as_deref(), Some("olga"));
    let user_id = element(&xml, "userId").unwrap();
    assert!(element(&xml, "createdAt").unwrap().ends_with('Z'));

    let (status, xml) = soap
        .post(
            &soap.register,
            SOAP12,
            v12(&register_op(
                "pia",
                "pia@example.com",
                "correct horse battery",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    assert!(xml.contains(V12));

    for (content_type, envelope) in [
        (TEXT_XML, v11(&lookup_op("OLGA"))),
        (SOAP12, v12(&lookup_op("olga"))),
    ] {
        let (status, xml) = soap.post(&soap.lookup, content_type, envelope).await;
        assert_eq!(status, StatusCode::OK, "{xml}");
        assert_eq!(element(&xml, "userId").as_deref(), Some(user_id.as_str()));
        assert!(
            !xml.contains("olga@example.com") && !xml.contains("pbkdf2"),
            "lookup tells too much: {xml}"
        );
    }

    // The legacy GET answers the same SOAP 1.1 envelope.
    let resp = soap
        .client
        .get(format!("{}?username=Olga", soap.lookup))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    let xml = resp.text().await.unwrap();
    assert_eq!(element(&xml, "userId").as_deref(), Some(user_id.as_str()));
    let resp = soap
        .client
        .get(format!("{}?username=nobody", soap.lookup))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_fault(
        status,
        &resp.text().await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "soap:Client",
        "USER_NOT_FOUND",
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_errors_are_faults_with_the_core_codes() {
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);
    soap.post(
        &soap.register,
        TEXT_XML,
        v11(&register_op(
            "quinn",
            "quinn@example.com",
            "correct horse battery",
        )),
    )
    .await;
    let cases = [
        (
            register_op("QUINN", "q2@example.com", "correct horse battery"),
            "USERNAME_TAKEN",
        ),
        (
            register_op("quinn2", "QUINN@example.com", "correct horse battery"),
            "EMAIL_TAKEN",
        ),
        (
            register_op("q!", "q3@example.com", "correct horse battery"),
            "INVALID_USERNAME",
        ),
        (
            register_op("quinn3", "not-an-email", "correct horse battery"),
            "INVALID_EMAIL",
        ),
        (
            register_op("quinn4", "q4@example.com", "short"),
            "WEAK_PASSWORD",
        ),
    ];
    for (operation, code) in cases {
        let (status, xml) = soap.post(&soap.register, TEXT_XML, v11(&operation)).await;
        assert_fault(
            status,
            &xml,
            StatusCode::INTERNAL_SERVER_ERROR,
            "<faultcode>soap:Client</faultcode>",
            code,
        );
        let (status, xml) = soap.post(&soap.register, SOAP12, v12(&operation)).await;
        assert_fault(
            status,
            &xml,
            StatusCode::BAD_REQUEST,
            "<env:Value>env:Sender</env:Value>",
            code,
        );
    }
    let (status, xml) = soap
        .post(&soap.lookup, SOAP12, v12(&lookup_op("nobody")))
        .await;
    assert_fault(
        status,
        &xml,
        StatusCode::BAD_REQUEST,
        "env:Sender",
        "USER_NOT_FOUND",
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_prefix_style_and_a_default_namespace_work() {
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);
    let op = |n: &str| register_op(n, &format!("{n}@example.com"), "correct horse battery");
    let envelopes = [
        format!(
            "<soap-env:Envelope xmlns:soap-env=\"{V11}\"><soap-env:Body>{}</soap-env:Body></soap-env:Envelope>",
            op("style.a")
        ),
        format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header/><s:Body>{}</s:Body></s:Envelope>",
            op("style.b")
        ),
        format!(
            "<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"{V11}\">\n  <SOAP-ENV:Body>\n    {}\n  </SOAP-ENV:Body>\n</SOAP-ENV:Envelope>",
            op("style.c")
        ),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Envelope xmlns=\"{V11}\"><Body>\
             <RegisterUser xmlns=\"urn:polyhub:users:v1\"><username>style.d</username>\
             <email>style.d@example.com</email><password>correct horse battery</password></RegisterUser></Body></Envelope>"
        ),
    ];
    for envelope in envelopes {
        let (status, xml) = soap.post(&soap.register, TEXT_XML, envelope.clone()).await;
        assert_eq!(status, StatusCode::OK, "{envelope}\n{xml}");
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_envelopes_get_the_right_fault() {
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);
    let ok_op = lookup_op("someone");
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        (
            "1.2 envelope sent as 1.1",
            TEXT_XML,
            v12(&ok_op),
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:VersionMismatch",
        ),
        (
            "1.1 envelope sent as 1.2",
            SOAP12,
            v11(&ok_op),
            StatusCode::INTERNAL_SERVER_ERROR,
            "env:VersionMismatch",
        ),
        (
            "wrong namespace",
            TEXT_XML,
            v11(&ok_op).replace(V11, "urn:wrong"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:VersionMismatch",
        ),
        (
            "missing body",
            TEXT_XML,
            format!("<s:Envelope xmlns:s=\"{V11}\"/>"),
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Client",
        ),
        (
            "two operations",
            TEXT_XML,
            v11(&format!("{ok_op}{ok_op}")),
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Client",
        ),
        (
            "unknown operation",
            SOAP12,
            v12("<u:DeleteUser xmlns:u=\"urn:polyhub:users:v1\"/>"),
            StatusCode::BAD_REQUEST,
            "env:Sender",
        ),
    ];
    for (what, content_type, body, status, code) in cases {
        let (got, xml) = soap.post(&soap.lookup, content_type, body).await;
        assert_eq!(got, status, "{what}: {xml}");
        assert!(xml.contains(code), "{what}: {xml}");
        assert!(element(&xml, "ErrorCode").is_some(), "{what}: {xml}");
    }
    let (status, xml) = soap.post(&soap.lookup, SOAP12, v11(&ok_op)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        xml.contains("SupportedEnvelope"),
        "1.2 VersionMismatch names what we speak: {xml}"
    );

    let (status, xml) = soap.post(&soap.register, "application/json", "{}").await;
    assert_fault(
        status,
        &xml,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "soap:Client",
        "INVALID_REQUEST",
    );
    let resp = soap
        .client
        .put(&soap.register)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.text().await.unwrap().contains("soap:Fault"));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_documents_cost_a_fault_and_nothing_more() {
    let secret = common::scratch_dir().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-MARKER").unwrap();
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]>{}",
        (1..10)
            .map(|i| format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&lol{};", i - 1)
                    .replace("&lol0;", "&lol;")
                    .repeat(10)
            ))
            .collect::<String>(),
        v11(&lookup_op("&lol9;"))
    );
    let xxe = format!(
        "<!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file://{}\">]>{}",
        secret.display(),
        v11(&lookup_op("&xxe;"))
    );
    let deep = format!(
        "<s:Envelope xmlns:s=\"{V11}\"><s:Body>{}",
        "<a>".repeat(60_000)
    );
    let over_limit = v11(&lookup_op(&"a".repeat(300 * 1024)));
    let mut bad_utf8 = v11(&lookup_op("abc")).into_bytes();
    let at = bad_utf8.len() / 2;
    bad_utf8.splice(at..at, [0xff, 0xfe, 0xc0]);
    let truncated = v11(&lookup_op("abc"))[..120].to_owned();

    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "billion laughs",
            laughs.into_bytes(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            "external entity",
            xxe.into_bytes(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            "60,000-deep nesting",
            deep.into_bytes(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            "over the size limit",
            over_limit.into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("invalid UTF-8", bad_utf8, StatusCode::INTERNAL_SERVER_ERROR),
        (
            "truncated",
            truncated.into_bytes(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (what, body, status) in cases {
        let (got, xml) = soap.post(&soap.lookup, TEXT_XML, body).await;
        assert_eq!(got, status, "{what}: {xml}");
        assert!(
            xml.contains("<faultcode>soap:Client</faultcode>"),
            "{what}: {xml}"
        );
        assert!(
            !xml.contains("TOP-SECRET-MARKER"),
            "{what}: a file was read"
        );
        let health = soap
            .client
            .get(format!("{}/health", hub.url("soap-lookup")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            health.status(),
            StatusCode::OK,
            "still answering after {what}"
        );
    }

    // A 10 MB attribute: the server refuses on the declared length and never
    // reads the body, so the client sends only the document's first kilobyte.
    let lookup = hub
        .listeners
        .iter()
        .find(|l| l.service == "soap-lookup")
        .unwrap()
        .local_addr;
    let start = format!("<s:Envelope xmlns:s=\"{V11}\" x=\"{}", "a".repeat(1024));
    let (status, xml) = raw_post(lookup, "/user/soap", 10 << 20, start.as_bytes()).await;
    assert_eq!(status, 413, "{xml}");
    assert!(xml.contains("<faultcode>soap:Client</faultcode>"), "{xml}");
    let health = soap
        .client
        .get(format!("{}/health", hub.url("soap-lookup")))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_simultaneous_registrations_of_one_name_one_wins() {
    let hub = TestHub::start().await;
    let soap = std::sync::Arc::new(Soap::new(&hub));
    let attempts: Vec<_> = (0..50)
        .map(|i| {
            let soap = soap.clone();
            tokio::spawn(async move {
                let op = register_op(
                    "rush",
                    &format!("rush{i}@example.com"),
                    "correct horse battery",
                );
                soap.post(&soap.register, TEXT_XML, v11(&op)).await
            })
        })
        .collect();
    let (mut won, mut taken) = (0, 0);
    for attempt in attempts {
        let (status, xml) = attempt.await.unwrap();
        match status {
            StatusCode::OK => won += 1,
            _ => {
                assert_eq!(
                    element(&xml, "ErrorCode").as_deref(),
                    Some("USERNAME_TAKEN"),
                    "{xml}"
                );
                taken += 1;
            }
        }
    }
    assert_eq!((won, taken), (1, 49));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_serves_the_wsdl_with_its_addresses() {
    let (mut config, keys) = test_config();
    config.services.soap_register.external_url = Some("https://soap.example.com/reg/".into());
    let hub = TestHub::start_with(config, keys, true).await;
    let lookup_url = format!("{}/user/soap", hub.url("soap-lookup"));
    for url in [
        format!("{}/register?wsdl", hub.url("soap-register")),
        format!("{lookup_url}?WSDL"),
    ] {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let wsdl = resp.text().await.unwrap();
        assert!(
            wsdl.contains("location=\"https://soap.example.com/reg/register\""),
            "{wsdl}"
        );
        assert!(
            wsdl.contains(&format!("location=\"{lookup_url}\"")),
            "{wsdl}"
        );
        assert!(!wsdl.contains("{{"), "every placeholder filled");
        let template =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wsdl/users.wsdl"))
                .unwrap();
        assert_eq!(
            wsdl.lines().count(),
            template.lines().count(),
            "the file in wsdl/ is what is served"
        );
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_lookup_cors_is_strict() {
    let (mut config, keys) = test_config();
    config.services.soap_lookup.cors.allowed_origins = vec!["https://portal.example.com".into()];
    let hub = TestHub::start_with(config, keys, true).await;
    let client = Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/user/soap", hub.url("soap-lookup")),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let allowed = preflight("https://portal.example.com").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://portal.example.com"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    hub.stop().await;
}

/// zeep, from PyPI, generates its client from our WSDL URLs and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn zeep_registers_and_looks_up_over_both_versions() {
    let python = common::venv_bin("python");
    let hub = TestHub::start().await;
    let register_wsdl = format!("{}/register?wsdl", hub.url("soap-register"));
    let lookup_wsdl = format!("{}/user/soap?wsdl", hub.url("soap-lookup"));
    let suffix = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/zeep_users.py"
            ))
            .args([&register_wsdl, &lookup_wsdl, &suffix])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zeep: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("zeep Soap11") && stdout.contains("zeep Soap12"),
        "{stdout}"
    );
    hub.stop().await;
}

/// A POST over a bare socket that declares `content_length` bytes but sends
/// only `prefix`, then reads whatever the server answers.
async fn raw_post(
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

/// One user, two protocols: registered over SOAP, signed in over REST, and
/// the token dead after logout.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_registered_over_soap_logs_in_over_rest() {
    let hub = TestHub::start().await;
    let soap = Soap::new(&hub);
    let (status, xml) = soap
        .post(
            &soap.register,
            SOAP12,
            v12(&register_op(
                "Rita",
                "rita@example.com",
                "correct horse battery",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    let soap_id = element(&xml, "userId").unwrap();

    let rest = hub.url("rest-auth");
    let login: serde_json::Value = soap
        .client
        .post(format!("{rest}/login"))
        .json(&serde_json::json!({"username": "RITA", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap();
    let profile: serde_json::Value = soap
        .client
        .get(format!("{rest}/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["id"], soap_id.as_str());
    assert_eq!(profile["email"], "rita@example.com");
    let logout = soap
        .client
        .post(format!("{rest}/logout"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after = soap
        .client
        .get(format!("{rest}/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    hub.stop().await;
}

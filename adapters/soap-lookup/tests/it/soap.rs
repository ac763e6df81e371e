//! soap-lookup over real sockets, against the real PostgreSQL: LookupUser
//! over both SOAP versions and the legacy GET, malformed envelopes, and its
//! strict CORS. soap-register runs beside it to make the users looked up.

use hub_testkit::soap::*;
use hub_testkit::{Service, TestHub, TestSetup};
use reqwest::{Client, StatusCode};

const SERVICES: &[Service] = &[Service::SoapRegister, Service::SoapLookup];

#[tokio::test(flavor = "multi_thread")]
async fn register_and_look_up_over_both_soap_versions() {
    let hub = TestHub::with(SERVICES).await;
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
async fn malformed_envelopes_get_the_right_fault() {
    let hub = TestHub::with(SERVICES).await;
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
async fn soap_lookup_cors_is_strict() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.services.soap_lookup.cors.allowed_origins =
        vec!["https://portal.example.com".into()];
    let hub = setup.start().await;
    let client = Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/user/soap", hub.url(Service::SoapLookup)),
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

/// soap-lookup needs PostgreSQL alone: the test kit gives it no MongoDB and
/// no S3 (both point at a closed port), and it is ready all the same.
#[tokio::test(flavor = "multi_thread")]
async fn soap_lookup_alone_is_ready_on_postgres_alone() {
    let hub = TestHub::with(&[Service::SoapLookup]).await;
    assert!(hub.config().mongo.url.expose().contains("127.0.0.1:1/"));
    assert_eq!(
        hub.config().images.s3.endpoint.as_deref(),
        Some("http://127.0.0.1:1")
    );
    let resp = reqwest::get(format!("{}/ready", hub.url(Service::SoapLookup)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ready: serde_json::Value = resp.json().await.unwrap();
    let checks: Vec<&String> = ready["checks"].as_object().unwrap().keys().collect();
    assert_eq!(checks, ["postgres"], "{ready}");
    assert!(hub.try_url(Service::Sessions).is_none());
    hub.stop().await;
}

/// SOAP's `mustUnderstand`, honoured: a mandatory header block meant for us
/// that no one here understands is a `MustUnderstand` fault (SOAP 1.2's names
/// it in an `env:NotUnderstood` header block); an optional one, or one for
/// another actor or role, is ignored and the lookup answered as before.
#[tokio::test(flavor = "multi_thread")]
async fn mandatory_header_blocks_no_one_understands_are_refused() {
    let hub = TestHub::with(SERVICES).await;
    let soap = Soap::new(&hub);
    let (status, xml) = soap
        .post(
            &soap.register,
            TEXT_XML,
            v11(&register_op(
                "mira",
                "mira@example.com",
                "correct horse battery",
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    let user_id = element(&xml, "userId").unwrap();

    let op = lookup_op("mira");
    let v11_with = |block: &str| {
        format!(
            "<s:Envelope xmlns:s=\"{V11}\"><s:Header>{block}</s:Header><s:Body>{op}</s:Body></s:Envelope>"
        )
    };
    let v12_with = |block: &str| {
        format!(
            "<e:Envelope xmlns:e=\"{V12}\"><e:Header>{block}</e:Header><e:Body>{op}</e:Body></e:Envelope>"
        )
    };
    let block = |attributes: &str| {
        format!("<w:Ticket xmlns:w=\"urn:example:tickets\" {attributes}><w:id>7</w:id></w:Ticket>")
    };

    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            v11_with(&block("s:mustUnderstand=\"1\"")),
        )
        .await;
    assert_fault(
        status,
        &xml,
        StatusCode::INTERNAL_SERVER_ERROR,
        "<faultcode>soap:MustUnderstand</faultcode>",
        "INVALID_REQUEST",
    );
    let (status, xml) = soap
        .post(
            &soap.lookup,
            SOAP12,
            v12_with(&block("e:mustUnderstand=\"true\"")),
        )
        .await;
    assert_fault(
        status,
        &xml,
        StatusCode::INTERNAL_SERVER_ERROR,
        "<env:Value>env:MustUnderstand</env:Value>",
        "INVALID_REQUEST",
    );
    assert!(
        xml.contains("<env:NotUnderstood qname=\"ns1:Ticket\" xmlns:ns1=\"urn:example:tickets\"/>"),
        "{xml}"
    );

    for (what, content_type, envelope) in [
        (
            "1.1, mustUnderstand 0",
            TEXT_XML,
            v11_with(&block("s:mustUnderstand=\"0\"")),
        ),
        (
            "1.1, for another actor",
            TEXT_XML,
            v11_with(&block(
                "s:mustUnderstand=\"1\" s:actor=\"http://example.com/gateway\"",
            )),
        ),
        (
            "1.2, mustUnderstand 0",
            SOAP12,
            v12_with(&block("e:mustUnderstand=\"0\"")),
        ),
        (
            "1.2, for another role",
            SOAP12,
            v12_with(&block(
                "e:mustUnderstand=\"true\" e:role=\"http://example.com/gateway\"",
            )),
        ),
    ] {
        let (status, xml) = soap.post(&soap.lookup, content_type, envelope).await;
        assert_eq!(status, StatusCode::OK, "{what}: {xml}");
        assert_eq!(
            element(&xml, "userId").as_deref(),
            Some(user_id.as_str()),
            "{what}: {xml}"
        );
    }
    hub.stop().await;
}

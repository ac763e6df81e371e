//! soap-register over real sockets, against the real PostgreSQL: both SOAP
//! versions, every prefix style, hostile documents, races, the WSDL, and
//! zeep (a SOAP client no one here wrote) generated from it. soap-lookup
//! runs beside it where a test reads back what it registered.

use std::process::Command;

use hub_testkit::soap::*;
use hub_testkit::{Service, TestHub, TestSetup};
use reqwest::StatusCode;

const SERVICES: &[Service] = &[Service::SoapRegister, Service::SoapLookup];

#[tokio::test(flavor = "multi_thread")]
async fn domain_errors_are_faults_with_the_core_codes() {
    let hub = TestHub::with(SERVICES).await;
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
            register_op("q w", "q3@example.com", "correct horse battery"),
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
    let hub = TestHub::with(SERVICES).await;
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
async fn hostile_documents_cost_a_fault_and_nothing_more() {
    let secret = hub_testkit::scratch_dir().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-MARKER").unwrap();
    let hub = TestHub::with(SERVICES).await;
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
            .get(format!("{}/health", hub.url(Service::SoapLookup)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer after {what}: {e:?}"));
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
        .find(|l| l.service == Service::SoapLookup)
        .unwrap()
        .local_addr;
    let start = format!("<s:Envelope xmlns:s=\"{V11}\" x=\"{}", "a".repeat(1024));
    let (status, xml) = raw_post(lookup, "/user/soap", 10 << 20, start.as_bytes()).await;
    assert_eq!(status, 413, "{xml}");
    assert!(xml.contains("<faultcode>soap:Client</faultcode>"), "{xml}");
    let health = soap
        .client
        .get(format!("{}/health", hub.url(Service::SoapLookup)))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_simultaneous_registrations_of_one_name_one_wins() {
    // The race is under test here, not fairness: all fifty come from this
    // one test client, so its hashing share is widened to take them.
    let mut setup = TestSetup::new(SERVICES);
    setup.config.hashing.max_per_client = 64;
    setup.config.limits.registration_per_client.burst = 64;
    let hub = setup.start().await;
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
    let mut setup = TestSetup::new(SERVICES);
    setup.config.services.soap_register.external_url = Some("https://soap.example.com/reg/".into());
    let hub = setup.start().await;
    let lookup_url = format!("{}/user/soap", hub.url(Service::SoapLookup));
    for url in [
        format!("{}/register?wsdl", hub.url(Service::SoapRegister)),
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
        let template = std::fs::read_to_string(
            std::path::Path::new(hub_testkit::ROOT).join("wsdl/users.wsdl"),
        )
        .unwrap();
        assert_eq!(
            wsdl.lines().count(),
            template.lines().count(),
            "the file in wsdl/ is what is served"
        );
    }
    hub.stop().await;
}

/// zeep, from PyPI, generates its client from our WSDL URLs and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn zeep_registers_and_looks_up_over_both_versions() {
    let python = hub_testkit::venv_bin("python");
    let hub = TestHub::with(SERVICES).await;
    let register_wsdl = format!("{}/register?wsdl", hub.url(Service::SoapRegister));
    let lookup_wsdl = format!("{}/user/soap?wsdl", hub.url(Service::SoapLookup));
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

/// One user, two protocols: registered over SOAP, signed in over REST, and
/// the token dead after logout.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_registered_over_soap_logs_in_over_rest() {
    let hub = TestHub::with(&[Service::SoapRegister, Service::RestAuth]).await;
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

    let rest = hub.url(Service::RestAuth);
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

/// Registration costs a full hash, so each client has a budget of them, and
/// REST and SOAP spend the same one: a flood cannot switch protocols to get
/// a second. Past it SOAP answers a fault with `TOO_MANY_ATTEMPTS` and
/// `Retry-After`; another client still registers.
#[tokio::test(flavor = "multi_thread")]
async fn registrations_are_limited_per_client_across_rest_and_soap() {
    let mut setup = TestSetup::new(&[Service::SoapRegister, Service::RestAuth]);
    setup.config.limits.registration_per_client.burst = 3;
    setup.config.limits.registration_per_client.replenish_ms = 60_000;
    let hub = setup.start().await;
    let soap = Soap::new(&hub);
    let rest = format!("{}/register", hub.url(Service::RestAuth));
    let rest_register = |client: reqwest::Client, name: &'static str| {
        let url = rest.clone();
        async move {
            let resp = client
                .post(url)
                .json(&serde_json::json!({
                    "username": name, "email": format!("{name}@example.com"),
                    "password": "correct horse battery"}))
                .send()
                .await
                .unwrap();
            let retry_after = resp.headers().get("retry-after").cloned();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap();
            (status, body, retry_after)
        }
    };
    for name in ["una", "uri"] {
        let (status, body, _) = rest_register(reqwest::Client::new(), name).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let op = |name: &str| {
        register_op(
            name,
            &format!("{name}@example.com"),
            "correct horse battery",
        )
    };
    let (status, xml) = soap.post(&soap.register, TEXT_XML, v11(&op("ute"))).await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    // The budget of three is spent, on either protocol.
    let resp = soap
        .client
        .post(&soap.register)
        .header("content-type", SOAP12)
        .body(v12(&op("uwe")))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&retry_after), "{retry_after}");
    let status = resp.status();
    let xml = resp.text().await.unwrap();
    assert_fault(
        status,
        &xml,
        StatusCode::INTERNAL_SERVER_ERROR,
        "<env:Value>env:Receiver</env:Value>",
        "TOO_MANY_ATTEMPTS",
    );
    let (status, body, retry_after) = rest_register(reqwest::Client::new(), "uma").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "TOO_MANY_ATTEMPTS", "{body}");
    assert!(retry_after.is_some());
    // Nothing was stored for the refused ones; another client is not affected.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let (status, body, _) = rest_register(other, "uma").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let metrics = hub.metrics(Service::SoapRegister).await;
    assert!(
        metrics.contains(r#"polyhub_limiter_keys{budget="registration_client"} 2"#),
        "{metrics}"
    );
    hub.stop().await;
}

fn v11_with_header(header: &str, operation: &str) -> String {
    format!(
        "<soapenv:Envelope xmlns:soapenv=\"{V11}\"><soapenv:Header>{header}</soapenv:Header>\
         <soapenv:Body>{operation}</soapenv:Body></soapenv:Envelope>"
    )
}

fn v12_with_header(header: &str, operation: &str) -> String {
    format!(
        "<env:Envelope xmlns:env=\"{V12}\"><env:Header>{header}</env:Header>\
         <env:Body>{operation}</env:Body></env:Envelope>"
    )
}

/// SOAP's `mustUnderstand`, honoured: a mandatory header block meant for us
/// that no one here understands is a `MustUnderstand` fault (SOAP 1.2's names
/// it in an `env:NotUnderstood` header block) and nothing is registered; an
/// optional one, or one for another actor or role, is ignored and the call
/// served as before.
#[tokio::test(flavor = "multi_thread")]
async fn mandatory_header_blocks_no_one_understands_are_refused() {
    let hub = TestHub::with(&[Service::SoapRegister]).await;
    let soap = Soap::new(&hub);
    let op = |name: &str| {
        register_op(
            name,
            &format!("{name}@example.com"),
            "correct horse battery",
        )
    };
    let trace = |attributes: &str| {
        format!("<t:Trace xmlns:t=\"urn:example:trace\" {attributes}>abc</t:Trace>")
    };

    let refused = [
        (
            "1.1, mustUnderstand 1",
            TEXT_XML,
            v11_with_header(&trace("soapenv:mustUnderstand=\"1\""), &op("mu.a")),
        ),
        (
            "1.1, for the next actor",
            TEXT_XML,
            v11_with_header(
                &trace(
                    "soapenv:mustUnderstand=\"1\" \
                     soapenv:actor=\"http://schemas.xmlsoap.org/soap/actor/next\"",
                ),
                &op("mu.b"),
            ),
        ),
        (
            "1.2, mustUnderstand true",
            SOAP12,
            v12_with_header(&trace("env:mustUnderstand=\"true\""), &op("mu.c")),
        ),
        (
            "1.2, for the ultimate receiver",
            SOAP12,
            v12_with_header(
                &trace(
                    "env:mustUnderstand=\"1\" \
                     env:role=\"http://www.w3.org/2003/05/soap-envelope/role/ultimateReceiver\"",
                ),
                &op("mu.d"),
            ),
        ),
    ];
    for (what, content_type, envelope) in refused {
        let (status, xml) = soap.post(&soap.register, content_type, envelope).await;
        if content_type == TEXT_XML {
            assert_fault(
                status,
                &xml,
                StatusCode::INTERNAL_SERVER_ERROR,
                "<faultcode>soap:MustUnderstand</faultcode>",
                "INVALID_REQUEST",
            );
        } else {
            assert_fault(
                status,
                &xml,
                StatusCode::INTERNAL_SERVER_ERROR,
                "<env:Value>env:MustUnderstand</env:Value>",
                "INVALID_REQUEST",
            );
            assert!(
                xml.contains(
                    "<env:Header><env:NotUnderstood qname=\"ns1:Trace\" xmlns:ns1=\"urn:example:trace\"/></env:Header>"
                ),
                "{what}: {xml}"
            );
        }
    }

    // The same names again, with headers we may ignore: nothing was
    // registered by the refused calls, so each is served.
    let served = [
        (
            "1.1, mustUnderstand 0",
            TEXT_XML,
            v11_with_header(&trace("soapenv:mustUnderstand=\"0\""), &op("mu.a")),
        ),
        (
            "1.1, for another actor",
            TEXT_XML,
            v11_with_header(
                &trace("soapenv:mustUnderstand=\"1\" soapenv:actor=\"http://example.com/gateway\""),
                &op("mu.b"),
            ),
        ),
        (
            "1.2, mustUnderstand false",
            SOAP12,
            v12_with_header(&trace("env:mustUnderstand=\"false\""), &op("mu.c")),
        ),
        (
            "1.2, for no one",
            SOAP12,
            v12_with_header(
                &trace(
                    "env:mustUnderstand=\"true\" \
                     env:role=\"http://www.w3.org/2003/05/soap-envelope/role/none\"",
                ),
                &op("mu.d"),
            ),
        ),
        (
            "1.2, for another role",
            SOAP12,
            v12_with_header(
                &trace("env:mustUnderstand=\"true\" env:role=\"http://example.com/gateway\""),
                &op("mu.e"),
            ),
        ),
    ];
    for (what, content_type, envelope) in served {
        let (status, xml) = soap.post(&soap.register, content_type, envelope).await;
        assert_eq!(status, StatusCode::OK, "{what}: {xml}");
        assert!(element(&xml, "userId").is_some(), "{what}: {xml}");
    }
    hub.stop().await;
}

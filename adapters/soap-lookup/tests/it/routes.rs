//! The router alone, over hub-core's in-memory users: no socket, no store,
//! no process. What a lookup answers is decided by the core; these check
//! what the adapter makes of it on the wire.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hub_core::ports::memory::InMemoryUsers;
use hub_core::{
    Directory, Email, NewUser, Password, PasswordHasher, Role, UserId, UserRepository, Username,
};
use hub_runtime::budgets::AttemptBudgets;
use hub_runtime::config::{CorsConfig, HttpConfig, LimitsConfig};
use hub_runtime::{Readiness, Service, ServiceContext};
use hub_soap::SecurityPolicy;
use hub_soap_lookup::{SoapLookupState, router};
use hub_testkit::soap::{SOAP12, TEXT_XML, element, lookup_op, v11, v12};
use tower::ServiceExt;

async fn lookup_router() -> (axum::Router, UserId) {
    let users = Arc::new(InMemoryUsers::default());
    let username = Username::parse("olga").unwrap();
    let password = Password::parse("correct horse battery", &username).unwrap();
    let id = UserId::generate();
    users
        .insert(NewUser {
            id,
            username,
            email: Email::parse("olga@example.com").unwrap(),
            password_hash: PasswordHasher::insecure_for_tests(1_000)
                .hash(&password)
                .unwrap(),
            role: Role::User,
            created_at: time::OffsetDateTime::now_utc(),
            created_by: None,
        })
        .await
        .unwrap();
    let state = SoapLookupState {
        directory: Directory::new(users),
        wsdl: hub_soap::users_wsdl(
            "http://soap.test/register",
            "http://soap.test/user/soap",
            SecurityPolicy::Optional,
            SecurityPolicy::Optional,
        )
        .into(),
        limits: hub_soap::Limits {
            max_bytes: 64 * 1024,
            max_depth: 32,
            max_elements: 1_000,
        },
        policy: SecurityPolicy::Optional,
        security: None,
        budgets: Arc::new(AttemptBudgets::new(&LimitsConfig::default(), 64)),
    };
    let context = ServiceContext {
        service: Service::SoapLookup,
        readiness: Readiness::new(Service::SoapLookup.name(), Duration::from_secs(1)),
        http: HttpConfig::default(),
        cors: Some(CorsConfig {
            allowed_origins: vec!["https://portal.example.com".into()],
            allow_credentials: false,
        }),
    };
    (router(state, context).unwrap(), id)
}

async fn send(router: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn post(content_type: &str, envelope: String) -> Request<Body> {
    Request::post("/user/soap")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(envelope))
        .unwrap()
}

#[tokio::test]
async fn both_versions_and_the_legacy_get_answer_from_the_core() {
    let (router, id) = lookup_router().await;
    for request in [
        post(TEXT_XML, v11(&lookup_op("OLGA"))),
        post(SOAP12, v12(&lookup_op("olga"))),
        Request::get("/user/soap?username=Olga")
            .body(Body::empty())
            .unwrap(),
    ] {
        let (status, xml) = send(&router, request).await;
        assert_eq!(status, StatusCode::OK, "{xml}");
        assert_eq!(element(&xml, "userId"), Some(id.to_string()), "{xml}");
        assert!(!xml.contains("olga@example.com"), "never the email: {xml}");
    }
}

#[tokio::test]
async fn an_unknown_name_is_a_fault_with_the_core_code() {
    let (router, _) = lookup_router().await;
    let (status, xml) = send(&router, post(SOAP12, v12(&lookup_op("nobody")))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{xml}");
    assert!(xml.contains("<env:Value>env:Sender</env:Value>"), "{xml}");
    assert_eq!(
        element(&xml, "ErrorCode").as_deref(),
        Some("USER_NOT_FOUND")
    );
    let (status, xml) = send(
        &router,
        Request::get("/user/soap").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert_eq!(
        element(&xml, "ErrorCode").as_deref(),
        Some("INVALID_REQUEST")
    );
}

#[tokio::test]
async fn the_wsdl_names_the_addresses_it_was_given() {
    let (router, _) = lookup_router().await;
    let (status, wsdl) = send(
        &router,
        Request::get("/user/soap?wsdl").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(wsdl.contains("http://soap.test/user/soap"), "{wsdl}");
    assert!(wsdl.contains("http://soap.test/register"), "{wsdl}");
}

#[tokio::test]
async fn a_preflight_from_an_unlisted_origin_is_refused() {
    let (router, _) = lookup_router().await;
    let preflight = |origin: &str| {
        Request::options("/user/soap")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    let (status, _) = send(&router, preflight("https://evil.example.com")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response = router
        .clone()
        .oneshot(preflight("https://portal.example.com"))
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://portal.example.com"
    );
}

#[tokio::test]
async fn header_blocks_are_bounded() {
    let (router, id) = lookup_router().await;
    let with_blocks = |n: usize| {
        let blocks: String = (0..n)
            .map(|i| format!("<t:Hop xmlns:t=\"urn:example:trace\">{i}</t:Hop>"))
            .collect();
        format!(
            "<s:Envelope xmlns:s=\"{}\"><s:Header>{blocks}</s:Header><s:Body>{}</s:Body></s:Envelope>",
            hub_testkit::soap::V11,
            lookup_op("olga")
        )
    };
    let (status, xml) = send(&router, post(TEXT_XML, with_blocks(32))).await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    assert_eq!(element(&xml, "userId"), Some(id.to_string()), "{xml}");
    let (status, xml) = send(&router, post(TEXT_XML, with_blocks(33))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert!(xml.contains("<faultcode>soap:Client</faultcode>"), "{xml}");
    assert_eq!(
        element(&xml, "ErrorCode").as_deref(),
        Some("INVALID_REQUEST")
    );
}

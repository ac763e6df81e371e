//! WS-Security on both SOAP services, over real sockets against the real
//! PostgreSQL: zeep's and npm soap's WS-Security (clients no one here
//! wrote), a bearer token in a BinarySecurityToken, every refusal in
//! WS-Security's fault shape, and the operator's policies.

use std::process::Command;

use base64::Engine;
use hub_core::Role;
use hub_runtime::config::SecurityPolicy;
use hub_testkit::soap::*;
use hub_testkit::{Service, TestHub, TestSetup, venv_bin};
use reqwest::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
const PASSWORD: &str = "correct horse battery";

fn at(offset_secs: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
        .format(&Rfc3339)
        .unwrap()
}

/// A UsernameToken (PasswordText) with a fresh Nonce and Created.
fn username_token(name: &str, password: &str) -> String {
    let nonce = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::now_v7().as_bytes());
    format!(
        "<wsse:UsernameToken><wsse:Username>{name}</wsse:Username>\
         <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">{password}</wsse:Password>\
         <wsse:Nonce>{nonce}</wsse:Nonce><wsu:Created>{}</wsu:Created></wsse:UsernameToken>",
        at(0)
    )
}

fn timestamp(created: i64, expires: i64) -> String {
    format!(
        "<wsu:Timestamp><wsu:Created>{}</wsu:Created><wsu:Expires>{}</wsu:Expires></wsu:Timestamp>",
        at(created),
        at(expires)
    )
}

fn bearer(token: &str) -> String {
    format!(
        "<wsse:BinarySecurityToken ValueType=\"urn:ietf:params:oauth:token-type:jwt\" \
         EncodingType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary\">{}</wsse:BinarySecurityToken>",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
}

/// An envelope of `version` whose Header is a `wsse:Security` holding
/// `security`, marked mustUnderstand, with `operation` in the Body.
fn secured(version: &str, security: &str, operation: &str) -> String {
    format!(
        "<e:Envelope xmlns:e=\"{version}\" xmlns:wsse=\"{WSSE}\" xmlns:wsu=\"{WSU}\"><e:Header>\
         <wsse:Security e:mustUnderstand=\"1\">{security}</wsse:Security></e:Header>\
         <e:Body>{operation}</e:Body></e:Envelope>"
    )
}

fn role_op(username: &str, role: &str) -> String {
    register_op(username, &format!("{username}@example.com"), PASSWORD).replace(
        "</u:RegisterUser>",
        &format!("<u:role>{role}</u:role></u:RegisterUser>"),
    )
}

/// A SOAP 1.1 refusal in WS-Security's shape: 500, `wsse:<code>`, and the
/// polyhub code in the detail.
fn assert_wsse_11(status: StatusCode, xml: &str, code: &str, error_code: &str) {
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert!(
        xml.contains(&format!(
            "<faultcode xmlns:wsse=\"{WSSE}\">wsse:{code}</faultcode>"
        )),
        "{xml}"
    );
    assert_eq!(
        element(xml, "ErrorCode").as_deref(),
        Some(error_code),
        "{xml}"
    );
}

/// The same in SOAP 1.2: 400, `env:Sender` with the subcode.
fn assert_wsse_12(status: StatusCode, xml: &str, code: &str, error_code: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{xml}");
    assert!(
        xml.contains(&format!(
            "<env:Value>env:Sender</env:Value><env:Subcode><env:Value xmlns:wsse=\"{WSSE}\">wsse:{code}</env:Value></env:Subcode>"
        )),
        "{xml}"
    );
    assert_eq!(
        element(xml, "ErrorCode").as_deref(),
        Some(error_code),
        "{xml}"
    );
}

/// Registers `name` anonymously over SOAP, with `role` set by an operator.
async fn user(hub: &TestHub, soap: &Soap, name: &str, role: Role) {
    let (status, xml) = soap
        .post(
            &soap.register,
            TEXT_XML,
            v11(&register_op(name, &format!("{name}@example.com"), PASSWORD)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    if role == Role::Admin {
        hub.hub.administration().set_role(name, role).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zeep_and_npm_soap_authenticate_with_their_ws_security() {
    let hub = TestHub::with(&[Service::SoapRegister, Service::SoapLookup]).await;
    let soap = Soap::new(&hub);
    user(&hub, &soap, "wsadmin", Role::Admin).await;
    let (register_wsdl, lookup_wsdl) = (
        format!("{}?wsdl", soap.register),
        format!("{}?wsdl", soap.lookup),
    );
    let python = venv_bin("python");
    let suffix = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let tail = suffix.clone();
    let (zeep, node) = tokio::task::spawn_blocking(move || {
        let zeep = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/zeep_wsse.py"
            ))
            .args([&register_wsdl, &lookup_wsdl, "wsadmin", PASSWORD, &suffix])
            .output()
            .unwrap();
        let node = Command::new("node")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../e2e/clients/soap_wsse.js"
            ))
            .args([&lookup_wsdl, "wsadmin", PASSWORD, "WSADMIN"])
            .output()
            .unwrap();
        (zeep, node)
    })
    .await
    .unwrap();
    for (who, out, expected) in [
        ("zeep", &zeep, ["zeep wsse Soap11", "zeep wsse Soap12"]),
        (
            "npm soap",
            &node,
            ["npm soap WSSecurity", "npm soap WSSecurity"],
        ),
    ] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{who}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in expected {
            assert!(stdout.contains(line), "{who}: {stdout}");
        }
    }
    // zeep's admin registered its users with the admin role, and their
    // events name it.
    let admin = hub
        .hub
        .users()
        .find_by_username(&hub_core::Username::parse("wsadmin").unwrap())
        .await
        .unwrap()
        .unwrap();
    // The log shows an event once every transaction running on the
    // PostgreSQL server (another test's too) is past it: read until zeep's
    // two registrations are there.
    let events: Vec<serde_json::Value> = hub_testkit::eventually(
        std::time::Duration::from_secs(30),
        "zeep's registrations in the event log",
        || async {
            let events: Vec<serde_json::Value> = hub
                .hub
                .event_log()
                .read(None, 1_000)
                .await
                .unwrap()
                .iter()
                .map(hub_core::events::LoggedEvent::to_json)
                .collect();
            let zeeps = events
                .iter()
                .filter(|e| {
                    e["type"] == "user.created"
                        && e["data"]["username"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("zeep.wsse."))
                })
                .count();
            (zeeps >= 2).then_some(events)
        },
    )
    .await;
    for soap_version in ["soap11", "soap12"] {
        let name = format!("zeep.wsse.{soap_version}.{tail}");
        let made = hub
            .hub
            .users()
            .find_by_username(&hub_core::Username::parse(&name).unwrap())
            .await
            .unwrap();
        assert_eq!(made.map(|u| u.role), Some(Role::Admin), "{name}");
        let created = events
            .iter()
            .find(|e| e["type"] == "user.created" && e["data"]["username"] == name.as_str())
            .unwrap_or_else(|| panic!("no user.created for {name}: {events:?}"));
        assert_eq!(created["data"]["by"], admin.id.to_string(), "{created}");
    }
    let anonymous = events
        .iter()
        .find(|e| e["type"] == "user.created" && e["data"]["username"] == "wsadmin")
        .unwrap();
    assert!(anonymous["data"].get("by").is_none(), "{anonymous}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_is_in_the_ws_security_shape() {
    let hub = TestHub::with(&[Service::SoapRegister, Service::SoapLookup]).await;
    let soap = Soap::new(&hub);
    user(&hub, &soap, "wsuser", Role::User).await;

    // A good token works in both versions, and a message is not taken twice.
    let once = secured(
        V11,
        &username_token("wsuser", PASSWORD),
        &lookup_op("wsuser"),
    );
    let (status, xml) = soap.post(&soap.lookup, TEXT_XML, once.clone()).await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    let (status, xml) = soap.post(&soap.lookup, TEXT_XML, once).await;
    assert_wsse_11(status, &xml, "InvalidSecurity", "MESSAGE_REPLAYED");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            SOAP12,
            secured(
                V12,
                &username_token("wsuser", PASSWORD),
                &lookup_op("wsuser"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");

    // An expired Timestamp, and one from too far in the future.
    let (status, xml) = soap
        .post(
            &soap.lookup,
            SOAP12,
            secured(
                V12,
                &format!(
                    "{}{}",
                    timestamp(-600, -300),
                    username_token("wsuser", PASSWORD)
                ),
                &lookup_op("wsuser"),
            ),
        )
        .await;
    assert_wsse_12(status, &xml, "MessageExpired", "MESSAGE_EXPIRED");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &timestamp(3_600, 3_900), &lookup_op("wsuser")),
        )
        .await;
    assert_wsse_11(status, &xml, "MessageExpired", "MESSAGE_EXPIRED");

    // Dates at the ends of time are answered, not overflowed.
    for (stamp, expected) in [
        (
            "<wsu:Timestamp><wsu:Expires>9999-12-31T23:59:59Z</wsu:Expires></wsu:Timestamp>",
            None,
        ),
        (
            "<wsu:Timestamp><wsu:Created>9999-12-31T23:59:59Z</wsu:Created></wsu:Timestamp>",
            Some("MESSAGE_EXPIRED"),
        ),
        (
            "<wsu:Timestamp><wsu:Created>0001-01-01T00:00:00Z</wsu:Created><wsu:Expires>0001-01-01T00:00:00Z</wsu:Expires></wsu:Timestamp>",
            Some("MESSAGE_EXPIRED"),
        ),
    ] {
        let (status, xml) = soap
            .post(
                &soap.lookup,
                TEXT_XML,
                secured(
                    V11,
                    &format!("{stamp}{}", username_token("wsuser", PASSWORD)),
                    &lookup_op("wsuser"),
                ),
            )
            .await;
        match expected {
            None => assert_eq!(status, StatusCode::OK, "{xml}"),
            Some(code) => assert_wsse_11(status, &xml, "MessageExpired", code),
        }
    }

    // PasswordDigest, and a header no one here understands beside it.
    let digest = username_token("wsuser", "x").replace("#PasswordText", "#PasswordDigest");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &digest, &lookup_op("wsuser")),
        )
        .await;
    assert_wsse_11(
        status,
        &xml,
        "UnsupportedSecurityToken",
        "UNSUPPORTED_SECURITY_TOKEN",
    );
    assert!(xml.contains("PasswordDigest"), "{xml}");
    let audit = secured(
        V11,
        &username_token("wsuser", PASSWORD),
        &lookup_op("wsuser"),
    )
    .replace(
        "</e:Header>",
        "<a:Audit xmlns:a=\"urn:audit\" e:mustUnderstand=\"1\"/></e:Header>",
    );
    let (status, xml) = soap.post(&soap.lookup, TEXT_XML, audit).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert!(
        xml.contains("<faultcode>soap:MustUnderstand</faultcode>"),
        "{xml}"
    );

    // A non-admin may not set a role, with a header or without one.
    let (status, xml) = soap
        .post(
            &soap.register,
            TEXT_XML,
            secured(
                V11,
                &username_token("wsuser", PASSWORD),
                &role_op("wsnew", "admin"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert_eq!(
        element(&xml, "ErrorCode").as_deref(),
        Some("FORBIDDEN"),
        "{xml}"
    );
    let (_, xml) = soap
        .post(&soap.register, TEXT_XML, v11(&role_op("wsnew", "admin")))
        .await;
    assert_eq!(
        element(&xml, "ErrorCode").as_deref(),
        Some("FORBIDDEN"),
        "{xml}"
    );

    // A wrong password, again and again: the account's budget ends it with
    // a Retry-After. Then the right password waits too, unless it was
    // verified a moment ago (like a known device, guesses do not lock out a
    // client that proved the password): wsuser's was, wslocked's not.
    user(&hub, &soap, "wslocked", Role::User).await;
    for (name, remembered) in [("wsuser", true), ("wslocked", false)] {
        let mut limited = None;
        for _ in 0..15 {
            let response = soap
                .client
                .post(&soap.lookup)
                .header("content-type", TEXT_XML)
                .body(secured(
                    V11,
                    &username_token(name, "wrong password"),
                    &lookup_op(name),
                ))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").cloned();
            let (status, xml) = (response.status(), response.text().await.unwrap());
            if element(&xml, "ErrorCode").as_deref() == Some("TOO_MANY_ATTEMPTS") {
                assert_wsse_11(status, &xml, "FailedAuthentication", "TOO_MANY_ATTEMPTS");
                limited = retry_after;
                break;
            }
            assert_wsse_11(status, &xml, "FailedAuthentication", "INVALID_CREDENTIALS");
        }
        assert!(limited.is_some(), "{name}: no budget refused the guesses");
        let (status, xml) = soap
            .post(
                &soap.lookup,
                TEXT_XML,
                secured(V11, &username_token(name, PASSWORD), &lookup_op(name)),
            )
            .await;
        if remembered {
            assert_eq!(status, StatusCode::OK, "{name}: {xml}");
        } else {
            assert_wsse_11(status, &xml, "FailedAuthentication", "TOO_MANY_ATTEMPTS");
        }
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_token_authenticates_and_a_password_change_ends_a_remembered_one() {
    let hub = TestHub::with(&[
        Service::SoapRegister,
        Service::SoapLookup,
        Service::RestAuth,
    ])
    .await;
    let soap = Soap::new(&hub);
    let rest = hub.url(Service::RestAuth);
    let login = hub_testkit::sign_up(&rest, "wsbearer", PASSWORD).await;
    let token = login["token"].as_str().unwrap().to_owned();

    let (status, xml) = soap
        .post(
            &soap.lookup,
            SOAP12,
            secured(V12, &bearer(&token), &lookup_op("wsbearer")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    // The raw token (no base64) is taken too.
    let raw = bearer(&token).replace(
        &base64::engine::general_purpose::STANDARD.encode(&token),
        &token,
    );
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &raw, &lookup_op("wsbearer")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");

    // A UsernameToken verified once is remembered...
    for _ in 0..2 {
        let (status, xml) = soap
            .post(
                &soap.lookup,
                TEXT_XML,
                secured(
                    V11,
                    &username_token("wsbearer", PASSWORD),
                    &lookup_op("wsbearer"),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{xml}");
    }
    // ...until the password changes, through any port.
    let http = reqwest::Client::new();
    let changed = http
        .put(format!("{rest}/profile"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"current_password": PASSWORD, "new_password": "another horse battery"}))
        .send()
        .await
        .unwrap();
    assert!(
        changed.status().is_success(),
        "{}",
        changed.text().await.unwrap()
    );
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(
                V11,
                &username_token("wsbearer", PASSWORD),
                &lookup_op("wsbearer"),
            ),
        )
        .await;
    assert_wsse_11(status, &xml, "FailedAuthentication", "INVALID_CREDENTIALS");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(
                V11,
                &username_token("wsbearer", "another horse battery"),
                &lookup_op("wsbearer"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    // The change kept the session it was made from; signing out ends it,
    // and the token with it.
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &bearer(&token), &lookup_op("wsbearer")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    let out = http
        .post(format!("{rest}/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(out.status().is_success(), "{}", out.status());
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &bearer(&token), &lookup_op("wsbearer")),
        )
        .await;
    assert_wsse_11(status, &xml, "InvalidSecurityToken", "INVALID_TOKEN");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_choose_each_operations_policy() {
    // Required: the WSDL says so, and anonymous callers are refused.
    let mut setup = TestSetup::new(&[Service::SoapRegister, Service::SoapLookup]);
    setup.config.soap.security.lookup_user = SecurityPolicy::Required;
    setup.config.soap.security.register_user = SecurityPolicy::None;
    let hub = setup.start().await;
    let soap = Soap::new(&hub);
    user(&hub, &soap, "wsreq", Role::User).await;
    let wsdl = soap
        .client
        .get(format!("{}?wsdl", soap.lookup))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        wsdl.contains("<wsp:Policy wsu:Id=\"PolyhubWsSecurity\""),
        "{wsdl}"
    );
    assert!(wsdl.contains("<sp:UsernameToken "), "{wsdl}");
    assert_eq!(
        wsdl.matches("URI=\"#PolyhubWsSecurity\"").count(),
        2,
        "both lookup bindings, neither registration one: {wsdl}"
    );
    let (status, xml) = soap
        .post(&soap.lookup, TEXT_XML, v11(&lookup_op("wsreq")))
        .await;
    assert_wsse_11(status, &xml, "InvalidSecurity", "AUTHENTICATION_REQUIRED");
    let legacy = soap
        .client
        .get(format!("{}?username=wsreq", soap.lookup))
        .send()
        .await
        .unwrap();
    let (status, xml) = (legacy.status(), legacy.text().await.unwrap());
    assert_wsse_11(status, &xml, "InvalidSecurity", "AUTHENTICATION_REQUIRED");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &timestamp(0, 300), &lookup_op("wsreq")),
        )
        .await;
    assert_wsse_11(status, &xml, "InvalidSecurity", "AUTHENTICATION_REQUIRED");
    let (status, xml) = soap
        .post(
            &soap.lookup,
            TEXT_XML,
            secured(V11, &username_token("wsreq", PASSWORD), &lookup_op("wsreq")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{xml}");
    // None: a Security header marked mustUnderstand is not understood.
    let (status, xml) = soap
        .post(
            &soap.register,
            TEXT_XML,
            secured(
                V11,
                &username_token("wsreq", PASSWORD),
                &register_op("wsother", "o@example.com", PASSWORD),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{xml}");
    assert!(
        xml.contains("<faultcode>soap:MustUnderstand</faultcode>"),
        "{xml}"
    );
    hub.stop().await;

    // Optional: anonymous lookups have a per-client budget; an
    // authenticated caller spends none of it.
    let mut setup = TestSetup::new(&[Service::SoapRegister, Service::SoapLookup]);
    setup.config.limits.anonymous_lookup_per_client = hub_runtime::config::BudgetConfig {
        burst: 5,
        replenish_ms: 60_000,
    };
    setup.config.limits.soap_calls_per_account = hub_runtime::config::BudgetConfig {
        burst: 3,
        replenish_ms: 60_000,
    };
    let hub = setup.start().await;
    let soap = Soap::new(&hub);
    user(&hub, &soap, "wsopt", Role::User).await;
    let mut answered = 0;
    let mut refusal = None;
    for n in 0..10 {
        let response = soap
            .client
            .post(&soap.lookup)
            .header("content-type", TEXT_XML)
            .body(v11(&lookup_op(&format!("made.up.{n}"))))
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let xml = response.text().await.unwrap();
        match element(&xml, "ErrorCode").as_deref() {
            Some("USER_NOT_FOUND") => answered += 1,
            Some("TOO_MANY_ATTEMPTS") => {
                refusal = retry_after;
                break;
            }
            other => panic!("{other:?}: {xml}"),
        }
    }
    assert_eq!(answered, 5, "the burst, then the budget");
    assert!(refusal.is_some(), "a Retry-After");
    // An account holder's calls have their own budget (admins excepted),
    // spent before a nonce is recorded.
    for n in 0..4 {
        let (status, xml) = soap
            .post(
                &soap.lookup,
                TEXT_XML,
                secured(V11, &username_token("wsopt", PASSWORD), &lookup_op("wsopt")),
            )
            .await;
        if n < 3 {
            assert_eq!(status, StatusCode::OK, "{xml}");
        } else {
            assert_eq!(
                element(&xml, "ErrorCode").as_deref(),
                Some("TOO_MANY_ATTEMPTS"),
                "{xml}"
            );
        }
    }
    hub.stop().await;
}

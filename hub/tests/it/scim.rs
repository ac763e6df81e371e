//! SCIM 2.0 through the whole wiring, driven by clients no one here wrote:
//! scim2-tester's every check, scim2-client's create, query, patch and
//! delete, and request bodies shaped as Entra ID and Okta send them. Then
//! what provisioning decides for the other protocols: a user deactivated
//! over SCIM is refused at once over REST, SOAP and gRPC, and a group
//! mapped to admin gives and takes the role.

use std::process::Command;

use hub::Service;
use hub_core::{GrantType, NewClient};
use hub_testkit::soap::{Soap, TEXT_XML, V11, element, lookup_op};

const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
use hub_testkit::{TestHub, TestSetup, sign_up, venv_bin};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";
const SCIM_JSON: &str = "application/scim+json";

fn client(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A client-credentials token with `scopes`, for a new client.
async fn token(hub: &TestHub, scopes: &[&str]) -> String {
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "directory".into(),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..NewClient::default()
        })
        .await
        .unwrap();
    let rest = hub.url(Service::RestAuth);
    let answer: Value = reqwest::Client::new()
        .post(format!("{rest}/oauth2/token"))
        .basic_auth(client.id.to_string(), Some(secret.unwrap().shown()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("grant_type", "client_credentials"),
                    ("scope", &scopes.join(" ")),
                ])
                .finish(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

fn run_python(args: Vec<String>) {
    let out = Command::new(venv_bin("python"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}:\n{}\n{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn third_party_clients_provision_through_scim() {
    let hub = TestHub::with(&[Service::RestAuth]).await;
    let base = format!("{}/scim/v2", hub.url(Service::RestAuth));
    let token = token(&hub, &["scim"]).await;
    let fixtures = format!("{}/tests/fixtures/scim", env!("CARGO_MANIFEST_DIR"));
    let (b, t) = (base.clone(), token.clone());
    tokio::task::spawn_blocking(move || {
        // `active` is always returned (a user is active or not), so its
        // removal cannot read as absent; it reads as active.
        run_python(vec![
            client("scim_tester.py"),
            "--url".into(),
            b.clone(),
            "--token".into(),
            t.clone(),
            "--deadline".into(),
            "240".into(),
            "--allow".into(),
            "check_remove_attribute:'active'".into(),
        ]);
        run_python(vec![
            client("scim_client.py"),
            "--url".into(),
            b.clone(),
            "--token".into(),
            t.clone(),
            "--suffix".into(),
            "c1".into(),
        ]);
        for directory in ["entra", "okta"] {
            run_python(vec![
                client("scim_replay.py"),
                "--url".into(),
                b.clone(),
                "--token".into(),
                t.clone(),
                "--fixture".into(),
                format!("{fixtures}/{directory}.json"),
                "--suffix".into(),
                format!("{directory}1"),
            ]);
        }
    })
    .await
    .unwrap();
    hub.stop().await;
}

async fn scim(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", SCIM_JSON)
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn patch_op(ops: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_user_is_refused_at_once_everywhere() {
    let hub = TestHub::with(&[Service::RestAuth, Service::SoapLookup, Service::GrpcImages]).await;
    let rest = hub.url(Service::RestAuth);
    let base = format!("{rest}/scim/v2");
    let token = token(&hub, &["scim"]).await;
    let http = reqwest::Client::new();
    let (status, user) = scim(
        &http,
        reqwest::Method::POST,
        &format!("{base}/Users"),
        &token,
        Some(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "Dana.Scully@Corp.example",
            "emails": [{"value": "dana@corp.example", "type": "work", "primary": true}],
            "password": PASSWORD,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(user["userName"], "dana.scully@corp.example", "folded");
    // Signed in over REST, with a token the other protocols take.
    let login = |name: &'static str| {
        let http = http.clone();
        let rest = rest.clone();
        async move {
            http.post(format!("{rest}/login"))
                .json(&json!({"username": name, "password": PASSWORD}))
                .send()
                .await
                .unwrap()
        }
    };
    let signed_in: Value = login("dana.scully@corp.example")
        .await
        .json()
        .await
        .unwrap();
    let bearer = signed_in["token"].as_str().unwrap().to_owned();
    let profile = |bearer: String| {
        let http = http.clone();
        let rest = rest.clone();
        async move {
            http.get(format!("{rest}/profile"))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(profile(bearer.clone()).await, StatusCode::OK);
    let soap = Soap::new(&hub);
    let lookup = |password: &'static str| {
        let soap = &soap;
        async move {
            let name = "dana.scully@corp.example";
            let nonce = uuid::Uuid::now_v7().simple().to_string();
            let created = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            let envelope = format!(
                "<e:Envelope xmlns:e=\"{V11}\" xmlns:wsse=\"{WSSE}\" xmlns:wsu=\"{WSU}\"><e:Header>\
                 <wsse:Security e:mustUnderstand=\"1\"><wsse:UsernameToken><wsse:Username>{name}</wsse:Username>\
                 <wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText\">{password}</wsse:Password>\
                 <wsse:Nonce>{nonce}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></e:Header>\
                 <e:Body>{}</e:Body></e:Envelope>",
                lookup_op(name)
            );
            soap.post(&soap.lookup, TEXT_XML, envelope).await
        }
    };
    let (status, body) = lookup(PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        element(&body, "username").as_deref(),
        Some("dana.scully@corp.example")
    );

    // Deactivated, as Entra ID does it.
    let (status, patched) = scim(
        &http,
        reqwest::Method::PATCH,
        &format!("{base}/Users/{id}"),
        &token,
        Some(patch_op(
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["active"], false);
    // At once: the REST token, a new login, SOAP's password and gRPC.
    assert_eq!(profile(bearer.clone()).await, StatusCode::UNAUTHORIZED);
    let refused = login("dana.scully@corp.example").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "ACCOUNT_DISABLED", "{refused}");
    let (status, fault) = lookup(PASSWORD).await;
    assert_ne!(status, StatusCode::OK, "{fault}");
    assert!(fault.contains("ACCOUNT_DISABLED"), "{fault}");
    let mut grpc = hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient::connect(
        hub.url(Service::GrpcImages),
    )
    .await
    .unwrap();
    let mut request = tonic::Request::new(hub_grpc_images::pb::ListImagesRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    let denied = grpc.list_images(request).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // Active again: signs in; deleted: gone everywhere.
    let (status, _) = scim(
        &http,
        reqwest::Method::PATCH,
        &format!("{base}/Users/{id}"),
        &token,
        Some(patch_op(
            json!([{"op": "replace", "value": {"active": true}}]),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let again: Value = login("dana.scully@corp.example")
        .await
        .json()
        .await
        .unwrap();
    let bearer = again["token"].as_str().unwrap().to_owned();
    let (status, _) = scim(
        &http,
        reqwest::Method::DELETE,
        &format!("{base}/Users/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(profile(bearer).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login("dana.scully@corp.example").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, gone) = scim(
        &http,
        reqwest::Method::GET,
        &format!("{base}/Users/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        gone["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_answer_in_scims_shape() {
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.scim.admin_groups = vec!["Polyhub Admins".into()];
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let base = format!("{rest}/scim/v2");
    let token = token(&hub, &["scim"]).await;
    let narrow = token_narrow(&hub).await;
    let http = reqwest::Client::new();
    let error = |body: &Value, status: &str, kind: Option<&str>| {
        assert_eq!(
            body["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
            "{body}"
        );
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["scimType"].as_str(), kind, "{body}");
    };
    let users = format!("{base}/Users");
    // No token, a user's token, a client without the scope.
    let (status, body) = scim(&http, reqwest::Method::GET, &users, "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    error(&body, "401", None);
    let user = sign_up(&rest, "plainuser", PASSWORD).await;
    let (status, body) = scim(
        &http,
        reqwest::Method::GET,
        &users,
        user["token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = scim(&http, reqwest::Method::GET, &users, &narrow, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    error(&body, "403", None);
    // Bad filters, bad bodies, a duplicate, a stale version.
    for filter in [
        "userName eq",
        "userName zz \"a\"",
        "nosuch eq \"a\"",
        "(userName pr",
    ] {
        let (status, body) = scim(
            &http,
            reqwest::Method::GET,
            &format!("{users}?filter={}", urlencode(filter)),
            &token,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}");
        error(&body, "400", Some("invalidFilter"));
    }
    let alice = json!({
        "userName": "alice@corp.example",
        "emails": [{"value": "alice@corp.example", "primary": true}],
    });
    let (status, created) = scim(
        &http,
        reqwest::Method::POST,
        &users,
        &token,
        Some(alice.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, body) = scim(&http, reqwest::Method::POST, &users, &token, Some(alice)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    error(&body, "409", Some("uniqueness"));
    for (bad, kind) in [
        (
            json!({"emails": [{"value": "x@corp.example"}]}),
            "invalidValue",
        ),
        (json!({"userName": "bob"}), "invalidValue"),
        (
            json!({"userName": "b o b", "emails": [{"value": "b@corp.example"}]}),
            "invalidValue",
        ),
        (
            json!({"userName": "bob", "emails": [{"value": "not-an-address"}]}),
            "invalidValue",
        ),
        (
            json!({"userName": "bob", "emails": [{"value": "b@corp.example"}], "password": "short"}),
            "invalidValue",
        ),
        (
            json!({"userName": "bob", "emails": [{"value": "b@corp.example"}], "active": "maybe"}),
            "invalidValue",
        ),
    ] {
        let (status, body) = scim(
            &http,
            reqwest::Method::POST,
            &users,
            &token,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        error(&body, "400", Some(kind));
    }
    let id = created["id"].as_str().unwrap();
    let response = http
        .patch(format!("{users}/{id}"))
        .bearer_auth(&token)
        .header("content-type", SCIM_JSON)
        .header("if-match", "W/\"999\"")
        .body(patch_op(json!([{"op": "add", "path": "title", "value": "x"}])).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    error(&response.json().await.unwrap(), "412", None);
    let (status, body) = scim(
        &http,
        reqwest::Method::PATCH,
        &format!("{users}/{id}"),
        &token,
        Some(patch_op(
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    error(&body, "400", Some("noTarget"));
    for (path, status) in [("/Bulk", 501), ("/Nothing", 404), ("/Me", 501)] {
        let (got, body) = scim(
            &http,
            reqwest::Method::GET,
            &format!("{base}{path}"),
            &token,
            None,
        )
        .await;
        assert_eq!(got.as_u16(), status, "{path}: {body}");
        error(&body, &status.to_string(), None);
    }
    let (got, body) = scim(
        &http,
        reqwest::Method::DELETE,
        &format!("{base}/ServiceProviderConfig"),
        &token,
        None,
    )
    .await;
    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // A group mapped to admin gives the role, and taking the user out
    // takes it back; each change ends the user's sessions.
    let carol = sign_up(&rest, "carol", PASSWORD).await;
    let carol_id = carol["user"]["id"]
        .as_str()
        .or(carol["id"].as_str())
        .map(str::to_owned);
    let carol_id = match carol_id {
        Some(id) => id,
        None => {
            let (_, found) = scim(
                &http,
                reqwest::Method::GET,
                &format!("{users}?filter={}", urlencode("userName eq \"carol\"")),
                &token,
                None,
            )
            .await;
            found["Resources"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    let (status, group) = scim(
        &http,
        reqwest::Method::POST,
        &format!("{base}/Groups"),
        &token,
        Some(json!({"displayName": "polyhub admins", "members": [{"value": carol_id}]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let role = |name: &'static str| {
        let http = http.clone();
        let rest = rest.clone();
        async move {
            let login: Value = http
                .post(format!("{rest}/login"))
                .json(&json!({"username": name, "password": PASSWORD}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let profile: Value = http
                .get(format!("{rest}/profile"))
                .bearer_auth(login["token"].as_str().unwrap())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            profile["role"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(role("carol").await, "admin");
    let old = carol["token"].as_str().unwrap();
    let still = http
        .get(format!("{rest}/profile"))
        .bearer_auth(old)
        .send()
        .await
        .unwrap();
    assert_eq!(
        still.status(),
        StatusCode::UNAUTHORIZED,
        "the role change ended it"
    );
    // Carol is the only admin: taking her out would leave none.
    let group_url = format!("{base}/Groups/{}", group["id"].as_str().unwrap());
    let remove_carol =
        patch_op(json!([{"op": "remove", "path": format!("members[value eq \"{carol_id}\"]")}]));
    let (status, body) = scim(
        &http,
        reqwest::Method::PATCH,
        &group_url,
        &token,
        Some(remove_carol.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    error(&body, "409", None);
    assert_eq!(
        role("carol").await,
        "admin",
        "nothing of the refused change kept"
    );
    // With a second admin in the group, she can leave it.
    sign_up(&rest, "dave", PASSWORD).await;
    let (_, found) = scim(
        &http,
        reqwest::Method::GET,
        &format!("{users}?filter={}", urlencode("userName eq \"dave\"")),
        &token,
        None,
    )
    .await;
    let dave_id = found["Resources"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = scim(
        &http,
        reqwest::Method::PATCH,
        &group_url,
        &token,
        Some(patch_op(
            json!([{"op": "Add", "path": "members", "value": [{"value": dave_id}]}]),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, group) = scim(
        &http,
        reqwest::Method::PATCH,
        &group_url,
        &token,
        Some(remove_carol),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(role("carol").await, "user");
    assert_eq!(role("dave").await, "admin");
    hub.stop().await;
}

async fn token_narrow(hub: &TestHub) -> String {
    token(hub, &["events:read"]).await
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

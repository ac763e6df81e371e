//! A withdrawn admin is refused at once on the session API: the role
//! change revokes the sessions its tokens name, on every instance.

use hub_core::{Role, Username};
use hub_testkit::{Service, TestHub};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SERVICES: &[Service] = &[Service::RestAuth, Service::Sessions];

/// Finding: a demoted admin's token kept reading other users' sessions.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_admin_reads_no_other_users_sessions() {
    let hub = TestHub::with(SERVICES).await;
    let (rest, sessions) = (hub.url(Service::RestAuth), hub.url(Service::Sessions));
    hub_testkit::sign_up(&rest, "alice", "correct horse").await;
    hub_testkit::sign_up(&rest, "bruno", "correct horse").await;
    hub_testkit::sign_up(&rest, "root", "correct horse").await;
    let alice = hub
        .hub
        .users()
        .find_by_username(&Username::parse("alice").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let admin = hub.hub.administration();
    // root stays an admin: the last one's role cannot be withdrawn.
    admin.set_role("root", Role::Admin).await.unwrap();
    admin.set_role("bruno", Role::Admin).await.unwrap();
    let client = Client::new();
    let login: Value = client
        .post(format!("{rest}/login"))
        .json(&json!({"username": "bruno", "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bruno = login["token"].as_str().unwrap().to_owned();
    let read = || {
        client
            .get(format!("{sessions}/api/sessions/{alice}"))
            .bearer_auth(&bruno)
            .send()
    };
    let resp = read().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "an admin reads them");

    admin.set_role("bruno", Role::User).await.unwrap();
    let resp = read().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_TOKEN", "{body}");
    hub.stop().await;
}

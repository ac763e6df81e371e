//! Each service's own binary (`cargo run -p rest-auth`, one container each
//! in docker-compose and Kubernetes) serves its service alone, and separate
//! processes configured alike share one truth through the stores.

use hub_e2e::Environment;
use serde_json::{Value, json};

const SERVICES: [&str; 6] = [
    "rest-auth",
    "soap-register",
    "soap-lookup",
    "sessions",
    "session-tracker",
    "grpc-images",
];

#[tokio::test(flavor = "multi_thread")]
async fn each_service_binary_serves_its_service_alone() {
    let deployment = Environment::new();
    let http = reqwest::Client::new();
    let processes: Vec<_> = SERVICES
        .iter()
        .map(|service| deployment.start(service, &[], 1))
        .collect();
    for (service, process) in SERVICES.iter().zip(&processes) {
        assert_eq!(
            process.services(),
            [*service],
            "{service} serves only itself"
        );
        let url = process.url(service);
        assert!(
            url.ends_with(&format!(":{}", deployment.port(service))),
            "{service} listens on its configured port: {url}"
        );
        let health = http.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{service} /health");
        let ready: Value = hub_e2e::eventually(
            std::time::Duration::from_secs(30),
            &format!("{service} ready"),
            || async {
                let answer = http.get(format!("{url}/ready")).send().await.ok()?;
                (answer.status() == 200).then_some(answer.json::<Value>().await.ok()?)
            },
        )
        .await;
        assert_eq!(ready["service"], *service, "{ready}");
    }
    let url = |service: &str| {
        let i = SERVICES.iter().position(|s| *s == service).unwrap();
        processes[i].url(service).to_owned()
    };

    // Registered through one process, seen by the others.
    let name = format!("solo.{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let password = "correct horse battery";
    let registered = http
        .post(format!("{}/register", url("rest-auth")))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let found = http
        .get(format!("{}/user/soap?username={name}", url("soap-lookup")))
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    assert!(found.text().await.unwrap().contains(&name));
    let token = &hub_e2e::log_in(&http, &url("rest-auth"), &name, password).await;
    let verified = http
        .get(format!("{}/api/sessions/verify", url("sessions")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200);

    // Logged out on one process, refused by another (no shared memory).
    let out = http
        .post(format!("{}/logout", url("rest-auth")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(out.status().is_success());
    hub_e2e::eventually(
        std::time::Duration::from_secs(5),
        "the sessions process refuses the revoked token",
        || async {
            let answer = http
                .get(format!("{}/api/sessions/verify", url("sessions")))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            (answer.status() == 401).then_some(())
        },
    )
    .await;
}

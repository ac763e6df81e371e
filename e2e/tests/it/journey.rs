//! One user through every protocol, each step through the client its users
//! would use, against `hub serve` started as a real process with the real
//! PostgreSQL, MongoDB-wire server and S3 server (scripts/test starts them).

use std::path::Path;
use std::time::Duration;

use hub_e2e::{ROOT, eventually, last_connection, log_in, png_file, python, python_json, serve};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn one_user_through_every_protocol() {
    let hub = serve();
    let http = reqwest::Client::new();
    let root = Path::new(ROOT);
    let name = format!("e2e.{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let password = "correct horse battery";

    // Register over SOAP with zeep, and look up over SOAP POST with zeep.
    let register_wsdl = format!("{}/register?wsdl", hub.url("soap-register"));
    let lookup_wsdl = format!("{}/user/soap?wsdl", hub.url("soap-lookup"));
    let soap = python_json(
        &root.join("e2e/clients/soap_user.py"),
        &[
            "register",
            &register_wsdl,
            &lookup_wsdl,
            &name,
            &format!("{name}@example.com"),
            password,
        ],
    )
    .await;
    let user_id = soap["registered"].as_str().unwrap().to_owned();
    assert_eq!(soap["found"], user_id.as_str(), "{soap}");

    // The legacy GET, with a plain HTTP client.
    let legacy = http
        .get(format!(
            "{}/user/soap?username={name}",
            hub.url("soap-lookup")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 200);
    assert!(legacy.text().await.unwrap().contains(&user_id));

    // Log in over REST.
    let token = log_in(&http, hub.url("rest-auth"), &name, password).await;

    // Verify on the session service.
    let verified: Value = http
        .get(format!("{}/api/sessions/verify", hub.url("sessions")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["valid"], true);
    assert_eq!(verified["user_id"], user_id.as_str());

    // Upload an image with grpcio, and fetch its URL without credentials.
    let image = png_file(&name);
    let grpc_target = hub
        .url("grpc-images")
        .trim_start_matches("http://")
        .to_owned();
    let grpcio = root.join("adapters/grpc-images/tests/clients/grpcio_images.py");
    let proto = root.join("proto").display().to_string();
    let uploaded = eventually(Duration::from_secs(30), "grpc-images SERVING", || {
        let (grpcio, target, token, proto, image) = (
            grpcio.clone(),
            grpc_target.clone(),
            token.clone(),
            proto.clone(),
            image.clone(),
        );
        async move {
            let out = tokio::process::Command::new(python())
                .arg(&grpcio)
                .args([target.as_str(), token.as_str(), proto.as_str()])
                .arg(&image)
                .output()
                .await
                .unwrap();
            // Health follows the store and its bucket, which the hub makes
            // in the background at start: wait until it says SERVING.
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
                .filter(|seen| seen["health"] == "SERVING")
        }
    })
    .await;
    assert_eq!(uploaded["health"], "SERVING");
    let url = uploaded["uploaded"][0]["url"].as_str().unwrap().to_owned();
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200, "{url}");
    assert_eq!(fetched.headers()["content-type"], "image/png");

    // The login shows as the last connection.
    let last = last_connection(&http, hub.url("session-tracker"), &token).await;
    assert_eq!(last["user_id"], user_id.as_str());
    assert_eq!(last["username"], name.as_str());

    // Log out over REST: the same token is refused everywhere.
    let logout = http
        .post(format!("{}/logout", hub.url("rest-auth")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    for url in [
        format!("{}/profile", hub.url("rest-auth")),
        format!("{}/api/sessions/verify", hub.url("sessions")),
    ] {
        let refused = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{url}");
    }
    let refused = python_json(
        &grpcio,
        &[grpc_target.as_str(), token.as_str(), proto.as_str()],
    )
    .await;
    assert_eq!(refused["list_error"], "UNAUTHENTICATED", "{refused}");
}

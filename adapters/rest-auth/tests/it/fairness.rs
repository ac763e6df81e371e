//! Hashing is shared by who as well as where: one account flooding
//! current-password checks holds its account's share of the pool, not its
//! address's, so the other users behind the same address (a NAT, the
//! gateway) still log in and still change their profiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hub_runtime::config::BudgetConfig;
use hub_testkit::{Service, TestSetup};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

/// Every user of this test is behind one address.
fn behind_the_nat() -> Client {
    Client::builder()
        .local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = request.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn login(client: &Client, base: &str, username: &str) -> (StatusCode, Value) {
    send(
        client
            .post(format!("{base}/login"))
            .json(&json!({"username": username, "password": PASSWORD})),
    )
    .await
}

/// The penetration test's finding, at production strength: one user with
/// one token keeps 90 wrong-password `PUT /profile` in flight from
/// 127.0.0.1; another user's login from 127.0.0.1 must not be refused
/// `OVERLOADED`, nor a third user's own password check.
#[tokio::test(flavor = "multi_thread")]
async fn one_accounts_flood_leaves_its_address_room_for_other_users() {
    let mut setup = TestSetup::new(&[Service::RestAuth]).production_hashing();
    // 12 places: an address holds 3 of them, its accounts 2, an account 1.
    setup.config.hashing.workers = 1;
    setup.config.hashing.max_waiting = 11;
    setup.config.hashing.max_wait_ms = 30_000;
    // The pool's shares are under test, not the attempt budgets.
    let wide = BudgetConfig {
        burst: 100_000,
        replenish_ms: 1,
    };
    setup.config.limits.password_check_per_client = wide;
    setup.config.limits.password_check_per_account = wide;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let nat = behind_the_nat();
    for name in ["mallory", "victor", "trudy"] {
        let (status, body) = send(nat.post(format!("{base}/register")).json(
            &json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}),
        ))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let token = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    };
    let mallory = token(login(&nat, &base, "mallory").await);
    let trudy = token(login(&nat, &base, "trudy").await);

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..90)
        .map(|_| {
            let (nat, url, token) = (nat.clone(), format!("{base}/profile"), mallory.clone());
            let (stop, refused) = (Arc::clone(&stop), Arc::clone(&refused));
            tokio::spawn(async move {
                let mut checked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = send(nat.put(&url).bearer_auth(&token).json(
                        &json!({"current_password": "not it at all", "new_password": "another horse battery"}),
                    ))
                    .await;
                    match body["error"]["code"].as_str() {
                        Some("OVERLOADED") => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // Each of the 90 asks again at once, but not in a spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Some("INVALID_CREDENTIALS") => checked += 1,
                        _ => panic!("mallory's check answered {status}: {body}"),
                    }
                }
                checked
            })
        })
        .collect();
    hub_testkit::eventually(
        Duration::from_secs(20),
        "mallory's flood past her share",
        || {
            let refused = refused.load(Ordering::Relaxed);
            async move { (refused >= 90).then_some(()) }
        },
    )
    .await;

    let (status, body) = login(&nat, &base, "victor").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "victor's login, from mallory's address: {body}"
    );
    let (status, body) = send(
        nat.put(format!("{base}/profile"))
            .bearer_auth(&trudy)
            .json(&json!({"current_password": PASSWORD, "email": "trudy@new.example.com"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "trudy's own check, from mallory's address: {body}"
    );

    stop.store(true, Ordering::Relaxed);
    let mut checked = 0;
    for flooder in flood {
        checked += flooder.await.unwrap();
    }
    assert!(checked >= 1, "mallory's share was hashed");
    hub.stop().await;
}

//! The directory read model across two processes: a `hub serve` child
//! answers lookups and profiles from memory while this test's process (and
//! `hub users grant-admin`, a third) changes the users behind it; each
//! change is seen by the child's next request once PostgreSQL's
//! notification is in, and never later than that.

use std::time::Duration;

use hub_testkit::soap::{TEXT_XML, element, lookup_op, register_op, v11};
use hub_testkit::{Service, TestSetup, eventually, free_port, sign_up};
use reqwest::Client;
use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::serving::{Serving, hub};

/// One sample of `/metrics`, `series` written as exposed (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{metrics}"))
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The child's SOAP lookup of `name`: its userId, or None for USER_NOT_FOUND.
async fn looked_up(http: &Client, lookup: &str, name: &str) -> Option<String> {
    let resp = http
        .post(format!("{lookup}/user/soap"))
        .header("content-type", TEXT_XML)
        .body(v11(&lookup_op(name)))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let xml = resp.text().await.unwrap();
    match element(&xml, "userId") {
        Some(id) => Some(id),
        None => {
            assert_eq!(
                element(&xml, "ErrorCode").as_deref(),
                Some("USER_NOT_FOUND"),
                "{status} {xml}"
            );
            None
        }
    }
}

/// Registers `name` over this process's SOAP register: the new userId.
async fn registered(http: &Client, soap: &str, name: &str) -> String {
    let xml = http
        .post(format!("{soap}/register"))
        .header("content-type", TEXT_XML)
        .body(v11(&register_op(
            name,
            &format!("{name}@example.com"),
            "correct horse battery",
        )))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    element(&xml, "userId").unwrap_or_else(|| panic!("registering {name}: {xml}"))
}

async fn profile(http: &Client, rest: &str, token: &str) -> Value {
    let resp = http
        .get(format!("{rest}/profile"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_directory_follows_every_change_made_by_another_process() {
    // This process: registration over SOAP and REST, profile changes; no
    // cache of its own, so the one listener on the database is the child's.
    let mut setup = TestSetup::new(&[Service::RestAuth, Service::SoapRegister]);
    setup.config.directory.cache_capacity = 0;
    let here = setup.start().await;
    let db = here.config().database.url.expose().to_string();
    // The child: lookups and profiles from its cache. Its entries are
    // trusted for an hour, so only a notification can end one in this test.
    let (rest_port, lookup_port) = (free_port(), free_port());
    let mut serve = hub(&db);
    serve
        .env("POLYHUB_SERVICES__REST_AUTH__PORT", rest_port.to_string())
        .env(
            "POLYHUB_SERVICES__SOAP_LOOKUP__PORT",
            lookup_port.to_string(),
        )
        .env("POLYHUB_TOKENS__SIGNING_KEY_PATH", &here.keys.private)
        .env("POLYHUB_DIRECTORY__CACHE_MAX_AGE_SECS", "3600")
        .env("POLYHUB_SESSIONS__CACHE_MAX_AGE_SECS", "3600")
        .args(["serve", "--only", "rest-auth,soap-lookup"]);
    let (_child, _) = Serving::start(serve);
    let (rest, lookup) = (
        format!("http://127.0.0.1:{rest_port}"),
        format!("http://127.0.0.1:{lookup_port}"),
    );
    let listening = "polyhub_directory_cache_listening";
    eventually(
        Duration::from_secs(10),
        "the child's cache is on",
        || async {
            let up = reqwest::get(format!("{lookup}/metrics")).await.ok()?;
            (sample(&up.text().await.ok()?, listening) == 1.0).then_some(())
        },
    )
    .await;
    let http = Client::new();

    // A name looked up and missed is remembered as missing...
    assert_eq!(looked_up(&http, &lookup, "carol").await, None);
    assert_eq!(looked_up(&http, &lookup, "carol").await, None);
    let m = metrics(&lookup).await;
    assert_eq!(
        sample(&m, "polyhub_directory_cache_entries{kind=\"missing\"}"),
        1.0
    );
    assert!(sample(&m, "polyhub_directory_cache_reads_total{result=\"hit\"}") >= 1.0);
    // ...until a registration in another process ends it.
    let soap = here.url(Service::SoapRegister);
    let carol = registered(&http, &soap, "carol").await;
    let found = eventually(
        Duration::from_secs(5),
        "the registration is seen",
        || async { looked_up(&http, &lookup, "carol").await },
    )
    .await;
    assert_eq!(found, carol);

    // A profile read through the child is remembered with its session...
    let here_rest = here.url(Service::RestAuth);
    let mine = sign_up(&here_rest, "dave", "correct horse battery").await;
    let login = http
        .post(format!("{rest}/login"))
        .json(&json!({"username": "dave", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let theirs: Value = login.json().await.unwrap();
    let token = theirs["token"].as_str().unwrap();
    assert_eq!(
        profile(&http, &rest, token).await["email"],
        "dave@example.com"
    );
    let hits = sample(
        &metrics(&rest).await,
        "polyhub_directory_cache_reads_total{result=\"hit\"}",
    );
    assert_eq!(
        profile(&http, &rest, token).await["email"],
        "dave@example.com"
    );
    let m = metrics(&rest).await;
    assert!(
        sample(&m, "polyhub_directory_cache_reads_total{result=\"hit\"}") > hits,
        "the second profile came from memory:\n{m}"
    );
    // ...and an email change made in this process is seen by the child.
    let changed = http
        .put(format!("{here_rest}/profile"))
        .bearer_auth(mine["token"].as_str().unwrap())
        .json(&json!({"email": "dave@elsewhere.example", "current_password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200, "{}", changed.text().await.unwrap());
    eventually(
        Duration::from_secs(5),
        "the email change is seen",
        || async {
            (profile(&http, &rest, token).await["email"] == "dave@elsewhere.example").then_some(())
        },
    )
    .await;

    // A role granted by a third process, the operator's command.
    let granted = hub(&db)
        .args(["users", "grant-admin", "dave"])
        .output()
        .unwrap();
    assert!(
        granted.status.success(),
        "{}",
        String::from_utf8_lossy(&granted.stderr)
    );
    // It ended dave's sessions, whose tokens carried the old role: the
    // child sees the revocation, and a new login there is an admin.
    eventually(
        Duration::from_secs(5),
        "the role change's revocation is seen",
        || async {
            let resp = http
                .get(format!("{rest}/profile"))
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            (resp.status() == 401).then_some(())
        },
    )
    .await;
    let login: Value = http
        .post(format!("{rest}/login"))
        .json(&json!({"username": "dave", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = login["token"].as_str().unwrap();
    assert_eq!(profile(&http, &rest, admin).await["role"], "admin");

    // The child's listener is cut and reconnects: a name it remembered as
    // missing, registered around the cut, is found after it.
    let mut db_conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN \"polyhub_users\"'",
    )
    .fetch_all(&mut db_conn)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one directory listener, the child's");
    assert_eq!(looked_up(&http, &lookup, "erin").await, None);
    let erin = registered(&http, &soap, "erin").await;
    eventually(Duration::from_secs(10), "the listener is back", || async {
        let m = metrics(&lookup).await;
        (sample(&m, "polyhub_directory_cache_connections_total") == 2.0
            && sample(&m, listening) == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(looked_up(&http, &lookup, "erin").await, Some(erin));
    here.stop().await;
}

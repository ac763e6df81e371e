//! The outbox relay between the real PostgreSQL and a real MongoDB-wire
//! server: nothing lost while MongoDB is away, nothing delivered twice by
//! concurrent or restarted relays.

use std::collections::BTreeSet;
use std::time::Duration;

use hub_core::{ActivityLog, ClientInfo, RegisterUser, Relay, User};
use hub_testkit::{Hub, OwnServer, Service, TestSetup, eventually};
use mongodb::bson::{Document, doc};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

/// Sessions are opened on rest-auth; the relay runs with the session API.
const SERVICES: &[Service] = &[Service::RestAuth, Service::Sessions];

/// Every event id of the event log, from PostgreSQL.
async fn outbox_ids(hub: &Hub) -> BTreeSet<String> {
    let mut db = sqlx::PgConnection::connect(hub.config().database.url.expose())
        .await
        .unwrap();
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as("SELECT event_id FROM events")
        .fetch_all(&mut db)
        .await
        .unwrap();
    ids.into_iter().map(|(id,)| id.to_string()).collect()
}

/// Every recorded event id, users' and sessions', from MongoDB, and how
/// many documents there are.
async fn recorded_ids(hub: &Hub) -> (BTreeSet<String>, u64) {
    let mongo = hub.mongo().await.unwrap();
    let mut ids = BTreeSet::new();
    let mut count = 0;
    for collection in ["session_events", "user_events"] {
        let events = mongo.collection::<Document>(collection);
        count += events.count_documents(doc! {}).await.unwrap();
        ids.extend(
            events
                .distinct("_id", doc! {})
                .await
                .unwrap()
                .into_iter()
                .map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    (ids, count)
}

/// Each event of the log is in MongoDB exactly once.
async fn assert_exactly_once(hub: &Hub, expected: usize) {
    let outbox = outbox_ids(hub).await;
    assert_eq!(outbox.len(), expected);
    let (recorded, documents) = recorded_ids(hub).await;
    assert_eq!(documents, expected as u64, "one document per event");
    assert_eq!(recorded, outbox, "the same events on both sides");
}

async fn drained(hub: &Hub, within: Duration) {
    let outbox = hub.outbox();
    eventually(within, "the outbox drains", || async {
        let backlog = outbox.backlog().await.ok()?;
        (backlog.pending == 0).then_some(())
    })
    .await;
}

async fn user(hub: &Hub, name: &str) -> User {
    hub.registration()
        .register(RegisterUser {
            username: name.into(),
            email: format!("{name}@example.com"),
            password: "correct horse".into(),
        })
        .await
        .unwrap()
}

/// A hub that does not relay by itself, with `events` session openings
/// waiting behind alice's `user.created`.
async fn hub_with_backlog(events: usize, batch_size: u32) -> Hub {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.relay.enabled = false;
    setup.config.relay.batch_size = batch_size;
    setup.config.relay.idle_poll_ms = 10;
    let hub = setup.build();
    hub.migrate().await.unwrap();
    let alice = user(&hub, "alice").await;
    let auth = hub.authentication().unwrap();
    for _ in 0..events {
        auth.open_session(&alice, None, ClientInfo::default())
            .await
            .unwrap();
    }
    hub
}

/// Runs `relay` until the outbox is empty, then stops it; what it delivered
/// and what it found already recorded.
async fn run_relay(hub: &Hub, relay: Relay) -> (u64, u64) {
    let status = relay.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async {
        let _ = stopped.await;
    }));
    drained(hub, Duration::from_secs(60)).await;
    stop.send(()).unwrap();
    running.await.unwrap();
    let status = status.snapshot();
    (status.delivered, status.repeated)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_outage_loses_nothing_and_repeats_nothing() {
    let mut mongo = OwnServer::mongo();
    let mut setup = TestSetup::new(SERVICES);
    setup.config.mongo.url = hub_runtime::Secret::new(mongo.url());
    setup.config.mongo.server_selection_timeout_ms = 500;
    setup.config.relay.min_backoff_ms = 50;
    setup.config.relay.max_backoff_ms = 500;
    // The login's session and 100 more are open at once.
    setup.config.sessions.max_open_per_user = 200;
    let test_hub = setup.start().await;
    let hub = test_hub.hub.clone();
    let client = Client::new();
    let rest = test_hub.url(Service::RestAuth);
    let sessions = test_hub.url(Service::Sessions);
    let register = client
        .post(format!("{rest}/register"))
        .json(&json!({"username": "alice", "email": "alice@example.com", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), StatusCode::CREATED);
    let login: Value = client
        .post(format!("{rest}/login"))
        .json(&json!({"username": "alice", "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_owned();
    // Bounded, not timed: the test's own SecantusDB (a Python server) is
    // new, and on two cores shared with the rest of the suite its first
    // writes (two collections, their indexes) have taken over 10 s.
    drained(&hub, Duration::from_secs(30)).await;

    mongo.stop();
    // 200 session changes while MongoDB is away: 100 devices opened, 100 revoked.
    let me: Value = client
        .get(format!("{sessions}/api/sessions/verify"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = me["user_id"].as_str().unwrap().to_owned();
    let mut devices = Vec::new();
    for _ in 0..100 {
        let resp = client
            .post(format!("{sessions}/api/sessions"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "sessions open without MongoDB"
        );
        let body: Value = resp.json().await.unwrap();
        devices.push(body["session"]["id"].as_str().unwrap().to_owned());
    }
    for device in &devices {
        let resp = client
            .delete(format!("{sessions}/api/sessions/{me}?session={device}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let backlog = hub.outbox().backlog().await.unwrap();
    assert_eq!(backlog.pending, 200, "every change waits in the outbox");

    mongo.resume();
    drained(&hub, Duration::from_secs(60)).await;
    // alice's creation, her login, and the 200 changes.
    assert_exactly_once(&hub, 202).await;

    // The last connection is the newest opening, whatever order things arrived in.
    let newest = devices.last().unwrap();
    let last = hub
        .activity_log()
        .await
        .unwrap()
        .last_connection(hub_core::UserId::parse(&me).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.session_id.to_string(), *newest);
    assert_eq!(last.username.unwrap().as_str(), "alice");
    test_hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_at_once_deliver_each_event_once() {
    let hub = hub_with_backlog(300, 16).await;
    let (a, b) = tokio::join!(
        run_relay(&hub, hub.relay().await.unwrap()),
        run_relay(&hub, hub.relay().await.unwrap()),
    );
    eprintln!("relay a delivered {}, relay b {}", a.0, b.0);
    assert_eq!(a.0 + b.0, 301);
    assert_eq!((a.1, b.1), (0, 0), "no event was claimed twice");
    assert_exactly_once(&hub, 301).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_resumes_after_a_restart_and_a_crash_mid_batch() {
    let hub = hub_with_backlog(200, 10).await;
    // The first relay stops after a few batches.
    let first = hub.relay().await.unwrap();
    let status = first.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(first.run(async {
        let _ = stopped.await;
    }));
    eventually(Duration::from_secs(30), "a few batches", || async {
        (status.snapshot().delivered >= 50).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap();
    let first_delivered = status.snapshot().delivered;

    // A relay that dies between writing to MongoDB and marking the outbox:
    // its batch is in MongoDB and still pending in PostgreSQL.
    let log = hub.activity_log().await.unwrap();
    let claimed = hub.outbox().claim(20).await.unwrap();
    assert_eq!(claimed.events().len(), 20);
    let written = log
        .record_batch(claimed.events(), time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(written, 20);
    drop(claimed);

    let (delivered, repeated) = run_relay(&hub, hub.relay().await.unwrap()).await;
    assert_eq!(repeated, 20, "the crashed batch is recognised, not doubled");
    assert_eq!(first_delivered + delivered + 20, 201);
    assert_exactly_once(&hub, 201).await;
}

/// One outbox row the relay cannot read (a payload of the wrong shape) is
/// quarantined; the events behind it are delivered, each once; once the row
/// is fixed, `retry_quarantined` (`hub outbox retry`) puts it back and it is
/// delivered too.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_outbox_row_is_quarantined_and_the_rest_arrive() {
    let hub = hub_with_backlog(3, 10).await;
    let mut db = sqlx::PgConnection::connect(hub.config().database.url.expose())
        .await
        .unwrap();
    let alice: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = 'alice'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let poison = uuid::Uuid::now_v7();
    // The first place in the log, so it stands at the head of the line.
    sqlx::query(
        "INSERT INTO events (id, event_id, session_id, user_id, type, data, occurred_at) \
         OVERRIDING SYSTEM VALUE \
         VALUES (0, $1, $2, $3, 'session.opened', '{\"client_ip\": 12}', now() - interval '1 hour')",
    )
    .bind(poison)
    .bind(uuid::Uuid::now_v7())
    .bind(alice)
    .execute(&mut db)
    .await
    .unwrap();
    let (delivered, _) = run_relay(&hub, hub.relay().await.unwrap()).await;
    assert_eq!(delivered, 4, "the events behind the poison arrive");
    let backlog = hub.outbox().backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.quarantined), (0, 1));
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT d.quarantine_reason FROM event_deliveries d \
             JOIN events e ON e.id = d.event_id WHERE e.event_id = $1",
    )
    .bind(poison)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(
        reason.unwrap().contains("client_ip"),
        "the reason names what is wrong"
    );
    let (recorded, documents) = recorded_ids(&hub).await;
    assert_eq!(documents, 4);
    assert!(!recorded.contains(&poison.to_string()));

    // Fixed by an operator, put back, delivered.
    sqlx::query("UPDATE events SET data = '{}' WHERE event_id = $1")
        .bind(poison)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(hub.outbox().retry_quarantined().await.unwrap(), 1);
    let (delivered, _) = run_relay(&hub, hub.relay().await.unwrap()).await;
    assert_eq!(delivered, 1);
    assert_exactly_once(&hub, 5).await;
    assert_eq!(hub.outbox().backlog().await.unwrap().quarantined, 0);
}

/// The activity log is there but refuses one event (an operator's validator
/// rejects its document): that event counts an attempt per round and is
/// quarantined at `relay.max_attempts`, with the refusal as its reason; the
/// events around it are delivered, each once. Once the validator is lifted,
/// `retry_quarantined` (`hub outbox retry`) puts it back and it arrives.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_the_activity_log_keeps_refusing_is_quarantined() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.relay.enabled = false;
    setup.config.relay.batch_size = 10;
    setup.config.relay.idle_poll_ms = 10;
    setup.config.relay.min_backoff_ms = 10;
    setup.config.relay.max_backoff_ms = 20;
    setup.config.relay.max_attempts = 3;
    let hub = setup.build();
    hub.migrate().await.unwrap();
    let mongo = hub.mongo().await.unwrap();
    let validator = doc! { "user_agent": { "$ne": "poison/1.0" } };
    if mongo
        .run_command(doc! { "create": "session_events", "validator": validator.clone() })
        .await
        .is_err()
    {
        mongo
            .run_command(doc! { "collMod": "session_events", "validator": validator })
            .await
            .unwrap();
    }
    let alice = user(&hub, "alice").await;
    let auth = hub.authentication().unwrap();
    for agent in ["ok/1", "ok/2", "poison/1.0", "ok/3", "ok/4"] {
        auth.open_session(&alice, None, ClientInfo::new(None, Some(agent)))
            .await
            .unwrap();
    }
    let relay = hub.relay().await.unwrap();
    let status = relay.status();
    // An unordered batch write takes the documents it can, so the events
    // around the refused one may be recorded by the refused batch and found
    // there (repeated) when delivered one by one: recorded once either way.
    let (delivered, repeated) = run_relay(&hub, relay).await;
    assert_eq!(
        delivered + repeated,
        5,
        "the events around the refused one arrive, and alice's creation"
    );
    assert!(
        status.snapshot().failures >= 2,
        "each refusal before the last backed off: {:?}",
        status.snapshot()
    );
    let backlog = hub.outbox().backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.quarantined), (0, 1));
    let mut db = sqlx::PgConnection::connect(hub.config().database.url.expose())
        .await
        .unwrap();
    let (attempts, reason): (i32, String) = sqlx::query_as(
        "SELECT attempts, quarantine_reason FROM event_deliveries WHERE quarantined_at IS NOT NULL",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(attempts, 3);
    assert!(
        reason.starts_with("refused by the activity log"),
        "{reason}"
    );
    assert_eq!(recorded_ids(&hub).await.1, 5);

    // The operator lifts the validator and puts the event back.
    mongo
        .run_command(doc! { "collMod": "session_events", "validator": {} })
        .await
        .unwrap();
    assert_eq!(hub.outbox().retry_quarantined().await.unwrap(), 1);
    let (delivered, _) = run_relay(&hub, hub.relay().await.unwrap()).await;
    assert_eq!(delivered, 1);
    assert_exactly_once(&hub, 6).await;
}

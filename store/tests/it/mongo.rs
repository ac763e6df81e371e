//! The activity log against a real MongoDB-wire server (the one `MONGODB_URL`
//! names; scripts/test starts it), a fresh database per test.

use std::time::Duration;

use hub_core::{
    ActivityLog, ClientInfo, DependencyProbe, ErrorCode, Session, SessionEvent, SessionEventKind,
    SessionId, UserId, Username,
};
use hub_store::{MongoActivityLog, MongoProbe, MongoSettings, connect_mongo};
use mongodb::Database;
use mongodb::bson::doc;
use time::OffsetDateTime;

async fn fresh_database() -> Database {
    let url = std::env::var("MONGODB_URL").expect("MONGODB_URL names the test MongoDB-wire server");
    connect_mongo(&MongoSettings {
        url: url.into(),
        database: format!("polyhub_test_{}", uuid::Uuid::now_v7().simple()),
        server_selection_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

fn session(user: UserId, at: OffsetDateTime) -> Session {
    Session {
        id: SessionId::generate(),
        user_id: user,
        created_at: at,
        expires_at: at + time::Duration::hours(1),
        last_seen_at: at,
        revoked_at: None,
        client: ClientInfo::new(Some("198.51.100.7".parse().unwrap()), Some("curl/8")),
    }
}

/// Milliseconds: what BSON dates keep.
fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap()
}

#[tokio::test]
async fn an_event_is_recorded_once_however_often_it_is_delivered() {
    let db = fresh_database().await;
    let log = MongoActivityLog::new(&db);
    let s = session(UserId::generate(), now_ms());
    let event = SessionEvent::new(SessionEventKind::Opened, &s, s.created_at).into();
    assert!(log.record(&event, None).await.unwrap());
    assert!(
        !log.record(&event, None).await.unwrap(),
        "a repeat is not a second event"
    );
    let events = db.collection::<mongodb::bson::Document>("session_events");
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 1);
    let stored = events
        .find_one(doc! { "_id": event.id().to_string() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("kind").unwrap(), "session.opened");
    assert_eq!(stored.get_str("client_ip").unwrap(), "198.51.100.7");
    db.drop().await.unwrap();
}

#[tokio::test]
async fn last_connection_only_moves_forward() {
    let db = fresh_database().await;
    let log = MongoActivityLog::new(&db);
    let user = UserId::generate();
    let alice = Username::parse("alice").unwrap();
    let t0 = now_ms();
    let newer = session(user, t0 + time::Duration::seconds(10));
    let older = session(user, t0);
    log.record(
        &SessionEvent::new(SessionEventKind::Opened, &newer, newer.created_at).into(),
        Some(&alice),
    )
    .await
    .unwrap();
    // Delivered late, after the newer one: it must not move the time back.
    log.record(
        &SessionEvent::new(SessionEventKind::Opened, &older, older.created_at).into(),
        Some(&alice),
    )
    .await
    .unwrap();
    let last = log.last_connection(user).await.unwrap().unwrap();
    assert_eq!((last.session_id, last.at), (newer.id, newer.created_at));
    assert_eq!(last.username, Some(alice.clone()));

    // A revocation is not a connection.
    let later = newer.created_at + time::Duration::seconds(5);
    log.record(
        &SessionEvent::new(SessionEventKind::Revoked, &newer, later).into(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        log.last_connection(user).await.unwrap().unwrap().at,
        newer.created_at
    );

    let touched = SessionEvent::new(SessionEventKind::Touched, &older, later);
    log.record(&touched.into(), Some(&alice)).await.unwrap();
    let last = log.last_connection(user).await.unwrap().unwrap();
    assert_eq!((last.session_id, last.at), (older.id, later));
    assert!(
        log.last_connection(UserId::generate())
            .await
            .unwrap()
            .is_none()
    );
    db.drop().await.unwrap();
}

#[tokio::test]
async fn events_expire_after_the_retention() {
    let db = fresh_database().await;
    let log = MongoActivityLog::new(&db);
    log.ensure_indexes(Duration::from_secs(30 * 24 * 3600))
        .await
        .unwrap();
    log.ensure_indexes(Duration::from_secs(30 * 24 * 3600))
        .await
        .unwrap(); // again: harmless
    let indexes = db
        .run_command(doc! { "listIndexes": "session_events" })
        .await
        .unwrap();
    let batch = indexes
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let ttl = batch
        .iter()
        .filter_map(|i| i.as_document())
        .find(|i| i.get_str("name").ok() == Some("session_events_retention"))
        .expect("the retention index exists");
    let seconds = ttl
        .get("expireAfterSeconds")
        .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)));
    assert_eq!(seconds, Some(30 * 24 * 3600));
    db.drop().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly() {
    let db = connect_mongo(&MongoSettings {
        url: "mongodb://127.0.0.1:1/?retryWrites=false".into(),
        database: "polyhub".into(),
        server_selection_timeout: Duration::from_millis(500),
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = MongoActivityLog::new(&db)
        .last_connection(UserId::generate())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        MongoProbe::new(db).probe().await.unwrap_err().code(),
        ErrorCode::Unavailable
    );
    let live = fresh_database().await;
    assert!(MongoProbe::new(live).probe().await.is_ok());
}

#[tokio::test]
async fn a_batch_records_new_events_and_recognises_repeats() {
    let db = fresh_database().await;
    let log = MongoActivityLog::new(&db);
    let user = UserId::generate();
    let at = now_ms();
    let pending: Vec<hub_core::PendingEvent> = (0..5)
        .map(|i| {
            let s = session(user, at + time::Duration::seconds(i));
            hub_core::PendingEvent {
                position: i + 1,
                event: SessionEvent::new(SessionEventKind::Opened, &s, s.created_at).into(),
                username: Some(Username::parse("alice").unwrap()),
            }
        })
        .collect();
    // Two were delivered before (a relay that died before marking them).
    assert_eq!(log.record_batch(&pending[..2], at).await.unwrap(), 2);
    assert_eq!(log.record_batch(&pending, at).await.unwrap(), 3);
    assert_eq!(log.record_batch(&pending, at).await.unwrap(), 0);
    let events = db.collection::<mongodb::bson::Document>("session_events");
    assert_eq!(events.count_documents(doc! {}).await.unwrap(), 5);
    let stored = events
        .find_one(doc! { "_id": pending[0].event.id().to_string() })
        .await
        .unwrap()
        .unwrap();
    assert!(stored.get_datetime("delivered_at").is_ok());
    // The newest opening of the batch is the last connection.
    let last = log.last_connection(user).await.unwrap().unwrap();
    assert_eq!(Some(last.session_id), pending[4].event.session_id());
    assert_eq!(last.at, pending[4].event.at());
    assert_eq!(last.username.unwrap().as_str(), "alice");
}

/// User events go to their own collection, once each however often they
/// are delivered, beside session events of the same batch.
#[tokio::test]
async fn user_events_are_recorded_once_beside_session_events() {
    use hub_core::events::{UserChange, UserEvent};
    let db = fresh_database().await;
    let log = MongoActivityLog::new(&db);
    log.ensure_indexes(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let user = UserId::generate();
    let at = now_ms();
    let alice = Username::parse("alice").unwrap();
    let s = session(user, at);
    let changes = [
        UserChange::Created {
            username: "alice".into(),
            email: "alice@example.com".into(),
            role: hub_core::Role::User,
            by: None,
        },
        UserChange::EmailChanged {
            email: "a@example.org".into(),
        },
    ];
    let mut pending: Vec<hub_core::PendingEvent> = changes
        .into_iter()
        .map(|change| hub_core::PendingEvent {
            position: 0,
            event: UserEvent::new(Some(user), at, change).into(),
            username: Some(alice.clone()),
        })
        .collect();
    pending.push(hub_core::PendingEvent {
        position: 0,
        event: UserEvent::new(None, at, UserChange::Imported { count: 3 }).into(),
        username: None,
    });
    pending.push(hub_core::PendingEvent {
        position: 0,
        event: SessionEvent::new(SessionEventKind::Opened, &s, at).into(),
        username: Some(alice.clone()),
    });
    assert_eq!(log.record_batch(&pending[..1], at).await.unwrap(), 1);
    assert_eq!(log.record_batch(&pending, at).await.unwrap(), 3);
    assert!(!log.record(&pending[1].event, None).await.unwrap());
    let users = db.collection::<mongodb::bson::Document>("user_events");
    let sessions = db.collection::<mongodb::bson::Document>("session_events");
    assert_eq!(users.count_documents(doc! {}).await.unwrap(), 3);
    assert_eq!(sessions.count_documents(doc! {}).await.unwrap(), 1);
    let changed = users
        .find_one(doc! { "_id": pending[1].event.id().to_string() })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.get_str("type").unwrap(), "user.email_changed");
    assert_eq!(changed.get_str("username").unwrap(), "alice");
    assert_eq!(
        changed
            .get_document("data")
            .unwrap()
            .get_str("email")
            .unwrap(),
        "a@example.org"
    );
    let imported = users
        .find_one(doc! { "type": "users.imported" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        imported
            .get_document("data")
            .unwrap()
            .get_i64("count")
            .unwrap(),
        3
    );
}

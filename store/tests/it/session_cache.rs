//! The open-session cache against the real PostgreSQL: used only while its
//! listener is connected, and forgetting a session the moment any process
//! changes it.

use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    ClientInfo, Clock, Email, NewUser, Password, PasswordHasher, Role, Session, SessionEvent,
    SessionEventKind, SessionId, SessionRepository, SystemClock, UserId, UserRepository, Username,
};
use hub_store::{CachedSessions, PgSessionRepository, PgUserRepository};
use sqlx::PgPool;

use crate::until;

async fn open_session(pool: &PgPool) -> Session {
    let username = Username::parse("alice").unwrap();
    let hash = PasswordHasher::insecure_for_tests(1)
        .hash(&Password::parse("correct horse", &username).unwrap())
        .unwrap();
    let user = PgUserRepository::new(pool.clone())
        .insert(NewUser {
            id: UserId::generate(),
            email: Email::parse("alice@example.com").unwrap(),
            username,
            password_hash: hash,
            role: Role::User,
            created_at: SystemClock.now(),
            created_by: None,
        })
        .await
        .unwrap();
    let now = SystemClock.now();
    let session = Session {
        id: SessionId::generate(),
        user_id: user.id,
        created_at: now,
        expires_at: now + time::Duration::hours(1),
        last_seen_at: now,
        revoked_at: None,
        client: ClientInfo::default(),
    };
    PgSessionRepository::new(pool.clone())
        .open(
            &session,
            &SessionEvent::new(SessionEventKind::Opened, &session, now),
        )
        .await
        .unwrap();
    session
}

/// Starts `cache`'s listener; returns what stops it.
fn listening(
    cache: &Arc<CachedSessions>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cache = Arc::clone(cache);
    let task = tokio::spawn(async move {
        cache
            .listen(async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, task)
}

async fn is_open(cache: &CachedSessions, id: SessionId) -> bool {
    cache
        .find_open(id, SystemClock.now())
        .await
        .unwrap()
        .is_some()
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn without_its_listener_the_cache_is_not_used(pool: PgPool) {
    let session = open_session(&pool).await;
    let cache = CachedSessions::new(pool.clone(), 100, Duration::from_secs(60));
    assert!(is_open(&cache, session.id).await);
    assert_eq!(
        cache.cached(),
        0,
        "nothing is remembered without invalidation"
    );
    PgSessionRepository::new(pool)
        .revoke(session.id, SystemClock.now(), "test")
        .await
        .unwrap();
    assert!(!is_open(&cache, session.id).await);
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_change_by_another_process_is_forgotten_when_postgres_says_so(pool: PgPool) {
    let session = open_session(&pool).await;
    let cache = Arc::new(CachedSessions::new(
        pool.clone(),
        100,
        Duration::from_secs(60),
    ));
    let (stop, task) = listening(&cache);
    until("the listener connects", || cache.is_listening()).await;
    assert!(is_open(&cache, session.id).await);
    assert_eq!(cache.cached(), 1);

    // Another process (another repository on its own pool) revokes it: the
    // cache, which would say open forever, forgets it on the notification.
    let elsewhere = PgSessionRepository::new(pool.clone());
    elsewhere
        .revoke(session.id, SystemClock.now(), "test")
        .await
        .unwrap();
    until("the notification arrives", || cache.cached() == 0).await;
    assert!(!is_open(&cache, session.id).await);

    // A revocation through the cache itself is forgotten before it returns.
    let other = {
        let now = SystemClock.now();
        let s = Session {
            id: SessionId::generate(),
            created_at: now,
            last_seen_at: now,
            ..session.clone()
        };
        let s = Session {
            revoked_at: None,
            ..s
        };
        elsewhere
            .open(&s, &SessionEvent::new(SessionEventKind::Opened, &s, now))
            .await
            .unwrap();
        s
    };
    assert!(is_open(&cache, other.id).await);
    assert_eq!(cache.cached(), 1);
    cache
        .revoke(other.id, SystemClock.now(), "test")
        .await
        .unwrap();
    assert!(!is_open(&cache, other.id).await);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!cache.is_listening());
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_lost_listener_turns_the_cache_off_until_it_is_back(pool: PgPool) {
    let session = open_session(&pool).await;
    let cache = Arc::new(CachedSessions::new(
        pool.clone(),
        100,
        Duration::from_secs(60),
    ));
    let (stop, task) = listening(&cache);
    until("the listener connects", || cache.is_listening()).await;
    assert!(is_open(&cache, session.id).await);

    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one listening connection");
    until("the listener reconnects", || {
        cache.connections() == 2 && cache.is_listening()
    })
    .await;
    assert_eq!(cache.cached(), 0, "what was remembered before is forgotten");
    assert!(is_open(&cache, session.id).await);
    assert_eq!(cache.cached(), 1);

    stop.send(()).unwrap();
    task.await.unwrap();
}

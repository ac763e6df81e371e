//! The directory read model against the real PostgreSQL: used only while its
//! listener is connected, and forgetting a user (or a name known to be free)
//! the moment any connection changes the row.

use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    Clock, Email, NewUser, Password, PasswordHasher, Role, SessionRepository, SystemClock, User,
    UserId, UserRepository, Username,
};
use hub_store::{CachedSessions, CachedUsers, PgSessionRepository, PgUserRepository};
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::until;

fn new_user(username: &str) -> NewUser {
    let username = Username::parse(username).unwrap();
    let hash = PasswordHasher::insecure_for_tests(1)
        .hash(&Password::parse("correct horse", &username).unwrap())
        .unwrap();
    NewUser {
        id: UserId::generate(),
        email: Email::parse(&format!("{}@example.com", username.as_str())).unwrap(),
        username,
        password_hash: hash,
        role: Role::User,
        created_at: SystemClock.now(),
        created_by: None,
    }
}

fn name(raw: &str) -> Username {
    Username::parse(raw).unwrap()
}

/// A cache over `pool` with its listener running, connected.
async fn listening(
    pool: &PgPool,
    capacity: usize,
) -> (
    Arc<CachedUsers>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cache = Arc::new(CachedUsers::new(
        pool.clone(),
        capacity,
        Duration::from_secs(60),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let cache = Arc::clone(&cache);
        async move {
            cache
                .listen(async {
                    let _ = stopped.await;
                })
                .await;
        }
    });
    until("the listener connects", || cache.is_listening()).await;
    (cache, stop, task)
}

async fn lookup(cache: &CachedUsers, raw: &str) -> Option<User> {
    cache.find_by_username(&name(raw)).await.unwrap()
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn without_its_listener_the_cache_is_not_used(pool: PgPool) {
    let cache = CachedUsers::new(pool.clone(), 100, Duration::from_secs(60));
    assert!(lookup(&cache, "alice").await.is_none());
    PgUserRepository::new(pool)
        .insert(new_user("alice"))
        .await
        .unwrap();
    assert!(lookup(&cache, "alice").await.is_some());
    let stats = cache.stats();
    assert_eq!((stats.users, stats.missing, stats.hits), (0, 0, 0));
    assert_eq!(stats.bypassed, 2);
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_registration_elsewhere_ends_a_remembered_miss(pool: PgPool) {
    let (cache, stop, task) = listening(&pool, 100).await;
    assert!(lookup(&cache, "alice").await.is_none());
    assert!(lookup(&cache, "ALICE").await.is_none());
    let stats = cache.stats();
    assert_eq!((stats.missing, stats.misses, stats.hits), (1, 1, 1));

    // Another connection (another process, for all the cache knows) inserts
    // the name: the notification ends the "missing", and the next lookup
    // finds the user.
    let elsewhere = PgUserRepository::new(pool.clone());
    let alice = elsewhere.insert(new_user("alice")).await.unwrap();
    until("the notification arrives", || cache.stats().missing == 0).await;
    assert_eq!(lookup(&cache, "alice").await.unwrap().id, alice.id);
    assert_eq!(lookup(&cache, "alice").await.unwrap().id, alice.id);
    assert_eq!(cache.stats().users, 1);

    // An insert through the cache itself ends its own miss before it returns.
    assert!(lookup(&cache, "bob").await.is_none());
    let bob = cache.insert(new_user("bob")).await.unwrap();
    assert_eq!(lookup(&cache, "bob").await.unwrap().id, bob.id);

    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!cache.is_listening());
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn email_and_role_changes_elsewhere_are_never_answered_stale(pool: PgPool) {
    let elsewhere = PgUserRepository::new(pool.clone());
    let alice = elsewhere.insert(new_user("alice")).await.unwrap();
    // Another admin, so alice's role can be withdrawn below.
    let root = elsewhere.insert(new_user("root")).await.unwrap();
    PgSessionRepository::new(pool.clone())
        .change_role(root.id, Role::Admin, OffsetDateTime::now_utc())
        .await
        .unwrap();
    let (cache, stop, task) = listening(&pool, 100).await;
    assert_eq!(
        cache.find_by_id(alice.id).await.unwrap().unwrap().role,
        Role::User
    );
    assert_eq!(lookup(&cache, "alice").await.unwrap().id, alice.id);
    let hits = cache.stats().hits;
    assert_eq!(hits, 1, "the lookup by name was answered from memory");

    elsewhere
        .update_email(alice.id, &Email::parse("new@example.com").unwrap())
        .await
        .unwrap();
    until("the email change is forgotten", || cache.stats().users == 0).await;
    assert_eq!(
        cache
            .find_by_id(alice.id)
            .await
            .unwrap()
            .unwrap()
            .email
            .as_str(),
        "new@example.com"
    );

    PgSessionRepository::new(pool.clone())
        .change_role(alice.id, Role::Admin, OffsetDateTime::now_utc())
        .await
        .unwrap();
    until("the role change is forgotten", || cache.stats().users == 0).await;
    assert_eq!(lookup(&cache, "alice").await.unwrap().role, Role::Admin);

    // A change through the caches is forgotten before the call returns.
    CachedSessions::new(pool.clone(), 100, Duration::from_secs(60))
        .with_directory(cache.clone())
        .change_role(alice.id, Role::User, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(
        cache.find_by_id(alice.id).await.unwrap().unwrap().role,
        Role::User
    );

    // A delete (an operator's, in SQL) forgets the user and its name.
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(alice.id.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(alice.id.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    until("the delete is forgotten", || cache.stats().users == 0).await;
    assert!(lookup(&cache, "alice").await.is_none());
    assert!(cache.find_by_id(alice.id).await.unwrap().is_none());

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_large_statement_forgets_everything_with_one_notification(pool: PgPool) {
    let (cache, stop, task) = listening(&pool, 100).await;
    for n in 0..10 {
        assert!(lookup(&cache, &format!("bulk{n}")).await.is_none());
    }
    assert_eq!(cache.stats().missing, 10);
    // 100 rows in one statement: more than the trigger names one by one.
    let ids: Vec<uuid::Uuid> = (0..100).map(|_| UserId::generate().as_uuid()).collect();
    sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) \
         SELECT id, 'bulk' || (n - 1), 'bulk' || (n - 1) || '@example.com', \
                '$pbkdf2-sha256$i=1,l=32$c2FsdHNhbHQ$aGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGhoaGg', \
                'user', now(), now() \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .unwrap();
    until("the notification arrives", || cache.stats().missing == 0).await;
    for n in 0..10 {
        assert!(lookup(&cache, &format!("bulk{n}")).await.is_some());
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn memory_is_bounded_for_users_and_for_missing_names(pool: PgPool) {
    let elsewhere = PgUserRepository::new(pool.clone());
    for n in 0..20 {
        elsewhere
            .insert(new_user(&format!("user{n}")))
            .await
            .unwrap();
    }
    let (cache, stop, task) = listening(&pool, 16).await;
    for n in 0..20 {
        assert!(lookup(&cache, &format!("user{n}")).await.is_some());
        assert!(lookup(&cache, &format!("nobody{n}")).await.is_none());
        let stats = cache.stats();
        assert!(stats.users <= 16, "{stats:?}");
        assert!(stats.missing <= 2, "an eighth of the capacity: {stats:?}");
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_lost_listener_turns_the_cache_off_until_it_is_back(pool: PgPool) {
    let (cache, stop, task) = listening(&pool, 100).await;
    assert!(lookup(&cache, "alice").await.is_none());
    assert_eq!(cache.stats().missing, 1);

    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed.len(), 1, "one listening connection");
    // While it is away a registration's notification is lost; the cache
    // must not answer the old miss after it is back.
    PgUserRepository::new(pool.clone())
        .insert(new_user("alice"))
        .await
        .unwrap();
    until("the listener reconnects", || {
        cache.connections() == 2 && cache.is_listening()
    })
    .await;
    assert_eq!(cache.stats().missing, 0, "what was remembered is forgotten");
    assert!(lookup(&cache, "alice").await.is_some());

    stop.send(()).unwrap();
    task.await.unwrap();
}

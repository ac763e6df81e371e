//! Sessions and their outbox events against the real PostgreSQL.

use std::net::IpAddr;

use hub_core::{
    ClientInfo, Clock, Email, ErrorCode, NewUser, Password, PasswordHasher, Role, Session,
    SessionEvent, SessionEventKind, SessionId, SessionRepository, SystemClock, User, UserId,
    UserRepository, Username,
};
use hub_store::{PgSessionRepository, PgUserRepository};
use sqlx::PgPool;
use time::{Duration, OffsetDateTime};

async fn user(pool: &PgPool, name: &str) -> User {
    let username = Username::parse(name).unwrap();
    let hash = PasswordHasher::insecure_for_tests(1)
        .hash(&Password::parse("correct horse", &username).unwrap())
        .unwrap();
    PgUserRepository::new(pool.clone())
        .insert(NewUser {
            id: UserId::generate(),
            email: Email::parse(&format!("{name}@example.com")).unwrap(),
            username,
            password_hash: hash,
            role: Role::User,
            created_at: SystemClock.now(),
        })
        .await
        .unwrap()
}

fn session(user: UserId, now: OffsetDateTime) -> Session {
    Session {
        id: SessionId::generate(),
        user_id: user,
        created_at: now,
        expires_at: now + Duration::hours(1),
        last_seen_at: now,
        revoked_at: None,
        client: ClientInfo::new(
            Some("203.0.113.9".parse::<IpAddr>().unwrap()),
            Some("zeep/4.3"),
        ),
    }
}

async fn open(repo: &PgSessionRepository, s: &Session) {
    repo.open(
        s,
        &SessionEvent::new(SessionEventKind::Opened, s, s.created_at),
    )
    .await
    .unwrap();
}

async fn outbox(pool: &PgPool) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as::<_, (String, sqlx::types::Json<serde_json::Value>)>(
        "SELECT kind, payload FROM outbox ORDER BY created_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(k, p)| (k, p.0))
    .collect()
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn open_writes_the_session_and_its_event(pool: PgPool) {
    let alice = user(&pool, "alice").await;
    let repo = PgSessionRepository::new(pool.clone());
    let now = SystemClock.now();
    let s = session(alice.id, now);
    open(&repo, &s).await;

    let found = repo.find_open(s.id, now).await.unwrap().unwrap();
    assert_eq!(
        found, s,
        "every field round-trips, the client's address included"
    );
    let events = outbox(&pool).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "session.opened");
    assert_eq!(events[0].1["session_id"], s.id.to_string());
    assert_eq!(events[0].1["client_ip"], "203.0.113.9");
    assert_eq!(events[0].1["user_agent"], "zeep/4.3");
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn expired_and_revoked_sessions_are_not_open(pool: PgPool) {
    let alice = user(&pool, "alice").await;
    let repo = PgSessionRepository::new(pool.clone());
    let now = SystemClock.now();
    let s = session(alice.id, now);
    open(&repo, &s).await;
    assert!(
        repo.find_open(s.id, now + Duration::hours(2))
            .await
            .unwrap()
            .is_none()
    );
    assert!(repo.revoke(s.id, now, "logout").await.unwrap());
    assert!(repo.find_open(s.id, now).await.unwrap().is_none());
    assert!(
        !repo.revoke(s.id, now, "logout").await.unwrap(),
        "twice is a no-op"
    );
    let events = outbox(&pool).await;
    assert_eq!(events.len(), 2, "no second event for the no-op");
    assert_eq!(events[1].0, "session.revoked");
    assert_eq!(events[1].1["reason"], "logout");
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn revoke_all_keeps_the_named_session_and_spares_other_users(pool: PgPool) {
    let alice = user(&pool, "alice").await;
    let bob = user(&pool, "bob").await;
    let repo = PgSessionRepository::new(pool.clone());
    let now = SystemClock.now();
    let keep = session(alice.id, now);
    let others = [session(alice.id, now), session(alice.id, now)];
    let bobs = session(bob.id, now);
    for s in [&keep, &others[0], &others[1], &bobs] {
        open(&repo, s).await;
    }
    let revoked = repo
        .revoke_all(alice.id, Some(keep.id), now, "password_changed")
        .await
        .unwrap();
    assert_eq!(revoked, 2);
    assert!(repo.find_open(keep.id, now).await.unwrap().is_some());
    assert!(repo.find_open(bobs.id, now).await.unwrap().is_some());
    for s in &others {
        assert!(repo.find_open(s.id, now).await.unwrap().is_none());
    }
    assert_eq!(
        repo.revoke_all(alice.id, None, now, "admin").await.unwrap(),
        1
    );
    let revoked_events = outbox(&pool)
        .await
        .into_iter()
        .filter(|(k, _)| k == "session.revoked")
        .count();
    assert_eq!(revoked_events, 3);
}

/// A change that fails leaves no event behind: both are one transaction.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_failed_open_leaves_no_event(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let now = SystemClock.now();
    let orphan = session(UserId::generate(), now); // no such user: foreign key fails
    let err = repo
        .open(
            &orphan,
            &SessionEvent::new(SessionEventKind::Opened, &orphan, now),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(outbox(&pool).await.is_empty());
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn email_changes_respect_uniqueness(pool: PgPool) {
    let alice = user(&pool, "alice").await;
    user(&pool, "bob").await;
    let users = PgUserRepository::new(pool);
    let err = users
        .update_email(alice.id, &Email::parse("BOB@example.com").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::EmailTaken);
    users
        .update_email(alice.id, &Email::parse("alice@new.example.com").unwrap())
        .await
        .unwrap();
    assert_eq!(
        users
            .find_by_id(alice.id)
            .await
            .unwrap()
            .unwrap()
            .email
            .as_str(),
        "alice@new.example.com"
    );
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn the_open_session_and_its_user_in_one_query(pool: PgPool) {
    let alice = user(&pool, "alice").await;
    let repo = PgSessionRepository::new(pool.clone());
    let now = SystemClock.now();
    let s = session(alice.id, now);
    open(&repo, &s).await;
    let (found, user) = repo.find_open_with_user(s.id, now).await.unwrap().unwrap();
    assert_eq!(found, s);
    assert_eq!(user.id, alice.id);
    assert_eq!(user.username, alice.username);
    assert_eq!(user.password_hash, alice.password_hash);
    repo.revoke(s.id, now, "logout").await.unwrap();
    assert!(repo.find_open_with_user(s.id, now).await.unwrap().is_none());
}

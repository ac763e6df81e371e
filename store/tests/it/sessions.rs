//! Sessions and their outbox events against the real PostgreSQL.

use std::net::IpAddr;

use hub_core::{
    ClientInfo, Clock, Email, ErrorCode, KnownDevices, NewUser, Password, PasswordHasher, Role,
    Session, SessionEvent, SessionEventKind, SessionId, SessionRepository, SystemClock, User,
    UserId, UserRepository, Username,
};
use hub_store::{PgKnownDevices, PgSessionRepository, PgUserRepository};
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
            created_by: None,
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
        "SELECT type, data || jsonb_build_object('session_id', session_id) FROM events \
         WHERE type LIKE 'session.%' ORDER BY id",
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

/// A role change lands with the revocation of every session of the user
/// and the loss of their known devices, in one transaction, so no token of
/// the old role is left; the same role again changes nothing.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_role_change_revokes_the_users_sessions_and_devices(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let devices = PgKnownDevices::new(pool.clone());
    let (bea, cy) = (user(&pool, "bea").await, user(&pool, "cyd").await);
    let now = SystemClock.now();
    let (one, two, other) = (
        session(bea.id, now),
        session(bea.id, now),
        session(cy.id, now),
    );
    for s in [&one, &two, &other] {
        open(&repo, s).await;
    }
    assert!(
        devices
            .remember(bea.id, None, "bea-phone", one.id, now, 10)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        devices
            .remember(cy.id, None, "cy-phone", other.id, now, 10)
            .await
            .unwrap()
            .is_some()
    );

    assert_eq!(repo.change_role(bea.id, Role::Admin, now).await.unwrap(), 2);
    assert_eq!(repo.change_role(bea.id, Role::Admin, now).await.unwrap(), 0);
    let later = now + Duration::seconds(1);
    for s in [&one, &two] {
        assert!(repo.find_open(s.id, later).await.unwrap().is_none());
    }
    assert!(repo.find_open(other.id, later).await.unwrap().is_some());
    assert!(!devices.is_known(bea.id, "bea-phone").await.unwrap());
    assert!(devices.is_known(cy.id, "cy-phone").await.unwrap());
    let reasons: Vec<_> = outbox(&pool)
        .await
        .into_iter()
        .filter(|(kind, _)| kind == "session.revoked")
        .map(|(_, payload)| payload["reason"].clone())
        .collect();
    assert_eq!(reasons, ["role_changed", "role_changed"]);
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(bea.id.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(role, "admin");
    assert_eq!(
        repo.change_role(UserId::generate(), Role::Admin, now)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::UserNotFound
    );
}

/// Devices are remembered only under an open session, at most `keep` per
/// user (the most recently used), and forgotten by "sign out everywhere".
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn known_devices_are_bounded_and_die_with_the_sessions(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let devices = PgKnownDevices::new(pool.clone());
    let dora = user(&pool, "dora").await;
    let now = SystemClock.now();
    let s = session(dora.id, now);
    open(&repo, &s).await;
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let at = now + Duration::seconds(i as i64);
        let remembered = devices.remember(dora.id, None, name, s.id, at, 2).await;
        assert!(remembered.unwrap().is_some());
    }
    let mut known = Vec::new();
    for name in ["a", "b", "c"] {
        known.push(devices.is_known(dora.id, name).await.unwrap());
    }
    assert_eq!(known, [false, true, true]);
    // Used again, "b" outlives "c" when "d" comes.
    let at = now + Duration::seconds(5);
    let remembered = devices.remember(dora.id, Some("b"), "b", s.id, at, 2).await;
    assert_eq!(remembered.unwrap().as_deref(), Some("b"));
    let at = now + Duration::seconds(6);
    let remembered = devices.remember(dora.id, Some("d"), "d", s.id, at, 2).await;
    assert_eq!(remembered.unwrap().as_deref(), Some("d"));
    assert!(devices.is_known(dora.id, "b").await.unwrap());
    assert!(!devices.is_known(dora.id, "c").await.unwrap());

    repo.revoke_all(dora.id, None, now + Duration::seconds(7), "everywhere")
        .await
        .unwrap();
    assert!(!devices.is_known(dora.id, "b").await.unwrap());
    // A login whose session was revoked meanwhile leaves no device behind.
    let late = devices.remember(dora.id, None, "e", s.id, now, 2).await;
    assert!(late.unwrap().is_none());
    assert!(!devices.is_known(dora.id, "e").await.unwrap());
}

/// A forgotten device is never brought back: a login that showed it before
/// the revocation and remembers after it gets a new id, so the tokens that
/// carried the old one stay dead.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn a_forgotten_device_is_not_brought_back(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let devices = PgKnownDevices::new(pool.clone());
    let eve = user(&pool, "eve").await;
    let now = SystemClock.now();
    let first = session(eve.id, now);
    open(&repo, &first).await;
    let remembered = devices
        .remember(eve.id, None, "laptop", first.id, now, 10)
        .await
        .unwrap();
    assert_eq!(remembered.as_deref(), Some("laptop"));
    let shown = devices
        .remember(eve.id, Some("laptop"), "unused", first.id, now, 10)
        .await
        .unwrap();
    assert_eq!(
        shown.as_deref(),
        Some("laptop"),
        "a remembered device keeps its id"
    );

    repo.revoke_all(eve.id, None, now, "everywhere")
        .await
        .unwrap();
    let second = session(eve.id, now);
    open(&repo, &second).await;
    let after = devices
        .remember(eve.id, Some("laptop"), "laptop-2", second.id, now, 10)
        .await
        .unwrap();
    assert_eq!(after.as_deref(), Some("laptop-2"));
    assert!(!devices.is_known(eve.id, "laptop").await.unwrap());
}

/// Another device's session opens only while the session it is opened
/// from is open and the role it was read under is still the user's.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn another_session_needs_its_parent_open_and_its_role_current(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let fay = user(&pool, "fay").await;
    let now = SystemClock.now();
    let parent = session(fay.id, now);
    open(&repo, &parent).await;
    let beside = |s: &Session| SessionEvent::new(SessionEventKind::Opened, s, now);
    let child = session(fay.id, now);
    assert!(
        repo.open_beside(Some(parent.id), &child, &beside(&child), Role::User)
            .await
            .unwrap()
    );
    let stale = session(fay.id, now);
    assert!(
        !repo
            .open_beside(Some(parent.id), &stale, &beside(&stale), Role::Admin)
            .await
            .unwrap()
    );
    repo.revoke(parent.id, now, "logout").await.unwrap();
    let orphan = session(fay.id, now);
    assert!(
        !repo
            .open_beside(Some(parent.id), &orphan, &beside(&orphan), Role::User)
            .await
            .unwrap()
    );
    for refused in [&stale, &orphan] {
        assert!(repo.find(refused.id).await.unwrap().is_none());
    }
}

/// The last admin keeps the role, even when two admins withdraw each other
/// at the same moment: one withdrawal lands, the other is FORBIDDEN.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn two_admins_withdrawing_each_other_leave_one(pool: PgPool) {
    let repo = PgSessionRepository::new(pool.clone());
    let (gus, hal) = (user(&pool, "gus").await, user(&pool, "hal").await);
    let now = SystemClock.now();
    for admin in [&gus, &hal] {
        repo.change_role(admin.id, Role::Admin, now).await.unwrap();
    }
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            repo.change_role(gus.id, Role::User, now),
            repo.change_role(hal.id, Role::User, now)
        );
        let refused: Vec<_> = [&a, &b]
            .into_iter()
            .filter_map(|r| r.as_ref().err())
            .collect();
        assert_eq!(refused.len(), 1, "{a:?} {b:?}");
        assert_eq!(refused[0].code(), ErrorCode::Forbidden);
        let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'admin'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(admins, 1);
        // Both admins again for the next round.
        for admin in [&gus, &hal] {
            repo.change_role(admin.id, Role::Admin, now).await.unwrap();
        }
    }
    let err = {
        repo.change_role(hal.id, Role::User, now).await.unwrap();
        repo.change_role(gus.id, Role::User, now).await.unwrap_err()
    };
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert_eq!(err.message(), hub_core::ports::LAST_ADMIN);
}

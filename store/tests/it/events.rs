//! The event log against the real PostgreSQL: every user change writes its
//! event in its own transaction (and a failed change none), subscribers
//! each have their own delivery state, and the log reads in commit-safe
//! order.

use hub_core::events::{EventLog, UserChange};
use hub_core::{
    Clock, CredentialChange, Email, ErrorCode, NewUser, Outbox, Password, PasswordHasher, Role,
    SessionRepository, SystemClock, User, UserId, UserRepository, Username,
};
use hub_store::{PgEventLog, PgOutbox, PgSessionRepository, PgUserRepository};
use sqlx::PgPool;

fn hasher() -> PasswordHasher {
    PasswordHasher::insecure_for_tests(1)
}

fn new_user(name: &str) -> NewUser {
    let username = Username::parse(name).unwrap();
    NewUser {
        id: UserId::generate(),
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        password_hash: hasher()
            .hash(&Password::parse("correct horse", &username).unwrap())
            .unwrap(),
        username,
        role: Role::User,
        created_at: SystemClock.now(),
        created_by: None,
    }
}

/// The log after `after` once it shows `count` events: the horizon is the
/// whole server's, and other tests' transactions (in their own databases)
/// may hold it back for a moment.
async fn read_when(
    log: &PgEventLog,
    after: Option<i64>,
    count: usize,
) -> Vec<hub_core::events::LoggedEvent> {
    let mut read = Vec::new();
    for _ in 0..250 {
        read = log.read(after, 1000).await.unwrap();
        if read.len() >= count {
            return read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "the log showed {} events, not {count}: {read:?}",
        read.len()
    );
}

/// The types in the log once it shows `count`, in its order.
async fn types(log: &PgEventLog, count: usize) -> Vec<String> {
    read_when(log, None, count)
        .await
        .into_iter()
        .map(|e| e.event.type_name().to_owned())
        .collect()
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn every_user_change_is_in_the_log_and_a_failed_one_is_not(pool: PgPool) {
    let users = PgUserRepository::new(pool.clone());
    let sessions = PgSessionRepository::new(pool.clone());
    let log = PgEventLog::new(pool.clone());
    let alice: User = users.insert(new_user("alice")).await.unwrap();
    users.insert(new_user("bob")).await.unwrap();
    // A taken name fails the user and its event together.
    let mut twin = new_user("alice");
    twin.email = Email::parse("other@example.com").unwrap();
    assert_eq!(
        users.insert(twin).await.unwrap_err().code(),
        ErrorCode::UsernameTaken
    );
    let new_hash = hasher()
        .hash(&Password::parse("battery staple", &alice.username).unwrap())
        .unwrap();
    let change =
        |email: Option<&str>, hash: Option<&hub_core::PasswordHash>, expected| CredentialChange {
            user: alice.id,
            expected,
            email: email.map(|e| Email::parse(e).unwrap()),
            password_hash: hash.cloned(),
            keep: None,
            at: SystemClock.now(),
        };
    // Another user's email: nothing changes, no event.
    let taken = change(Some("bob@example.com"), None, alice.password_hash.clone());
    assert_eq!(
        sessions
            .change_credentials(&taken)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::EmailTaken
    );
    sessions
        .change_credentials(&change(
            Some("alice@new.example.com"),
            Some(&new_hash),
            alice.password_hash.clone(),
        ))
        .await
        .unwrap();
    // A stale current password: refused, no event.
    let stale = change(Some("a@example.org"), None, alice.password_hash.clone());
    assert_eq!(
        sessions
            .change_credentials(&stale)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::InvalidCredentials
    );
    sessions
        .change_role(alice.id, Role::Admin, SystemClock.now())
        .await
        .unwrap();
    // No change, no event.
    sessions
        .change_role(alice.id, Role::Admin, SystemClock.now())
        .await
        .unwrap();
    let imported: Vec<User> = ["carol", "dave", "alice"]
        .into_iter()
        .map(|name| User::from(new_user(name)))
        .collect();
    // A dry run keeps nothing, its event neither.
    users.import(&imported, true).await.unwrap();
    users.import(&imported, false).await.unwrap();
    assert_eq!(
        types(&log, 6).await,
        [
            "user.created",
            "user.created",
            "user.email_changed",
            "user.password_changed",
            "user.role_changed",
            "users.imported",
        ]
    );
    let read = read_when(&log, None, 6).await;
    let hub_core::events::DomainEvent::User(imported) = &read[5].event else {
        panic!("not a user event: {:?}", read[5]);
    };
    assert_eq!(imported.change, UserChange::Imported { count: 2 });
    assert_eq!(imported.user_id, None);
    let shown = read[2].to_json();
    assert_eq!(shown["type"], "user.email_changed");
    assert_eq!(shown["user_id"], alice.id.to_string());
    assert_eq!(shown["data"]["email"], "alice@new.example.com");
    // The activity log's queue has every one of them.
    let outbox = PgOutbox::new(pool.clone());
    assert_eq!(outbox.backlog().await.unwrap().pending, 6);
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn each_subscriber_has_its_own_delivery_state(pool: PgPool) {
    sqlx::query("INSERT INTO event_subscribers (name, types) VALUES ('mail', ARRAY['user.*'])")
        .execute(&pool)
        .await
        .unwrap();
    let users = PgUserRepository::new(pool.clone());
    let sessions = PgSessionRepository::new(pool.clone());
    let alice = users.insert(new_user("alice")).await.unwrap();
    let s = hub_core::Session {
        id: hub_core::SessionId::generate(),
        user_id: alice.id,
        created_at: SystemClock.now(),
        expires_at: SystemClock.now() + time::Duration::hours(1),
        last_seen_at: SystemClock.now(),
        revoked_at: None,
        client: hub_core::ClientInfo::default(),
    };
    let opened = hub_core::SessionEvent::new(hub_core::SessionEventKind::Opened, &s, s.created_at);
    sessions.open(&s, &opened).await.unwrap();
    let activity = PgOutbox::new(pool.clone());
    let mail = PgOutbox::for_subscriber(pool.clone(), "mail");
    // The mail subscriber listens to user events only.
    let claim = mail.claim(10).await.unwrap();
    let claimed: Vec<_> = claim.events().iter().map(|p| p.event.type_name()).collect();
    assert_eq!(claimed, ["user.created"]);
    assert_eq!(
        claim.events()[0].username.as_ref().map(Username::as_str),
        Some("alice")
    );
    claim.delivered(SystemClock.now()).await.unwrap();
    assert_eq!(mail.backlog().await.unwrap().pending, 0);
    // Delivered to one is delivered to one: the activity log still waits
    // for both.
    assert_eq!(activity.backlog().await.unwrap().pending, 2);
    let claim = activity.claim(10).await.unwrap();
    let first = claim.events()[0].event.id();
    assert_eq!(
        claim
            .settle(&[], &[(first, "refused".to_owned())], SystemClock.now(), 1)
            .await
            .unwrap(),
        1
    );
    let backlog = activity.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.quarantined), (1, 1));
    assert_eq!(mail.backlog().await.unwrap().quarantined, 0);
    let states: Vec<_> = PgEventLog::new(pool.clone())
        .subscribers()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.types, s.pending, s.quarantined))
        .collect();
    assert_eq!(
        states,
        [
            ("activity".to_owned(), vec!["*".to_owned()], 1, 1),
            ("mail".to_owned(), vec!["user.*".to_owned()], 0, 0),
        ]
    );
    // Pruning keeps what a subscriber has not had.
    let later = SystemClock.now() + time::Duration::hours(1);
    assert_eq!(activity.prune(later).await.unwrap(), 0);
    assert_eq!(activity.retry_quarantined().await.unwrap(), 1);
    activity
        .claim(10)
        .await
        .unwrap()
        .delivered(SystemClock.now())
        .await
        .unwrap();
    assert_eq!(activity.prune(later).await.unwrap(), 2);
}

/// A reader never skips an event whose transaction commits after a later
/// id's: it is not shown while its transaction runs, and shows up after
/// the position the reader had reached.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn the_log_reads_in_commit_safe_order(pool: PgPool) {
    let users = PgUserRepository::new(pool.clone());
    let log = PgEventLog::new(pool.clone());
    users.insert(new_user("first")).await.unwrap();
    // A transaction takes an id and stays open...
    let mut slow = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, type, user_id, occurred_at, data) \
         VALUES (gen_random_uuid(), 'users.imported', NULL, now(), '{\"count\": 1}')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    // ...while a later one commits.
    users.insert(new_user("second")).await.unwrap();
    let seen = read_when(&log, None, 1).await;
    assert_eq!(
        seen.len(),
        1,
        "nothing past a running transaction: {seen:?}"
    );
    let reached = seen[0].position;
    slow.commit().await.unwrap();
    let next = read_when(&log, Some(reached), 2).await;
    let next: Vec<_> = next.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(next, ["users.imported", "user.created"], "none skipped");
    assert_eq!(read_when(&log, None, 3).await.len(), 3);
    let all = log.read(None, 2).await.unwrap();
    assert_eq!(all.len(), 2, "the latest two");
    assert_eq!(all[1].event.type_name(), "user.created");
    assert_eq!(
        log.read(Some(999_999), 10).await.unwrap_err().code(),
        ErrorCode::InvalidRequest
    );
}

/// A reader resuming after an event the log still keeps, past which later
/// events were pruned, is told so instead of silently skipping them.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn resuming_below_what_was_pruned_is_refused(pool: PgPool) {
    let users = PgUserRepository::new(pool.clone());
    let log = PgEventLog::new(pool.clone());
    for name in ["first", "second", "third"] {
        users.insert(new_user(name)).await.unwrap();
    }
    let read = read_when(&log, None, 3).await;
    let activity = PgOutbox::new(pool.clone());
    let claim = activity.claim(10).await.unwrap();
    let ids: Vec<_> = claim.events().iter().map(|p| p.event.id()).collect();
    // The first is refused into quarantine, the others delivered.
    let refused = [(ids[0], "refused".to_owned())];
    assert_eq!(
        claim
            .settle(&ids[1..], &refused, SystemClock.now(), 1)
            .await
            .unwrap(),
        1
    );
    let later = SystemClock.now() + time::Duration::hours(1);
    assert_eq!(
        activity.prune(later).await.unwrap(),
        2,
        "the quarantined one stays"
    );
    let refused = log.read(Some(read[0].position), 10).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidRequest);
    assert!(refused.to_string().contains("pruned"), "{refused}");
    assert_eq!(log.read(None, 10).await.unwrap().len(), 1);
}

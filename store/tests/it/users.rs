//! hub-store against the real PostgreSQL: each test gets a fresh database from
//! `#[sqlx::test]`, with the embedded migrations applied.

use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    Clock, DependencyProbe, Directory, Email, ErrorCode, HashingPool, NewUser, Password,
    PasswordHasher, RegisterUser, Registration, Role, SessionRepository, SystemClock, UserId,
    UserRepository, Username, WorkPoolConfig,
};
use hub_store::{PgProbe, PgSessionRepository, PgUserRepository, PoolSettings};
use sqlx::PgPool;

fn new_user(username: &str, email: &str) -> NewUser {
    let hasher = PasswordHasher::insecure_for_tests(1);
    let username = Username::parse(username).unwrap();
    let password = Password::parse("correct horse", &username).unwrap();
    NewUser {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        password_hash: hasher.hash(&password).unwrap(),
        username,
        role: Role::User,
        created_at: SystemClock.now(),
        created_by: None,
    }
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn insert_then_find_every_way(pool: PgPool) {
    let repo = PgUserRepository::new(pool);
    let new = new_user("alice", "alice@example.com");
    let inserted = repo.insert(new.clone()).await.unwrap();
    assert_eq!(inserted.id, new.id);
    assert_eq!(
        inserted.created_at, new.created_at,
        "timestamps round-trip exactly"
    );

    let by_id = repo.find_by_id(new.id).await.unwrap().unwrap();
    let by_name = repo
        .find_by_username(&Username::parse("ALICE").unwrap())
        .await
        .unwrap()
        .unwrap();
    let by_email = repo
        .find_by_email(&Email::parse("Alice@Example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    for found in [&by_id, &by_name, &by_email] {
        assert_eq!(found.id, new.id);
        assert_eq!(found.username.as_str(), "alice");
        assert_eq!(found.password_hash, new.password_hash);
    }
    assert!(repo.find_by_id(UserId::generate()).await.unwrap().is_none());
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn duplicate_username_and_email_are_conflicts(pool: PgPool) {
    let repo = PgUserRepository::new(pool);
    repo.insert(new_user("alice", "alice@example.com"))
        .await
        .unwrap();
    let err = repo
        .insert(new_user("alice", "other@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UsernameTaken);
    let err = repo
        .insert(new_user("bob", "alice@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::EmailTaken);
}

/// The unique index is on lower(), so even a row written around hub-core's
/// folding collides.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn uniqueness_is_case_insensitive_in_the_schema(pool: PgPool) {
    let repo = PgUserRepository::new(pool.clone());
    repo.insert(new_user("alice", "alice@example.com"))
        .await
        .unwrap();
    let raw = sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) \
         VALUES ($1, 'ALICE', 'x@example.com', 'h', 'user', now(), now())",
    )
    .bind(UserId::generate().as_uuid())
    .execute(&pool)
    .await
    .unwrap_err();
    assert_eq!(
        hub_store::postgres::classify("raw insert", raw).code(),
        ErrorCode::UsernameTaken
    );
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn two_concurrent_inserts_of_one_username_exactly_one_wins(pool: PgPool) {
    let repo = PgUserRepository::new(pool);
    let (a, b) = tokio::join!(
        repo.insert(new_user("carol", "carol1@example.com")),
        repo.insert(new_user("carol", "carol2@example.com")),
    );
    let outcomes = [a, b];
    assert_eq!(outcomes.iter().filter(|r| r.is_ok()).count(), 1);
    let loser = outcomes.into_iter().find_map(Result::err).unwrap();
    assert_eq!(loser.code(), ErrorCode::UsernameTaken);
}

/// Through the use case: all racers pass the up-front check, the unique key
/// decides, and the losers get USERNAME_TAKEN rather than an internal error.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn concurrent_registrations_through_the_use_case(pool: PgPool) {
    let repo = Arc::new(PgUserRepository::new(pool));
    let hashing = HashingPool::new(
        PasswordHasher::insecure_for_tests(100),
        WorkPoolConfig::default(),
    );
    let registration = Registration::new(repo.clone(), hashing, Arc::new(SystemClock));
    let attempts = (0..10).map(|i| {
        let registration = registration.clone();
        tokio::spawn(async move {
            registration
                .register(RegisterUser {
                    username: "dave".into(),
                    email: format!("dave{i}@example.com"),
                    password: "correct horse".into(),
                })
                .await
        })
    });
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::UsernameTaken),
        }
    }
    assert_eq!(won, 1);
    let found = Directory::new(repo).lookup("Dave").await.unwrap();
    assert_eq!(found.username.as_str(), "dave");
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn updates_report_missing_users(pool: PgPool) {
    let repo_pool = pool.clone();
    let repo = PgUserRepository::new(pool);
    let user = repo
        .insert(new_user("erin", "erin@example.com"))
        .await
        .unwrap();
    PgSessionRepository::new(repo_pool.clone())
        .change_role(user.id, Role::Admin, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    let hash = PasswordHasher::insecure_for_tests(2)
        .hash(&Password::parse("another secret", &user.username).unwrap())
        .unwrap();
    assert!(
        repo.replace_password_hash(user.id, &user.password_hash, &hash)
            .await
            .unwrap()
    );
    let reread = repo.find_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(reread.role, Role::Admin);
    assert_eq!(reread.password_hash, hash);
    assert!(reread.updated_at >= reread.created_at);

    let missing = UserId::generate();
    assert_eq!(
        PgSessionRepository::new(repo_pool)
            .change_role(missing, Role::Admin, time::OffsetDateTime::now_utc())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::UserNotFound
    );
    assert!(
        !repo
            .replace_password_hash(missing, &hash, &hash)
            .await
            .unwrap()
    );
}

/// A database that is not there is UNAVAILABLE, quickly, with the cause kept
/// for the log and not in the client message.
#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let pool = hub_store::connect_lazy(&PoolSettings {
        url: "postgres://postgres:secret@127.0.0.1:1/polyhub".into(),
        max_connections: 2,
        min_connections: 0,
        acquire_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(10),
    })
    .unwrap();
    let started = std::time::Instant::now();
    let err = PgUserRepository::new(pool.clone())
        .find_by_username(&Username::parse("alice").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!err.message().contains("127.0.0.1"));
    assert!(err.to_string().contains("finding a user by username"));
    assert_eq!(
        PgProbe::new(pool).probe().await.unwrap_err().code(),
        ErrorCode::Unavailable
    );
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn probe_reports_latency(pool: PgPool) {
    let latency = PgProbe::new(pool).probe().await.unwrap();
    assert!(latency < Duration::from_secs(2));
}

#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn search_pages_by_prefix_and_takes_wildcards_literally(pool: PgPool) {
    let repo = PgUserRepository::new(pool.clone());
    for (name, email) in [
        ("anna", "anna@example.com"),
        ("annabel", "bel@example.com"),
        ("bob", "annex@example.org"),
        ("a_b", "underscore@example.com"),
        ("axb", "x@example.com"),
    ] {
        repo.insert(new_user(name, email)).await.unwrap();
    }
    let names = |users: Vec<hub_core::User>| -> Vec<String> {
        users
            .iter()
            .map(|u| u.username.as_str().to_owned())
            .collect()
    };
    // By username or email, ordered by username, case folded.
    let found = repo.search("ANN", None, 10).await.unwrap();
    assert_eq!(names(found), ["anna", "annabel", "bob"]);
    // Keyset pages.
    let first = repo.search("ann", None, 2).await.unwrap();
    assert_eq!(names(first.clone()), ["anna", "annabel"]);
    let rest = repo
        .search("ann", Some(&first[1].username), 2)
        .await
        .unwrap();
    assert_eq!(names(rest), ["bob"]);
    // `_` and `%` are characters, not LIKE's wildcards.
    assert_eq!(names(repo.search("a_", None, 10).await.unwrap()), ["a_b"]);
    assert!(repo.search("%", None, 10).await.unwrap().is_empty());
    // An empty prefix is everyone.
    assert_eq!(repo.search("", None, 10).await.unwrap().len(), 5);
    // The prefix indexes exist (the search reads a page, not the table).
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'users' AND indexname LIKE '%prefix'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
}

/// An address stored before the ASCII-only rule (a Cyrillic letter in its
/// local part) still reads back, so its owner is not locked out of their
/// account by a rule that came later.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn an_address_stored_under_an_older_rule_still_reads(pool: PgPool) {
    let repo = PgUserRepository::new(pool.clone());
    let new = new_user("vera", "vera@example.com");
    repo.insert(new.clone()).await.unwrap();
    sqlx::query("UPDATE users SET email = 'vеra@example.com' WHERE id = $1")
        .bind(new.id.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let found = repo.find_by_id(new.id).await.unwrap().unwrap();
    assert_eq!(found.email.as_str(), "vеra@example.com");
    assert!(
        Email::parse("vеra@example.com").is_err(),
        "not accepted anew"
    );
}

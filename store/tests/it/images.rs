//! Image metadata against the real PostgreSQL: `store_image`, the one call
//! that records an upload, decides the same image, the quota and the
//! insert in one transaction.

use hub_core::{
    Clock, Email, ErrorCode, ImageQuota, ImageRepository, NewUser, Password, PasswordHasher, Role,
    StoredImage, SystemClock, UserId, UserRepository, Username,
};
use hub_store::{PgImageRepository, PgUserRepository};
use sqlx::PgPool;
use uuid::Uuid;

async fn owner(pool: &PgPool, name: &str) -> UserId {
    let hasher = PasswordHasher::insecure_for_tests(1);
    let username = Username::parse(name).unwrap();
    let password = Password::parse("correct horse", &username).unwrap();
    let user = NewUser {
        id: UserId::generate(),
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        password_hash: hasher.hash(&password).unwrap(),
        username,
        role: Role::User,
        created_at: SystemClock.now(),
        created_by: None,
    };
    PgUserRepository::new(pool.clone())
        .insert(user)
        .await
        .unwrap()
        .id
}

fn image(owner: UserId, n: u32, size: u64) -> StoredImage {
    StoredImage {
        id: Uuid::now_v7(),
        owner_id: owner,
        key: format!("users/{owner}/{n:032x}.png"),
        content_type: "image/png".into(),
        size_bytes: size,
        width: 10,
        height: 10,
        sha256: format!("{n:064x}"),
        created_at: SystemClock.now(),
    }
}

fn quota(max_images: u64, max_bytes: u64) -> ImageQuota {
    ImageQuota {
        max_images,
        max_bytes,
        ..ImageQuota::default()
    }
}

/// Stored, found again by hash, the same hash answered with the row that
/// was there, and past the count or the bytes QUOTA_EXCEEDED, saying what
/// is stored.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn an_image_is_stored_once_and_within_the_quota(pool: PgPool) {
    let repo = PgImageRepository::new(pool.clone());
    let alice = owner(&pool, "alice").await;
    let limits = quota(2, 1_000);
    let first = image(alice, 1, 400);
    let stored = repo.insert(&first, &limits).await.unwrap();
    assert_eq!(stored, first);
    assert_eq!(
        repo.find_by_hash(alice, &first.sha256).await.unwrap(),
        Some(first.clone())
    );
    let again = StoredImage {
        id: Uuid::now_v7(),
        ..first.clone()
    };
    assert_eq!(
        repo.insert(&again, &limits).await.unwrap(),
        first,
        "the row that was there"
    );
    let too_big = repo
        .insert(&image(alice, 2, 601), &limits)
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), ErrorCode::QuotaExceeded);
    assert!(
        too_big.to_string().contains("1 images and 400 bytes"),
        "{too_big}"
    );
    repo.insert(&image(alice, 3, 600), &limits).await.unwrap();
    let too_many = repo.insert(&image(alice, 4, 1), &limits).await.unwrap_err();
    assert_eq!(too_many.code(), ErrorCode::QuotaExceeded);
}

/// Twelve uploads of one owner at once against a quota of three: exactly
/// three are stored (each call waits on the owner's lock, then counts what
/// the others committed), and another owner is not held up by them.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn concurrent_uploads_cannot_pass_the_quota(pool: PgPool) {
    let repo = PgImageRepository::new(pool.clone());
    let (alice, bob) = (owner(&pool, "alice").await, owner(&pool, "bob").await);
    let limits = quota(3, u64::MAX);
    let calls: Vec<_> = (0..12)
        .map(|n| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.insert(&image(alice, 100 + n, 10), &limits).await })
        })
        .collect();
    let mut stored = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => stored += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::QuotaExceeded, "{e}"),
        }
    }
    assert_eq!(stored, 3);
    assert_eq!(repo.list(alice, None, 100).await.unwrap().len(), 3);
    repo.insert(&image(bob, 1, 10), &limits).await.unwrap();
}

/// The owner's usage row the quota reads follows every change to images,
/// not only store_image's inserts: a row deleted by hand gives its place
/// back, and deleting the user removes both.
#[sqlx::test(migrator = "hub_store::MIGRATOR")]
async fn the_usage_the_quota_reads_follows_every_change(pool: PgPool) {
    let repo = PgImageRepository::new(pool.clone());
    let alice = owner(&pool, "alice").await;
    let usage = async || -> Option<(i64, i64)> {
        sqlx::query_as("SELECT images, bytes FROM image_usage WHERE owner_id = $1")
            .bind(alice.as_uuid())
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    assert_eq!(usage().await, None, "nothing stored yet");
    let limits = quota(2, 1_000);
    let first = repo.insert(&image(alice, 1, 300), &limits).await.unwrap();
    repo.insert(&image(alice, 2, 200), &limits).await.unwrap();
    assert_eq!(usage().await, Some((2, 500)));
    let full = repo.insert(&image(alice, 3, 1), &limits).await.unwrap_err();
    assert_eq!(full.code(), ErrorCode::QuotaExceeded);
    assert!(
        full.to_string().contains("2 images and 500 bytes"),
        "{full}"
    );
    sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(first.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(usage().await, Some((1, 200)));
    repo.insert(&image(alice, 3, 1), &limits)
        .await
        .expect("the deleted image's place came back");
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(alice.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(usage().await, None);
}

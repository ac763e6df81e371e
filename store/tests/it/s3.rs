//! The S3 store against the real S3 server scripts/test starts (s3s-fs).

use std::time::Duration;

use hub_core::ObjectStore;
use hub_store::{S3ObjectStore, S3Settings};
use sha2::{Digest, Sha256};

fn store() -> S3ObjectStore {
    let env = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/test"))
    };
    S3ObjectStore::new(&S3Settings {
        endpoint: Some(env("S3_ENDPOINT")),
        region: "us-east-1".to_owned(),
        bucket: format!("store-{}", uuid::Uuid::now_v7().simple()),
        access_key: env("S3_ACCESS_KEY"),
        secret_key: env("S3_SECRET_KEY").into(),
        timeout: Duration::from_secs(10),
    })
}

/// The upload's own SHA-256 signs the PUT (the SDK does not hash the bytes
/// again), and it is checked: a wrong one stores nothing.
#[tokio::test]
async fn a_precomputed_payload_hash_signs_the_put() {
    let store = store();
    store.ensure_bucket().await.unwrap();
    let bytes = bytes::Bytes::from_static(b"an image's bytes, sanitized");
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    store
        .put("right", bytes.clone(), "image/png", Some(&sha256))
        .await
        .unwrap();
    assert!(store.exists("right").await.unwrap());
    let wrong = "0".repeat(64);
    let refused = store
        .put("wrong", bytes.clone(), "image/png", Some(&wrong))
        .await;
    assert!(
        refused.is_err(),
        "a PUT signed with a wrong payload hash was stored"
    );
    assert!(!store.exists("wrong").await.unwrap());
    // Without one, the SDK hashes the bytes itself.
    store.put("plain", bytes, "image/png", None).await.unwrap();
    assert!(store.exists("plain").await.unwrap());
}

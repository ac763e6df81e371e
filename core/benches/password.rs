//! PBKDF2-HMAC-SHA256 at the production parameters: the baseline every login
//! throughput figure is compared with.
//!
//!     cargo bench -p hub-core --bench password
//!
//! `raw_pbkdf2_hmac` is the bare primitive, measured in the same run: `hash`
//! and `verify` over it show what our PHC layer (salt, encoding, parsing,
//! constant-time compare) costs on top.
//!
//! `work`: one verification of each scheme at about 200,000 work units
//! (`PasswordHash::work`), the right password so nothing pads it. Each
//! case's time over its units, against `pbkdf2-sha256`'s, is the ratio the
//! work model counts (core/src/password.rs, `Cost::work`); the model holds
//! while no case takes much longer than `pbkdf2-sha256` timed without SHA
//! extensions:
//!
//!     RUSTFLAGS='--cfg sha2_backend="soft" --cfg sha1_backend="soft"' \
//!         cargo bench -p hub-core --bench password -- work

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use hub_core::{Password, PasswordHash, PasswordHasher, Username};
use sha2::Sha256;
use std::hint::black_box;

fn pbkdf2(c: &mut Criterion) {
    let iterations = PasswordHasher::MIN_ITERATIONS;
    let hasher = PasswordHasher::new(iterations).unwrap_or_else(|e| panic!("{e}"));
    let user = Username::parse("bench.user").unwrap_or_else(|e| panic!("{e}"));
    let password =
        Password::parse("correct horse battery", &user).unwrap_or_else(|e| panic!("{e}"));
    let stored = hasher.hash(&password).unwrap_or_else(|e| panic!("{e}"));

    let mut group = c.benchmark_group("pbkdf2_sha256_600k");
    group.sample_size(20);
    group.bench_function("raw_pbkdf2_hmac", |b| {
        b.iter(|| {
            let mut out = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(
                black_box(b"correct horse battery"),
                black_box(b"0123456789abcdef"),
                iterations,
                &mut out,
            );
            out
        })
    });
    group.bench_function("hash", |b| b.iter(|| hasher.hash(black_box(&password))));
    group.bench_function("verify", |b| {
        b.iter(|| hasher.verify(black_box("correct horse battery"), &stored))
    });
    group.finish();
}

/// A stored hash of `PASSWORD` in each scheme, at about 200,000 units.
fn work_cases() -> Vec<(&'static str, PasswordHash)> {
    const PASSWORD: &[u8] = b"correct horse battery";
    let salt = b"0123456789abcdef";
    let pbkdf2 = |name: &str, iterations: u32, out: &[u8]| {
        format!(
            "${name}$i={iterations},l={}${}${}",
            out.len(),
            B64.encode(salt),
            B64.encode(out)
        )
    };
    let (mut sha1, mut sha256, mut sha512) = ([0u8; 20], [0u8; 32], [0u8; 64]);
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(PASSWORD, salt, 200_000, &mut sha1);
    pbkdf2::pbkdf2_hmac::<Sha256>(PASSWORD, salt, 200_000, &mut sha256);
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(PASSWORD, salt, 100_000, &mut sha512);
    let mut scrypt = [0u8; 32];
    let params = scrypt::Params::new(13, 8, 1).unwrap_or_else(|e| panic!("{e}"));
    scrypt::scrypt(PASSWORD, salt, &params, &mut scrypt).unwrap_or_else(|e| panic!("{e}"));
    let mut argon2 = [0u8; 32];
    let params = argon2::Params::new(16_384, 4, 1, Some(32)).unwrap_or_else(|e| panic!("{e}"));
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(PASSWORD, salt, &mut argon2)
        .unwrap_or_else(|e| panic!("{e}"));
    let bcrypt = bcrypt::hash_with_salt(PASSWORD, 10, *salt)
        .unwrap_or_else(|e| panic!("{e}"))
        .format_for_version(bcrypt::Version::TwoB);
    [
        ("pbkdf2-sha256", pbkdf2("pbkdf2-sha256", 200_000, &sha256)),
        ("pbkdf2-sha1", pbkdf2("pbkdf2-sha1", 200_000, &sha1)),
        ("pbkdf2-sha512", pbkdf2("pbkdf2-sha512", 100_000, &sha512)),
        (
            "scrypt",
            format!(
                "$scrypt$ln=13,r=8,p=1${}${}",
                B64.encode(salt),
                B64.encode(scrypt)
            ),
        ),
        (
            "argon2id",
            format!(
                "$argon2id$v=19$m=16384,t=4,p=1${}${}",
                B64.encode(salt),
                B64.encode(argon2)
            ),
        ),
        ("bcrypt", bcrypt),
    ]
    .into_iter()
    .map(|(name, phc)| {
        (
            name,
            PasswordHash::parse(&phc).unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    })
    .collect()
}

fn work(c: &mut Criterion) {
    let hasher =
        PasswordHasher::new(PasswordHasher::MIN_ITERATIONS).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("work");
    group.sample_size(10);
    for (name, stored) in work_cases() {
        assert!(hasher.verify("correct horse battery", &stored), "{name}");
        group.bench_function(format!("{name} ({} units)", stored.work()), |b| {
            b.iter(|| hasher.verify(black_box("correct horse battery"), &stored))
        });
    }
    group.finish();
}

criterion_group!(benches, pbkdf2, work);
criterion_main!(benches);

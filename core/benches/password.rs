//! PBKDF2-HMAC-SHA256 at the production parameters: the baseline every login
//! throughput figure is compared with.
//!
//!     cargo bench -p hub-core --bench password
//!
//! `raw_pbkdf2_hmac` is the bare primitive, measured in the same run: `hash`
//! and `verify` over it show what our PHC layer (salt, encoding, parsing,
//! constant-time compare) costs on top.

use criterion::{Criterion, criterion_group, criterion_main};
use hub_core::{Password, PasswordHasher, Username};
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

criterion_group!(benches, pbkdf2);
criterion_main!(benches);

//! PBKDF2-HMAC-SHA256 at the production parameters: the baseline every login
//! throughput figure is compared with. `cargo bench -p hub-core --bench password`

use criterion::{Criterion, criterion_group, criterion_main};
use hub_core::{Password, PasswordHasher, Username};

fn pbkdf2(c: &mut Criterion) {
    let hasher =
        PasswordHasher::new(PasswordHasher::MIN_ITERATIONS).unwrap_or_else(|e| panic!("{e}"));
    let user = Username::parse("bench.user").unwrap_or_else(|e| panic!("{e}"));
    let password =
        Password::parse("correct horse battery", &user).unwrap_or_else(|e| panic!("{e}"));
    let stored = hasher.hash(&password).unwrap_or_else(|e| panic!("{e}"));

    let mut group = c.benchmark_group("pbkdf2_sha256_600k");
    group.sample_size(20);
    group.bench_function("hash", |b| b.iter(|| hasher.hash(&password)));
    group.bench_function("verify", |b| {
        b.iter(|| hasher.verify("correct horse battery", &stored))
    });
    group.finish();
}

criterion_group!(benches, pbkdf2);
criterion_main!(benches);

//! `hub users import` of generated users in mixed legacy formats, against
//! `COPY` of the same rows straight into PostgreSQL, in the same run: the
//! rate ratio, and the importer's peak RSS at two file sizes (flat memory
//! means the larger file needs no more).
//!
//! `scripts/bench import` (BENCH_IMPORT_USERS, default 1,000,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hub_core::{HashCeilings, import_hash};
use hub_testkit::{fresh_database_url, scratch_dir};

/// Hashes made by the reference libraries (Werkzeug, Django, passlib,
/// argon2-cffi, bcrypt): an import parses them, it does not verify them.
const SAMPLES: &[&str] = &[
    "pbkdf2:sha256:1000$1y1x0l8glh0uWjfC$c4cf079ae79dc2d338245dce587cc20df044a71b0a8bd6eacc14745eec00df6a",
    "pbkdf2_sha256$1000$uynhSOApOGtpPzEqw0D9AA$7xdHZwBPVXOQkZWSuanMy088L4kgwbfSiz09EBX2ZHc=",
    "bcrypt_sha256$$2b$04$b2C3iUAWnByAu5p9QV51JuUaBNRSMjGoh6JgJIzgTJm578nym0QeW",
    "argon2$argon2id$v=19$m=1024,t=1,p=2$Tkd3eHFjS0VwZWZsMFFJck44WjBsaA$nGi1o9ClDaBWkXJJlBi8wa9N4CkEI9gquAyH6m8gboE",
    "$pbkdf2-sha256$1000$uZcSYuy9955TyrkXojSGsA$.elAOoVjRW6t8V40R1wSLhiCzbb4eVTo2W7ZDpBN5Jk",
    "$scrypt$ln=10,r=8,p=1$y5lzbo1xjlHqXesdw/i/lw$3kfE29hNdRznkBNcxMisF6r3IvcFk+9jgs3qwioUzW4",
    "$argon2id$v=19$m=1024,t=1,p=1$pgvmi4yvO55uzjzo9KD/gA$JNmvB5/7ZbhbTIMxj/LPzFzoRtLLH7LpCAOKg9mF/3g",
    "$2b$04$IulLTpl451KOmw2nOGAIeOk2GVpLNHSh8XXDxtnc2yq9ScpjoVuvu",
];

/// The same users as an import file and as the rows COPY loads.
fn write_files(dir: &Path, users: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let stored: Vec<String> = SAMPLES
        .iter()
        .map(|s| {
            import_hash(s, &HashCeilings::default())
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    let jsonl = dir.join(format!("users-{users}.jsonl"));
    let csv = dir.join(format!("users-{users}.csv"));
    let mut j = BufWriter::new(std::fs::File::create(&jsonl).unwrap());
    let mut c = BufWriter::new(std::fs::File::create(&csv).unwrap());
    for i in 0..users {
        let hash = SAMPLES[i % SAMPLES.len()];
        writeln!(
            j,
            r#"{{"username":"u{i:07}","email":"u{i:07}@example.com","password_hash":{}}}"#,
            serde_json::to_string(hash).unwrap()
        )
        .unwrap();
        writeln!(
            c,
            "{},u{i:07},u{i:07}@example.com,\"{}\",user,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z",
            uuid::Uuid::now_v7(),
            stored[i % stored.len()]
        )
        .unwrap();
    }
    j.flush().unwrap();
    c.flush().unwrap();
    (jsonl, csv)
}

fn migrated() -> String {
    let url = fresh_database_url();
    let out = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("migrate")
        .env("POLYHUB_DATABASE__URL", &url)
        .env("POLYHUB_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    url
}

/// `hub users import FILE`: how long, and the most memory it held.
fn import(file: &Path) -> (Duration, u64, String) {
    let url = migrated();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(["users", "import"])
        .arg(file)
        .env("POLYHUB_DATABASE__URL", &url)
        .env("POLYHUB_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    while child.try_wait().unwrap().is_none() {
        let kib = std::fs::read_to_string(&status).ok().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        });
        peak_kib = peak_kib.max(kib.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    (took, peak_kib, summary)
}

fn copy(file: &Path) -> Duration {
    let url = migrated();
    let started = Instant::now();
    let out = Command::new(support::tool("psql"))
        .arg(&url)
        .arg("-c")
        .arg(format!(
            "\\copy users (id, username, email, password_hash, role, created_at, updated_at) FROM '{}' WITH (FORMAT csv)",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and nextest probe bench binaries this way
    }
    let users: usize = std::env::var("BENCH_IMPORT_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = scratch_dir();
    println!(
        "import of {users} users in {} legacy formats, against COPY of the same rows",
        SAMPLES.len()
    );
    let small = (users / 10).max(1);
    let (small_file, _) = write_files(&dir, small);
    let (_, small_peak, _) = import(&small_file);
    let (jsonl, csv) = write_files(&dir, users);
    let (import_took, peak, summary) = import(&jsonl);
    let copy_took = copy(&csv);
    let rate = |took: Duration| users as f64 / took.as_secs_f64();
    println!(
        "hub users import: {:>9.0} users/s ({:.1} s; {summary})",
        rate(import_took),
        import_took.as_secs_f64()
    );
    println!(
        "COPY:             {:>9.0} users/s ({:.1} s)",
        rate(copy_took),
        copy_took.as_secs_f64()
    );
    println!(
        "ratio import / COPY: {:.2}",
        copy_took.as_secs_f64() / import_took.as_secs_f64()
    );
    println!(
        "importer peak RSS: {:.1} MiB at {users} users, {:.1} MiB at {small}",
        peak as f64 / 1024.0,
        small_peak as f64 / 1024.0
    );
    verify_times();
}

/// One login's verification of each legacy format at its library's
/// defaults, beside the reference library's own verification of the same
/// hash (best of three each), and the upgraded login's PBKDF2-SHA256 600k.
fn verify_times() {
    let out = Command::new(hub_testkit::venv_bin("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/legacy_reference.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let hasher = hub_core::PasswordHasher::new(hub_core::PasswordHasher::MIN_ITERATIONS).unwrap();
    let best = |f: &dyn Fn() -> bool| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                assert!(f());
                started.elapsed()
            })
            .min()
            .unwrap()
    };
    println!("\nlogin verification, polyhub against the reference library (best of 3):");
    println!("| format | reference | polyhub | polyhub / reference |");
    println!("|---|---|---|---|");
    for case in &cases {
        let ceilings = HashCeilings::default();
        let stored = import_hash(case["hash"].as_str().unwrap(), &ceilings).unwrap();
        let password = case["password"].as_str().unwrap();
        let ours = best(&|| hasher.verify(password, &stored));
        let theirs = case["seconds"].as_f64().unwrap();
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.2} |",
            case["format"].as_str().unwrap(),
            theirs * 1000.0,
            ours.as_secs_f64() * 1000.0,
            ours.as_secs_f64() / theirs
        );
    }
    let user = hub_core::Username::parse("bench").unwrap();
    let upgraded = hasher
        .hash(&hub_core::Password::parse("correct horse battery staple", &user).unwrap())
        .unwrap();
    let ours = best(&|| hasher.verify("correct horse battery staple", &upgraded));
    println!(
        "| after the upgrade: pbkdf2-sha256 600k | | {:.1} ms | |",
        ours.as_secs_f64() * 1000.0
    );
}

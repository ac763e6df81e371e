//! `hub users import` holds each imported hash to its real work: the pen
//! test's three hashes keep every parameter within its own ceiling, yet
//! PBKDF2's output blocks, scrypt's p and argon2's m times t multiply their
//! work far past the default ceiling. They are refused with the reason
//! before anything is hashed (the import only reads them), while an
//! ordinary hash in the same file goes in.

use std::process::{Command, Output};

use hub_testkit::{fresh_database_url, scratch_dir};
use serde_json::json;

fn hub(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hub"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLYHUB_DATABASE__URL", database_url)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `$pbkdf2-sha256$i=2000000,l=128$`: 5.5 s a login in the pen test.
const FOUR_BLOCK_PBKDF2: &str = "$pbkdf2-sha256$i=2000000,l=128$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8";
/// Werkzeug's `scrypt:65536:8:16`: 16 s.
const WERKZEUG_SCRYPT_P16: &str = "scrypt:65536:8:16$saltsaltsaltsalt$000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
/// `$argon2id$m=262144,t=10,p=8$`: 4.4 s.
const ARGON2_M256_T10_P8: &str = "$argon2id$v=19$m=262144,t=10,p=8$c2FsdHNhbHRzYWx0c2FsdA$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// Werkzeug's default (scrypt, 32 MiB, p=1), made by Werkzeug 3.1.
const WERKZEUG_DEFAULT: &str = "scrypt:32768:8:1$UuReOlJ3hH1MtFwT$a2ad5a675deabc2042f3e435d161f68464aae1797619ff679cc379649f72bf2716cb96ea5def520ad2f96850da1329c323639c893a97d6d72aec615fb1762cff";

#[test]
fn hashes_whose_work_is_over_the_ceiling_are_refused_at_import_with_the_reason() {
    let text: String = [
        ("ordinary", WERKZEUG_DEFAULT),
        ("fourblocks", FOUR_BLOCK_PBKDF2),
        ("scryptp16", WERKZEUG_SCRYPT_P16),
        ("argonm256t10", ARGON2_M256_T10_P8),
    ]
    .iter()
    .map(|(name, hash)| {
        format!(
            "{}\n",
            json!({"username": name, "email": format!("{name}@example.com"), "password_hash": hash})
        )
    })
    .collect();
    let file = scratch_dir().join("costly.jsonl");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));

    let dry = stdout(&hub(&database, &["users", "import", "--dry-run", file]));
    assert!(
        dry.contains("would import 1, already present 0, rejected 3"),
        "{dry}"
    );
    let out = stdout(&hub(&database, &["users", "import", file]));
    assert!(
        out.contains("imported 1, already present 0, rejected 3"),
        "{out}"
    );
    for (line, why) in [
        (
            2,
            "pbkdf2-sha256, 2000000 iterations x 4 output blocks of 32 bytes is the work of 8000000 PBKDF2-SHA256 iterations (13.3 standard logins), ceiling 2000000",
        ),
        (
            3,
            "scrypt N=65536, r=8, p=16 is the work of 25165824 PBKDF2-SHA256 iterations (41.9 standard logins), ceiling 2000000",
        ),
        (
            4,
            "argon2 m=262144 KiB, t=10 (p=8) is the work of 7864320 PBKDF2-SHA256 iterations (13.1 standard logins), ceiling 2000000",
        ),
    ] {
        assert!(
            out.contains(&format!(
                "line {line}: rejected: password hash parameters over the ceiling: {why}"
            )),
            "line {line}: {out}"
        );
    }
}

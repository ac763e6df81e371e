//! `hub users import` as an operator runs it: hashes made by the reference
//! libraries of Werkzeug, Django, passlib, bcrypt and argon2-cffi, imported
//! into the real PostgreSQL, then each user logs in over REST with the old
//! password and leaves with polyhub's own PBKDF2-SHA256 600k hash.

use std::path::Path;
use std::process::{Command, Output};

use hub_runtime::Secret;
use hub_testkit::{ROOT, Service, TestSetup, fresh_database_url, scratch_dir, venv_bin};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

fn hub(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hub"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLYHUB_DATABASE__URL", database_url)
        .env("POLYHUB_IMPORT__MAX_BCRYPT_COST", "4")
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

async fn user_count(database_url: &str) -> i64 {
    let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

/// The generated cases (format, username, password), and the import file
/// written from them.
fn generated(dir: &Path) -> (Vec<(String, String, String)>, std::path::PathBuf) {
    let raw = dir.join("generated.jsonl");
    let made = Command::new(venv_bin("python"))
        .arg(Path::new(ROOT).join("hub/tests/clients/legacy_hashes.py"))
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut cases = Vec::new();
    let mut import = String::new();
    for line in std::fs::read_to_string(&raw).unwrap().lines() {
        let mut record: Value = serde_json::from_str(line).unwrap();
        let object = record.as_object_mut().unwrap();
        let format = object
            .remove("format")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        let password = object
            .remove("password")
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        cases.push((
            format,
            object["username"].as_str().unwrap().to_owned(),
            password,
        ));
        import.push_str(&record.to_string());
        import.push('\n');
    }
    let file = dir.join("users.jsonl");
    std::fs::write(&file, import).unwrap();
    (cases, file)
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_users_log_in_with_their_old_passwords_and_leave_with_ours() {
    let dir = scratch_dir();
    let (cases, file) = generated(&dir);
    let file = file.to_str().unwrap();
    let legacy: Vec<_> = cases
        .iter()
        .filter(|(f, _, _)| f != "over-ceiling")
        .collect();
    let over_line = cases.len();
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));

    let dry = stdout(&hub(&database, &["users", "import", "--dry-run", file]));
    assert!(
        dry.contains(&format!(
            "would import {}, already present 0, rejected 1",
            legacy.len()
        )),
        "{dry}"
    );
    assert_eq!(user_count(&database).await, 0, "a dry run keeps nothing");

    let first = stdout(&hub(&database, &["users", "import", file]));
    assert!(
        first.contains(&format!(
            "imported {}, already present 0, rejected 1",
            legacy.len()
        )),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "line {over_line}: rejected: password hash parameters over the ceiling: bcrypt cost 5, ceiling 4"
        )),
        "{first}"
    );
    let again = stdout(&hub(&database, &["users", "import", file]));
    assert!(
        again.contains(&format!(
            "imported 0, already present {}, rejected 1",
            legacy.len()
        )),
        "a rerun imports nothing: {again}"
    );

    let mut setup = TestSetup::new(&[Service::RestAuth]).production_hashing();
    setup.config.database.url = Secret::new(database.clone());
    setup.config.services.rest_auth.login_limit.per_ip_burst = 1_000;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let client = reqwest::Client::new();
    let login = |username: String, password: String| {
        let (client, url) = (client.clone(), format!("{base}/login"));
        async move {
            let resp = client
                .post(url)
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let mut db = sqlx::PgConnection::connect(&database).await.unwrap();
    for (format, username, password) in &legacy {
        let (status, body) = login(username.clone(), format!("{password}!")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{format}: a wrong password: {body}"
        );
        let before: String =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE username = $1")
                .bind(username)
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert!(
            !before.starts_with("$pbkdf2-sha256$i=600000"),
            "{format}: {before}"
        );
        let (status, body) = login(username.clone(), password.clone()).await;
        assert_eq!(status, StatusCode::OK, "{format}: the old password: {body}");
        let profile = client
            .get(format!("{base}/profile"))
            .bearer_auth(body["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(profile.status(), StatusCode::OK, "{format}");
        let after: String =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE username = $1")
                .bind(username)
                .fetch_one(&mut db)
                .await
                .unwrap();
        assert!(
            after.starts_with("$pbkdf2-sha256$i=600000,l=32$"),
            "{format}: upgraded at login: {after}"
        );
    }
    // The upgraded hash is the password from now on.
    let (format, username, password) = legacy[0];
    let (status, _) = login(username.clone(), password.clone()).await;
    assert_eq!(status, StatusCode::OK, "{format}, after the upgrade");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_file_with_bad_lines_reports_them_by_number_and_imports_the_rest() {
    // Werkzeug's pbkdf2:sha256 of "password" with salt "salt", 1 iteration.
    let hash =
        "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
    let csv = format!(
        "username,email,password_hash,role,created_at\n\
         good1,good1@example.com,{hash},,\n\
         bad name,bad@example.com,{hash},,\n\
         good2,not-an-email,{hash},,\n\
         good3,good3@example.com,md5:0123abcd,,\n\
         GOOD1,other@example.com,{hash},,\n\
         good4,good4@example.com,{hash},admin,2020-01-02T03:04:05Z\n\
         good5,good5@example.com,{hash},king,\n"
    );
    let file = scratch_dir().join("users.csv");
    std::fs::write(&file, csv).unwrap();
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));
    let out = stdout(&hub(
        &database,
        &["users", "import", file.to_str().unwrap()],
    ));
    assert!(
        out.contains("imported 2, already present 0, rejected 5"),
        "{out}"
    );
    for (line, why) in [
        (3, "bad username"),
        (4, "bad email"),
        (5, "unknown password hash format"),
        (6, "duplicate username within the file"),
        (8, "bad role \"king\""),
    ] {
        assert!(
            out.contains(&format!("line {line}: rejected: {why}")),
            "line {line}: {out}"
        );
    }
    let mut db = sqlx::PgConnection::connect(&database).await.unwrap();
    let (role, year): (String, f64) = sqlx::query_as(
        "SELECT role, extract(year FROM created_at)::float8 FROM users WHERE username = 'good4'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((role.as_str(), year), ("admin", 2020.0));
}

/// A Keycloak realm export, read one user at a time: its PBKDF2 credentials
/// (SHA-1, SHA-256, SHA-512) log in; a user without an email and one with a
/// credential polyhub cannot verify are reported by their place in `users`.
#[tokio::test(flavor = "multi_thread")]
async fn a_keycloak_realm_export_imports_and_its_users_log_in() {
    let dir = scratch_dir();
    let realm = dir.join("realm-export.json");
    let made = Command::new(venv_bin("python"))
        .arg(Path::new(ROOT).join("hub/tests/clients/legacy_hashes.py"))
        .arg(dir.join("unused.jsonl"))
        .arg(&realm)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));
    let out = stdout(&hub(
        &database,
        &["users", "import", realm.to_str().unwrap()],
    ));
    assert!(
        out.contains("imported 3, already present 0, rejected 2"),
        "{out}"
    );
    assert!(out.contains("user 4: rejected: bad email"), "{out}");
    assert!(
        out.contains("user 5: rejected: unknown password hash format: Keycloak \"argon2\""),
        "{out}"
    );
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.database.url = Secret::new(database.clone());
    let hub = setup.start().await;
    let client = reqwest::Client::new();
    for name in ["kc-sha256", "kc-sha512", "kc-sha1"] {
        let resp = client
            .post(format!("{}/login", hub.url(Service::RestAuth)))
            .json(&json!({"username": name, "password": format!("correct horse {name}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
    }
    let mut db = sqlx::PgConnection::connect(&database).await.unwrap();
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE username = 'kc-sha512'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(role, "admin", "Keycloak's realm role comes along");
    hub.stop().await;
}

/// Bare digests come in only with `--allow-insecure` and a date after which
/// they stop logging in; before it a login upgrades them, after it the
/// login is refused like a wrong password; /metrics counts those left.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_digests_need_a_flag_and_a_date_and_are_counted() {
    // md5("password"), and sha256("pepper" + "password").
    let lines = [
        json!({"username": "oldmd5", "email": "oldmd5@example.com",
               "password_hash": "5f4dcc3b5aa765d61d8327deb882cf99"}),
        json!({"username": "oldsha", "email": "oldsha@example.com",
               "password_hash": "sha256$pepper$PEPPER_HASH"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = scratch_dir().join("insecure.jsonl");
    std::fs::write(&file, text.replace("PEPPER_HASH", PEPPER_HASH)).unwrap();
    let file = file.to_str().unwrap();
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));

    let refused = stdout(&hub(&database, &["users", "import", file]));
    assert!(
        refused.contains("imported 0, already present 0, rejected 2"),
        "{refused}"
    );
    assert!(
        refused.contains("import it only with --allow-insecure"),
        "{refused}"
    );
    let no_date = hub(&database, &["users", "import", "--allow-insecure", file]);
    assert!(!no_date.status.success());
    assert!(
        String::from_utf8_lossy(&no_date.stderr).contains("import.insecure_until"),
        "{}",
        String::from_utf8_lossy(&no_date.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hub"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POLYHUB_DATABASE__URL", &database)
        .env("POLYHUB_IMPORT__INSECURE_UNTIL", "2099-01-01T00:00:00Z")
        .args(["users", "import", "--allow-insecure", file])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("imported 2, already present 0, rejected 0"));

    let serve = |until: &str| {
        let mut setup = TestSetup::new(&[Service::RestAuth]);
        setup.config.database.url = Secret::new(database.clone());
        setup.config.import.insecure_until = Some(
            time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
                .unwrap(),
        );
        setup.start()
    };
    let login = |base: String, username: &'static str| async move {
        reqwest::Client::new()
            .post(format!("{base}/login"))
            .json(&json!({"username": username, "password": "password"}))
            .send()
            .await
            .unwrap()
            .status()
    };
    let metric = |base: String| async move {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("polyhub_users_insecure_hashes{} "))
            .map(str::to_owned)
    };
    // Past the date: refused, as a wrong password is.
    let late = serve("2020-01-01T00:00:00Z").await;
    let base = late.url(Service::RestAuth);
    assert_eq!(
        login(base.clone(), "oldmd5").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(metric(base).await.as_deref(), Some("2"));
    late.stop().await;
    // Before it: the login upgrades the hash, and one is left.
    let early = serve("2099-01-01T00:00:00Z").await;
    let base = early.url(Service::RestAuth);
    assert_eq!(login(base.clone(), "oldmd5").await, StatusCode::OK);
    assert_eq!(metric(base.clone()).await.as_deref(), Some("1"));
    assert_eq!(login(base, "oldsha").await, StatusCode::OK);
    early.stop().await;
}

const PEPPER_HASH: &str = "4b65d30b048d9eab292a2ea50fd60423d3d5d581a6ed85169b8a0c4f7dd10c00";

/// Characters that rewrite or reorder what a terminal shows: C0 (newline
/// aside), DEL, C1, and the bidi controls.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(
                    c,
                    '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
        .collect()
}

/// An import file is someone else's text: what it says is shown to the
/// operator escaped, never played on their terminal (an ANSI sequence that
/// clears the screen or retitles the window, a bidi override that reorders
/// a line).
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_an_import_file_are_printed_escaped() {
    let hash =
        "pbkdf2:sha256:1$salt$120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
    let attack = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31m\u{202e}\u{85}\u{7f}";
    let lines = [
        json!({"username": "good1", "email": "good1@example.com", "password_hash": hash}),
        // An unknown field: serde names it in its refusal.
        {
            let mut line =
                json!({"username": "evil1", "email": "evil1@example.com", "password_hash": hash});
            line[attack] = json!(1);
            line
        },
        json!({"username": "evil2", "email": "evil2@example.com", "password_hash": hash, "role": attack}),
        json!({"username": "evil3", "email": "evil3@example.com", "password_hash": format!("{attack}$x")}),
        json!({"username": attack, "email": "evil4@example.com", "password_hash": hash}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let dir = scratch_dir();
    let file = dir.join("users.jsonl");
    std::fs::write(&file, text).unwrap();
    let database = fresh_database_url();
    stdout(&hub(&database, &["migrate"]));

    let out = hub(&database, &["users", "import", file.to_str().unwrap()]);
    let (printed, logged) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{printed}\n{logged}");
    assert!(
        printed.contains("imported 1, already present 0, rejected 4"),
        "{printed}"
    );
    assert!(printed.contains("line 2: rejected: "), "{printed}");
    assert!(printed.contains(r"\u{1b}]0;owned\u{7}"), "{printed}");
    assert_eq!(
        terminal_controls(&printed),
        Vec::<char>::new(),
        "stdout: {printed:?}"
    );
    assert_eq!(
        terminal_controls(&logged),
        Vec::<char>::new(),
        "stderr: {logged:?}"
    );

    // A file of that name, which is not there: the error names it, escaped.
    let named = dir.join(format!("users{attack}.jsonl"));
    let out = hub(&database, &["users", "import", named.to_str().unwrap()]);
    assert!(!out.status.success());
    let logged = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(logged.contains(r"users\u{1b}]0;owned"), "{logged}");
    assert_eq!(
        terminal_controls(&logged),
        Vec::<char>::new(),
        "stderr: {logged:?}"
    );
    assert_eq!(
        terminal_controls(&String::from_utf8_lossy(&out.stdout)),
        Vec::<char>::new()
    );
}

//! The real `hub` binary as an operator runs it, against the real PostgreSQL:
//! migrate, create users, grant admin, serve, answer probes, stop on SIGTERM.

use std::io::{BufRead, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hub_testkit::{Service, free_port, fresh_database_url as fresh_database};

use crate::serving::{Serving, hub};
use sqlx::{Connection, PgConnection};

/// A signing key made the way an operator makes one.
fn generated_key() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("polyhub-cli-{}", uuid::Uuid::now_v7().simple()));
    let key = dir.join("keys/signing.pem");
    let out = run(
        hub_with(
            "postgres://unused",
            &["keys", "generate", "--out", key.to_str().unwrap()],
        ),
        "",
    );
    assert!(out.status.success(), "keys generate: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("kid "),
        "{}",
        text(&out.stdout)
    );
    assert!(dir.join("keys/signing.pub.pem").exists());
    key
}

fn hub_with(database_url: &str, args: &[&str]) -> Command {
    let mut cmd = hub(database_url);
    cmd.args(args);
    cmd
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hub serve` of every service: rest-auth on `rest_port`, the others on
/// free ports, against the test MongoDB-wire and S3 servers, with a new key.
fn serve_all(database_url: &str, rest_port: u16) -> Command {
    let mut serve = hub(database_url);
    serve.env("POLYHUB_SERVICES__REST_AUTH__PORT", rest_port.to_string());
    for service in Service::ALL.into_iter().filter(|s| *s != Service::RestAuth) {
        serve.env(
            format!(
                "POLYHUB_SERVICES__{}__PORT",
                service.config_key().to_uppercase()
            ),
            free_port().to_string(),
        );
    }
    serve
        .env("POLYHUB_MONGO__URL", std::env::var("MONGODB_URL").unwrap())
        .env(
            "POLYHUB_IMAGES__S3__ENDPOINT",
            std::env::var("S3_ENDPOINT").unwrap(),
        )
        .env("POLYHUB_TOKENS__SIGNING_KEY_PATH", generated_key())
        .arg("serve");
    serve
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_workflow_end_to_end() {
    let db = fresh_database();

    let out = run(hub_with(&db, &["migrate"]), "");
    assert!(out.status.success(), "migrate: {}", text(&out.stderr));
    let again = run(hub_with(&db, &["migrate"]), "");
    assert!(
        again.status.success(),
        "migrate is idempotent: {}",
        text(&again.stderr)
    );

    let create = hub_with(
        &db,
        &[
            "users",
            "create",
            "--username",
            "Olivia",
            "--email",
            "olivia@example.com",
        ],
    );
    let out = run(create, "correct horse battery\n");
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("created olivia"),
        "{}",
        text(&out.stdout)
    );

    let duplicate = hub_with(
        &db,
        &[
            "users",
            "create",
            "--username",
            "OLIVIA",
            "--email",
            "o2@example.com",
        ],
    );
    let out = run(duplicate, "correct horse battery\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("USERNAME_TAKEN"),
        "{}",
        text(&out.stderr)
    );

    let weak = hub_with(
        &db,
        &[
            "users",
            "create",
            "--username",
            "pat",
            "--email",
            "pat@example.com",
        ],
    );
    let out = run(weak, "short\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("WEAK_PASSWORD"),
        "{}",
        text(&out.stderr)
    );

    let out = run(hub_with(&db, &["users", "grant-admin", "olivia"]), "");
    assert!(out.status.success(), "grant-admin: {}", text(&out.stderr));
    let out = run(hub_with(&db, &["users", "grant-admin", "nobody"]), "");
    assert!(
        text(&out.stderr).contains("USER_NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );

    let mut conn = PgConnection::connect(&db).await.unwrap();
    let (role, hash): (String, String) =
        sqlx::query_as("SELECT role, password_hash FROM users WHERE username = 'olivia'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(role, "admin");
    assert!(hash.starts_with("$pbkdf2-sha256$i=600000,l=32$"), "{hash}");

    // Nothing quarantined in a new outbox: retry says so and succeeds.
    let out = run(hub_with(&db, &["outbox", "retry"]), "");
    assert!(out.status.success(), "outbox retry: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 quarantined events are pending again"),
        "{}",
        text(&out.stdout)
    );

    // The event log: olivia's creation and her new role, nothing for the
    // refused ones, as JSON lines an operator can page through. The log
    // shows what every running transaction of the server is past, so other
    // tests' transactions may hold it back for a moment.
    let tail = |args: &[&str]| {
        let mut all = vec!["events", "tail"];
        all.extend_from_slice(args);
        run(hub_with(&db, &all), "")
    };
    let lines = |out: &Output| -> Vec<serde_json::Value> {
        text(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let out = tail(&["--limit", "10"]);
        assert!(out.status.success(), "events tail: {}", text(&out.stderr));
        let events = lines(&out);
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["user.created", "user.role_changed"], "{events:?}");
    assert_eq!(events[0]["data"]["username"], "olivia");
    assert_eq!(events[1]["data"]["role"], "admin");
    assert_eq!(events[0]["user_id"], events[1]["user_id"]);
    assert!(events[0]["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert!(events[0]["data"].get("password_hash").is_none());
    let first = events[0]["id"].as_i64().unwrap().to_string();
    let after = lines(&tail(&["--after", &first]));
    assert_eq!(after, events[1..], "after the first, the rest");
    assert!(
        lines(&tail(&["--limit", "1"])) == events[1..],
        "the latest one"
    );
    let out = tail(&["--after", "999999999"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no event 999999999"),
        "{}",
        text(&out.stderr)
    );
    assert!(!tail(&["--limit", "0"]).status.success(), "a limit of 0");
    // No relay ran: the activity log waits for both.
    let out = run(hub_with(&db, &["events", "subscribers"]), "");
    assert!(
        out.status.success(),
        "events subscribers: {}",
        text(&out.stderr)
    );
    let subscribers = lines(&out);
    assert_eq!(subscribers.len(), 1, "{subscribers:?}");
    assert_eq!(subscribers[0]["name"], "activity");
    assert_eq!(subscribers[0]["types"], serde_json::json!(["*"]));
    assert_eq!(subscribers[0]["pending"], 2);
    assert_eq!(subscribers[0]["quarantined"], 0);
    assert_eq!(subscribers[0]["oldest_pending"], events[0]["occurred_at"]);

    // Serve, probe, stop with SIGTERM.
    let port = free_port();
    let serve = serve_all(&db, port);
    let (mut child, first_line) = Serving::start(serve);
    assert!(
        first_line.contains("rest-auth") && first_line.contains(&port.to_string()),
        "serve prints each service's URL: {first_line}"
    );
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/health", "/ready", "/test-db"] {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body.get("status").is_some() || body.get("database").is_some(),
            "{body}"
        );
    }

    let pid = child.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hub did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful stop exits 0: {status:?}");
}

#[test]
fn a_misspelt_setting_stops_the_start() {
    let out = run(
        {
            let mut cmd = hub("postgres://postgres@127.0.0.1:5432/postgres");
            cmd.env("POLYHUB_DATABASE__MAX_CONECTIONS", "4")
                .arg("migrate");
            cmd
        },
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_conections"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_starts_without_the_database_and_reports_not_ready() {
    let port = free_port();
    let serve = serve_all("postgres://postgres@127.0.0.1:1/polyhub", port);
    let (_serving, _) = Serving::start(serve);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let test_db = reqwest::get(format!("{base}/test-db")).await.unwrap();
    assert_eq!(test_db.status(), 503);
    let body: serde_json::Value = test_db.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert!(!body.to_string().contains("127.0.0.1"), "{body}");
}

#[test]
fn serve_without_a_signing_key_says_how_to_make_one() {
    let out = run(
        hub_with("postgres://postgres@127.0.0.1:1/polyhub", &["serve"]),
        "",
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("signing_key_path") && err.contains("hub keys generate"),
        "{err}"
    );
}

#[test]
fn keys_generate_refuses_to_overwrite_a_key() {
    let key = generated_key();
    let before = std::fs::read_to_string(&key).unwrap();
    let out = run(
        hub_with(
            "postgres://unused",
            &["keys", "generate", "--out", key.to_str().unwrap()],
        ),
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), before);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is readable by its owner only");
    let out = run(
        hub_with(
            "postgres://unused",
            &[
                "keys",
                "generate",
                "--force",
                "--out",
                key.to_str().unwrap(),
            ],
        ),
        "",
    );
    assert!(out.status.success());
    assert_ne!(std::fs::read_to_string(&key).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_only_runs_the_named_services_and_check_probes_them() {
    let db = fresh_database();
    let out = run(hub_with(&db, &["migrate"]), "");
    assert!(out.status.success(), "migrate: {}", text(&out.stderr));
    let (rest, lookup) = (free_port(), free_port());
    let mut serve = hub(&db);
    serve
        .env("POLYHUB_SERVICES__REST_AUTH__PORT", rest.to_string())
        .env("POLYHUB_SERVICES__SOAP_LOOKUP__PORT", lookup.to_string())
        .env("POLYHUB_TOKENS__SIGNING_KEY_PATH", generated_key())
        .args(["serve", "--only", "rest-auth,soap-lookup"]);
    let (mut serving, first_line) = Serving::start(serve);
    let mut second_line = String::new();
    serving.stdout.read_line(&mut second_line).unwrap();
    assert!(first_line.starts_with("rest-auth"), "{first_line}");
    assert!(second_line.starts_with("soap-lookup"), "{second_line}");
    for port in [rest, lookup] {
        let url = format!("http://127.0.0.1:{port}/health");
        let out = run(hub_with(&db, &["check", &url]), "");
        assert!(out.status.success(), "check {url}: {}", text(&out.stderr));
    }
    // The WSDL names soap-register's configured address, though it runs elsewhere.
    let wsdl = reqwest::get(format!("http://127.0.0.1:{lookup}/user/soap?wsdl"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(wsdl.contains("http://127.0.0.1:5002/register"), "{wsdl}");

    let closed = format!("http://127.0.0.1:{}/health", free_port());
    let out = run(hub_with(&db, &["check", &closed]), "");
    assert!(!out.status.success());
    let out = run(
        hub_with(&db, &["check", &format!("http://127.0.0.1:{rest}/nope")]),
        "",
    );
    assert!(!out.status.success(), "a 404 is not healthy");

    let out = run(hub_with(&db, &["serve", "--only", "rest-auth,ftp"]), "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("\"ftp\"") && err.contains("grpc-images"),
        "{err}"
    );
}

/// `hub clients`: an operator registers an OAuth client, sees it listed
/// without its secret, rotates the secret and deletes it; bad requests are
/// refused with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn clients_are_registered_listed_rotated_and_deleted() {
    let db = fresh_database();
    let out = run(hub_with(&db, &["migrate"]), "");
    assert!(out.status.success(), "migrate: {}", text(&out.stderr));

    let create = |args: &[&str]| {
        let mut all = vec!["clients", "create"];
        all.extend_from_slice(args);
        run(hub_with(&db, &all), "")
    };
    let out = create(&[
        "--name",
        "reports",
        "--grant",
        "client_credentials",
        "--scope",
        "images:read events:read",
    ]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43, "{created}");
    assert_eq!(created["scope"], "events:read images:read");
    assert_eq!(
        created["grant_types"],
        serde_json::json!(["client_credentials"])
    );
    assert_eq!(created["public"], false);

    let out = create(&[
        "--name",
        "spa",
        "--public",
        "--redirect-uri",
        "http://127.0.0.1:8080/cb",
    ]);
    assert!(out.status.success(), "create public: {}", text(&out.stderr));
    let public: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(public.get("client_secret").is_none(), "{public}");
    assert_eq!(public["token_endpoint_auth_method"], "none");

    for (args, why) in [
        (
            &["--name", "web", "--redirect-uri", "http://app.example/cb"][..],
            "http is only for loopback hosts",
        ),
        (&["--name", "web"][..], "needs at least one redirect URI"),
        (
            &[
                "--name",
                "m",
                "--grant",
                "client_credentials",
                "--scope",
                "admin",
            ][..],
            "unknown scope",
        ),
        (
            &["--name", "m", "--public", "--grant", "client_credentials"][..],
            "cannot use client_credentials",
        ),
        (&["--name", "m", "--grant", "password"][..], "unknown grant"),
    ] {
        let out = create(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let out = run(hub_with(&db, &["clients", "list"]), "");
    assert!(out.status.success(), "list: {}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains(&id) && !listed.contains(&secret),
        "{listed}"
    );

    let out = run(hub_with(&db, &["clients", "rotate-secret", &id]), "");
    assert!(out.status.success(), "rotate: {}", text(&out.stderr));
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(rotated["client_secret"].as_str().unwrap(), secret);
    let out = run(
        hub_with(
            &db,
            &[
                "clients",
                "rotate-secret",
                public["client_id"].as_str().unwrap(),
            ],
        ),
        "",
    );
    assert!(
        text(&out.stderr).contains("has no secret"),
        "{}",
        text(&out.stderr)
    );

    let out = run(hub_with(&db, &["clients", "delete", &id]), "");
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let out = run(hub_with(&db, &["clients", "delete", &id]), "");
    assert!(
        text(&out.stderr).contains("NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
}

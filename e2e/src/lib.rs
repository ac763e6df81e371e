//! polyhub end to end. The tests in `tests/` start `hub serve` as a real
//! process and drive it only from outside, through the clients each
//! protocol's users would use: zeep for SOAP, plain HTTP for REST and the
//! legacy GET, grpcio for images. This kit links none of the hub's crates.
//!
//! The `hub` binary is the one `cargo nextest run --workspace` builds (the
//! hub crate's tests need it); `cargo build -p hub` first when running only
//! this crate's tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `hub` binary of this build (the workspace's tests build it).
pub fn hub_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let bin = target.join("debug/hub");
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo build -p hub) or run the workspace's tests",
        bin.display()
    );
    bin
}

pub fn python() -> PathBuf {
    Path::new(ROOT).join(".venv/bin/python")
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/test"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hub serve`, killed when dropped.
#[derive(Debug)]
pub struct Served {
    child: Child,
    urls: std::collections::HashMap<String, String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve() -> Served {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let admin = env("DATABASE_URL");
    let (base, _) = admin.rsplit_once('/').unwrap();
    let scratch = std::env::temp_dir().join(format!("polyhub-e2e-{unique}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let key = scratch.join("signing.pem");
    let vars: Vec<(String, String)> = vec![
        (
            "POLYHUB_DATABASE__URL".into(),
            format!("{base}/e2e_{unique}"),
        ),
        ("POLYHUB_MONGO__URL".into(), env("MONGODB_URL")),
        ("POLYHUB_MONGO__DATABASE".into(), format!("e2e_{unique}")),
        ("POLYHUB_IMAGES__S3__ENDPOINT".into(), env("S3_ENDPOINT")),
        (
            "POLYHUB_IMAGES__S3__ACCESS_KEY".into(),
            env("S3_ACCESS_KEY"),
        ),
        (
            "POLYHUB_IMAGES__S3__SECRET_KEY".into(),
            env("S3_SECRET_KEY"),
        ),
        ("POLYHUB_IMAGES__S3__BUCKET".into(), format!("e2e-{unique}")),
        (
            "POLYHUB_TOKENS__SIGNING_KEY_PATH".into(),
            key.display().to_string(),
        ),
        // Production hashing (600,000 iterations): this is the real binary.
        (
            "POLYHUB_SERVICES__REST_AUTH__PORT".into(),
            free_port().to_string(),
        ),
        (
            "POLYHUB_SERVICES__SOAP_REGISTER__PORT".into(),
            free_port().to_string(),
        ),
        (
            "POLYHUB_SERVICES__SOAP_LOOKUP__PORT".into(),
            free_port().to_string(),
        ),
        (
            "POLYHUB_SERVICES__SESSIONS__PORT".into(),
            free_port().to_string(),
        ),
        (
            "POLYHUB_SERVICES__SESSION_TRACKER__PORT".into(),
            free_port().to_string(),
        ),
        (
            "POLYHUB_SERVICES__GRPC_IMAGES__PORT".into(),
            free_port().to_string(),
        ),
    ];
    let hub = |args: &[&str]| {
        let mut cmd = Command::new(hub_bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(args);
        cmd
    };
    let key_arg = key.display().to_string();
    assert!(
        hub(&["keys", "generate", "--out", &key_arg])
            .output()
            .unwrap()
            .status
            .success()
    );
    let migrated = hub(&["migrate"]).output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let mut child = hub(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut urls = std::collections::HashMap::new();
    while urls.len() < 6 {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "hub serve stopped early"
        );
        let mut parts = line.split_whitespace();
        if let (Some(service), Some(url)) = (parts.next(), parts.next()) {
            urls.insert(service.to_owned(), url.to_owned());
        }
    }
    // Keep reading stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in stdout.lines() {});
    Served { child, urls }
}

impl Served {
    pub fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }
}

pub async fn python_json(script: &Path, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! polyhub end to end. The tests in `tests/` start `hub serve` as a real
//! process and drive it only from outside, through the clients each
//! protocol's users would use: zeep for SOAP, plain HTTP for REST and the
//! legacy GET, grpcio for images. It shares the test kit's small helpers
//! (free ports, polling, fresh databases) and calls none of the hub's code.
//!
//! The binaries are the ones `cargo nextest run --workspace` builds; `cargo
//! build --workspace --bins` first when running only this crate's tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hub_testkit::fresh_database_url;
pub use hub_testkit::{eventually, free_port};
use serde_json::Value;

pub use hub_testkit::{ROOT, env};

/// A binary of this build (the workspace's tests build them all): `hub`, or
/// one service's own (`rest-auth`, `sessions`, ...).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"));
    let bin = target.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo build -p {name}) or run the workspace's tests",
        bin.display()
    );
    bin
}

pub fn python() -> PathBuf {
    Path::new(ROOT).join(".venv/bin/python")
}

/// One deployment's configuration: its own database, MongoDB database,
/// bucket, signing key and a free port for each service, as `POLYHUB_*`
/// variables. Every process started from it reads the same, as the
/// containers of one deployment would.
#[derive(Debug)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl Environment {
    /// A fresh configuration, with its key made and its database migrated by
    /// the `hub` binary.
    pub fn new() -> Self {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let scratch = std::env::temp_dir().join(format!("polyhub-e2e-{unique}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let key = scratch.join("signing.pem");
        let mut vars: Vec<(String, String)> = vec![
            ("POLYHUB_DATABASE__URL".into(), fresh_database_url()),
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
        ];
        // Production hashing (600,000 iterations): these are the real binaries.
        for section in [
            "REST_AUTH",
            "SOAP_REGISTER",
            "SOAP_LOOKUP",
            "SESSIONS",
            "SESSION_TRACKER",
            "GRPC_IMAGES",
        ] {
            vars.push((
                format!("POLYHUB_SERVICES__{section}__PORT"),
                free_port().to_string(),
            ));
        }
        let environment = Self { vars };
        let key_arg = key.display().to_string();
        let made = environment
            .command("hub", &["keys", "generate", "--out", &key_arg])
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let migrated = environment.command("hub", &["migrate"]).output().unwrap();
        assert!(
            migrated.status.success(),
            "{}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        environment
    }

    /// `binary args`, with this configuration and nothing else inherited.
    pub fn command(&self, binary: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(binary));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .args(args);
        cmd
    }

    /// The port this configuration gives `service` (`rest-auth`, ...).
    pub fn port(&self, service: &str) -> u16 {
        let name = format!(
            "POLYHUB_SERVICES__{}__PORT",
            service.replace('-', "_").to_uppercase()
        );
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no port for {service}"))
    }

    /// Starts `binary args` and waits until it has printed the address of
    /// each of the `listeners` it is expected to serve.
    pub fn start(&self, binary: &str, args: &[&str], listeners: usize) -> Served {
        let mut child = self
            .command(binary, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut urls = std::collections::HashMap::new();
        while urls.len() < listeners {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "{binary} stopped early"
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
}

impl Default for Environment {
    fn default() -> Self {
        Self::new()
    }
}

/// A process serving polyhub, killed when dropped.
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

/// `hub serve`: every service in one process, in a fresh environment.
pub fn serve() -> Served {
    Environment::new().start("hub", &["serve"], 6)
}

impl Served {
    pub fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }

    /// The services this process listens for.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.urls.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Logs in over REST; the token.
pub async fn log_in(http: &reqwest::Client, rest_auth: &str, name: &str, password: &str) -> String {
    let login: Value = http
        .post(format!("{rest_auth}/login"))
        .json(&serde_json::json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {login}"))
        .to_owned()
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

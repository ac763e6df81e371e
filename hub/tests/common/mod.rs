//! A test kit: boots a real Hub, in this process, on free ports, against a
//! fresh PostgreSQL database, with freshly generated token keys.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use hub::{Hub, Listener};
use hub_core::{KeySet, PasswordHasher};
use hub_runtime::Config;
use hub_runtime::shutdown::ShutdownTrigger;
use hub_runtime::{Secret, Shutdown};

/// A program of the project's Python tools (third-party test clients), which
/// scripts/test installs into .venv/ from scripts/requirements-test.txt.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin")).join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs the Python test clients into .venv",
        path.display()
    );
    path
}

/// A key pair written to files, as an operator would have it.
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub private_pem: String,
    pub kid: String,
}

pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polyhub-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn key_files() -> KeyFiles {
    let key = KeySet::generate().unwrap();
    let dir = scratch_dir();
    let private = dir.join("signing.pem");
    let public = dir.join("signing.pub.pem");
    std::fs::write(&private, &key.private_pem).unwrap();
    std::fs::write(&public, &key.public_pem).unwrap();
    KeyFiles {
        private,
        public,
        private_pem: key.private_pem,
        kid: key.kid,
    }
}

/// A database URL of its own on the server `DATABASE_URL` names.
pub fn fresh_database_url() -> String {
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test PostgreSQL");
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/hub_test_{}", uuid::Uuid::now_v7().simple())
}

/// The MongoDB-wire server scripts/test starts (`MONGODB_URL`).
pub fn mongodb_url() -> String {
    std::env::var("MONGODB_URL").expect("MONGODB_URL names the test MongoDB-wire server")
}

/// The S3 server scripts/test starts (`S3_ENDPOINT` and its keys), with a
/// bucket of the test's own.
pub fn s3_config() -> hub_runtime::config::S3Config {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} names the test S3 server"))
    };
    hub_runtime::config::S3Config {
        endpoint: Some(var("S3_ENDPOINT")),
        region: "us-east-1".into(),
        bucket: format!("polyhub-test-{}", uuid::Uuid::now_v7().simple()),
        access_key: var("S3_ACCESS_KEY"),
        secret_key: Secret::new(var("S3_SECRET_KEY")),
        timeout_ms: 2_000,
    }
}

/// A config for tests: every service on a free port, a fresh database, a new key.
pub fn test_config() -> (Config, KeyFiles) {
    let keys = key_files();
    let mut config = Config::default();
    config.database.url = Secret::new(fresh_database_url());
    config.database.acquire_timeout_ms = 1_000;
    config.services.rest_auth.port = 0;
    config.services.soap_register.port = 0;
    config.services.soap_lookup.port = 0;
    config.services.sessions.port = 0;
    config.services.session_tracker.port = 0;
    config.mongo.url = Secret::new(mongodb_url());
    // Each test hub its own MongoDB database, as it has its own PostgreSQL one.
    config.mongo.database = format!("hub_test_{}", uuid::Uuid::now_v7().simple());
    config.mongo.server_selection_timeout_ms = 1_000;
    config.relay.idle_poll_ms = 20;
    config.services.grpc_images.port = 0;
    config.images.s3 = s3_config();
    config.tokens.signing_key_path = Some(keys.private.clone());
    (config, keys)
}

pub struct TestHub {
    pub hub: Hub,
    pub listeners: Vec<Listener>,
    pub keys: KeyFiles,
    trigger: ShutdownTrigger,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestHub {
    pub async fn start() -> Self {
        let (config, keys) = test_config();
        Self::start_with(config, keys, true).await
    }

    /// Starts a hub on `config`; `migrate` false leaves the database alone
    /// (for a database that is meant to be unreachable). It hashes at 1,000
    /// iterations, so tests about races and limits do not depend on how much
    /// CPU the machine can spare for PBKDF2; the real binary's tests and the
    /// benchmarks use the production parameters.
    pub async fn start_with(config: Config, keys: KeyFiles, migrate: bool) -> Self {
        Self::start_hashing(
            config,
            keys,
            migrate,
            Some(PasswordHasher::insecure_for_tests(1_000)),
        )
        .await
    }

    /// As [`Self::start_with`]; `None` keeps the configured (production) hashing.
    pub async fn start_hashing(
        config: Config,
        keys: KeyFiles,
        migrate: bool,
        hasher: Option<PasswordHasher>,
    ) -> Self {
        let mut hub = Hub::build(config).unwrap();
        if let Some(hasher) = hasher {
            hub = hub.with_password_hasher(hasher);
        }
        if migrate {
            hub.migrate().await.unwrap();
        }
        let (shutdown, trigger) = Shutdown::new();
        let (listeners, running) = hub.start(shutdown).await.unwrap();
        Self {
            hub,
            listeners,
            keys,
            trigger,
            running,
        }
    }

    pub fn url(&self, service: &str) -> String {
        let listener = self
            .listeners
            .iter()
            .find(|l| l.service == service)
            .unwrap_or_else(|| panic!("no {service} listener"));
        format!("http://{}", listener.local_addr)
    }

    /// Stops every service and waits until they have drained.
    pub async fn stop(self) -> KeyFiles {
        self.trigger.trigger();
        self.running.await.unwrap().unwrap();
        self.keys
    }
}

/// A backing server of a test's own, on a free port with its data in a
/// scratch folder, so the test can stop and start it without touching the
/// shared one: a MongoDB-wire server (SecantusDB from .venv) or an S3 server
/// (s3s-fs, which scripts/test builds).
pub struct OwnServer {
    pub port: u16,
    name: &'static str,
    dir: PathBuf,
    command: fn(u16, &std::path::Path) -> std::process::Command,
    child: Option<std::process::Child>,
}

impl OwnServer {
    pub fn mongo() -> Self {
        Self::start("SecantusDB", |port, data| {
            let mut cmd = std::process::Command::new(venv_bin("secantusd-py"));
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--storage-path")
                .arg(data)
                .args(["--log-level", "WARNING"]);
            cmd
        })
    }

    pub fn s3() -> Self {
        Self::start("s3s-fs", |port, data| {
            let bin = std::env::var("S3S_FS_BIN")
                .expect("S3S_FS_BIN names s3s-fs (scripts/test builds it)");
            let mut cmd = std::process::Command::new(bin);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &std::env::var("S3_ACCESS_KEY").unwrap()])
                .args(["--secret-key", &std::env::var("S3_SECRET_KEY").unwrap()])
                .arg(data);
            cmd
        })
    }

    fn start(
        name: &'static str,
        command: fn(u16, &std::path::Path) -> std::process::Command,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            port,
            name,
            dir: scratch_dir(),
            command,
            child: None,
        };
        server.resume();
        server
    }

    /// The MongoDB URL of a MongoDB-wire server.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?retryWrites=false", self.port)
    }

    /// The endpoint of an S3 server.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = (self.command)(self.port, &data)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not start on {}",
                self.name,
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops it (SIGKILL: nothing is flushed politely) and waits until the
    /// port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Registers `name` over rest-auth at `rest` and logs in: the login's body
/// (`token`, `session_id`, ...).
pub async fn sign_up(rest: &str, name: &str, password: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    let registered = http
        .post(format!("{rest}/register"))
        .json(&serde_json::json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201, "registering {name}");
    let login = http
        .post(format!("{rest}/login"))
        .json(&serde_json::json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "logging in {name}");
    login.json().await.unwrap()
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

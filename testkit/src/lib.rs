//! polyhub's test kit, in the spirit of kanidm's `testkit` and zero2prod's
//! `spawn_app`: [`TestHub::with`] starts, in the test's own process, only the
//! services a test names, on free ports, against a fresh PostgreSQL database,
//! with freshly generated token keys, and configures only the backing stores
//! those services use ([`Service::backing`]). A SOAP test never reaches
//! MongoDB or S3: their addresses then point at a closed port.
//!
//! Also the one copy of what tests share: [`free_port`], [`eventually`],
//! [`fresh_database_url`], scratch folders, key files, [`OwnServer`] (a
//! backing server a test can stop and start) and the Python clients' venv.
// A test kit fails loudly: a panic is the test's failure message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod console;
pub mod soap;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use hub::{Hub, Listener, Service};
use hub_core::{KeySet, PasswordHasher};
use hub_runtime::service::Backing;
use hub_runtime::shutdown::ShutdownTrigger;
use hub_runtime::{Config, Secret, Shutdown};

/// The repository's root.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Where a store a test does not use is pointed: a port nothing listens on.
const CLOSED: &str = "127.0.0.1:1";

/// A free TCP port on loopback, for a server a test starts later.
///
/// A port taken by binding `:0` and releasing it can be handed out again by
/// the kernel, as the source port of any outgoing connection, before the
/// server binds it. So ports are taken below the kernel's ephemeral range
/// (which outgoing connections use), from a block of [`PORT_BLOCK`] ports
/// that belongs to the test's nextest slot (`NEXTEST_TEST_GLOBAL_SLOT`, unique
/// among the tests running at once), and each is checked free by binding it.
/// Outside nextest the slot is derived from the process id.
pub fn free_port() -> u16 {
    // Ports given in this process: a test that takes several (three
    // instances' worth) never gets one twice.
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let (first, last) = port_block();
    let mut next = NEXT.lock().unwrap();
    let start = next.unwrap_or(first + (std::process::id() as u16 % PORT_BLOCK) / 2);
    let mut port = start;
    loop {
        let candidate = port;
        port = if port >= last { first } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
        assert!(port != start, "no free port in {first}..={last}");
    }
}

/// How many ports each concurrently running test may take.
const PORT_BLOCK: u16 = 100;
/// The first port of slot 0's block: above the well-known servers the
/// scripts start (5001-5020, 5432, 9014, 27018).
const PORT_BASE: u16 = 20000;

/// This test's block of ports: `PORT_BASE + slot * PORT_BLOCK`, kept below
/// the ephemeral range.
fn port_block() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let blocks = (ephemeral_low.saturating_sub(PORT_BASE) / PORT_BLOCK).max(1);
    let slot = std::env::var("NEXTEST_TEST_GLOBAL_SLOT")
        .ok()
        .and_then(|slot| slot.parse::<u32>().ok())
        .unwrap_or_else(std::process::id);
    let first = PORT_BASE + (slot % u32::from(blocks)) as u16 * PORT_BLOCK;
    (first, first + PORT_BLOCK - 1)
}

/// A program of the project's Python tools (third-party test clients), which
/// scripts/test installs into .venv/ from scripts/requirements-test.txt.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = Path::new(ROOT).join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs the Python test clients into .venv",
        path.display()
    );
    path
}

/// An environment variable that scripts/test sets.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/test"))
}

/// A new empty folder under the system's temporary directory.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polyhub-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The RSA key every test hub signs ID tokens with: made once (RSA key
/// generation takes a while) under `target/`, then shared by every test.
pub fn id_token_key() -> PathBuf {
    let dir = Path::new(ROOT).join("target/test-keys");
    let path = dir.join("id-token.pem");
    if !path.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let pem = hub_core::IdTokenKey::generate_pem().unwrap();
        // Written aside and renamed: a test reading it never sees half a key.
        let partial = dir.join(format!("id-token.{}.tmp", uuid::Uuid::now_v7().simple()));
        std::fs::write(&partial, pem).unwrap();
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// A database URL of its own on the server `DATABASE_URL` names; `hub
/// migrate` (or [`TestSetup::start`]) creates it.
pub fn fresh_database_url() -> String {
    let admin = env("DATABASE_URL");
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/hub_test_{}", uuid::Uuid::now_v7().simple())
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A key pair written to files, as an operator would have it.
#[derive(Debug)]
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub private_pem: String,
    pub kid: String,
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

/// The S3 server scripts/test starts (`S3_ENDPOINT` and its keys), with a
/// bucket of the test's own.
pub fn s3_config() -> hub_runtime::config::S3Config {
    hub_runtime::config::S3Config {
        endpoint: Some(env("S3_ENDPOINT")),
        region: "us-east-1".into(),
        bucket: format!("polyhub-test-{}", uuid::Uuid::now_v7().simple()),
        access_key: env("S3_ACCESS_KEY"),
        secret_key: Secret::new(env("S3_SECRET_KEY")),
        timeout_ms: 2_000,
    }
}

/// A test's configuration before it starts: every service on port 0, a
/// fresh database, a new key, and the stores `services` use. Change
/// `config` as the test needs, then [`TestSetup::start`].
#[derive(Debug)]
pub struct TestSetup {
    pub config: Config,
    pub keys: KeyFiles,
    services: Vec<Service>,
    migrate: bool,
    hasher: Option<PasswordHasher>,
}

impl TestSetup {
    pub fn new(services: &[Service]) -> Self {
        let keys = key_files();
        let mut config = Config::default();
        config.database.url = Secret::new(fresh_database_url());
        config.database.acquire_timeout_ms = 1_000;
        for service in Service::ALL {
            service.set_port(&mut config.services, 0);
        }
        let uses = |backing| services.iter().any(|s| s.uses(backing));
        // Each test its own MongoDB database, as it has its own PostgreSQL one.
        config.mongo.url = Secret::new(if uses(Backing::Mongo) {
            env("MONGODB_URL")
        } else {
            format!("mongodb://{CLOSED}/")
        });
        config.mongo.database = format!("hub_test_{}", uuid::Uuid::now_v7().simple());
        config.mongo.server_selection_timeout_ms = 1_000;
        config.relay.idle_poll_ms = 20;
        if uses(Backing::ObjectStore) {
            config.images.s3 = s3_config();
        } else {
            config.images.s3.endpoint = Some(format!("http://{CLOSED}"));
        }
        config.tokens.signing_key_path = Some(keys.private.clone());
        config.oidc.id_token_key_path = Some(id_token_key());
        Self {
            config,
            keys,
            services: services.to_vec(),
            migrate: true,
            // Tests about races and limits must not depend on how much CPU
            // the machine can spare for PBKDF2: 1,000 iterations. The real
            // binaries' tests and the benchmarks hash at production strength.
            hasher: Some(PasswordHasher::insecure_for_tests(1_000)),
        }
    }

    /// Leaves the database alone (for one that is meant to be unreachable).
    pub fn without_migration(mut self) -> Self {
        self.migrate = false;
        self
    }

    /// Hashes with the configured (production) parameters.
    pub fn production_hashing(mut self) -> Self {
        self.hasher = None;
        self
    }

    /// Uses `keys` (a key made for another hub, to rotate or share it).
    pub fn with_keys(mut self, keys: KeyFiles) -> Self {
        self.config.tokens.signing_key_path = Some(keys.private.clone());
        self.keys = keys;
        self
    }

    /// The hub this setup would start, built but not serving.
    pub fn build(&self) -> Hub {
        let mut hub = Hub::build(self.config.clone()).unwrap();
        if let Some(hasher) = &self.hasher {
            hub = hub.with_password_hasher(hasher.clone());
        }
        hub
    }

    pub async fn start(self) -> TestHub {
        let hub = self.build();
        if self.migrate {
            hub.migrate().await.unwrap();
        }
        let (shutdown, trigger) = Shutdown::new();
        let (listeners, running) = hub.start_services(&self.services, shutdown).await.unwrap();
        TestHub {
            hub,
            listeners,
            keys: self.keys,
            trigger,
            running,
        }
    }
}

/// Services running in the test's process until [`TestHub::stop`] (or the
/// end of the test's runtime).
#[derive(Debug)]
pub struct TestHub {
    pub hub: Hub,
    pub listeners: Vec<Listener>,
    pub keys: KeyFiles,
    trigger: ShutdownTrigger,
    running: hub::Running,
}

impl TestHub {
    /// `services`, started with a fresh [`TestSetup`].
    pub async fn with(services: &[Service]) -> Self {
        TestSetup::new(services).start().await
    }

    /// Every service.
    pub async fn all() -> Self {
        Self::with(&Service::ALL).await
    }

    /// `service`'s `/metrics`, as text.
    pub async fn metrics(&self, service: Service) -> String {
        reqwest::get(format!("{}/metrics", self.url(service)))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Where `service` answers; it must be one the test started.
    pub fn url(&self, service: Service) -> String {
        self.try_url(service)
            .unwrap_or_else(|| panic!("{service} was not started by this test"))
    }

    /// Where `service` answers, when the test started it.
    pub fn try_url(&self, service: Service) -> Option<String> {
        self.listeners
            .iter()
            .find(|l| l.service == service)
            .map(|l| format!("http://{}", l.local_addr))
    }

    pub fn config(&self) -> &Config {
        self.hub.config()
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
#[derive(Debug)]
pub struct OwnServer {
    pub port: u16,
    name: &'static str,
    dir: PathBuf,
    command: fn(u16, &Path) -> std::process::Command,
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
            let mut cmd = std::process::Command::new(env("S3S_FS_BIN"));
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &env("S3_ACCESS_KEY")])
                .args(["--secret-key", &env("S3_SECRET_KEY")])
                .arg(data);
            cmd
        })
    }

    fn start(name: &'static str, command: fn(u16, &Path) -> std::process::Command) -> Self {
        let mut server = Self {
            port: free_port(),
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
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not start on {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
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
            std::thread::sleep(Duration::from_millis(20));
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

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
        for service in SERVICES {
            vars.push((setting(service, "PORT"), free_port().to_string()));
        }
        // The OpenID Connect issuer is rest-auth's own address, and every
        // instance signs ID tokens with the one RSA key.
        let rest_auth = vars
            .iter()
            .find(|(k, _)| *k == setting("rest-auth", "PORT"))
            .map(|(_, port)| format!("http://127.0.0.1:{port}"))
            .unwrap();
        vars.push(("POLYHUB_OIDC__ISSUER".into(), rest_auth));
        vars.push((
            "POLYHUB_OIDC__ID_TOKEN_KEY_PATH".into(),
            hub_testkit::id_token_key().display().to_string(),
        ));
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

    /// Sets (or replaces) one `POLYHUB_*` variable for every process started
    /// from this configuration from now on.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Behind a gateway at `origin` on loopback: every service names it as
    /// its public address and trusts loopback as its proxy.
    pub fn behind_gateway(&mut self, origin: &str) -> &mut Self {
        self.set("POLYHUB_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]");
        for service in SERVICES {
            self.set(&setting(service, "EXTERNAL_URL"), origin);
        }
        self.set("POLYHUB_OIDC__ISSUER", origin);
        self
    }

    /// Another instance of the same deployment: the same database, MongoDB
    /// database, bucket, key and settings, on ports of its own.
    pub fn instance(&self) -> Self {
        let vars = self
            .vars
            .iter()
            .map(|(k, v)| {
                if k.starts_with("POLYHUB_SERVICES__") && k.ends_with("__PORT") {
                    (k.clone(), free_port().to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        Self { vars }
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

    /// One `POLYHUB_*` variable of this configuration.
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} is not set"))
    }

    /// The port this configuration gives `service` (`rest-auth`, ...).
    pub fn port(&self, service: &str) -> u16 {
        let name = setting(service, "PORT");
        self.vars
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no port for {service}"))
    }

    /// Starts `binary args` and waits until it has printed the address of
    /// each of the `listeners` it is expected to serve.
    pub fn start(&self, binary: &str, args: &[&str], listeners: usize) -> Served {
        // Its log, for the message when it stops early.
        let log_path = std::env::temp_dir().join(format!(
            "polyhub-e2e-{binary}-{}.log",
            uuid::Uuid::now_v7().simple()
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = self
            .command(binary, args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut urls = std::collections::HashMap::new();
        while urls.len() < listeners {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("{binary} stopped early:\n{}", tail.join("\n"));
            }
            let mut parts = line.split_whitespace();
            if let (Some(service), Some(url)) = (parts.next(), parts.next()) {
                urls.insert(service.to_owned(), url.to_owned());
            }
        }
        // Keep reading stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        Served {
            child,
            urls,
            log: log_path,
        }
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
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
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

/// A 2 x 2 PNG, made by hand, written to a file named after `name`.
/// Where the browser tests photograph the console's pages:
/// `target/console-screenshots/` (under `CARGO_TARGET_DIR` when set).
pub fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"))
        .join("console-screenshots")
}

pub fn png_file(name: &str) -> PathBuf {
    const PNG: &str = "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001149444154789c63f8cfc000440c60f23f001bf203fdf3e74bb10000000049454e44ae426082";
    let image = std::env::temp_dir().join(format!("{name}.png"));
    let bytes: Vec<u8> = (0..PNG.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PNG[i..i + 2], 16).unwrap())
        .collect();
    std::fs::write(&image, bytes).unwrap();
    image
}

/// The caller's last connection from the tracker at `tracker`, once the
/// relay has put the login in MongoDB.
pub async fn last_connection(http: &reqwest::Client, tracker: &str, token: &str) -> Value {
    eventually(
        std::time::Duration::from_secs(30),
        "the login in MongoDB",
        || {
            let (http, tracker, token) = (http.clone(), tracker.to_owned(), token.to_owned());
            async move {
                let body: Value = http
                    .get(format!("{tracker}/last-connection"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (!body["last_connection"].is_null()).then_some(body)
            }
        },
    )
    .await
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

/// `POLYHUB_SERVICES__{SERVICE}__{key}` for `service` (`rest-auth`, ...).
fn setting(service: &str, key: &str) -> String {
    format!(
        "POLYHUB_SERVICES__{}__{key}",
        service.replace('-', "_").to_uppercase()
    )
}

/// The six services of an instance, in the order `scripts/gateway` takes
/// their ports.
pub const SERVICES: [&str; 6] = [
    "rest-auth",
    "soap-register",
    "soap-lookup",
    "sessions",
    "session-tracker",
    "grpc-images",
];

/// nginx from the project's config (`deploy/nginx/polyhub.conf`, written
/// out by `scripts/gateway`) in front of `instances`, on free loopback
/// ports with its own prefix under `.data/gateway-tests/`. Stopped, and its
/// prefix removed, when dropped.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    pub dir: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl Gateway {
    pub fn start(instances: &[&Environment]) -> Self {
        Self::start_on(free_port(), free_port(), instances)
    }

    /// On ports chosen beforehand (the instances' `external_url` names them).
    pub fn start_on(http_port: u16, grpc_port: u16, instances: &[&Environment]) -> Self {
        // Its own prefix under .data/, as scripts/gateway up uses: no
        // root-owned path, nothing of the system's nginx.
        let dir = Path::new(ROOT)
            .join(".data/gateway-tests")
            .join(uuid::Uuid::now_v7().simple().to_string());
        let specs: Vec<String> = instances
            .iter()
            .map(|e| {
                SERVICES
                    .iter()
                    .map(|s| e.port(s).to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .collect();
        let conf = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/gateway"))
            .arg("conf")
            .arg(&dir)
            .args([http_port.to_string(), grpc_port.to_string()])
            .args(&specs)
            .output()
            .unwrap();
        assert!(
            conf.status.success(),
            "scripts/gateway conf: {}{}",
            String::from_utf8_lossy(&conf.stdout),
            String::from_utf8_lossy(&conf.stderr)
        );
        let child = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/gateway"))
            .arg("run")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {http_port}: {}",
                std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            dir,
            http_port,
            grpc_port,
        }
    }

    /// The one origin: `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The gRPC origin, as grpcio names a target.
    pub fn grpc_target(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// The gateway's error log so far (for assertion messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // `scripts/gateway run` execs nginx: this is the master process,
        // which takes its workers with it on SIGTERM.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

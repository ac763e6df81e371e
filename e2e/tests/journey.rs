//! One user through every protocol, each step through the client its users
//! would use, against `hub serve` started as a real process with the real
//! PostgreSQL, MongoDB-wire server and S3 server (scripts/test starts them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `hub` binary of this build (the workspace's tests build it).
fn hub_bin() -> PathBuf {
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

fn python() -> PathBuf {
    Path::new(ROOT).join(".venv/bin/python")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/test"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `hub serve`, killed when dropped.
struct Served {
    child: Child,
    urls: std::collections::HashMap<String, String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
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
    fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }
}

async fn python_json(script: &Path, args: &[&str]) -> Value {
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

async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
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

/// A 2 x 2 PNG, made by hand.
const PNG: &str = "89504e470d0a1a0a0000000d4948445200000002000000020802000000fdd49a730000001149444154789c63f8cfc000440c60f23f001bf203fdf3e74bb10000000049454e44ae426082";

#[tokio::test(flavor = "multi_thread")]
async fn one_user_through_every_protocol() {
    let hub = serve();
    let http = reqwest::Client::new();
    let root = Path::new(ROOT);
    let name = format!("e2e.{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let password = "correct horse battery";

    // Register over SOAP with zeep, and look up over SOAP POST with zeep.
    let register_wsdl = format!("{}/register?wsdl", hub.url("soap-register"));
    let lookup_wsdl = format!("{}/user/soap?wsdl", hub.url("soap-lookup"));
    let soap = python_json(
        &root.join("e2e/clients/soap_user.py"),
        &[
            "register",
            &register_wsdl,
            &lookup_wsdl,
            &name,
            &format!("{name}@example.com"),
            password,
        ],
    )
    .await;
    let user_id = soap["registered"].as_str().unwrap().to_owned();
    assert_eq!(soap["found"], user_id.as_str(), "{soap}");

    // The legacy GET, with a plain HTTP client.
    let legacy = http
        .get(format!(
            "{}/user/soap?username={name}",
            hub.url("soap-lookup")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 200);
    assert!(legacy.text().await.unwrap().contains(&user_id));

    // Log in over REST.
    let login: Value = http
        .post(format!("{}/login", hub.url("rest-auth")))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().unwrap().to_owned();

    // Verify on the session service.
    let verified: Value = http
        .get(format!("{}/api/sessions/verify", hub.url("sessions")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["valid"], true);
    assert_eq!(verified["user_id"], user_id.as_str());

    // Upload an image with grpcio, and fetch its URL without credentials.
    let image = std::env::temp_dir().join(format!("{name}.png"));
    let bytes: Vec<u8> = (0..PNG.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PNG[i..i + 2], 16).unwrap())
        .collect();
    std::fs::write(&image, bytes).unwrap();
    let grpc_target = hub
        .url("grpc-images")
        .trim_start_matches("http://")
        .to_owned();
    let grpcio = root.join("hub/tests/clients/grpcio_images.py");
    let proto = root.join("proto").display().to_string();
    let uploaded = eventually(Duration::from_secs(30), "grpc-images SERVING", || {
        let (grpcio, target, token, proto, image) = (
            grpcio.clone(),
            grpc_target.clone(),
            token.clone(),
            proto.clone(),
            image.clone(),
        );
        async move {
            let out = tokio::process::Command::new(python())
                .arg(&grpcio)
                .args([target.as_str(), token.as_str(), proto.as_str()])
                .arg(&image)
                .output()
                .await
                .unwrap();
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        }
    })
    .await;
    assert_eq!(uploaded["health"], "SERVING");
    let url = uploaded["uploaded"][0]["url"].as_str().unwrap().to_owned();
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200, "{url}");
    assert_eq!(fetched.headers()["content-type"], "image/png");

    // The login shows as the last connection.
    let tracker = hub.url("session-tracker").to_owned();
    let last = eventually(Duration::from_secs(30), "the login in MongoDB", || {
        let (http, tracker, token) = (http.clone(), tracker.clone(), token.clone());
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
    })
    .await;
    assert_eq!(last["user_id"], user_id.as_str());
    assert_eq!(last["username"], name.as_str());

    // Log out over REST: the same token is refused everywhere.
    let logout = http
        .post(format!("{}/logout", hub.url("rest-auth")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let profile = http
        .get(format!("{}/profile", hub.url("rest-auth")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 401);
    let verify = http
        .get(format!("{}/api/sessions/verify", hub.url("sessions")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), 401);
    let refused = python_json(
        &grpcio,
        &[grpc_target.as_str(), token.as_str(), proto.as_str()],
    )
    .await;
    assert_eq!(refused["list_error"], "UNAUTHENTICATED", "{refused}");
}

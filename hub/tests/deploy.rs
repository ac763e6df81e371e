//! The deployment files validate with the tools that will read them:
//! docker-compose.yml with Debian's docker-compose (scripts/test installs
//! it), filled in from the committed examples as an operator would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A copy of the compose project with its env files made from the examples
/// and a signing key where the compose file expects one.
fn compose_project() -> std::path::PathBuf {
    let dir = common::scratch_dir();
    let root = Path::new(ROOT);
    for file in ["docker-compose.yml", "Dockerfile"] {
        std::fs::copy(root.join(file), dir.join(file)).unwrap();
    }
    let compose = dir.join("deploy/compose");
    std::fs::create_dir_all(compose.join("secrets")).unwrap();
    for name in ["polyhub", "postgres", "minio"] {
        std::fs::copy(
            root.join(format!("deploy/compose/{name}.env.example")),
            compose.join(format!("{name}.env")),
        )
        .unwrap();
    }
    std::fs::write(
        compose.join("secrets/signing.pem"),
        common::key_files().private_pem,
    )
    .unwrap();
    dir
}

fn docker_compose(project: &Path, args: &[&str]) -> String {
    let out = Command::new("docker-compose")
        .current_dir(project)
        .args(["-f", "docker-compose.yml"])
        .args(args)
        .output()
        .expect("docker-compose is missing: scripts/test installs it");
    assert!(
        out.status.success(),
        "docker-compose {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn docker_compose_validates_and_runs_every_service_on_its_port() {
    let project = compose_project();
    docker_compose(&project, &["config", "--quiet"]);
    let mut services: Vec<String> = docker_compose(&project, &["config", "--services"])
        .lines()
        .map(str::to_owned)
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "bucket",
            "grpc-images",
            "migrate",
            "minio",
            "mongo",
            "postgres",
            "rest-auth",
            "session-tracker",
            "sessions",
            "soap-lookup",
            "soap-register",
        ]
    );
    let config = docker_compose(&project, &["config"]);
    for (service, port) in hub::SERVICES
        .iter()
        .zip(["5001", "5002", "5016", "5004", "5020", "5015"])
    {
        assert!(
            config.contains(&format!("entrypoint:\n    - /usr/local/bin/{service}\n")),
            "{service} runs alone in its container"
        );
        assert!(
            config.contains(&format!("- published: {port}\n      target: {port}\n")),
            "{service} on {port}"
        );
        assert!(
            config.contains(&format!("- http://127.0.0.1:{port}/ready\n")),
            "{service} has a readiness healthcheck"
        );
    }
    // Images are pinned: no floating tags.
    for line in config
        .lines()
        .filter(|l| l.trim_start().starts_with("image:"))
    {
        let image = line.trim_start().trim_start_matches("image:").trim();
        assert!(
            image == "polyhub:local" || (image.contains(':') && !image.ends_with(":latest")),
            "{image} is not pinned"
        );
    }
}

//! The deployment files validate with the tools that will read them:
//! docker-compose.yml with Debian's docker-compose (scripts/test installs
//! it), filled in from the committed examples as an operator would.

use std::path::Path;
use std::process::Command;

use hub_testkit::{ROOT, Service};

/// A copy of the compose project with its env files made from the examples
/// and a signing key where the compose file expects one.
fn compose_project() -> std::path::PathBuf {
    let dir = hub_testkit::scratch_dir();
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
        hub_testkit::key_files().private_pem,
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
            "gateway",
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
    for (service, port) in Service::ALL.map(|s| (s.name(), s.default_port())) {
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
    // The gateway runs the project's nginx config, in front of them all.
    assert!(
        config.contains("/deploy/nginx/polyhub.conf:/etc/nginx/conf.d/polyhub.conf:ro"),
        "the gateway mounts deploy/nginx/polyhub.conf:\n{config}"
    );
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

/// scripts/validate_k8s.py over `k8s` (a deploy/k8s folder): its output,
/// and whether it passed.
fn validate_k8s(k8s: &Path) -> (bool, String) {
    let root = Path::new(ROOT);
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/validate_k8s.py"))
        .arg("--root")
        .arg(k8s)
        .arg("--kubectl")
        .arg(std::env::var("KUBECTL_BIN").expect("KUBECTL_BIN is set by scripts/test"))
        .output()
        .expect("the venv's python is missing: scripts/test makes it");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_validate_against_kubernetes_and_the_operators_schemas() {
    let (ok, out) = validate_k8s(&Path::new(ROOT).join("deploy/k8s"));
    assert!(ok, "{out}");
    // The custom resources were checked, not skipped: two Clusters, two
    // object stores and two schedules in the renders, one Cluster to restore.
    assert!(out.contains("(7 custom, against 3 CRDs)"), "{out}");
}

/// Copies `from` to `to`, file by file.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn kubernetes_validation_names_each_mistake() {
    let k8s = hub_testkit::scratch_dir().join("k8s");
    copy_tree(&Path::new(ROOT).join("deploy/k8s"), &k8s);
    // (file, text, its mistaken replacement, what the check must say)
    let mistakes = [
        // A misspelt field of a built-in kind.
        (
            "base/services/rest-auth.yaml",
            "      terminationGracePeriodSeconds: 40\n",
            "      terminationGracePeriodSeconds: 40\n      hostnam: rest-auth\n",
            "base Deployment/rest-auth: Kubernetes 1.31: spec.template.spec: Additional properties are not allowed ('hostnam' was unexpected)",
        ),
        // A value the operator's schema does not allow.
        (
            "base/data/postgres.yaml",
            "      method: any",
            "      method: all",
            "production Cluster/polyhub-pg: postgresql.cnpg.io/v1 Cluster: spec.postgresql.synchronous.method: 'all' is not one of ['any', 'first']",
        ),
        // A misspelt field of a custom resource.
        (
            "restore/polyhub-pg.yaml",
            "  instances: 3\n",
            "  instances: 3\n  instanecs: 3\n",
            "restore/polyhub-pg.yaml Cluster/polyhub-pg: postgresql.cnpg.io/v1 Cluster: spec: Additional properties are not allowed ('instanecs' was unexpected)",
        ),
        // A readiness probe that would report a service ready without its stores.
        (
            "base/services/soap-lookup.yaml",
            "              path: /ready",
            "              path: /health",
            "base Deployment/soap-lookup: readinessProbe must GET /ready",
        ),
        // A protected route moved to the Ingress without edge authentication.
        (
            "base/ingress.yaml",
            "          - path: /.well-known/jwks.json\n",
            "          - path: /last-connection\n            pathType: Prefix\n            backend: { service: { name: session-tracker, port: { name: http } } }\n          - path: /.well-known/jwks.json\n",
            "base Ingress/polyhub-public: /last-connection needs a token but is not authenticated at the edge",
        ),
        // A backend port no Service has.
        (
            "base/ingress.yaml",
            "backend: { service: { name: soap-lookup, port: { name: http } } }",
            "backend: { service: { name: soap-lookup, port: { name: soap } } }",
            "base Ingress/polyhub-public: /user/soap goes to soap-lookup:soap, which no Service has",
        ),
        // The overlay's certificate dropped.
        (
            "production/kustomization.yaml",
            "  - path: patches/ingress-tls.yaml\n    target:\n      kind: Ingress\n",
            "",
            "production Ingress/polyhub-protected: no TLS",
        ),
        // A Secret the pods read that the overlay no longer makes.
        (
            "production/kustomization.yaml",
            "  - name: polyhub-secrets\n",
            "  - name: polyhub-secret\n",
            "production Deployment/sessions: reads Secret polyhub-secrets, which nothing creates",
        ),
    ];
    for (file, from, to, _) in mistakes {
        edit(&k8s.join(file), from, to);
    }
    let (ok, out) = validate_k8s(&k8s);
    assert!(!ok, "{out}");
    for (_, _, _, expected) in mistakes {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

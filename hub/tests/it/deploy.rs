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
    std::fs::copy(
        hub_testkit::id_token_key(),
        compose.join("secrets/id-token.pem"),
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
    let parsed = yaml_to_json(&config);
    for (service, port) in Service::ALL.map(|s| (s.name(), s.default_port())) {
        assert!(
            config.contains(&format!("entrypoint:\n    - /usr/local/bin/{service}\n")),
            "{service} runs alone in its container"
        );
        assert_eq!(
            published(&parsed["services"][service]),
            [(Some("127.0.0.1".to_owned()), port, port)],
            "{service} on {port}, on the host's loopback only"
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

/// The documents of a YAML stream (what `docker-compose config` prints, a
/// manifest file) as JSON, read by the venv's PyYAML (kubernetes-validate's
/// own dependency).
fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let root = Path::new(ROOT);
    let mut child = Command::new(root.join(".venv/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python is missing: scripts/test makes it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not read:\n{yaml}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A YAML stream of one document as JSON.
fn yaml_to_json(yaml: &str) -> serde_json::Value {
    let mut documents = yaml_documents(yaml);
    assert_eq!(documents.len(), 1, "one YAML document expected");
    documents.remove(0)
}

/// A compose service's published ports: (host address, published, target),
/// from either of the forms `docker-compose config` prints them in.
fn published(service: &serde_json::Value) -> Vec<(Option<String>, u16, u16)> {
    let port = |v: &serde_json::Value| -> u16 {
        v.as_u64()
            .map(|p| u16::try_from(p).unwrap())
            .or_else(|| v.as_str().and_then(|p| p.parse().ok()))
            .unwrap_or_else(|| panic!("a port: {v}"))
    };
    service["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|entry| match entry.as_str() {
            // "[HOST:]PUBLISHED:TARGET[/PROTOCOL]"
            Some(short) => {
                let short = short.split('/').next().unwrap();
                let parts: Vec<&str> = short.rsplitn(3, ':').collect();
                let host = parts.get(2).map(|h| (*h).to_owned());
                (host, parts[1].parse().unwrap(), parts[0].parse().unwrap())
            }
            None => (
                entry["host_ip"].as_str().map(str::to_owned),
                port(&entry["published"]),
                port(&entry["target"]),
            ),
        })
        .collect()
}

fn ipv4_net(raw: &str) -> (std::net::Ipv4Addr, u32) {
    let (address, bits) = raw.split_once('/').unwrap_or((raw, "32"));
    (address.parse().unwrap(), bits.parse().unwrap())
}

fn ipv4_contains(net: &str, address: std::net::Ipv4Addr) -> bool {
    let (base, bits) = ipv4_net(net);
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(base) & mask == u32::from(address) & mask
}

/// The hub's services trust exactly one proxy, the gateway, at a fixed
/// address on the project's network (outside the range other containers
/// are given addresses from), and publish their own ports on the host's
/// loopback only: nothing that reaches them through the docker bridge can
/// choose its own forwarded address.
#[test]
fn compose_trusts_only_the_gateway() {
    let project = compose_project();
    let config = yaml_to_json(&docker_compose(&project, &["config"]));
    let gateway = config["services"]["gateway"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "the gateway has no fixed address: {}",
                config["services"]["gateway"]
            )
        });
    let gateway: std::net::Ipv4Addr = gateway.parse().unwrap();
    let ipam = &config["networks"]["default"]["ipam"]["config"][0];
    let subnet = ipam["subnet"]
        .as_str()
        .unwrap_or_else(|| panic!("the default network has no subnet: {}", config["networks"]));
    assert!(
        ipv4_contains(subnet, gateway),
        "{gateway} is outside {subnet}"
    );
    let dynamic = ipam["ip_range"]
        .as_str()
        .expect("the network's ip_range keeps other containers off the gateway's address");
    assert!(
        !ipv4_contains(dynamic, gateway),
        "{gateway} is in {dynamic}, which docker gives other containers"
    );
    for service in Service::ALL.map(Service::name) {
        let environment = &config["services"][service]["environment"];
        let trusted: Vec<String> = serde_json::from_str(
            environment["POLYHUB_HTTP__TRUSTED_PROXIES"]
                .as_str()
                .unwrap_or_else(|| panic!("{service} trusts no proxy: {environment}")),
        )
        .unwrap();
        assert_eq!(trusted.len(), 1, "{service} trusts {trusted:?}");
        assert_eq!(
            ipv4_net(&trusted[0]),
            (gateway, 32),
            "{service} trusts {trusted:?}, not only the gateway"
        );
        for (host, port, _) in published(&config["services"][service]) {
            assert_eq!(
                host.as_deref(),
                Some("127.0.0.1"),
                "{service} publishes {port} beyond the host's loopback"
            );
        }
    }
}

/// On Kubernetes the services trust the pod network as their proxies, so
/// only the ingress controller (and polyhub's own pods) may reach them: a
/// NetworkPolicy that let any pod in would let it choose its own client
/// address. The console's upload Ingress streams and caps its bodies.
#[test]
fn kubernetes_services_take_requests_only_from_the_ingress_controller() {
    let base = Path::new(ROOT).join("deploy/k8s/base");
    let policies =
        yaml_documents(&std::fs::read_to_string(base.join("network-policies.yaml")).unwrap());
    let services = policies
        .iter()
        .find(|p| p["metadata"]["name"] == "polyhub-services-ingress")
        .expect("the services' ingress policy");
    let rules = services["spec"]["ingress"].as_array().unwrap();
    assert!(!rules.is_empty());
    for rule in rules {
        let from = rule["from"]
            .as_array()
            .filter(|peers| !peers.is_empty())
            .unwrap_or_else(|| panic!("a rule that takes requests from anywhere: {rule}"));
        for peer in from {
            assert!(
                peer.get("ipBlock").is_none()
                    && peer["namespaceSelector"] != serde_json::json!({})
                    && peer["podSelector"] != serde_json::json!({}),
                "a peer that lets any pod in: {peer}"
            );
        }
        assert!(
            from.iter().any(
                |peer| peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == "ingress-nginx"
            ),
            "the ingress controller is not let in: {rule}"
        );
    }
    let ingresses = yaml_documents(&std::fs::read_to_string(base.join("ingress.yaml")).unwrap());
    let upload = ingresses
        .iter()
        .find(|i| i["metadata"]["name"] == "polyhub-console-upload")
        .expect("the console's upload Ingress");
    let notes = &upload["metadata"]["annotations"];
    assert_eq!(
        notes["nginx.ingress.kubernetes.io/proxy-request-buffering"], "off",
        "{notes}"
    );
    assert!(
        notes["nginx.ingress.kubernetes.io/limit-connections"]
            .as_str()
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
        "{notes}"
    );
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

#!/usr/bin/env python3
"""Validates polyhub's Kubernetes manifests the way a cluster would read them.

Renders deploy/k8s/base and deploy/k8s/production with `kubectl kustomize`
(the production secrets filled with throwaway values, in a copy), then checks
every resource, and the restore manifest in deploy/k8s/restore:

- built-in kinds against Kubernetes' own schemas (kubernetes-validate),
  strictly: an unknown field is an error, for each supported version;
- custom resources against the schemas in deploy/k8s/crds, just as strictly;
- what the issue asks of every service: probes on /health and /ready (gRPC
  for grpc-images), requests and limits, non-root, a read-only root
  filesystem; a Service, a HorizontalPodAutoscaler and a PodDisruptionBudget
  for each; secrets and config maps that exist; network policies that select
  something.

Usage: validate_k8s.py [--root DIR] [--kubectl PATH]
Exits 1 with one line per problem; scripts/test runs it through the tests.
"""

from __future__ import annotations

import argparse
import copy
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

# The oldest and the newest Kubernetes versions polyhub's manifests target.
KUBERNETES_VERSIONS = ["1.31", "1.35"]

# Secrets that operators write, not these manifests.
OPERATOR_SECRETS = {"polyhub-pg-app"}  # CloudNativePG: the owner's credentials

# Labels operators put on the pods they run for a custom resource.
OPERATOR_POD_LABELS = {"Cluster": lambda name: {"cnpg.io/cluster": name}}

# The services and what their readiness probe must be.
SERVICES = {
    "rest-auth": "http",
    "soap-register": "http",
    "soap-lookup": "http",
    "sessions": "http",
    "session-tracker": "http",
    "grpc-images": "grpc",
}


class Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def render(kubectl: str, directory: pathlib.Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def fill_production_secrets(k8s: pathlib.Path) -> None:
    """What an operator puts in production/secrets/, as throwaway values."""
    folder = k8s / "production" / "secrets"
    for example in folder.glob("*.example"):
        shutil.copy(example, folder / example.name.removesuffix(".example"))
    (folder / "signing.pem").write_text("throwaway signing key for validation\n")
    (folder / "id-token.pem").write_text("throwaway ID token key for validation\n")
    (folder / "mongo-keyfile").write_text(secrets.token_urlsafe(64) + "\n")


def closed(schema):
    """The schema with every object that lists its properties closed to
    others, as the API server's strict field validation treats them."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crds(folder: pathlib.Path, problems: Problems) -> dict:
    """(apiVersion, kind) -> schema, from the CRDs kept in the repo."""
    crds = {}
    for path in sorted(folder.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            check_builtin(crd, f"{path.name} {name_of(crd)}", problems)
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                crds[key] = closed(version["schema"]["openAPIV3Schema"])
    return crds


def check_builtin(doc: dict, where: str, problems: Problems) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            problems.add(where, f"Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.add(where, f"no schema: {e.message}")
            return


def check_schema(doc: dict, where: str, crds: dict, problems: Problems) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    schema = crds.get(key)
    if schema is None:
        check_builtin(doc, where, problems)
        return
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path) or "(top)"
        problems.add(where, f"{key[0]} {key[1]}: {path}: {error.message}")


def selects(selector: dict, labels: dict) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def pod_templates(docs: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod template) of every workload."""
    out = []
    for doc in docs:
        spec = doc.get("spec") or {}
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((name_of(doc), spec["template"]))
        elif doc["kind"] == "Job":
            out.append((name_of(doc), spec["template"]))
        elif doc["kind"] == "CronJob":
            out.append((name_of(doc), spec["jobTemplate"]["spec"]["template"]))
    return out


def check_service(label: str, doc: dict, docs: list[dict], problems: Problems) -> None:
    """What every polyhub service's Deployment must have."""
    where = f"{label} {name_of(doc)}"
    name = doc["metadata"]["name"]
    pod = doc["spec"]["template"]
    spec = pod["spec"]
    if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
        problems.add(where, "pod securityContext.runAsNonRoot must be true")
    for container in spec.get("initContainers", []) + spec["containers"]:
        cwhere = f"{where} container {container['name']}"
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (resources.get(kind) or {}):
                    problems.add(cwhere, f"no {what} {kind}")
        security = container.get("securityContext") or {}
        if security.get("readOnlyRootFilesystem") is not True:
            problems.add(cwhere, "readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.add(cwhere, "allowPrivilegeEscalation must be false")
    main = next((c for c in spec["containers"] if c["name"] == "polyhub"), None)
    if main is None:
        problems.add(where, "no container named polyhub")
        return
    liveness = (main.get("livenessProbe") or {}).get("httpGet") or {}
    if liveness.get("path") != "/health":
        problems.add(where, "livenessProbe must GET /health")
    readiness = main.get("readinessProbe") or {}
    if SERVICES[name] == "grpc":
        if "grpc" not in readiness:
            problems.add(where, "readinessProbe must use the gRPC health protocol")
    elif (readiness.get("httpGet") or {}).get("path") != "/ready":
        problems.add(where, "readinessProbe must GET /ready")

    labels = pod["metadata"].get("labels") or {}
    by_kind = lambda kind: [d for d in docs if d["kind"] == kind]  # noqa: E731
    if not any(selects({"matchLabels": s["spec"].get("selector") or {}}, labels)
               and s["metadata"]["name"] == name for s in by_kind("Service")):
        problems.add(where, f"no Service {name} selecting its pods")
    if not any(h["spec"]["scaleTargetRef"]["name"] == name
               and h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
               for h in by_kind("HorizontalPodAutoscaler")):
        problems.add(where, "no HorizontalPodAutoscaler")
    if not any(selects(p["spec"]["selector"], labels)
               for p in by_kind("PodDisruptionBudget")):
        problems.add(where, "no PodDisruptionBudget")


def referenced(pod: dict) -> set[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a pod template reads."""
    out = set()
    spec = pod["spec"]
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                out.add(("ConfigMap", source["configMapRef"]["name"]))
            if "secretRef" in source:
                out.add(("Secret", source["secretRef"]["name"]))
        for env in container.get("env") or []:
            ref = env.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                out.add(("Secret", ref["secretKeyRef"]["name"]))
            if "configMapKeyRef" in ref:
                out.add(("ConfigMap", ref["configMapKeyRef"]["name"]))
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            out.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            out.add(("ConfigMap", volume["configMap"]["name"]))
    return out


def custom_secret_refs(doc: dict) -> set[tuple[str, str]]:
    """Secrets a custom resource names: the object store's keys."""
    if doc.get("kind") != "ObjectStore":
        return set()
    credentials = doc["spec"]["configuration"].get("s3Credentials") or {}
    return {("Secret", ref["name"]) for ref in credentials.values() if isinstance(ref, dict)}


def check_render(label: str, docs: list[dict], crds: dict, problems: Problems,
                 complete: bool) -> None:
    """`complete`: the render must hold every Secret its pods read."""
    for doc in docs:
        where = f"{label} {name_of(doc)}"
        check_schema(doc, where, crds, problems)
        if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != "polyhub":
            problems.add(where, "not in the namespace polyhub")

    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in SERVICES:
        if name not in deployments:
            problems.add(label, f"no Deployment {name}")
        else:
            check_service(label, deployments[name], docs, problems)

    existing = {(d["kind"], d["metadata"]["name"]) for d in docs}
    existing |= {("Secret", s) for s in OPERATOR_SECRETS}
    pods = pod_templates(docs)
    readers = [(owner, referenced(pod)) for owner, pod in pods]
    readers += [(name_of(d), custom_secret_refs(d)) for d in docs]
    for owner, references in readers:
        for kind, name in sorted(references):
            if (kind, name) not in existing and (complete or kind == "ConfigMap"):
                problems.add(f"{label} {owner}", f"reads {kind} {name}, which nothing creates")

    labelled = [pod["metadata"].get("labels") or {} for _, pod in pods]
    for doc in docs:
        make = OPERATOR_POD_LABELS.get(doc["kind"])
        if make:
            labelled.append(make(doc["metadata"]["name"]))
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        if selector and not any(selects(selector, labels) for labels in labelled):
            problems.add(f"{label} {name_of(policy)}", "its podSelector selects no pod")


# The verify the edge authenticates against, and what it passes upstream.
AUTH_URL = "http://sessions.polyhub.svc.cluster.local:5004/api/sessions/verify"
IDENTITY_HEADERS = {"X-Polyhub-User-Id", "X-Polyhub-Session-Id", "X-Polyhub-Role"}
# Routes that need a token: they must sit behind the edge's authentication.
PROTECTED = {"/profile", "/logout", "/admin/users/import", "/api/sessions",
             "/last-connection", "/v1/images", "/polyhub.images.v1.ImageDelivery/"}


def check_ingresses(label: str, docs: list[dict], problems: Problems, tls: bool) -> None:
    """Each Ingress path reaches a Service port that exists; every protected
    route is authenticated at the edge; with `tls`, every Ingress has it."""
    ports = {}
    for doc in docs:
        if doc["kind"] == "Service":
            ports[doc["metadata"]["name"]] = {p.get("name") for p in doc["spec"]["ports"]} | {
                p["port"] for p in doc["spec"]["ports"]}
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    if not ingresses:
        problems.add(label, "no Ingress")
    routed = set()
    for ingress in ingresses:
        where = f"{label} {name_of(ingress)}"
        notes = ingress["metadata"].get("annotations") or {}
        authenticated = notes.get("nginx.ingress.kubernetes.io/auth-url") == AUTH_URL
        if authenticated:
            passed = set(notes.get("nginx.ingress.kubernetes.io/auth-response-headers", "").split(","))
            if passed != IDENTITY_HEADERS:
                problems.add(where, f"auth-response-headers must be {sorted(IDENTITY_HEADERS)}")
        if tls and not ingress["spec"].get("tls"):
            problems.add(where, "no TLS")
        for rule in ingress["spec"].get("rules", []):
            for path in (rule.get("http") or {}).get("paths", []):
                service = path["backend"]["service"]
                port = service["port"].get("name", service["port"].get("number"))
                if port not in ports.get(service["name"], set()):
                    problems.add(where, f"{path['path']} goes to {service['name']}:{port}, "
                                        "which no Service has")
                if path["path"] in PROTECTED and not authenticated:
                    problems.add(where, f"{path['path']} needs a token but is not "
                                        "authenticated at the edge")
                routed.add(path["path"])
    for path in sorted(PROTECTED - routed):
        problems.add(label, f"no Ingress routes {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    parser.add_argument("--root", type=pathlib.Path, default=root / "deploy" / "k8s",
                        help="the deploy/k8s folder to check (default: this checkout's)")
    parser.add_argument("--kubectl", default=os.environ.get("KUBECTL_BIN", "kubectl"))
    args = parser.parse_args()

    problems = Problems()
    crds = load_crds(args.root / "crds", problems)
    with tempfile.TemporaryDirectory(prefix="polyhub-k8s-") as scratch:
        k8s = pathlib.Path(scratch) / "k8s"
        shutil.copytree(args.root, k8s)
        fill_production_secrets(k8s)
        base = render(args.kubectl, k8s / "base")
        production = render(args.kubectl, k8s / "production")
    check_render("base", base, crds, problems, complete=False)
    check_render("production", production, crds, problems, complete=True)
    check_ingresses("base", base, problems, tls=False)
    check_ingresses("production", production, problems, tls=True)
    restore = []
    for path in sorted((args.root / "restore").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                restore.append(doc)
                check_schema(copy.deepcopy(doc), f"restore/{path.name} {name_of(doc)}",
                             crds, problems)

    if problems.lines:
        for line in problems.lines:
            print(line)
        print(f"{len(problems.lines)} problems in deploy/k8s", file=sys.stderr)
        return 1
    custom = sum(1 for d in base + production + restore
                 if (d.get("apiVersion"), d.get("kind")) in crds)
    print(
        f"deploy/k8s valid: {len(base)} resources in base, {len(production)} in "
        f"production, {len(restore)} in restore ({custom} custom, against "
        f"{len(crds)} CRDs); Kubernetes {', '.join(KUBERNETES_VERSIONS)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Authlib's OAuth 2.0 client (authlib.integrations.requests_client.OAuth2Session)
against polyhub's client-credentials grant, token introspection (RFC 7662)
and revocation (RFC 7009), with its tokens then taken to the gRPC image
service by grpcio (stubs generated from proto/ when it runs): clients no one
on this project wrote.

    oauth_authlib.py REST_BASE_URL GRPC_TARGET PROTO_DIR CLIENT_ID CLIENT_SECRET
                     NARROW_CLIENT_ID NARROW_CLIENT_SECRET OWNER_ID [--max-seconds S]

REST_BASE_URL is rest-auth's http://127.0.0.1:PORT, GRPC_TARGET the images
gRPC port (127.0.0.1:PORT). CLIENT is a confidential client allowed
client_credentials with the scopes images:read and events:read, NARROW one
allowed events:read only. OWNER_ID is a user who owns exactly one image.

  1. CLIENT with client_secret_basic asks for images:read: a Bearer token,
     expires_in > 0, scope images:read, Cache-Control: no-store;
  2. CLIENT with client_secret_post asks for no scope: it gets all of its
     scopes, events:read and images:read;
  3. a wrong secret: authlib raises invalid_client; the raw answer is 401
     with a WWW-Authenticate: Basic challenge;
  4. CLIENT asking for scim, and NARROW asking for images:read: invalid_scope
     (400);
  5. introspection as CLIENT: step 1's token is active, CLIENT's, images:read,
     exp > iat; "not-a-token" is exactly {"active": false};
  6. ListImages(owner_id=OWNER_ID) with step 1's token: exactly OWNER_ID's
     one image; without owner_id INVALID_ARGUMENT; with a NARROW token
     (events:read) PERMISSION_DENIED; UploadImage with step 1's token
     PERMISSION_DENIED;
  7. NARROW revokes step 1's token: 400 unauthorized_client, and the token
     still introspects active;
  8. CLIENT revokes it: 200 with an empty body; it introspects
     {"active": false}, ListImages with it is UNAUTHENTICATED, and revoking it
     again is 200 still (RFC 7009 §2.2).

Prints one JSON document with what it saw (never a token or a secret) and
exits 0; on a failure, prints what it saw so far with "failed_step" and
"error", says why on stderr, exits 1. Every call has a deadline, and the
whole run is bounded by --max-seconds (default 90).
"""

import argparse
import base64
import importlib.resources
import ipaddress
import json
import os
import pathlib
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib

import grpc
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from grpc_tools import protoc

# How long one answer may take to arrive.
WAIT = 10.0
# Every scope CLIENT may have: what it is granted when it names none.
CLIENT_SCOPES = {"events:read", "images:read"}


class StepFailed(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="oauth_authlib.py", description=__doc__.split("\n")[0])
    for name in ("rest_base_url", "grpc_target", "proto_dir", "client_id", "client_secret",
                 "narrow_client_id", "narrow_client_secret", "owner_id"):
        parser.add_argument(name)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.rest_base_url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"REST_BASE_URL must be http://127.0.0.1:PORT, not {args.rest_base_url!r}")
    host, _, port = args.grpc_target.rpartition(":")
    if not loopback(host.strip("[]")) or not port.isdigit():
        parser.error(f"GRPC_TARGET must be 127.0.0.1:PORT, not {args.grpc_target!r}")
    # authlib writes client_secret_basic as base64("id:secret") without
    # form-encoding the two first (RFC 6749 §2.3.1 asks for it), so the test
    # takes only credentials form-encoding leaves as they are (polyhub's
    # own are: ids of RFC 3986's unreserved set, base64url secrets).
    for name in ("client_id", "client_secret", "narrow_client_id", "narrow_client_secret"):
        value = getattr(args, name)
        if not value or urllib.parse.quote_plus(value, safe="") != value:
            parser.error(f"{name.upper()} must be non-empty letters, digits, '-', '.', '_' or '~'")
    try:
        uuid.UUID(args.owner_id)
    except ValueError:
        parser.error(f"OWNER_ID must be a user's UUID, not {args.owner_id!r}")
    return args


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


def stubs(proto_dir: str, out: pathlib.Path):
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            # images.proto's HTTP annotations, from proto/google/api too.
            "google/api/http.proto",
            "google/api/annotations.proto",
            "polyhub/images/v1/images.proto",
        ]
    )
    if code != 0:
        raise SystemExit(f"oauth_authlib: protoc failed with {code}")
    sys.path.insert(0, str(out))
    from polyhub.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402

    return images_pb2, images_pb2_grpc


class Deadline:
    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, most=WAIT):
        left = min(most, self.end - time.monotonic())
        if left <= 0:
            raise StepFailed(f"--max-seconds {self.seconds} passed")
        return left


def json_object(response, what):
    """The response's body, which must be a JSON object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StepFailed(f"{what}: HTTP {response.status_code}, not a JSON object: {response.text[:200]!r}")
    return body


class Client:
    """One OAuth client of rest-auth, through authlib's OAuth2Session."""

    def __init__(self, base_url, client_id, secret, auth_method, deadline):
        self.name = f"{client_id} ({auth_method})"
        self.base_url = base_url.rstrip("/")
        self.deadline = deadline
        self.session = OAuth2Session(
            client_id,
            secret,
            token_endpoint_auth_method=auth_method,
            revocation_endpoint_auth_method=auth_method,
        )
        # Only 127.0.0.1: no proxy from the environment.
        self.session.trust_env = False
        # fetch_token returns the token alone; the token endpoint's last
        # answer is kept here for its status and headers.
        self.last_token_response = None
        self.session.register_compliance_hook("access_token_response", self._keep)

    def _keep(self, response):
        self.last_token_response = response
        return response

    def url(self, endpoint):
        return f"{self.base_url}/oauth2/{endpoint}"

    def fetch(self, scope=None):
        """A client-credentials token; authlib raises OAuthError on an error
        answer."""
        extra = {} if scope is None else {"scope": scope}
        self.last_token_response = None
        try:
            return self.session.fetch_token(
                self.url("token"),
                grant_type="client_credentials",
                timeout=self.deadline.left(),
                **extra,
            )
        except ValueError as e:  # an answer that is not a JSON object
            raise StepFailed(f"{self.name} asking for scope {scope!r}: {e}")

    def granted(self, scope=None):
        """A token that must be granted: 200 with a Bearer access token."""
        what = f"{self.name} asking for scope {scope!r}"
        try:
            token = self.fetch(scope)
        except OAuthError as e:
            raise StepFailed(f"{what}: refused: {e}")
        status = self.last_token_response.status_code
        if status != 200:
            raise StepFailed(f"{what}: a token came with HTTP {status}, not 200")
        if not isinstance(token.get("access_token"), str) or not token["access_token"]:
            raise StepFailed(f"{what}: no access_token in {sorted(token)}")
        if not isinstance(token.get("token_type"), str) or token["token_type"].lower() != "bearer":
            raise StepFailed(f"{what}: token_type {token.get('token_type')!r}, not Bearer")
        expires_in = token.get("expires_in")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
            raise StepFailed(f"{what}: expires_in {expires_in!r} is not a positive integer")
        if not isinstance(token.get("scope"), str):
            raise StepFailed(f"{what}: scope {token.get('scope')!r} is not a string")
        return token

    def refused(self, scope, error, status):
        """A token request that must fail with `error` and HTTP `status`:
        what was seen of it."""
        what = f"{self.name} asking for scope {scope!r}"
        try:
            self.fetch(scope)
        except OAuthError as e:
            response = self.last_token_response
            seen = {
                "error": e.error,
                "error_description": e.description,
                "status": response.status_code if response is not None else None,
            }
        else:
            raise StepFailed(f"{what}: a token was granted, not {error}")
        if seen["error"] != error or seen["status"] != status:
            raise StepFailed(f"{what}: {seen['error']} (HTTP {seen['status']}), not {error} ({status})")
        return seen

    def introspect(self, token):
        response = self.session.introspect_token(
            self.url("introspect"), token=token, token_type_hint="access_token",
            timeout=self.deadline.left(),
        )
        body = json_object(response, f"{self.name} introspecting")
        if response.status_code != 200:
            raise StepFailed(f"{self.name} introspecting: HTTP {response.status_code} {body}")
        return body

    def revoke(self, token):
        return self.session.revoke_token(
            self.url("revoke"), token=token, token_type_hint="access_token",
            timeout=self.deadline.left(),
        )


def basic(client_id, secret):
    """RFC 6749 §2.3.1's client_secret_basic credentials."""
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def wrong(secret):
    """A secret of the same length that differs in its last character."""
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def tiny_png():
    """A 1x1 white PNG: an image the service would take from a user."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff")) + chunk(b"IEND", b""))


def bearer(token):
    return [("authorization", f"Bearer {token['access_token']}")]


def refused_rpc(call, what):
    """{"status", "details", "x-error-code"} of a gRPC call that must fail."""
    try:
        answer = call()
    except grpc.RpcError as e:
        trailers = dict(e.trailing_metadata() or ())
        return {"status": e.code().name, "details": e.details(), "x-error-code": trailers.get("x-error-code")}
    raise StepFailed(f"{what} was answered: {type(answer).__name__} {str(answer)[:200]!r}")


def expect_status(seen, status, what):
    if seen["status"] != status:
        raise StepFailed(f"{what} ended with {seen['status']} {seen['details']!r}, not {status}")


def scenario(args, pb, rpc, summary, step, deadline):
    rest = args.rest_base_url
    client = Client(rest, args.client_id, args.client_secret, "client_secret_basic", deadline)

    step("1: CLIENT's token for images:read (client_secret_basic)")
    token = client.granted("images:read")
    cache_control = client.last_token_response.headers.get("Cache-Control", "")
    summary["token_type"] = token["token_type"]
    summary["expires_in"] = token["expires_in"]
    summary["token_scope"] = token["scope"]
    summary["token_cache_control"] = cache_control
    if token["scope"] != "images:read":
        raise StepFailed(f"asked for images:read, granted {token['scope']!r}")
    if "no-store" not in [d.strip().lower() for d in cache_control.split(",")]:
        raise StepFailed(f"a token came with Cache-Control {cache_control!r}, not no-store")

    step("2: CLIENT's token for no scope (client_secret_post)")
    post = Client(rest, args.client_id, args.client_secret, "client_secret_post", deadline)
    default = post.granted()
    summary["default_scope"] = default["scope"]
    if set(default["scope"].split()) != CLIENT_SCOPES:
        raise StepFailed(f"asked for no scope, granted {default['scope']!r}, not {sorted(CLIENT_SCOPES)}")

    step("3: a wrong secret")
    impostor = Client(rest, args.client_id, wrong(args.client_secret), "client_secret_basic", deadline)
    seen = impostor.refused("images:read", "invalid_client", 401)
    raw = requests.Session()
    raw.trust_env = False
    response = raw.post(
        client.url("token"),
        data={"grant_type": "client_credentials", "scope": "images:read"},
        headers={"Authorization": basic(args.client_id, wrong(args.client_secret)),
                 "Accept": "application/json"},
        timeout=deadline.left(),
    )
    body = json_object(response, "the raw token request with a wrong secret")
    challenge = response.headers.get("WWW-Authenticate", "")
    summary["wrong_secret"] = {
        "authlib": seen,
        "raw": {"status": response.status_code, "error": body.get("error"), "www_authenticate": challenge},
    }
    if response.status_code != 401 or body.get("error") != "invalid_client":
        raise StepFailed(f"a wrong secret: HTTP {response.status_code} {body}, not 401 invalid_client")
    if not challenge.startswith("Basic"):
        raise StepFailed(f"a 401 with WWW-Authenticate {challenge!r}, not a Basic challenge")

    step("4: scopes the client may not have")
    narrow = Client(rest, args.narrow_client_id, args.narrow_client_secret, "client_secret_basic", deadline)
    refusals = summary["invalid_scope"] = {}
    refusals["client_scim"] = client.refused("scim", "invalid_scope", 400)
    refusals["narrow_images_read"] = narrow.refused("images:read", "invalid_scope", 400)

    step("5: introspection")
    answer = client.introspect(token["access_token"])
    summary["introspection"] = answer
    if answer.get("active") is not True:
        raise StepFailed(f"step 1's token introspects {answer}, not active")
    missing = [k for k in ("token_type", "client_id", "sub", "scope", "iss", "aud", "iat", "exp", "jti")
               if k not in answer]
    if missing:
        raise StepFailed(f"an active token's introspection lacks {missing}")
    if answer["client_id"] != args.client_id:
        raise StepFailed(f"step 1's token introspects as client {answer['client_id']!r}, not CLIENT")
    if answer["scope"] != "images:read":
        raise StepFailed(f"step 1's token introspects with scope {answer['scope']!r}, not images:read")
    if not all(isinstance(answer[k], int) for k in ("iat", "exp")) or answer["exp"] <= answer["iat"]:
        raise StepFailed(f"step 1's token has iat {answer['iat']!r} and exp {answer['exp']!r}")
    garbage = client.introspect("not-a-token")
    summary["introspection_of_garbage"] = garbage
    if garbage != {"active": False}:
        raise StepFailed(f"'not-a-token' introspects {garbage}, not {{\"active\": false}}")

    step("6: the images service with client tokens")
    channel = grpc.insecure_channel(args.grpc_target, options=[("grpc.enable_http_proxy", 0)])
    stub = rpc.ImageDeliveryStub(channel)
    listing = stub.ListImages(pb.ListImagesRequest(owner_id=args.owner_id),
                              metadata=bearer(token), timeout=deadline.left())
    summary["images"] = len(listing.images)
    summary["image_owners"] = sorted({image.owner_id for image in listing.images})
    if len(listing.images) != 1 or listing.next_page_token:
        raise StepFailed(f"ListImages(owner_id=OWNER_ID) gave {len(listing.images)} images "
                         f"(next_page_token {listing.next_page_token!r}), not exactly one")
    if listing.images[0].owner_id != args.owner_id:
        raise StepFailed(f"ListImages(owner_id=OWNER_ID) gave an image of {listing.images[0].owner_id!r}")
    grpc_seen = summary["grpc"] = {}
    grpc_seen["no_owner"] = refused_rpc(
        lambda: stub.ListImages(pb.ListImagesRequest(), metadata=bearer(token), timeout=deadline.left()),
        "ListImages without owner_id")
    expect_status(grpc_seen["no_owner"], "INVALID_ARGUMENT", "ListImages without owner_id")
    narrow_token = narrow.granted("events:read")
    if narrow_token["scope"] != "events:read":
        raise StepFailed(f"NARROW asked for events:read, granted {narrow_token['scope']!r}")
    grpc_seen["narrow_token"] = refused_rpc(
        lambda: stub.ListImages(pb.ListImagesRequest(owner_id=args.owner_id),
                                metadata=bearer(narrow_token), timeout=deadline.left()),
        "ListImages with an events:read token")
    expect_status(grpc_seen["narrow_token"], "PERMISSION_DENIED", "ListImages with an events:read token")
    upload = [
        pb.UploadImageRequest(metadata=pb.UploadMetadata(filename="pixel.png", content_type="image/png")),
        pb.UploadImageRequest(chunk=tiny_png()),
    ]
    grpc_seen["upload"] = refused_rpc(
        lambda: stub.UploadImage(iter(upload), metadata=bearer(token), timeout=deadline.left()),
        "UploadImage with a client token")
    expect_status(grpc_seen["upload"], "PERMISSION_DENIED", "UploadImage with a client token")

    step("7: NARROW revokes CLIENT's token")
    response = narrow.revoke(token["access_token"])
    foreign = summary["foreign_revoke"] = {"status": response.status_code}
    if response.status_code != 400:
        raise StepFailed(f"NARROW revoking CLIENT's token: HTTP {response.status_code} "
                         f"{response.text[:200]!r}, not 400 unauthorized_client")
    foreign["error"] = json_object(response, "NARROW revoking CLIENT's token").get("error")
    if foreign["error"] != "unauthorized_client":
        raise StepFailed(f"NARROW revoking CLIENT's token: {foreign['error']!r}, not unauthorized_client")
    still = client.introspect(token["access_token"])
    foreign["still_active"] = still.get("active")
    if still.get("active") is not True:
        raise StepFailed(f"after NARROW's refused revocation the token introspects {still}")

    step("8: CLIENT revokes its token")
    response = client.revoke(token["access_token"])
    revoked = summary["revoke"] = {"status": response.status_code, "body_bytes": len(response.content)}
    if response.status_code != 200 or response.content:
        raise StepFailed(f"CLIENT revoking its token: HTTP {response.status_code} "
                         f"{response.text[:200]!r}, not 200 with an empty body")
    revoked["introspection"] = client.introspect(token["access_token"])
    if revoked["introspection"] != {"active": False}:
        raise StepFailed(f"a revoked token introspects {revoked['introspection']}")
    revoked["list_images"] = refused_rpc(
        lambda: stub.ListImages(pb.ListImagesRequest(owner_id=args.owner_id),
                                metadata=bearer(token), timeout=deadline.left()),
        "ListImages with a revoked token")
    expect_status(revoked["list_images"], "UNAUTHENTICATED", "ListImages with a revoked token")
    again = client.revoke(token["access_token"])
    revoked["again_status"] = again.status_code
    if again.status_code != 200:
        raise StepFailed(f"revoking a revoked token: HTTP {again.status_code} {again.text[:200]!r}, not 200")
    channel.close()


def watchdog(seconds):
    """The last resort: a call stuck past every deadline still ends the run."""

    def expire():
        print(f"oauth_authlib: still running {seconds:.0f}s after --max-seconds; giving up",
              file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main():
    args = parse_args(sys.argv[1:])
    watchdog(args.max_seconds + 15)
    deadline = Deadline(args.max_seconds)
    summary = {"steps_passed": []}
    current = {"step": None}

    def step(name):
        if current["step"] is not None:
            summary["steps_passed"].append(current["step"])
        current["step"] = name

    error = None
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(args.proto_dir, pathlib.Path(out))
        try:
            scenario(args, pb, rpc, summary, step, deadline)
            step(None)
        except StepFailed as e:
            error = str(e)
        except grpc.RpcError as e:
            error = f"{e.code().name}: {e.details()}"
        except OAuthError as e:
            error = f"authlib: {e}"
        except requests.RequestException as e:
            error = f"{type(e).__name__}: {e}"
    if error:
        summary["failed_step"] = current["step"]
        summary["error"] = error
    print(json.dumps(summary), flush=True)
    if error:
        print(f"oauth_authlib: step {current['step']}: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The fault drill's driver (scripts/fault-drill sets it up and runs it).

Runs `hub serve` against a PostgreSQL cluster, a SecantusDB and an s3s-fs of
its own, keeps steady traffic going from every protocol (REST registrations
and logins, SOAP 1.1 registrations, session verification, gRPC uploads),
and takes each backing server away for OUTAGE seconds and back:

- PostgreSQL: every request in the outage gets a fast 503 / Server fault /
  UNAVAILABLE, /ready is red while /health stays green; within RECOVERY
  seconds after it returns every protocol succeeds again, with no restart of
  the hub; every registration answered with success is in the database and
  none answered with a fault is.
- MongoDB: logins and verification keep working; after it returns every
  session event arrives in session_events exactly once.
- S3: uploads fail cleanly (UNAVAILABLE) and succeed again after; every
  stored object has its row and every row its object.

Prints what it saw and exits non-zero on the first broken promise.
"""

import json
import os
import pathlib
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import boto3
import grpc
import pymongo
import requests
from botocore.config import Config as BotoConfig
from grpc_tools import protoc
import importlib.resources

OUTAGE = 10.0
RECOVERY = 5.0
FAST = 3.0  # an answer during an outage must come within this many seconds

ROOT = pathlib.Path(__file__).resolve().parent.parent
DRILL = pathlib.Path(os.environ["DRILL_DIR"])
HUB = os.environ["HUB_BIN"]
PG_PORT = os.environ["PG_PORT"]
PSQL = os.environ["PSQL"]
S3_KEYS = ("drill-access", "drill-secret-key")


_GIVEN: set = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port taken
    by binding 0 and releasing it can be handed out again (as the source
    port of any outgoing connection) before the server binds it."""
    low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(20000, max(low, 20001))
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise SystemExit("no free port below the ephemeral range")


def wait_port(port: int, up: bool = True, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} did not {'open' if up else 'close'}")


def fail(message: str) -> None:
    print(f"FAULT DRILL FAILED: {message}", flush=True)
    raise SystemExit(1)


def say(message: str) -> None:
    print(f"[drill] {message}", flush=True)


class Server:
    """A backing server process the drill can stop and start again."""

    def __init__(self, name: str, port: int, argv: list):
        self.name, self.port, self.argv, self.process = name, port, argv, None

    def start(self) -> None:
        log = open(DRILL / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)
        wait_port(self.port)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        wait_port(self.port, up=False)


def psql(sql: str) -> str:
    return subprocess.run(
        [PSQL, "-h", "127.0.0.1", "-p", PG_PORT, "-U", "postgres", "-d", "drill", "-At", "-c", sql],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


class Outcome:
    def __init__(self, kind: str, at: float, seconds: float, ok: bool, code: str, key: str = ""):
        self.kind, self.at, self.seconds, self.ok, self.code, self.key = kind, at, seconds, ok, code, key


class Traffic:
    """Steady requests from every protocol, each outcome recorded."""

    def __init__(self, urls: dict, token: str, stubs):
        self.urls, self.token, self.stubs = urls, token, stubs
        self.outcomes, self.lock, self.stopping = [], threading.Lock(), threading.Event()
        self.threads = []

    def record(self, kind, started, ok, code, key=""):
        with self.lock:
            self.outcomes.append(Outcome(kind, started, time.monotonic() - started, ok, code, key))

    def loop(self, kind, call):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                ok, code, key = call()
            except Exception as e:  # noqa: BLE001 - a transport failure is an outcome too
                ok, code, key = False, f"exception {type(e).__name__}", ""
            self.record(kind, started, ok, code, key)
            time.sleep(0.2)

    def rest_register(self):
        name = f"r{uuid.uuid4().hex[:12]}"
        r = requests.post(f"{self.urls['rest-auth']}/register", timeout=30, json={
            "username": name, "email": f"{name}@example.com", "password": "correct horse battery"})
        return r.status_code == 201, (r.json().get("error") or {}).get("code", str(r.status_code)), name

    def soap_register(self):
        name = f"s{uuid.uuid4().hex[:12]}"
        envelope = (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:u="urn:polyhub:users:v1"><soap:Body><u:RegisterUser>'
            f"<u:username>{name}</u:username><u:email>{name}@example.com</u:email>"
            "<u:password>correct horse battery</u:password></u:RegisterUser></soap:Body></soap:Envelope>"
        )
        r = requests.post(f"{self.urls['soap-register']}/register", data=envelope, timeout=30,
                          headers={"content-type": "text/xml; charset=utf-8"})
        if r.status_code == 200:
            return True, "OK", name
        code = r.text.split("ErrorCode>")[1].split("<")[0] if "ErrorCode>" in r.text else str(r.status_code)
        return False, code, name

    def login_and_verify(self):
        r = requests.post(f"{self.urls['rest-auth']}/login", timeout=30,
                          json={"username": "drill", "password": "correct horse battery"})
        if r.status_code != 200:
            return False, (r.json().get("error") or {}).get("code", str(r.status_code)), ""
        token = r.json()["token"]
        v = requests.get(f"{self.urls['sessions']}/api/sessions/verify", timeout=30,
                         headers={"authorization": f"Bearer {token}"})
        return v.status_code == 200, (v.json().get("error") or {}).get("code", "OK"), ""

    def upload(self):
        pb, rpc = self.stubs
        channel = grpc.insecure_channel(self.urls["grpc-images"].removeprefix("http://"))
        data = png(uuid.uuid4().bytes)
        requests_ = iter([
            pb.UploadImageRequest(metadata=pb.UploadMetadata(filename="d.png", content_type="image/png")),
            pb.UploadImageRequest(chunk=data),
        ])
        try:
            rpc.ImageDeliveryStub(channel).UploadImage(
                requests_, metadata=[("authorization", f"Bearer {self.token}")], timeout=30)
            return True, "OK", ""
        except grpc.RpcError as e:
            trailers = dict(e.trailing_metadata() or ())
            return False, trailers.get("x-error-code", e.code().name), ""
        finally:
            channel.close()

    def start(self):
        for kind, call in [("rest-register", self.rest_register), ("soap-register", self.soap_register),
                           ("login-verify", self.login_and_verify), ("grpc-upload", self.upload)]:
            t = threading.Thread(target=self.loop, args=(kind, call), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)

    def between(self, kinds, start, end):
        with self.lock:
            return [o for o in self.outcomes if o.kind in kinds and start <= o.at < end]


def png(seed: bytes) -> bytes:
    """A distinct 2 x 2 PNG per seed (so uploads are not deduplicated)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + seed[i * 6:(i + 1) * 6] for i in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def stubs():
    out = DRILL / "stubs"
    out.mkdir(exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}",
                        f"--python_out={out}", f"--grpc_python_out={out}",
                        "polyhub/images/v1/images.proto", "google/api/annotations.proto",
                        "google/api/http.proto"])
    if code != 0:
        fail("protoc failed")
    sys.path.insert(0, str(out))
    from polyhub.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402
    return images_pb2, images_pb2_grpc


def check_outage(traffic, name, kinds, start, end, must_fail=True):
    # Requests that began just before the server returned may be answered
    # by it: they are left out.
    during = traffic.between(kinds, start + 0.5, end - FAST)
    if not during:
        fail(f"{name} outage: no requests were made")
    slow = [o for o in during if o.seconds > FAST]
    if slow:
        fail(f"{name} outage: {len(slow)} answers took over {FAST}s (slowest {max(o.seconds for o in slow):.1f}s)")
    if must_fail:
        wrong = [o for o in during if o.ok or o.code != "UNAVAILABLE"]
        if wrong:
            fail(f"{name} outage: not every answer was UNAVAILABLE: "
                 f"{sorted(set((o.kind, o.code) for o in wrong))}")
    else:
        failed = [o for o in during if not o.ok]
        if failed:
            fail(f"{name} outage: requests that do not need {name} failed: "
                 f"{sorted(set((o.kind, o.code) for o in failed))}")
    say(f"{name} away: {len(during)} answers, slowest {max(o.seconds for o in during):.2f}s")


def check_recovery(traffic, name, kinds, back, settle):
    after = traffic.between(kinds, back + RECOVERY, settle)
    if not after:
        fail(f"{name}: no requests after recovery")
    failed = [o for o in after if not o.ok]
    if failed:
        fail(f"{name}: {len(failed)} requests still failed {RECOVERY}s after it returned: "
             f"{sorted(set((o.kind, o.code) for o in failed))}")
    for kind in kinds:
        if not any(o.kind == kind and o.ok for o in after):
            fail(f"{name}: no {kind} succeeded after it returned")
    say(f"{name} back: every protocol succeeds again within {RECOVERY}s ({len(after)} answers after)")


def check_webhooks(endpoint: str, out: pathlib.Path) -> None:
    """Every user and session event written after the endpoint was added
    reached the receiver, verified; each user's in the log's order; a
    duplicate only ever with the same webhook-id and body."""
    subscriber = f"webhook:{endpoint}"
    deadline = time.monotonic() + 90
    while psql("SELECT count(*) FROM event_deliveries "
               f"WHERE subscriber = '{subscriber}' AND delivered_at IS NULL") != "0":
        if time.monotonic() > deadline:
            fail("the webhook endpoint's queue did not drain after its receiver returned")
        time.sleep(0.5)
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    rejected = [line for line in lines if line["outcome"] == "rejected"]
    if rejected:
        fail(f"deliveries the standardwebhooks library refused: {rejected[:3]}")
    verified = [line for line in lines if line["outcome"] == "verified"]
    queued = set(psql(f"SELECT e.event_id FROM events e JOIN event_deliveries d ON d.event_id = e.id "
                      f"WHERE d.subscriber = '{subscriber}'").split())
    received, first = {}, []
    for line in verified:
        body = line["body"]
        if line["webhook_id"] != body["event_id"]:
            fail(f"webhook-id {line['webhook_id']} is not its event's id {body['event_id']}")
        if body["event_id"] in received:
            if received[body["event_id"]] != body:
                fail(f"event {body['event_id']} came twice with different bodies")
            continue
        received[body["event_id"]] = body
        first.append(body)
    missing = queued - set(received)
    if missing or not queued:
        fail(f"{len(queued)} events queued for the webhook, {len(missing)} never arrived")
    last = {}
    for body in first:
        user = body["user_id"]
        if user in last and body["id"] < last[user]:
            fail(f"user {user}'s event {body['id']} arrived after its later event {last[user]}")
        last[user] = body["id"]
    say(f"{len(queued)} webhook deliveries verified by standardwebhooks, each user's in order, "
        f"{len(verified) - len(first)} repeats, all with their webhook-id")


def main():
    mongo_port, s3_port = free_port(), free_port()
    mongo = Server("mongo", mongo_port, [str(ROOT / ".venv/bin/secantusd-py"), "--host", "127.0.0.1",
                                          "--port", str(mongo_port), "--storage-path", str(DRILL / "mongo"),
                                          "--log-level", "WARNING"])
    s3 = Server("s3", s3_port, [os.environ["S3S_FS_BIN"], "--host", "127.0.0.1", "--port", str(s3_port),
                                "--access-key", S3_KEYS[0], "--secret-key", S3_KEYS[1], str(DRILL / "s3")])
    (DRILL / "s3").mkdir()
    mongo.start()
    s3.start()
    ports = {name: free_port() for name in
             ["REST_AUTH", "SOAP_REGISTER", "SOAP_LOOKUP", "SESSIONS", "SESSION_TRACKER", "GRPC_IMAGES"]}
    env = {
        "PATH": os.environ["PATH"],
        "POLYHUB_DATABASE__URL": f"postgres://postgres@127.0.0.1:{PG_PORT}/drill",
        "POLYHUB_DATABASE__ACQUIRE_TIMEOUT_MS": "1000",
        "POLYHUB_MONGO__URL": f"mongodb://127.0.0.1:{mongo_port}/?retryWrites=false",
        "POLYHUB_MONGO__SERVER_SELECTION_TIMEOUT_MS": "1000",
        "POLYHUB_RELAY__MAX_BACKOFF_MS": "1000",
        # The drill's webhook receiver is on loopback; it may be reached.
        "POLYHUB_WEBHOOKS__ALLOWED_NETWORKS": '["127.0.0.1/32"]',
        "POLYHUB_WEBHOOKS__MIN_BACKOFF_MS": "200",
        "POLYHUB_WEBHOOKS__MAX_BACKOFF_MS": "2000",
        "POLYHUB_IMAGES__S3__ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "POLYHUB_IMAGES__S3__ACCESS_KEY": S3_KEYS[0],
        "POLYHUB_IMAGES__S3__SECRET_KEY": S3_KEYS[1],
        "POLYHUB_IMAGES__S3__BUCKET": "drill",
        "POLYHUB_IMAGES__S3__TIMEOUT_MS": "2000",
        "POLYHUB_TOKENS__SIGNING_KEY_PATH": str(DRILL / "signing.pem"),
        "POLYHUB_HTTP__READY_TIMEOUT_MS": "1000",
        "POLYHUB_LOG__LEVEL": "warn",
        # The drill logs one user in five times a second.
        "POLYHUB_SERVICES__REST_AUTH__LOGIN_LIMIT__PER_USER_BURST": "1000000",
        "POLYHUB_SERVICES__REST_AUTH__LOGIN_LIMIT__PER_IP_BURST": "1000000",
        # Steady registrations from this one address are the drill's probe,
        # not a flood: the per-client registration budget is widened.
        "POLYHUB_LIMITS__REGISTRATION_PER_CLIENT__BURST": "1000000",
        "POLYHUB_LIMITS__REGISTRATION_PER_CLIENT__REPLENISH_MS": "1",
        **{f"POLYHUB_SERVICES__{k}__PORT": str(v) for k, v in ports.items()},
    }
    subprocess.run([HUB, "keys", "generate", "--out", env["POLYHUB_TOKENS__SIGNING_KEY_PATH"]],
                   env=env, check=True, capture_output=True)
    subprocess.run([HUB, "migrate"], env=env, check=True, capture_output=True)
    # A webhook endpoint for every user and session event, added with the
    # operator's command; its receiver verifies each delivery with the
    # standardwebhooks library.
    hook_port = free_port()
    added = subprocess.run([HUB, "webhooks", "add", f"http://127.0.0.1:{hook_port}/hook",
                            "--events", "user.*", "session.*"],
                           env=env, check=True, capture_output=True, text=True)
    endpoint = json.loads(added.stdout)
    hooks_out = DRILL / "webhooks.jsonl"
    receiver = Server("webhook-receiver", hook_port, [
        str(ROOT / ".venv/bin/python"), str(ROOT / "hub/tests/clients/webhook_receiver.py"),
        str(hook_port), str(hooks_out), endpoint["secret"], "--max-seconds", "600"])
    receiver.start()
    log = open(DRILL / "hub.log", "ab")
    hub = subprocess.Popen([HUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    urls = {}
    while len(urls) < 6:
        line = hub.stdout.readline()
        if not line:
            log.flush()
            said = (DRILL / "hub.log").read_text(errors="replace").splitlines()[-20:]
            fail("hub serve stopped before listening:\n" + "\n".join(said))
        service, url = line.split()
        urls[service] = url
    threading.Thread(target=lambda: [None for _ in hub.stdout], daemon=True).start()

    try:
        r = requests.post(f"{urls['rest-auth']}/register", timeout=30, json={
            "username": "drill", "email": "drill@example.com", "password": "correct horse battery"})
        if r.status_code != 201:
            fail(f"could not register the drill user: {r.text}")
        token = requests.post(f"{urls['rest-auth']}/login", timeout=30, json={
            "username": "drill", "password": "correct horse battery"}).json()["token"]
        traffic = Traffic(urls, token, stubs())
        # The store's bucket is made in the background; wait for the first upload.
        deadline = time.monotonic() + 30
        while not traffic.upload()[0]:
            if time.monotonic() > deadline:
                fail("uploads never started working")
            time.sleep(0.5)
        traffic.start()
        time.sleep(3)

        # PostgreSQL.
        all_kinds = ["rest-register", "soap-register", "login-verify", "grpc-upload"]
        subprocess.run(os.environ["PG_STOP"], shell=True, check=True, capture_output=True)
        down = time.monotonic()
        ready_codes, health_codes = set(), set()
        while time.monotonic() < down + OUTAGE:
            ready_codes.add(requests.get(f"{urls['rest-auth']}/ready", timeout=5).status_code)
            health_codes.add(requests.get(f"{urls['rest-auth']}/health", timeout=5).status_code)
            time.sleep(0.5)
        subprocess.run(os.environ["PG_START"], shell=True, check=True, capture_output=True)
        back = time.monotonic()
        if ready_codes != {503} or health_codes != {200}:
            fail(f"PostgreSQL away: /ready answered {ready_codes}, /health {health_codes}")
        say("PostgreSQL away: /ready 503, /health 200 throughout")
        time.sleep(RECOVERY + 4)
        check_outage(traffic, "PostgreSQL", all_kinds, down, back)
        check_recovery(traffic, "PostgreSQL", all_kinds, back, time.monotonic())

        # MongoDB: sessions keep working; events arrive later, exactly once.
        mongo.stop()
        down = time.monotonic()
        time.sleep(OUTAGE)
        mongo.start()
        back = time.monotonic()
        check_outage(traffic, "MongoDB", ["login-verify", "rest-register"], down, back, must_fail=False)

        # S3: uploads fail cleanly.
        s3.stop()
        down = time.monotonic()
        time.sleep(OUTAGE)
        s3.start()
        back = time.monotonic()
        time.sleep(RECOVERY + 4)
        check_outage(traffic, "S3", ["grpc-upload"], down, back)
        check_outage(traffic, "S3 (other protocols)", ["login-verify", "rest-register"], down, back,
                     must_fail=False)
        check_recovery(traffic, "S3", ["grpc-upload"], back, time.monotonic())

        # The webhook receiver: away 10 s, deliveries wait and come later.
        receiver.stop()
        time.sleep(OUTAGE)
        receiver.start()
        time.sleep(RECOVERY)
        traffic.stop()

        # Nothing lost, nothing half written.
        registrations = [o for o in traffic.outcomes if o.kind.endswith("register")]
        stored = set(psql("SELECT username FROM users").split())
        lost = [o.key for o in registrations if o.ok and o.key not in stored]
        half = [o.key for o in registrations if not o.ok and o.key in stored]
        if lost or half:
            fail(f"registrations lost: {lost}; answered with a fault yet stored: {half}")
        say(f"{sum(o.ok for o in registrations)} registrations answered OK are stored, "
            f"{sum(not o.ok for o in registrations)} refused are absent")

        deadline = time.monotonic() + 60
        while psql("SELECT count(*) FROM event_deliveries "
                   "WHERE subscriber = 'activity' AND delivered_at IS NULL") != "0":
            if time.monotonic() > deadline:
                fail("the activity log's queue did not drain after MongoDB returned")
            time.sleep(0.5)
        activity = pymongo.MongoClient(env["POLYHUB_MONGO__URL"])["polyhub"]
        # user_events keeps the users' events and the webhook endpoints' own.
        for kind, collection, where in (
                ("session", "session_events", "type LIKE 'session.%'"),
                ("user", "user_events", "type LIKE 'user%' OR type LIKE 'webhook.%'")):
            logged = set(psql(f"SELECT event_id FROM events WHERE {where}").split())
            recorded = [d["_id"] for d in activity[collection].find({}, {"_id": 1})]
            if len(recorded) != len(set(recorded)) or set(recorded) != logged:
                fail(f"{kind} events: {len(logged)} in the event log, {len(recorded)} recorded "
                     f"({len(set(recorded))} distinct)")
            if not logged:
                fail(f"no {kind} events in the event log")
            say(f"{len(logged)} {kind} events, each in MongoDB exactly once")
        created = int(psql("SELECT count(*) FROM events WHERE type = 'user.created'"))
        users = int(psql("SELECT count(*) FROM users"))
        if created != users:
            fail(f"{users} users but {created} user.created events")
        say(f"{users} users, each with its user.created event")

        check_webhooks(endpoint["id"], hooks_out)

        client = boto3.client("s3", endpoint_url=env["POLYHUB_IMAGES__S3__ENDPOINT"],
                              aws_access_key_id=S3_KEYS[0], aws_secret_access_key=S3_KEYS[1],
                              region_name="us-east-1",
                              config=BotoConfig(s3={"addressing_style": "path"}))
        objects = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="drill"):
            objects.update(o["Key"] for o in page.get("Contents", []))
        rows = set(psql("SELECT object_key FROM images").split())
        if objects != rows:
            fail(f"objects without rows: {sorted(objects - rows)[:5]}; rows without objects: "
                 f"{sorted(rows - objects)[:5]}")
        say(f"{len(rows)} images: every object has its row and every row its object")
        say("PASSED")
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
        for server in (mongo, s3, receiver):
            if server.process and server.process.poll() is None:
                server.process.kill()


if __name__ == "__main__":
    main()

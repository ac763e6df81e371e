"""The hostile-load drill (run by scripts/hostile-drill): one hostile client,
on loopback only, holds idle sockets and half-sent request heads, floods
registrations and made-up methods against `hub serve`, while honest clients
on other loopback addresses log in and look users up. Bounded in count and
time; it stops by itself and prints what the honest clients saw and what
the process held before and after.

Environment: HUB_BIN, DATABASE_URL (the admin URL of the test PostgreSQL),
DRILL_DIR, DRILL_SECONDS (10 for the short form), DRILL_IDLE (idle sockets).
"""

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HUB = os.environ["HUB_BIN"]
DRILL = Path(os.environ["DRILL_DIR"])
SECONDS = float(os.environ.get("DRILL_SECONDS", "10"))
IDLE = int(os.environ.get("DRILL_IDLE", "5000"))
SLOW = 200
HOSTILE = "127.0.0.1"
HONEST = ["127.0.0.2", "127.0.0.3"]
ACCOUNTS = 4


def say(message):
    print(f"[hostile] {message}", flush=True)


def fail(message):
    say(f"FAILED: {message}")
    sys.exit(1)


_GIVEN = set()


def free_port():
    """A free loopback port below the kernel's ephemeral range: a port taken
    by binding 0 and releasing it can be handed out again (as the source
    port of any outgoing connection) before the server binds it."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
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


def request(port, method, path, body=None, source=None, timeout=10.0, headers=None):
    """One request on a fresh connection: (status, body, seconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        all_headers = {"content-type": "application/json"} if payload else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=payload, headers=all_headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, time.monotonic() - started
    except OSError as e:
        return 0, str(e).encode(), time.monotonic() - started
    finally:
        conn.close()


def process_state(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss // 1024, fds


def series(port):
    status, body, _ = request(port, "GET", "/metrics", source=HONEST[0])
    if status != 200:
        fail(f"/metrics answered {status}")
    return sum(1 for line in body.decode().splitlines() if line.startswith("polyhub_http_requests_total{"))


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class Hostile:
    """Everything the hostile client does, until stopped."""

    def __init__(self, rest, lookup):
        self.rest, self.lookup = rest, lookup
        self.stop = threading.Event()
        self.held = []
        self.refused = 0
        self.floods = 0
        self.registrations = {}

    def hold_sockets(self):
        for i in range(IDLE):
            if self.stop.is_set():
                return
            port = self.rest if i % 2 == 0 else self.lookup
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(HOSTILE, 0))
                self.held.append(s)
            except OSError:
                self.refused += 1

    def slow_heads(self):
        for i in range(SLOW):
            if self.stop.is_set():
                return
            port = self.rest if i % 2 == 0 else self.lookup
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(HOSTILE, 0))
                s.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\n")
                self.held.append(s)
            except OSError:
                self.refused += 1

    def register_flood(self):
        while not self.stop.is_set():
            name = "f" + uuid.uuid4().hex[:12]
            status, _, _ = request(self.rest, "POST", "/register",
                                   {"username": name, "email": f"{name}@example.com",
                                    "password": "flood flood flood"},
                                   source=HOSTILE, timeout=5)
            self.floods += 1
            self.registrations[status] = self.registrations.get(status, 0) + 1

    def made_up_methods(self):
        i = 0
        while not self.stop.is_set():
            request(self.rest if i % 2 else self.lookup, f"MADEUP{i}", f"/made/up/{i}", source=HOSTILE, timeout=5)
            i += 1
            self.floods += 1

    def run(self):
        threads = [threading.Thread(target=t, daemon=True) for t in
                   [self.hold_sockets, self.slow_heads, self.register_flood, self.register_flood,
                    self.made_up_methods]]
        for t in threads:
            t.start()
        return threads

    def end(self):
        self.stop.set()
        for s in self.held:
            try:
                s.close()
            except OSError:
                pass


def main():
    admin = os.environ["DATABASE_URL"]
    database = admin.rsplit("/", 1)[0] + f"/hostile_{uuid.uuid4().hex[:12]}"
    rest, lookup = free_port(), free_port()
    env = {
        "PATH": os.environ["PATH"],
        "POLYHUB_DATABASE__URL": database,
        "POLYHUB_TOKENS__SIGNING_KEY_PATH": str(DRILL / "signing.pem"),
        "POLYHUB_SERVICES__REST_AUTH__PORT": str(rest),
        "POLYHUB_SERVICES__SOAP_LOOKUP__PORT": str(lookup),
        "POLYHUB_LOG__LEVEL": "warn",
        # The honest client logs its few accounts in several times a second:
        # the login limits are not what this drill is about.
        "POLYHUB_SERVICES__REST_AUTH__LOGIN_LIMIT__PER_USER_BURST": "1000",
        "POLYHUB_SERVICES__REST_AUTH__LOGIN_LIMIT__PER_IP_BURST": "1000",
        # Nor are anonymous lookups' (the honest client looks up 20 a second).
        "POLYHUB_LIMITS__ANONYMOUS_LOOKUP_PER_CLIENT__BURST": "100000",
        "POLYHUB_LIMITS__ANONYMOUS_LOOKUP_PER_CLIENT__REPLENISH_MS": "1",
    }
    subprocess.run([HUB, "keys", "generate", "--out", env["POLYHUB_TOKENS__SIGNING_KEY_PATH"]],
                   env=env, check=True, capture_output=True)
    subprocess.run([HUB, "migrate"], env=env, check=True, capture_output=True)
    log = open(DRILL / "hub.log", "ab")
    hub = subprocess.Popen([HUB, "serve", "--only", "rest-auth,soap-lookup"], env=env,
                           stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while request(rest, "GET", "/health")[0] != 200 or request(lookup, "GET", "/health")[0] != 200:
            if time.monotonic() > deadline:
                fail("hub serve did not start")
            time.sleep(0.1)
        names = [f"honest{i}" for i in range(ACCOUNTS)]
        for name in names:
            status, body, _ = request(rest, "POST", "/register",
                                      {"username": name, "email": f"{name}@example.com",
                                       "password": "correct horse battery"}, source=HONEST[0])
            if status != 201:
                fail(f"registering {name}: {status} {body[:200]}")
        rss_before, fds_before = process_state(hub.pid)
        series_before = series(rest)

        hostile = Hostile(rest, lookup)
        hostile.run()
        time.sleep(1.0)  # the flood is on before the honest clients come
        logins, lookups = [], []
        honest_failures = []
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < SECONDS:
            name = names[i % ACCOUNTS]
            status, body, took = request(lookup, "GET", f"/user/soap?username={name}", source=HONEST[1])
            (lookups if status == 200 else honest_failures).append(took if status == 200 else ("lookup", status, body[:200]))
            if i % 5 == 0:
                status, body, took = request(rest, "POST", "/login",
                                             {"username": name, "password": "correct horse battery"},
                                             source=HONEST[0], timeout=15)
                (logins if status == 200 else honest_failures).append(took if status == 200 else ("login", status, body[:200]))
            i += 1
            time.sleep(0.05)
        status = request(rest, "GET", "/health", source=HONEST[0])[0]
        rss_during, fds_during = process_state(hub.pid)
        series_after = series(rest)
        hostile.end()

        honest = len(logins) + len(lookups)
        total = honest + len(honest_failures)
        say(f"{SECONDS:.0f} s: the hostile client opened {len(hostile.held)} sockets ({hostile.refused} failed to connect), "
            f"{hostile.floods} flood requests")
        say(f"honest clients: {honest}/{total} succeeded; logins {len(logins)} (p99 {percentile(logins, 0.99) * 1000:.0f} ms), "
            f"lookups {len(lookups)} (p99 {percentile(lookups, 0.99) * 1000:.1f} ms)")
        stored = hostile.registrations.get(201, 0)
        say(f"flood registrations: {stored} stored, {hostile.registrations.get(429, 0)} refused with 429 "
            f"(all answers: {dict(sorted(hostile.registrations.items()))})")
        say(f"process: RSS {rss_before} -> {rss_during} MiB, open files {fds_before} -> {fds_during}; "
            f"request series {series_before} -> {series_after}")
        if honest_failures:
            fail(f"honest requests failed: {honest_failures[:5]}")
        if not logins or not lookups:
            fail("the honest clients were not served")
        if status != 200:
            fail(f"/health answered {status} under the flood")
        # The default budget: 20 at once, then one every 3 s.
        if stored > 20 + SECONDS / 3 + 2:
            fail(f"the flood stored {stored} registrations past its client's budget")
        if series_after - series_before > 20:
            fail(f"made-up requests created {series_after - series_before} metric series")
        if fds_during > 2 * 160 + 200:
            fail(f"the hostile client held {fds_during} open files (caps: 128 per client and port)")
        say("PASSED")
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()


if __name__ == "__main__":
    main()

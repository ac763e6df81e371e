"""A grpcio client of polyhub's event feed (polyhub.events.v1.Events/Watch),
with stubs generated from proto/ by grpcio-tools when it runs: a client no
one on this project wrote.

    grpcio_events.py TARGET ADMIN_TOKEN USER_TOKEN PROTO_DIR REST_BASE_URL SUFFIX
                     [--max-seconds S]

TARGET is the gRPC port (127.0.0.1:PORT), REST_BASE_URL rest-auth's
http://127.0.0.1:PORT, SUFFIX makes this run's usernames unique (gra<SUFFIX>,
grb<SUFFIX>: 3 to 32 of a-z0-9._-).

  1. Watch(topics=[user_updates]) as the admin, register gra<SUFFIX> over
     REST, receive its user.created, cancel the stream;
  2. register grb<SUFFIX>, Watch(after=<id of gra's event>): grb's
     user.created arrives, every id after `after` and strictly increasing;
  3. Watch with USER_TOKEN: PERMISSION_DENIED;
  4. Watch(topics=[nope]): INVALID_ARGUMENT.

Prints one JSON document with what it saw and exits 0; on a failure, prints
what it saw so far with "failed_step" and "error", says why on stderr, exits
1. Every call has a deadline, and the whole run is bounded by --max-seconds
(default 90).
"""

import argparse
import importlib.resources
import ipaddress
import json
import os
import pathlib
import queue
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
from grpc_tools import protoc

PASSWORD = "correct horse battery"
# How long one event or one answer may take to arrive.
WAIT = 10.0


class StepFailed(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="grpcio_events.py", description=__doc__.split("\n")[0])
    for name in ("target", "admin_token", "user_token", "proto_dir", "rest_base_url", "suffix"):
        parser.add_argument(name)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9._-]{0,29}", args.suffix):
        parser.error("SUFFIX must be at most 29 of a-z0-9._- (usernames are gra<SUFFIX>)")
    host, _, port = args.target.rpartition(":")
    if not loopback(host.strip("[]")) or not port.isdigit():
        parser.error(f"TARGET must be 127.0.0.1:PORT, not {args.target!r}")
    url = urllib.parse.urlsplit(args.rest_base_url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"REST_BASE_URL must be http://127.0.0.1:PORT, not {args.rest_base_url!r}")
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
            "polyhub/events/v1/events.proto",
        ]
    )
    if code != 0:
        raise SystemExit(f"grpcio_events: protoc failed with {code}")
    sys.path.insert(0, str(out))
    from polyhub.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402

    return events_pb2, events_pb2_grpc


# Only 127.0.0.1: no proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def register(base_url, username):
    """The new user's profile ({"id", "username", ...})."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/register",
        data=json.dumps(
            {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    for attempt in range(3):
        try:
            with OPENER.open(request, timeout=WAIT) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
            if status == 429 and attempt < 2:  # registrations are rate limited
                time.sleep(min(float(e.headers.get("Retry-After") or 1), 5.0))
                continue
        except OSError as e:
            raise StepFailed(f"POST /register {username}: {e}")
        break
    try:
        body = json.loads(text)
    except ValueError:
        body = text.decode(errors="replace")
    if status not in (200, 201) or not isinstance(body, dict) or "id" not in body:
        raise StepFailed(f"POST /register {username}: HTTP {status} {body}")
    return body


class Deadline:
    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, most=WAIT):
        left = min(most, self.end - time.monotonic())
        if left <= 0:
            raise StepFailed(f"--max-seconds {self.seconds} passed")
        return left


class Watch:
    """One Watch stream, read by a thread into a queue."""

    _END = object()

    def __init__(self, stub, request, metadata, timeout, name):
        self.name = name
        self.call = stub.Watch(request, metadata=metadata, timeout=timeout)
        self.events = []
        self.status = None
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.call:
                self.queue.put(event)
        except grpc.RpcError as e:
            self.status = e.code().name
        else:
            self.status = "OK"
        finally:
            self.queue.put(self._END)

    def started(self):
        """Waits for the response headers: the server has taken the request
        and fixed where the stream starts (bounded by the call's deadline)."""
        self.call.initial_metadata()
        if self.call.done() and self.call.code() != grpc.StatusCode.OK:
            raise StepFailed(f"{self.name}: the stream ended at once: {self.ended()}")

    def ended(self):
        return f"{self.call.code()} {self.call.details()!r}"

    def wait_for(self, matches, what, seconds):
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"{self.name}: no {what} in {seconds:.1f}s")
            try:
                item = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if item is self._END:
                raise StepFailed(f"{self.name}: the stream ended before {what}: {self.ended()}")
            self.check(item)
            self.events.append(item)
            if matches(item):
                return item

    def check(self, event):
        if self.events and event.id <= self.events[-1].id:
            raise StepFailed(
                f"{self.name}: ids not strictly increasing: {self.events[-1].id} then {event.id}"
            )
        if event.topic != "user_updates" or not event.type.startswith(("user.", "users.")):
            raise StepFailed(f"{self.name}: event {event.id} of type {event.type} under topic {event.topic!r}")
        try:
            json.loads(event.data_json)
        except ValueError:
            raise StepFailed(f"{self.name}: event {event.id}'s data_json is not JSON: {event.data_json!r}")

    def cancel(self):
        self.call.cancel()
        self.thread.join(WAIT)
        return self.status


def created(username):
    def matches(event):
        if event.type != "user.created":
            return False
        data = json.loads(event.data_json)
        return isinstance(data, dict) and data.get("username") == username

    return matches


def refused(stub, pb, metadata, topics, deadline):
    """(status name, details, x-error-code) of a Watch that must fail."""
    call = stub.Watch(pb.WatchRequest(topics=topics), metadata=metadata, timeout=deadline.left())
    try:
        event = next(call)
    except StopIteration:
        return "OK", "", None
    except grpc.RpcError as e:
        trailers = dict(e.trailing_metadata() or ())
        return e.code().name, e.details(), trailers.get("x-error-code")
    call.cancel()
    raise StepFailed(f"Watch({topics}) was answered with an event: {event.type} {event.id}")


def seen(events):
    return [[e.id, e.type] for e in events]


def scenario(args, pb, rpc, summary, step, deadline):
    channel = grpc.insecure_channel(args.target, options=[("grpc.enable_http_proxy", 0)])
    stub = rpc.EventsStub(channel)
    admin = [("authorization", f"Bearer {args.admin_token}")]
    gra, grb = f"gra{args.suffix}", f"grb{args.suffix}"

    step(f"1: Watch(user_updates) and see {gra}'s user.created")
    watch = Watch(stub, pb.WatchRequest(topics=["user_updates"]), admin,
                  deadline.left(3 * WAIT), "first Watch")
    try:
        watch.started()
        user_a = register(args.rest_base_url, gra)
        event_a = watch.wait_for(created(gra), f"user.created of {gra}", deadline.left())
    finally:
        cancelled = watch.cancel()
    if event_a.user_id != user_a["id"]:
        raise StepFailed(f"user.created of {gra} has user_id {event_a.user_id!r}, not {user_a['id']}")
    summary["gra"] = {
        "user_id": user_a["id"], "id": event_a.id, "event_id": event_a.event_id,
        "type": event_a.type, "topic": event_a.topic,
        "username": json.loads(event_a.data_json)["username"],
        "occurred_at": event_a.occurred_at,
    }
    summary["first_watch"] = {"events": seen(watch.events), "after_cancel": cancelled}
    if cancelled != "CANCELLED":
        raise StepFailed(f"the cancelled stream ended with {cancelled}, not CANCELLED")

    step(f"2: register {grb}, Watch(after={event_a.id}) and see its user.created")
    user_b = register(args.rest_base_url, grb)
    watch = Watch(stub, pb.WatchRequest(topics=["user_updates"], after=event_a.id), admin,
                  deadline.left(3 * WAIT), "resumed Watch")
    try:
        event_b = watch.wait_for(created(grb), f"user.created of {grb}", deadline.left())
    finally:
        watch.cancel()
    early = [e for e in watch.events if e.id <= event_a.id]
    if early:
        raise StepFailed(f"events at or before after={event_a.id} were sent: {seen(early)}")
    if event_b.user_id != user_b["id"]:
        raise StepFailed(f"user.created of {grb} has user_id {event_b.user_id!r}, not {user_b['id']}")
    summary["resume"] = {"after": event_a.id, "grb_created": event_b.id, "events": seen(watch.events)}

    step("3: Watch with a user's token")
    user = [("authorization", f"Bearer {args.user_token}")]
    code, details, error_code = refused(stub, pb, user, ["user_updates"], deadline)
    summary["user_token"] = {"status": code, "details": details, "x-error-code": error_code}
    if code != "PERMISSION_DENIED":
        raise StepFailed(f"a user's Watch ended with {code} {details!r}, not PERMISSION_DENIED")

    step("4: Watch(topics=[nope])")
    code, details, error_code = refused(stub, pb, admin, ["nope"], deadline)
    summary["unknown_topic"] = {"status": code, "details": details, "x-error-code": error_code}
    if code != "INVALID_ARGUMENT":
        raise StepFailed(f"Watch(topics=[nope]) ended with {code} {details!r}, not INVALID_ARGUMENT")
    channel.close()


def watchdog(seconds):
    """The last resort: a call stuck past every deadline still ends the run."""

    def expire():
        print(f"grpcio_events: still running {seconds:.0f}s after --max-seconds; giving up",
              file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main():
    args = parse_args(sys.argv[1:])
    watchdog(args.max_seconds + 15)
    deadline = Deadline(args.max_seconds)
    summary, current = {}, {"step": "generate the stubs"}

    def step(name):
        current["step"] = name

    error = None
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = stubs(args.proto_dir, pathlib.Path(out))
        try:
            scenario(args, pb, rpc, summary, step, deadline)
        except StepFailed as e:
            error = str(e)
        except grpc.RpcError as e:
            error = f"{e.code().name}: {e.details()}"
    if error:
        summary["failed_step"] = current["step"]
        summary["error"] = error
    print(json.dumps(summary), flush=True)
    if error:
        print(f"grpcio_events: step {current['step']}: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

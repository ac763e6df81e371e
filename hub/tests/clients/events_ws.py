"""The `websockets` library driving polyhub's live event feed on rest-auth's
port (ws://127.0.0.1:PORT/events/ws): a client no one on this project wrote.

    events_ws.py BASE_URL ADMIN_TOKEN USER_TOKEN SUFFIX [--max-seconds S]

BASE_URL is rest-auth's http://127.0.0.1:PORT; SUFFIX makes this run's
usernames unique (wsa<SUFFIX>, wsb<SUFFIX>: 3 to 32 of a-z0-9._-).

  a. connects as the admin and subscribes to user_updates;
  b. registers wsa<SUFFIX> over REST and waits for its user.created;
  c. unsubscribes user_updates, subscribes session_updates, registers and
     logs in wsb<SUFFIX>: its session.opened arrives, its user.created not;
  d. an unknown topic, an unknown action and a malformed message each get
     INVALID_REQUEST, and the connection still answers a good subscribe;
  e. reconnects with ?after=<id of wsa's event>, subscribes user_updates:
     wsb's user.created arrives, ids strictly increasing;
  f. USER_TOKEN's upgrade is refused with 403, no token's with 401.

Prints one JSON summary of what it saw and exits 0; on a failure, prints the
summary so far with "failed_step" and "error", says why on stderr, exits 1.
Every wait is bounded, and the whole run by --max-seconds (default 90).
"""

import argparse
import asyncio
import ipaddress
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PASSWORD = "correct horse battery"
# How long one event or one answer may take to arrive.
WAIT = 10.0
# How long to go on listening for something that must not come.
QUIET = 1.0
TOPIC_PREFIXES = {
    "user_updates": ("user.", "users."),
    "session_updates": ("session.",),
    "webhook_updates": ("webhook.",),
}


class StepFailed(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="events_ws.py", description=__doc__.split("\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("admin_token")
    parser.add_argument("user_token")
    parser.add_argument("suffix")
    parser.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9._-]{0,29}", args.suffix):
        parser.error("SUFFIX must be at most 29 of a-z0-9._- (usernames are wsa<SUFFIX>)")
    url = urllib.parse.urlsplit(args.base_url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"BASE_URL must be http://127.0.0.1:PORT, not {args.base_url!r}")
    return args


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


def ws_url(base_url, after=None):
    url = urllib.parse.urlsplit(base_url)
    query = urllib.parse.urlencode({"after": after}) if after is not None else ""
    return urllib.parse.urlunsplit(("ws", url.netloc, "/events/ws", query, ""))


# Only 127.0.0.1: no proxy from the environment, for REST or WebSocket.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_json(base_url, path, body):
    """(status, parsed body) of a POST; 429s are retried a little."""
    for attempt in range(3):
        request = urllib.request.Request(
            base_url.rstrip("/") + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with OPENER.open(request, timeout=WAIT) as response:
                status, text = response.status, response.read()
                retry_after = None
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
            retry_after = e.headers.get("Retry-After")
        except OSError as e:  # URLError, a refused connection, a timeout
            raise StepFailed(f"POST {path}: {e}")
        if status != 429 or attempt == 2:
            break
        time.sleep(min(float(retry_after or 1), 5.0))
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode(errors="replace")


async def register(base_url, username):
    status, body = await asyncio.to_thread(
        post_json,
        base_url,
        "/register",
        {"username": username, "email": f"{username}@example.com", "password": PASSWORD},
    )
    if status not in (200, 201) or not isinstance(body, dict) or "id" not in body:
        raise StepFailed(f"POST /register {username}: HTTP {status} {body}")
    return body


async def login(base_url, username):
    status, body = await asyncio.to_thread(
        post_json, base_url, "/login", {"username": username, "password": PASSWORD}
    )
    if status != 200 or not isinstance(body, dict) or "token" not in body:
        raise StepFailed(f"POST /login {username}: HTTP {status} {body}")
    return body


def is_event(message):
    return isinstance(message, dict) and "type" in message and "id" in message


class Feed:
    """One connection: every event it received, in order, and those not
    yet consumed by a wait."""

    def __init__(self, ws, name):
        self.ws = ws
        self.name = name
        self.events = []
        self.pending = []

    async def receive(self, timeout):
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as e:
            raise StepFailed(f"{self.name}: the server closed the connection: {closed(e)}")
        try:
            message = json.loads(text)
        except (TypeError, ValueError):
            raise StepFailed(f"{self.name}: not a JSON text frame: {text!r:.200}")
        if is_event(message):
            self.check_event(message)
            self.events.append(message)
            self.pending.append(message)
        return message

    def check_event(self, event):
        if self.events and event["id"] <= self.events[-1]["id"]:
            raise StepFailed(
                f"{self.name}: ids not strictly increasing: {self.events[-1]['id']} then {event['id']}"
            )
        prefixes = TOPIC_PREFIXES.get(event.get("topic"))
        if prefixes is None or not event["type"].startswith(prefixes):
            raise StepFailed(f"{self.name}: event of type {event['type']} under topic {event.get('topic')}")
        for key in ("event_id", "occurred_at", "data"):
            if key not in event:
                raise StepFailed(f"{self.name}: event {event['id']} has no {key}: {event}")

    async def request(self, message):
        """Sends one message and returns the answer (events in between are
        kept for the waits)."""
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"{self.name}: no answer to {message!r} in {WAIT}s")
            try:
                answer = await self.receive(left)
            except asyncio.TimeoutError:
                continue
            if not is_event(answer):
                return answer

    async def expect_message(self, message, text):
        answer = await self.request(message)
        if not isinstance(answer, dict) or answer.get("message") != text:
            raise StepFailed(f"{self.name}: {message!r} answered {answer!r}, wanted message {text!r}")
        return answer

    async def expect_invalid(self, message):
        answer = await self.request(message)
        if (
            not isinstance(answer, dict)
            or answer.get("code") != "INVALID_REQUEST"
            or not isinstance(answer.get("error"), str)
            or not answer["error"]
        ):
            raise StepFailed(f"{self.name}: {message!r} answered {answer!r}, wanted INVALID_REQUEST")
        return answer

    async def wait_event(self, matches, what, timeout=WAIT):
        """The first received event that matches, waiting at most timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.pending):
                if matches(event):
                    del self.pending[: i + 1]
                    return event
            self.pending.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"{self.name}: no {what} in {timeout}s")
            try:
                message = await self.receive(left)
            except asyncio.TimeoutError:
                continue
            if not is_event(message):
                raise StepFailed(f"{self.name}: unexpected message while waiting for {what}: {message!r}")

    async def listen(self, seconds):
        """Reads what arrives for a while (nothing is asked)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await self.receive(left)
            except asyncio.TimeoutError:
                return
            if not is_event(message):
                raise StepFailed(f"{self.name}: unexpected message: {message!r}")


def closed(e):
    if e.rcvd is not None:
        return f"close code {e.rcvd.code} {e.rcvd.reason!r}"
    return "no close frame"


def created(username):
    return lambda e: e["type"] == "user.created" and (e.get("data") or {}).get("username") == username


def opened_by(user_id):
    return lambda e: e["type"] == "session.opened" and e.get("user_id") == user_id


def seen(events):
    return [[e["id"], e["type"]] for e in events]


def open_feed(url, token):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    return connect(url, additional_headers=headers, proxy=None, open_timeout=WAIT, close_timeout=5)


async def refusal(url, token):
    try:
        async with open_feed(url, token):
            pass
    except InvalidStatus as e:
        return e.response.status_code
    raise StepFailed("the upgrade was accepted")


async def scenario(args, summary, step):
    base, suffix = args.base_url, args.suffix
    wsa, wsb = f"wsa{suffix}", f"wsb{suffix}"
    url = ws_url(base)
    summary["url"] = url

    step("a: connect as the admin and subscribe user_updates")
    async with open_feed(url, args.admin_token) as ws:
        feed = Feed(ws, "first connection")
        await feed.expect_message({"action": "subscribe", "topic": "user_updates"}, "Subscribed to user_updates")

        step(f"b: register {wsa} and see its user.created")
        user_a = await register(base, wsa)
        event_a = await feed.wait_event(created(wsa), f"user.created of {wsa}")
        if event_a.get("user_id") != user_a["id"] or event_a.get("topic") != "user_updates":
            raise StepFailed(f"user.created of {wsa} is not for user {user_a['id']}: {event_a}")
        summary["wsa"] = {"user_id": user_a["id"], "id": event_a["id"],
                          "event_id": event_a["event_id"], "data": event_a["data"]}

        step(f"c: unsubscribe, subscribe session_updates, register and log in {wsb}")
        await feed.expect_message({"action": "unsubscribe", "topic": "user_updates"}, "Unsubscribed from user_updates")
        await feed.expect_message({"action": "subscribe", "topic": "session_updates"}, "Subscribed to session_updates")
        mark = len(feed.events)
        user_b = await register(base, wsb)
        signed_in = await login(base, wsb)
        event_b = await feed.wait_event(opened_by(user_b["id"]), f"session.opened of {wsb}")
        await feed.listen(QUIET)
        after_unsubscribe = feed.events[mark:]
        if any(created(wsb)(e) for e in after_unsubscribe):
            raise StepFailed(f"user.created of {wsb} arrived after user_updates was unsubscribed")
        summary["wsb"] = {
            "user_id": user_b["id"],
            "session_opened": {"id": event_b["id"], "session_id": event_b.get("session_id"),
                               "topic": event_b.get("topic")},
            "login_session_id": signed_in.get("session_id"),
            "events_after_unsubscribe": seen(after_unsubscribe),
        }
        if event_b.get("topic") != "session_updates" or not event_b.get("session_id"):
            raise StepFailed(f"session.opened without topic session_updates or session_id: {event_b}")

        step("d: bad requests get INVALID_REQUEST, the connection stays usable")
        errors = {
            "unknown_topic": await feed.expect_invalid({"action": "subscribe", "topic": "nope"}),
            "unknown_action": await feed.expect_invalid({"action": "dance", "topic": "user_updates"}),
            "malformed": await feed.expect_invalid("this is not json"),
        }
        await feed.expect_message({"action": "subscribe", "topic": "webhook_updates"}, "Subscribed to webhook_updates")
        summary["invalid_request"] = errors
        summary["first_connection"] = seen(feed.events)

    step(f"e: resume after {event_a['id']} and see {wsb}'s user.created")
    async with open_feed(ws_url(base, after=event_a["id"]), args.admin_token) as ws:
        feed = Feed(ws, "resumed connection")
        await feed.expect_message({"action": "subscribe", "topic": "user_updates"}, "Subscribed to user_updates")
        resumed = await feed.wait_event(created(wsb), f"user.created of {wsb} after ?after={event_a['id']}")
        early = [e for e in feed.events if e["id"] <= event_a["id"]]
        if early:
            raise StepFailed(f"events at or before after={event_a['id']} were sent: {seen(early)}")
        if resumed.get("user_id") != user_b["id"]:
            raise StepFailed(f"user.created of {wsb} is not for user {user_b['id']}: {resumed}")
        summary["resume"] = {"after": event_a["id"], "wsb_created": resumed["id"],
                             "events": seen(feed.events)}

    step("f: the upgrade is refused without an admin's token")
    summary["refused"] = {
        "user_token": await refusal(url, args.user_token),
        "no_token": await refusal(url, None),
    }
    if summary["refused"] != {"user_token": 403, "no_token": 401}:
        raise StepFailed(f"wanted 403 for a user's token and 401 for none, got {summary['refused']}")


async def run(args):
    summary = {}
    current = {"step": None}

    def step(name):
        current["step"] = name

    start = time.monotonic()
    try:
        await asyncio.wait_for(scenario(args, summary, step), args.max_seconds)
        return summary, None
    except asyncio.TimeoutError as e:
        if time.monotonic() - start >= args.max_seconds:
            error = f"--max-seconds {args.max_seconds} passed"
        else:
            error = f"timed out: {e!r} (opening the WebSocket?)"
    except StepFailed as e:
        error = str(e)
    except InvalidStatus as e:
        error = f"the upgrade was refused: HTTP {e.response.status_code}"
    except ConnectionClosed as e:
        error = f"the server closed the connection: {closed(e)}"
    except OSError as e:
        error = f"cannot reach the server: {e}"
    except Exception as e:  # an unexpected answer: say what it was
        error = f"{type(e).__name__}: {e}"
    summary["failed_step"] = current["step"]
    summary["error"] = error
    return summary, error


def main():
    args = parse_args(sys.argv[1:])
    summary, error = asyncio.run(run(args))
    print(json.dumps(summary), flush=True)
    if error:
        print(f"events_ws: step {summary['failed_step']}: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

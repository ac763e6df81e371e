"""Replays a recorded SCIM request sequence (hub/tests/fixtures/scim/*.json:
the requests Microsoft Entra ID and Okta send, shaped as their public docs
show them) against polyhub's SCIM server with plain requests, and checks
every answer.

    scim_replay.py --url BASE --token TOKEN --fixture PATH --suffix S
                   [--deadline SECONDS]

BASE is http://127.0.0.1:PORT/scim/v2 (a trailing slash is fine), TOKEN a
bearer token allowed to manage users and groups, S letters and digits that
make this run's names unique.

A fixture is {"source": URL, "steps": [STEP, ...]} and may also hold
"content_type" (of the request bodies, default application/scim+json) and
"response_content_type" (what every answer with a body must carry; default
application/scim+json or application/json). A STEP is

  {"name": "...", "method": "POST", "path": "/Users?filter=...",
   "body": {...} or null, "expect_status": 201 or [200, 204],
   "capture": {"user_id": "id"},
   "expect": {"emails.0.value": "...", "Resources": {"$len": 1}}}

"{name}" in path and body strings stands for --suffix ({suffix}) or a value
captured by an earlier step; the query string of path is sent
percent-encoded. Expect and capture keys are dotted paths into the JSON
answer: a number indexes a list, a segment may be a whole schema URN
("urn:...:enterprise:2.0:User.department"), and attribute names match
case-insensitively as SCIM's do (RFC 7643 §2.1). An expected value is
compared as JSON after the same substitution, or is one of
{"$absent": true} (missing or null), {"$empty": true} (missing, null or
[]), {"$present": true}, {"$len": N}, {"$type": "integer"|"string"|
"boolean"|"list"|"object"}, {"$in": [v, ...]}.

Prints each step's name; on the first mismatch prints the request and the
full answer, runs the fixture's steps whose name starts with "cleanup:"
(best effort), and exits 1. --deadline (default 60 s) bounds the run (exit 2).
"""

import argparse
import ipaddress
import json
import re
import sys
import time
import urllib.parse

import requests

WAIT = 10.0
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TYPES = {"integer": int, "string": str, "boolean": bool, "list": list, "object": dict}
MISSING = object()


class StepFailed(Exception):
    pass


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scim_replay.py", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="SCIM base URL, http://127.0.0.1:PORT/scim/v2")
    parser.add_argument("--token", required=True, help="bearer token")
    parser.add_argument("--fixture", required=True, help="the request sequence (JSON)")
    parser.add_argument("--suffix", required=True, help="makes this run's names unique")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before giving up (exit 2)")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"--url must be http://127.0.0.1:PORT/..., not {args.url!r}")
    if not re.fullmatch(r"[A-Za-z0-9]{1,40}", args.suffix):
        parser.error("--suffix must be 1 to 40 ASCII letters or digits")
    args.url = args.url.rstrip("/")
    return args


def substitute(value, names):
    """Replaces {name} in every string of value (a JSON document)."""
    if isinstance(value, str):
        def one(match):
            name = match.group(1)
            if name not in names:
                raise StepFailed(f"placeholder {{{name}}} is neither suffix nor captured by an earlier step")
            return str(names[name])
        return PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {substitute(k, names): substitute(v, names) for k, v in value.items()}
    return value


def lookup(document, path):
    """The value at a dotted path, or MISSING."""
    current, rest = document, path
    while rest:
        if isinstance(current, list):
            head, _, tail = rest.partition(".")
            if not head.isdigit() or int(head) >= len(current):
                return MISSING
            current, rest = current[int(head)], tail
        elif isinstance(current, dict):
            # The longest key that the path starts with, so that a schema
            # URN (which holds dots) is one segment.
            best = None
            for key in current:
                k = key.lower()
                r = rest.lower()
                if (r == k or r.startswith(k + ".")) and (best is None or len(key) > len(best)):
                    best = key
            if best is None:
                return MISSING
            current, rest = current[best], rest[len(best) + 1:]
        else:
            return MISSING
    return current


def matches(actual, wanted):
    """None when actual is what wanted asks for, else why not."""
    if isinstance(wanted, dict) and len(wanted) == 1 and next(iter(wanted)).startswith("$"):
        op, arg = next(iter(wanted.items()))
        present = actual is not MISSING and actual is not None
        if op == "$absent":
            return None if not present else "should be absent or null"
        if op == "$empty":
            return None if not present or actual == [] else "should be absent, null or []"
        if op == "$present":
            return None if present else "should be present"
        if op == "$len":
            ok = isinstance(actual, (list, str, dict)) and len(actual) == arg
            return None if ok else f"should have length {arg}"
        if op == "$type":
            kind = TYPES[arg]
            ok = isinstance(actual, kind) and not (kind is int and isinstance(actual, bool))
            return None if ok else f"should be a JSON {arg}"
        if op == "$in":
            return None if actual in arg else f"should be one of {arg!r}"
        raise StepFailed(f"unknown expectation {op}")
    if actual is MISSING:
        return f"is missing, expected {wanted!r}"
    if isinstance(wanted, bool) or isinstance(actual, bool):
        same = type(wanted) is type(actual) and wanted == actual
    else:
        same = actual == wanted
    return None if same else f"expected {wanted!r}"


def show(response):
    request = response.request
    body = request.body.decode() if isinstance(request.body, bytes) else request.body
    headers = "\n".join(f"    {k}: {v}" for k, v in response.headers.items())
    return (f"  request: {request.method} {request.url}\n"
            + (f"  request body: {body}\n" if body else "")
            + f"  answer: HTTP {response.status_code} {response.reason}\n{headers}\n"
            + f"  answer body: {response.text}")


def build_url(base, path):
    path, _, query = path.partition("?")
    url = base + (path if path.startswith("/") else "/" + path)
    if query:
        pairs = [pair.partition("=")[::2] for pair in query.split("&")]
        url += "?" + urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    return url


class Replay:
    def __init__(self, args, fixture):
        self.args = args
        self.fixture = fixture
        self.names = {"suffix": args.suffix}
        self.session = requests.Session()
        self.session.headers.update({
            "Authorization": f"Bearer {args.token}",
            "Accept": "application/scim+json, application/json",
        })
        self.content_type = fixture.get("content_type", "application/scim+json")
        wanted = fixture.get("response_content_type")
        self.response_types = [wanted] if wanted else ["application/scim+json", "application/json"]
        self.end = time.monotonic() + args.deadline

    def timeout(self):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"--deadline {self.args.deadline:g}s passed")
        return min(WAIT, left)

    def send(self, step):
        method = step["method"].upper()
        url = build_url(self.args.url, substitute(step["path"], self.names))
        body = step.get("body")
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(substitute(body, self.names)).encode()
            headers["Content-Type"] = self.content_type
        return self.session.request(method, url, data=data, headers=headers,
                                    timeout=self.timeout(), allow_redirects=False)

    def run_step(self, step):
        response = self.send(step)
        wanted = step.get("expect_status")
        wanted = wanted if isinstance(wanted, list) else [wanted] if wanted is not None else None
        if wanted and response.status_code not in wanted:
            raise StepFailed(f"status {response.status_code}, expected {' or '.join(map(str, wanted))}\n"
                             + show(response))
        document = MISSING
        if response.content:
            ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype not in self.response_types:
                raise StepFailed(f"Content-Type {ctype!r}, expected {' or '.join(self.response_types)}\n"
                                 + show(response))
            try:
                document = response.json()
            except ValueError:
                raise StepFailed("the answer is not JSON\n" + show(response)) from None
        for path, value in (step.get("expect") or {}).items():
            actual = lookup(document, path) if document is not MISSING else MISSING
            why = matches(actual, substitute(value, self.names))
            if why:
                got = "missing" if actual is MISSING else json.dumps(actual)
                raise StepFailed(f"{path}: {why}, got {got}\n" + show(response))
        for name, path in (step.get("capture") or {}).items():
            actual = lookup(document, path) if document is not MISSING else MISSING
            if actual is MISSING or actual is None or isinstance(actual, (dict, list)):
                raise StepFailed(f"cannot capture {name} from {path!r}\n" + show(response))
            self.names[name] = actual
        return response

    def cleanup(self):
        for step in self.fixture["steps"]:
            if not step["name"].startswith("cleanup:"):
                continue
            try:
                url = build_url(self.args.url, substitute(step["path"], self.names))
            except StepFailed:
                continue  # what it deletes was never created
            try:
                response = self.session.request(step["method"].upper(), url, timeout=WAIT)
                print(f"  {step['name']}: HTTP {response.status_code}", file=sys.stderr)
            except requests.RequestException as exc:
                print(f"  {step['name']}: {exc}", file=sys.stderr)

    def run(self):
        steps = self.fixture["steps"]
        for number, step in enumerate(steps, 1):
            print(f"step {number}/{len(steps)}: {step['name']}", flush=True)
            try:
                self.run_step(step)
            except (StepFailed, TimeoutError, requests.RequestException) as exc:
                print(f"scim_replay: FAILED at step {number} {step['name']!r}: {exc}", file=sys.stderr)
                if not isinstance(exc, TimeoutError):
                    self.cleanup()
                return 2 if isinstance(exc, TimeoutError) else 1
        print(f"scim_replay: {len(steps)} steps of {self.args.fixture} passed")
        return 0


def main(argv):
    args = parse_args(argv)
    with open(args.fixture, encoding="utf-8") as f:
        fixture = json.load(f)
    if not isinstance(fixture.get("steps"), list) or not fixture["steps"]:
        print(f"scim_replay: {args.fixture} has no steps", file=sys.stderr)
        return 2
    print(f"scim_replay: {args.fixture} (shapes from {fixture.get('source')})")
    return Replay(args, fixture).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

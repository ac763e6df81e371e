"""scim2-tester (python-scim's SCIM 2.0 compliance checker, pinned in
scripts/requirements-test.txt) run against polyhub's SCIM server: a client no
one on this project wrote.

    scim_tester.py --url BASE --token TOKEN [--deadline SECONDS]
                   [--include-tags T,..] [--exclude-tags T,..]
                   [--resource-types User,Group] [--allow TITLE[:TEXT]]...

BASE is http://127.0.0.1:PORT/scim/v2 (a trailing slash is fine), TOKEN a
bearer token allowed to manage users and groups.

scim2_tester.check_server does its own discovery: it reads
/ServiceProviderConfig, /ResourceTypes and /Schemas, builds the resource
models from what they publish, then runs the create, read, list, attribute
selection, .search, replace, delete and PATCH add/remove/replace checks on
every resource type published. This script prints one line per check result,
the data of every failure, and a summary line, and exits

  0  when no result is ERROR or CRITICAL (DEVIATION is printed, not failed),
  1  when one is (unless --allow names it), or a resource type of
     --resource-types (default User,Group) got no check at all,
  2  when --deadline (default 120 s) passes first, or the tester itself broke.

--allow TITLE[:TEXT] lets a failure pass when its check title is TITLE and,
with TEXT, its reason contains TEXT; it is still printed, marked "allowed".
"""

import argparse
import collections
import ipaddress
import os
import sys
import threading
import time
import traceback
import urllib.parse

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

# How long one answer may take to arrive.
WAIT = 15.0
FAILING = (Status.ERROR, Status.CRITICAL)
# How much of a failure's data to print.
DATA_CHARS = 1500


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


def csv(value):
    return {part.strip() for part in value.split(",") if part.strip()}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scim_tester.py", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="SCIM base URL, http://127.0.0.1:PORT/scim/v2")
    parser.add_argument("--token", required=True, help="bearer token")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds before giving up (exit 2)")
    parser.add_argument("--include-tags", type=csv, default=None, help="run only checks with these tags")
    parser.add_argument("--exclude-tags", type=csv, default=None, help="skip checks with these tags")
    parser.add_argument("--resource-types", type=csv, default={"User", "Group"},
                        help="resource types that must be checked (and only those are)")
    parser.add_argument("--allow", action="append", default=[], metavar="TITLE[:TEXT]",
                        help="a known failure to let pass (repeatable)")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"--url must be http://127.0.0.1:PORT/..., not {args.url!r}")
    # httpx2 joins "/Users" under the base path only when it ends with "/".
    args.url = args.url.rstrip("/") + "/"
    args.allow = [tuple(a.split(":", 1)) if ":" in a else (a, None) for a in args.allow]
    return args


def allowed(result, allow):
    for title, text in allow:
        if result.title == title and (text is None or text in (result.reason or "")):
            return True
    return False


def short(value):
    text = repr(value)
    return text if len(text) <= DATA_CHARS else text[:DATA_CHARS] + f"... ({len(text)} chars)"


def data_of(result):
    """The failure's data, with any HTTP response shown as status and body."""
    data = result.data
    if isinstance(data, httpx2.Response):
        return f"HTTP {data.status_code} {data.text[:DATA_CHARS]}"
    if isinstance(data, dict):
        return {k: (f"HTTP {v.status_code} {v.text}" if isinstance(v, httpx2.Response) else v)
                for k, v in data.items()}
    return data


def run(args, out):
    """Runs check_server; puts its results (or the exception) in out."""
    try:
        with httpx2.Client(
            base_url=args.url,
            headers={"Authorization": f"Bearer {args.token}"},
            timeout=WAIT,
            follow_redirects=False,
        ) as http:
            # No discover(): check_server reads the three discovery endpoints
            # itself (as checks) and describes the server from what they say.
            scim = SyncSCIMClient(http)
            out["results"] = check_server(
                scim,
                raise_exceptions=False,
                include_tags=args.include_tags,
                exclude_tags=args.exclude_tags,
                resource_types=sorted(args.resource_types) or None,
            )
    except BaseException as exc:  # reported by the main thread
        out["error"] = exc
        out["trace"] = traceback.format_exc()


def main(argv):
    args = parse_args(argv)
    started = time.monotonic()
    out = {}
    worker = threading.Thread(target=run, args=(args, out), daemon=True)
    worker.start()
    worker.join(args.deadline)
    if worker.is_alive():
        print(f"scim_tester: --deadline {args.deadline:g}s passed before scim2-tester finished",
              file=sys.stderr, flush=True)
        # The checks run in a thread blocked on the network: leave at once.
        os._exit(2)
    if "error" in out:
        print(f"scim_tester: scim2-tester broke: {out['error']!r}\n{out['trace']}", file=sys.stderr)
        return 2

    results = out["results"]
    counts = collections.Counter()
    failures = []
    checked_types = set()
    for result in results:
        where = f"[{result.resource_type}] " if result.resource_type else ""
        mark = result.status.name
        if result.status in FAILING:
            if allowed(result, args.allow):
                mark += " (allowed)"
                counts["allowed"] += 1
            else:
                failures.append(result)
        if result.resource_type and result.status != Status.SKIPPED:
            checked_types.add(result.resource_type)
        counts[result.status.name] += 1
        print(f"{mark:<10} {where}{result.title}: {result.reason or ''}".rstrip())

    missing = sorted(args.resource_types - checked_types)
    if failures:
        print("\nscim_tester: failing checks:", file=sys.stderr)
        for result in failures:
            where = f"[{result.resource_type}] " if result.resource_type else ""
            print(f"- {result.status.name} {where}{result.title}: {result.reason}", file=sys.stderr)
            if result.data is not None:
                print(f"    data: {short(data_of(result))}", file=sys.stderr)
    if missing:
        print(f"scim_tester: no check ran on the resource type(s) {', '.join(missing)}: "
              "discovery failed, or the server does not publish them", file=sys.stderr)

    summary = ", ".join(f"{status.name.lower()}={counts[status.name]}" for status in Status)
    print(f"scim2-tester summary: {len(results)} results in {time.monotonic() - started:.1f}s: "
          f"{summary}, allowed={counts['allowed']}, failing={len(failures)}")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A Standard Webhooks receiver that checks polyhub's deliveries with the
reference library (standardwebhooks), not with polyhub's own code.

    webhook_receiver.py PORT OUT_FILE SECRET [SECRET ...]
                        [--fail-first N] [--max-seconds S]

Serves HTTP/1.1 on 127.0.0.1:PORT (0 picks a free port) and prints
`listening on PORT` as its first line. Every POST is verified with
`standardwebhooks.webhooks.Webhook(secret).verify(body, headers)` against
each SECRET (`whsec_...`; during a rotation the sender signs with two, and
either must verify), and one JSON line is appended to OUT_FILE (flushed at
once, so a test can read it while the receiver runs):

    {"outcome": "verified", "webhook_id", "webhook_timestamp",
     "secret_index", "verified_with", "body"}          answered 204
    {"outcome": "rejected", "webhook_id", "reason"}    answered 401
    {"outcome": "failed", "webhook_id"}                answered 503

`secret_index` is the first SECRET that verified, `verified_with` all that
did. With --fail-first N the first N requests, whatever their signature, are
answered 503 (so a test can see retries carry the same webhook-id).

Stops after --max-seconds (default 300) or on SIGTERM/SIGINT, then prints
one JSON summary and exits 0.
"""

import argparse
import http.server
import json
import signal
import sys
import threading

from standardwebhooks.webhooks import Webhook

# The largest body accepted: polyhub's events are small.
MAX_BODY = 4 * 1024 * 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="webhook_receiver.py",
        description="A Standard Webhooks receiver for polyhub's tests.",
    )
    parser.add_argument("port", type=int)
    parser.add_argument("out_file")
    parser.add_argument("secrets", nargs="+", metavar="SECRET")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N")
    parser.add_argument("--max-seconds", type=float, default=300.0, metavar="S")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"PORT out of range: {args.port}")
    if args.fail_first < 0:
        parser.error("--fail-first must be >= 0")
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")
    return args


def webhooks(secrets):
    hooks = []
    for i, secret in enumerate(secrets):
        try:
            hooks.append(Webhook(secret))
        except Exception as e:  # a bad base64 or an empty secret
            raise SystemExit(f"webhook_receiver: SECRET {i} is not usable: {e}")
    return hooks


class Receiver:
    """What the handler threads share: the secrets, the out file, counts."""

    def __init__(self, hooks, out, fail_first):
        self.hooks = hooks
        self.out = out
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.requests = 0
        self.counts = {"verified": 0, "rejected": 0, "failed": 0}

    def record(self, line):
        with self.lock:
            self.counts[line["outcome"]] += 1
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()

    def should_fail(self):
        """Whether this request is one of the first --fail-first."""
        with self.lock:
            self.requests += 1
            return self.requests <= self.fail_first

    def verify(self, body, headers):
        """(first index, all indexes, parsed body) or raises the last error."""
        verified, error = [], None
        for i, hook in enumerate(self.hooks):
            try:
                hook.verify(body, headers, json_parse=False)
                verified.append(i)
            except Exception as e:
                error = e
        if not verified:
            raise error
        return verified[0], verified, json.loads(body)


def handler_class(receiver):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "webhook-receiver"

        def log_message(self, format, *args):  # quiet: OUT_FILE is the log
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                    if sum(map(len, chunks)) > MAX_BODY:
                        raise ValueError("body too large")
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 <= length <= MAX_BODY:
                raise ValueError(f"bad Content-Length {length}")
            return self.rfile.read(length)

        def answer(self, status, text=""):
            data = text.encode()
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def do_POST(self):
            try:
                body = self.read_body()
            except ValueError as e:
                self.close_connection = True
                self.answer(400, f"{e}\n")
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            webhook_id = headers.get("webhook-id")
            if receiver.should_fail():
                receiver.record({"outcome": "failed", "webhook_id": webhook_id})
                self.answer(503, "failing on purpose (--fail-first)\n")
                return
            try:
                index, verified, parsed = receiver.verify(body, headers)
            except Exception as e:
                receiver.record(
                    {"outcome": "rejected", "webhook_id": webhook_id, "reason": str(e)}
                )
                self.answer(401, f"{e}\n")
                return
            receiver.record(
                {
                    "outcome": "verified",
                    "webhook_id": webhook_id,
                    "webhook_timestamp": headers.get("webhook-timestamp"),
                    "secret_index": index,
                    "verified_with": verified,
                    "body": parsed,
                }
            )
            self.answer(204)

        def not_allowed(self):
            self.close_connection = True
            self.send_response(405)
            self.send_header("Allow", "POST")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_DELETE = do_PATCH = not_allowed

    return Handler


def main():
    args = parse_args(sys.argv[1:])
    hooks = webhooks(args.secrets)
    stop = threading.Event()
    stopped_by = {"reason": "deadline"}

    def on_signal(signum, _frame):
        stopped_by["reason"] = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with open(args.out_file, "a", encoding="utf-8") as out:
        receiver = Receiver(hooks, out, args.fail_first)
        try:
            server = http.server.ThreadingHTTPServer(
                ("127.0.0.1", args.port), handler_class(receiver)
            )
        except OSError as e:
            raise SystemExit(f"webhook_receiver: cannot listen on 127.0.0.1:{args.port}: {e}")
        server.daemon_threads = True
        port = server.server_address[1]
        print(f"listening on {port}", flush=True)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        try:
            stop.wait(args.max_seconds)
        finally:
            server.shutdown()
            server.server_close()
        with receiver.lock:
            summary = {
                "port": port,
                "stopped_by": stopped_by["reason"],
                "requests": receiver.requests,
                **receiver.counts,
            }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

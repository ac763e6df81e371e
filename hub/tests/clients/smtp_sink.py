"""A real SMTP server (aiosmtpd) that keeps every mail it receives.

Usage: smtp_sink.py MAILBOX_FILE
Listens on 127.0.0.1 on a free port and prints the port on its first line.
Each mail received is appended to MAILBOX_FILE as one JSON line:
{"from", "to", "subject", "message_id", "body"}. It stops when its stdin
closes, or after ten minutes at most.
"""

import email
import email.policy
import json
import socket
import sys
import threading

from aiosmtpd.controller import Controller

LIFETIME_SECONDS = 600


class Keep:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(message["subject"]),
            "message_id": str(message["message-id"]),
            "body": body.get_content() if body is not None else "",
        }
        with self.lock, open(self.path, "a", encoding="utf-8") as mailbox:
            mailbox.write(json.dumps(record) + "\n")
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    port = free_port()
    controller = Controller(Keep(sys.argv[1]), hostname="127.0.0.1", port=port)
    controller.start()
    print(port, flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(LIFETIME_SECONDS)
    controller.stop()


if __name__ == "__main__":
    main()

"""scim2-server (PyPI, pinned in requirements.txt), the SCIM benchmark's peer.

    peer.py --port PORT [--users N] [--bearer-token TOKEN] [--server uvicorn|wsgiref]

Builds the server as its own ``scim2-server`` command does (the default
RFC 7643 schemas, resource types and service provider configuration, its
``InMemoryStorage``, static bearer tokens checked by its
``BearerTokenApplication.check_auth``) and serves it on 127.0.0.1 with the
faster of the two ways it supports:

- ``uvicorn`` (default): its ASGI application (``ASGIApplication`` over
  ``AsyncInMemoryStorage``, which wraps the same ``InMemoryStorage``) under
  uvicorn with uvloop and httptools, keep-alive, no access log. About 2.2x
  the rate of the command's server at equal load.
- ``wsgiref``: its WSGI application under the command's own
  ``ThreadingWSGIServer`` (wsgiref, a thread per connection, HTTP/1.0: one
  request per connection), with a listen backlog of 128 and no access log.

Before it listens it loads N users into the storage in-process, through the
storage's own ``resources`` setter (which indexes their unique values as
``create`` does); each user is validated by the provider's ``User`` model, as
a POST body is. Users are generated deterministically: ``user{i:07}``, email
``user{i:07}@corp{i%100}.example`` (work, primary), given and family names,
externalId ``ext-{i}``, active. Then it runs one ``userName eq`` search
through its own handler: the storage builds its equality index on the first
such search, and a measured request should not pay for that. It then prints
one line on stdout, ``ready users=N preload_s=S index_s=S rss_mib=M``, and
serves until killed.

Its filters are the storage's own: ``userName eq`` reads that index; any
other filter (``emails co``) walks every user under the storage's lock.
"""

import argparse
import datetime
import gc
import random
import resource
import time
import uuid
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import make_server

from scim2_models import Meta
from scim2_models import ScimProvider
from scim2_server.applications.asgi import ASGIApplication
from scim2_server.handler import ScimHandler
from scim2_server.memory import AsyncInMemoryStorage
from scim2_server.memory import InMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME
from scim2_server.testserver.application import BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import load_default_resource_types
from scim2_server.utils import load_default_schemas
from scim2_server.utils import load_default_service_provider_config

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GIVEN = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken"]
FAMILY = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen"]


def user(i: int) -> dict:
    """User i, as polyhub's side of the benchmark seeds it too."""
    return {
        "schemas": [USER_SCHEMA],
        "userName": f"user{i:07}",
        "externalId": f"ext-{i}",
        "name": {
            "givenName": GIVEN[i % len(GIVEN)],
            "familyName": f"{FAMILY[i % len(FAMILY)]}{i}",
        },
        "emails": [
            {"value": f"user{i:07}@corp{i % 100}.example", "type": "work", "primary": True}
        ],
        "active": True,
    }


class BearerASGIApplication(ASGIApplication):
    """The ASGI application with the command's static bearer-token check."""

    def __init__(self, storage, provider, service, bearer_tokens):
        super().__init__(storage, provider, service)
        self.bearer_tokens = set(bearer_tokens)

    check_auth = BearerTokenApplication.check_auth


class Server(ThreadingWSGIServer):
    """The command's server with a listen backlog of 128 instead of
    socketserver's 5: wsgiref closes the connection after each response, so
    the clients reconnect all the time, and a full backlog drops their SYNs
    (a one-second retransmission each)."""

    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without its access log line on stderr per request."""

    def log_message(self, format, *args):  # noqa: A002
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--bearer-token", action="append", default=[])
    parser.add_argument("--server", choices=["uvicorn", "wsgiref"], default="uvicorn")
    args = parser.parse_args()

    # As scim2_server.testserver.cli.main builds it, with --bearer-token.
    config = load_default_service_provider_config()
    if args.bearer_token:
        config.authentication_schemes = [
            *(config.authentication_schemes or []),
            BEARER_TOKEN_SCHEME,
        ]
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(),
        load_default_resource_types().values(),
        config=config,
    )
    service = ScimService(provider, secret="scim-bench")
    storage = InMemoryStorage()
    if args.server == "uvicorn":
        app = BearerASGIApplication(
            AsyncInMemoryStorage(storage), provider, service, args.bearer_token
        )
    else:
        app = BearerTokenApplication(
            storage, provider, service=service, bearer_tokens=args.bearer_token
        )

    started = time.perf_counter()
    model = provider.model_for("User")
    ids = random.Random(7)
    now = datetime.datetime.now(datetime.UTC)
    users = []
    with provider:
        for i in range(args.users):
            u = model.model_validate(user(i))
            u.id = uuid.UUID(int=ids.getrandbits(128), version=4).hex
            u.meta = Meta(
                resource_type="User",
                created=now,
                last_modified=now,
                version=storage.next_version(),
            )
            users.append(u)
        storage.resources = users
    del users
    # A million users are tens of millions of objects the cycle collector
    # would otherwise walk in every full collection during the run.
    gc.collect()
    gc.freeze()
    preload = time.perf_counter() - started

    started = time.perf_counter()
    warm = ScimRequest(
        method="GET",
        base_url=f"http://127.0.0.1:{args.port}/v2",
        path="/Users",
        query={"filter": 'userName eq "user0000000"'},
        headers={},
    )
    # The synchronous handler over the same service and storage, so the
    # ASGI side finds the index built too.
    response = ScimHandler(service, storage).handle(warm)
    assert response.status.value == 200, response.body
    index = time.perf_counter() - started
    ready = (
        f"ready users={args.users} preload_s={preload:.1f} "
        f"index_s={index:.1f} rss_mib={{rss:.0f}} server={args.server}"
    )

    if args.server == "uvicorn":
        import uvicorn

        class Announcing(uvicorn.Server):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                print(ready.format(rss=rss_mib()), flush=True)

        Announcing(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=args.port,
                loop="uvloop",
                http="httptools",
                lifespan="off",
                access_log=False,
                log_level="warning",
                backlog=1024,
            )
        ).run()
    else:
        with make_server(
            "127.0.0.1", args.port, app, server_class=Server, handler_class=QuietHandler
        ) as server:
            print(ready.format(rss=rss_mib()), flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()

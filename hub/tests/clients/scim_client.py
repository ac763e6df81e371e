"""scim2-client (python-scim's SCIM 2.0 client, with scim2-models' User,
EnterpriseUser and Group models; pinned in scripts/requirements-test.txt)
driving polyhub's SCIM server through one user's and one group's life, as an
application using that library would.

    scim_client.py --url BASE --token TOKEN --suffix S [--deadline SECONDS]

BASE is http://127.0.0.1:PORT/scim/v2 (a trailing slash is fine), TOKEN a
bearer token allowed to manage users and groups, S a string of letters and
digits that makes this run's userName, externalId and group displayName
unique.

  1. discover: /ServiceProviderConfig (patch and filter supported), the User
     resource type at /Users with the enterprise extension, Group at /Groups;
     /Schemas lists the User, Group and enterprise schemas, and
     /Schemas/{User schema} describes userName;
  2. create a user (name, emails, externalId, password, enterprise extension):
     201 with an id, meta (resourceType User, location ending in the id) and
     what was sent, never the password; a second one with the same userName
     upper-cased is refused with 409 (scimType uniqueness);
  3. read it back; list it with filter userName eq "..." (and the userName
     upper-cased: userName is not case-exact) and with emails co "...";
  4. replace it (PUT): the new values come back; with ETags announced, a PUT
     with the stale version is refused with 412;
  5. PATCH: replace active false, then true; add a title; remove the title,
     each checked by reading the user again;
  6. create a group with the user as member; PATCH it with remove
     members[value eq "ID"]: it has no member left;
  7. delete the group and the user (204), then both read 404.

Prints each step; on the first mismatch says what differed and the server's
answer, removes what it created, and exits 1. --deadline (default 60 s)
bounds the whole run: past it the script exits 2.
"""

import argparse
import ipaddress
import os
import re
import sys
import threading
import traceback
import urllib.parse

import httpx2
from scim2_client import SCIMClientException
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import (
    Email,
    EnterpriseUser,
    Error,
    Group,
    GroupMember,
    ListResponse,
    Name,
    PatchOp,
    PatchOperation,
    ResourceType,
    Schema,
    SCIMException,
    ScimProvider,
    SearchRequest,
    ServiceProviderConfig,
    User,
)

WAIT = 10.0
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PASSWORD = "Scim2-client-pw!"


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
    parser = argparse.ArgumentParser(prog="scim_client.py", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="SCIM base URL, http://127.0.0.1:PORT/scim/v2")
    parser.add_argument("--token", required=True, help="bearer token")
    parser.add_argument("--suffix", required=True, help="makes this run's names unique")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before giving up (exit 2)")
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None:
        parser.error(f"--url must be http://127.0.0.1:PORT/..., not {args.url!r}")
    if not re.fullmatch(r"[A-Za-z0-9]{1,40}", args.suffix):
        parser.error("--suffix must be 1 to 40 ASCII letters or digits")
    args.url = args.url.rstrip("/") + "/"
    return args


def show(response):
    """What the server answered, for a failure message."""
    if isinstance(response, httpx2.Response):
        request = response.request
        return f"{request.method} {request.url} -> HTTP {response.status_code} {response.text}"
    if hasattr(response, "model_dump"):
        return repr(response.model_dump())
    return repr(response)


def expect(what, actual, wanted, answer=None):
    if actual != wanted:
        raise StepFailed(f"{what}: expected {wanted!r}, got {actual!r}"
                         + (f"\n  answer: {show(answer)}" if answer is not None else ""))


def check(what, condition, answer=None):
    if not condition:
        raise StepFailed(what + (f"\n  answer: {show(answer)}" if answer is not None else ""))


class Run:
    def __init__(self, args, http):
        self.args = args
        self.http = http
        self.user_id = None
        self.group_id = None
        self.step_name = None

    def step(self, name):
        self.step_name = name
        print(f"step: {name}", flush=True)

    # -- 1 ---------------------------------------------------------------
    def discover(self):
        self.step("discover")
        # Resource types empty: discover() reads /ResourceTypes and
        # /ServiceProviderConfig, and binds scim2-models' own User,
        # EnterpriseUser and Group to what the server publishes.
        self.scim = SyncSCIMClient(
            self.http,
            provider=ScimProvider(models=[User, EnterpriseUser, Group], resource_types=[]),
        )
        self.scim.discover()
        config = self.scim.provider.config
        check("ServiceProviderConfig was read", isinstance(config, ServiceProviderConfig))
        check("ServiceProviderConfig: patch.supported", config.patch and config.patch.supported, config)
        check("ServiceProviderConfig: filter.supported", config.filter and config.filter.supported, config)
        self.etag = bool(config.etag and config.etag.supported)
        types = {rt.name: rt for rt in self.scim.provider.resource_types}
        check(f"resource types User and Group published, got {sorted(types)}",
              {"User", "Group"} <= set(types))
        user_type, group_type = types["User"], types["Group"]
        expect("User resource type endpoint", user_type.endpoint, "/Users", user_type)
        expect("User resource type schema", str(user_type.schema_), USER_SCHEMA, user_type)
        extensions = {str(e.schema_): e for e in user_type.schema_extensions or []}
        check(f"User resource type has the {ENTERPRISE_SCHEMA} extension", ENTERPRISE_SCHEMA in extensions,
              user_type)
        expect("Group resource type endpoint", group_type.endpoint, "/Groups", group_type)
        expect("Group resource type schema", str(group_type.schema_), GROUP_SCHEMA, group_type)
        one = self.scim.query(ResourceType, "User")
        expect("/ResourceTypes/User name", one.name, "User", one)
        self.UserModel = self.scim.get_resource_model("User")
        check("the User model carries the enterprise extension",
              EnterpriseUser in (self.UserModel.get_extension_models() or {}).values())

        schemas = self.scim.query(Schema)
        check("/Schemas is a ListResponse", isinstance(schemas, ListResponse), schemas)
        ids = {str(s.id) for s in schemas.resources or []}
        for wanted in (USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_SCHEMA):
            check(f"/Schemas lists {wanted}, got {sorted(ids)}", wanted in ids)
        user_schema = self.scim.query(Schema, USER_SCHEMA)
        names = {a.name for a in user_schema.attributes or []}
        check(f"/Schemas/{USER_SCHEMA} describes userName and emails, got {sorted(names)}",
              {"userName", "emails"} <= names, user_schema)

    # -- 2 ---------------------------------------------------------------
    def create_user(self):
        self.step("create user")
        s = self.args.suffix
        self.user_name = f"scim2client.{s}@example.com"
        self.email = f"scim2client.{s}@example.com"
        user = self.UserModel(
            user_name=self.user_name,
            external_id=f"scim2client-ext-{s}",
            name=Name(given_name="Ada", family_name=f"Client{s}", formatted=f"Ada Client{s}"),
            display_name=f"Ada Client{s}",
            emails=[Email(value=self.email, type="work", primary=True)],
            password=PASSWORD,
            active=True,
        )
        user[EnterpriseUser] = EnterpriseUser(
            employee_number=f"E-{s}", cost_center="CC-42", organization="Polyhub Test",
            division="Identity", department="Provisioning",
        )
        created = self.scim.create(user)
        check("the created user has an id", bool(created.id), created)
        self.user_id = created.id
        self.compare_user("created user", created, user)
        check("created user meta.resourceType is User", created.meta and created.meta.resource_type == "User",
              created)
        check(f"created user meta.location ends with /Users/{created.id}",
              str(created.meta.location or "").endswith(f"/Users/{created.id}"), created)
        check("created user meta.created is set", created.meta.created is not None, created)
        self.user = created

        self.step("create user with the same userName in upper case: 409 uniqueness")
        twin = self.UserModel(
            user_name=self.user_name.upper(),
            emails=[Email(value=f"twin.{s}@example.com", type="work", primary=True)],
        )
        answer = self.scim.create(twin, raise_scim_errors=False)
        if not isinstance(answer, Error):
            if getattr(answer, "id", None):
                self.scim.delete(self.UserModel, answer.id, raise_scim_errors=False)
            raise StepFailed(f"a second user {twin.user_name!r} was created: {show(answer)}")
        expect("duplicate userName status", answer.status, 409, answer)
        expect("duplicate userName scimType", answer.scim_type, "uniqueness", answer)

    def compare_user(self, what, got, sent):
        expect(f"{what} userName", got.user_name, sent.user_name, got)
        expect(f"{what} externalId", got.external_id, sent.external_id, got)
        expect(f"{what} name.givenName", got.name and got.name.given_name, sent.name.given_name, got)
        expect(f"{what} name.familyName", got.name and got.name.family_name, sent.name.family_name, got)
        expect(f"{what} displayName", got.display_name, sent.display_name, got)
        emails = [(e.value, e.type, e.primary) for e in got.emails or []]
        expect(f"{what} emails", emails, [(e.value, e.type, e.primary) for e in sent.emails], got)
        expect(f"{what} active", got.active, sent.active, got)
        expect(f"{what} password (never returned)", got.password, None, got)
        ext_got, ext_sent = got[EnterpriseUser], sent[EnterpriseUser]
        check(f"{what} carries the enterprise extension", ext_got is not None, got)
        for field in ("employee_number", "cost_center", "organization", "division", "department"):
            expect(f"{what} enterprise {field}", getattr(ext_got, field), getattr(ext_sent, field), got)

    # -- 3 ---------------------------------------------------------------
    def read_and_filter(self):
        self.step("read user")
        got = self.scim.query(self.UserModel, self.user_id)
        expect("read user id", got.id, self.user_id, got)
        self.compare_user("read user", got, self.user)

        for label, flt in (
            ("userName eq", f'userName eq "{self.user_name}"'),
            ("userName eq, other case", f'userName eq "{self.user_name.upper()}"'),
            ("emails co", f'emails co "scim2client.{self.args.suffix}@"'),
        ):
            self.step(f"filter {label}: {flt}")
            found = self.scim.query(self.UserModel, query_parameters=SearchRequest(filter=flt))
            check(f"filter {flt!r} answers a ListResponse", isinstance(found, ListResponse), found)
            expect(f"filter {flt!r} totalResults", found.total_results, 1, found)
            ids = [r.id for r in found.resources or []]
            expect(f"filter {flt!r} ids", ids, [self.user_id], found)

    # -- 4 ---------------------------------------------------------------
    def replace(self):
        self.step("replace user (PUT)")
        current = self.scim.query(self.UserModel, self.user_id)
        stale = current.model_copy(deep=True)
        current.display_name = f"Ada Replaced{self.args.suffix}"
        current.name = Name(given_name="Ada", family_name=f"Replaced{self.args.suffix}",
                            formatted=f"Ada Replaced{self.args.suffix}")
        current.title = "Engineer"
        current[EnterpriseUser].department = "Replaced Department"
        replaced = self.scim.replace(current)
        expect("replaced displayName", replaced.display_name, current.display_name, replaced)
        expect("replaced name.familyName", replaced.name and replaced.name.family_name,
               current.name.family_name, replaced)
        expect("replaced title", replaced.title, "Engineer", replaced)
        expect("replaced enterprise department", replaced[EnterpriseUser].department,
               "Replaced Department", replaced)
        expect("replaced userName", replaced.user_name, self.user_name, replaced)
        expect("replaced password (never returned)", replaced.password, None, replaced)
        again = self.scim.query(self.UserModel, self.user_id)
        expect("re-read displayName after PUT", again.display_name, current.display_name, again)
        expect("re-read title after PUT", again.title, "Engineer", again)

        if self.etag:
            self.step("replace user with a stale version: 412")
            old = stale.meta.version if stale.meta else None
            check("the user read before the PUT carried meta.version", bool(old), stale)
            check(f"the PUT changed meta.version from {old!r}",
                  replaced.meta and replaced.meta.version and replaced.meta.version != old, replaced)
            answer = self.scim.replace(stale, raise_scim_errors=False)
            check(f"a PUT with If-Match: {old} (stale) is refused", isinstance(answer, Error), answer)
            expect("stale PUT status", answer.status, 412, answer)
        else:
            print("  (ServiceProviderConfig announces no ETags: stale PUT not tried)")

    # -- 5 ---------------------------------------------------------------
    def patch(self, op, path, value, what):
        operation = (PatchOperation(op=op, path=path) if op == "remove"
                     else PatchOperation(op=op, path=path, value=value))
        answer = self.scim.modify(self.UserModel, self.user_id, PatchOp[self.UserModel](operations=[operation]))
        if answer is not None:
            expect(f"{what}: PATCH answered the user", answer.id, self.user_id, answer)
        return self.scim.query(self.UserModel, self.user_id), answer

    def patch_user(self):
        self.step('patch user: replace active false')
        got, answer = self.patch("replace", "active", False, "replace active false")
        expect("active after replace false", got.active, False, got)
        if answer is not None:
            expect("active in the PATCH answer", answer.active, False, answer)

        self.step('patch user: replace active true')
        got, _ = self.patch("replace", "active", True, "replace active true")
        expect("active after replace true", got.active, True, got)

        self.step('patch user: add title')
        got, _ = self.patch("add", "title", "Chief Provisioner", "add title")
        expect("title after add", got.title, "Chief Provisioner", got)

        self.step('patch user: remove title')
        got, answer = self.patch("remove", "title", None, "remove title")
        expect("title after remove", got.title, None, got)
        if answer is not None:
            expect("title in the PATCH answer", answer.title, None, answer)
        expect("userName untouched by the PATCHes", got.user_name, self.user_name, got)

    # -- 6 ---------------------------------------------------------------
    def group(self):
        self.step("create group with the user as member")
        group = Group(
            display_name=f"scim2client-group-{self.args.suffix}",
            external_id=f"scim2client-group-ext-{self.args.suffix}",
            members=[GroupMember(value=self.user_id)],
        )
        created = self.scim.create(group)
        check("the created group has an id", bool(created.id), created)
        self.group_id = created.id
        expect("created group displayName", created.display_name, group.display_name, created)
        expect("created group member ids", [m.value for m in created.members or []], [self.user_id], created)
        check(f"created group meta.location ends with /Groups/{created.id}",
              created.meta and str(created.meta.location or "").endswith(f"/Groups/{created.id}"), created)

        self.step("filter groups by displayName")
        found = self.scim.query(Group, query_parameters=SearchRequest(
            filter=f'displayName eq "{group.display_name}"'))
        expect("group filter ids", [g.id for g in found.resources or []], [self.group_id], found)

        self.step(f'patch group: remove members[value eq "{self.user_id}"]')
        op = PatchOperation(op="remove", path=f'members[value eq "{self.user_id}"]')
        answer = self.scim.modify(Group, self.group_id, PatchOp[Group](operations=[op]))
        if answer is not None:
            expect("members in the PATCH answer", answer.members or [], [], answer)
        got = self.scim.query(Group, self.group_id)
        expect("group members after remove", got.members or [], [], got)
        expect("group displayName after remove", got.display_name, group.display_name, got)

    # -- 7 ---------------------------------------------------------------
    def delete(self):
        for label, model, attr in (("group", Group, "group_id"), ("user", self.UserModel, "user_id")):
            ident = getattr(self, attr)
            self.step(f"delete {label}")
            answer = self.scim.delete(model, ident)
            expect(f"DELETE {label} answer (204, no body)", answer, None, answer)
            setattr(self, attr, None)
            self.step(f"read deleted {label}: 404")
            gone = self.scim.query(model, ident, raise_scim_errors=False)
            check(f"reading the deleted {label} answers an Error", isinstance(gone, Error), gone)
            expect(f"deleted {label} status", gone.status, 404, gone)

    def cleanup(self):
        for model, attr in ((Group, "group_id"), (getattr(self, "UserModel", User), "user_id")):
            ident = getattr(self, attr)
            if ident and hasattr(self, "scim"):
                try:
                    self.scim.delete(model, ident, raise_scim_errors=False, expected_status_codes=None)
                except Exception as exc:  # best effort
                    print(f"  cleanup of {attr} {ident} failed: {exc}", file=sys.stderr)


def run(args, out):
    try:
        with httpx2.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.token}"},
                           timeout=WAIT, follow_redirects=False) as http:
            r = Run(args, http)
            try:
                r.discover()
                r.create_user()
                r.read_and_filter()
                r.replace()
                r.patch_user()
                r.group()
                r.delete()
            except StepFailed as exc:
                out["failure"] = (r.step_name, str(exc))
            except (SCIMClientException, SCIMException) as exc:
                source = getattr(exc, "source", None)
                notes = "\n  ".join(getattr(exc, "__notes__", []) or [])
                out["failure"] = (r.step_name, f"{type(exc).__name__}: {exc}"
                                  + (f"\n  {notes}" if notes else "")
                                  + (f"\n  answer: {show(source)}" if source is not None else ""))
            except Exception as exc:
                out["error"] = traceback.format_exc()
                out["failure"] = (r.step_name, repr(exc))
            finally:
                if "failure" in out:
                    r.cleanup()
    except BaseException as exc:
        out["error"] = traceback.format_exc()
        out["failure"] = (None, repr(exc))
    out["done"] = True


def main(argv):
    args = parse_args(argv)
    out = {}
    worker = threading.Thread(target=run, args=(args, out), daemon=True)
    worker.start()
    worker.join(args.deadline)
    if worker.is_alive():
        print(f"scim_client: --deadline {args.deadline:g}s passed", file=sys.stderr, flush=True)
        os._exit(2)
    if "failure" in out:
        step, message = out["failure"]
        print(f"scim_client: FAILED at step {step!r}: {message}", file=sys.stderr)
        if "error" in out:
            print(out["error"], file=sys.stderr)
        return 1
    print("scim_client: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Authlib's OAuth 2.0 client (authlib.integrations.requests_client.OAuth2Session)
as a confidential OpenID Connect client of polyhub's provider: the code flow
with PKCE S256 and client_secret_basic, the ID token checked with
authlib.jose against the provider's JWKS, userinfo, refresh token rotation,
introspection (RFC 7662) and revocation (RFC 7009). A client no one on this
project wrote.

    oidc_authlib.py start  ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI STATE_FILE
                           [--max-seconds S]
    oidc_authlib.py finish ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI STATE_FILE CALLBACK_URL
                           [--max-seconds S]

ISSUER is rest-auth's http://127.0.0.1:PORT, exactly as the provider names
itself. Between `start` and `finish` a browser (oidc_browser.py) signs in
and consents; CALLBACK_URL is where it landed: REDIRECT_URI?code=&state=&iss=.

start:
  1. discovery ({ISSUER}/.well-known/openid-configuration): polyhub's
     endpoints, response type code, PKCE S256 only, RS256 and EdDSA ID
     tokens, the client authentication methods, the `iss` authorization
     response parameter;
  2. create_authorization_url with a state, a nonce and a PKCE verifier,
     written to STATE_FILE; prints {"authorization_url": ...} for scope
     `openid profile email offline_access`.
finish:
  1. discovery; STATE_FILE is this client's;
  2. the callback: its state is ours and its iss the issuer (RFC 9207;
     authlib leaves that to the app);
  3. fetch_token(authorization_response=CALLBACK_URL, code_verifier=...)
     with client_secret_basic: a Bearer token, a refresh token, an ID token;
  4. the ID token, by authlib.jose's JsonWebToken(['RS256']) and the JWKS:
     signature, iss, aud, exp, iat, nonce, sub (a UUID), auth_time, sid,
     at_hash, preferred_username, email, email_verified;
  5. userinfo (GET, with the access token): the same sub and claims;
  6. GET ISSUER/profile with the access token: 200, its id is sub (and its
     username and email the ID token's);
  7. refresh: a new refresh token (rotation), a new access token that works
     on /profile;
  8. introspection of the new access token: active, this client's;
  9. revocation of the refresh token: 200; refreshing with it then is
     invalid_grant, and the access token is 401 on /profile and introspects
     inactive (the grant is revoked).

Prints one JSON document with what it saw (claims, statuses, never a token
or a secret) and exits 0; on a failure, prints what it saw so far with
"failed_step" and "error", says why on stderr, exits 1. Every call has a
timeout, and the whole run is bounded by --max-seconds (default 90).
"""

import argparse
import hashlib
import ipaddress
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
import warnings

import requests
from authlib.common.encoding import urlsafe_b64encode
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.integrations.requests_client import OAuth2Session, OAuthError

# authlib.jose says on import that joserfc replaces it in authlib 2.0; this
# client uses it as authlib 1.9 ships it, without the notice on stderr.
warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning, message="authlib.jose module is deprecated")
from authlib.jose import JsonWebKey, JsonWebToken  # noqa: E402
from authlib.jose.errors import JoseError  # noqa: E402

SCOPE = "openid profile email offline_access"
# How long one answer may take to arrive.
WAIT = 10.0
# Seconds of clock difference allowed for exp and iat.
LEEWAY = 30
ENDPOINTS = {
    "authorization_endpoint": "/oauth2/authorize",
    "token_endpoint": "/oauth2/token",
    "userinfo_endpoint": "/oauth2/userinfo",
    "jwks_uri": "/.well-known/jwks.json",
    "end_session_endpoint": "/oauth2/logout",
    "introspection_endpoint": "/oauth2/introspect",
    "revocation_endpoint": "/oauth2/revoke",
}
LISTS = {
    "response_types_supported": ["code"],
    "code_challenge_methods_supported": ["S256"],
    "id_token_signing_alg_values_supported": ["RS256", "EdDSA"],
    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
}


class StepFailed(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="oidc_authlib.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("start", "finish"):
        sub = commands.add_parser(command)
        for name in ("issuer", "client_id", "client_secret", "redirect_uri", "state_file"):
            sub.add_argument(name)
        if command == "finish":
            sub.add_argument("callback_url")
        sub.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.issuer)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None \
            or args.issuer != f"{url.scheme}://{url.netloc}":
        parser.error(f"ISSUER must be http://127.0.0.1:PORT, not {args.issuer!r}")
    # authlib writes client_secret_basic as base64("id:secret") without
    # form-encoding the two first (RFC 6749 §2.3.1 asks for it), so the test
    # takes only credentials form-encoding leaves as they are.
    for name in ("client_id", "client_secret"):
        value = getattr(args, name)
        if not value or urllib.parse.quote_plus(value, safe="") != value:
            parser.error(f"{name.upper()} must be non-empty letters, digits, '-', '.', '_' or '~'")
    if getattr(args, "callback_url", None) is not None and not args.callback_url.startswith(args.redirect_uri + "?"):
        parser.error(f"CALLBACK_URL {args.callback_url!r} is not REDIRECT_URI with a query")
    return args


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


class Deadline:
    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, most=WAIT):
        left = min(most, self.end - time.monotonic())
        if left <= 0:
            raise StepFailed(f"--max-seconds {self.seconds} passed")
        return left


def json_object(response, what):
    """The response's body, which must be a JSON object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StepFailed(f"{what}: HTTP {response.status_code}, not a JSON object: {response.text[:200]!r}")
    return body


def said(error):
    """An authlib error (OAuthError, JoseError) in words: its code and description."""
    return f"{error.error}: {error.description}" if error.description else str(error.error)


def plain_session():
    session = requests.Session()
    session.trust_env = False  # only 127.0.0.1: no proxy from the environment
    return session


def discover(args, http, deadline, summary):
    response = http.get(f"{args.issuer}/.well-known/openid-configuration", timeout=deadline.left())
    metadata = json_object(response, "the discovery document")
    if response.status_code != 200:
        raise StepFailed(f"the discovery document: HTTP {response.status_code}")
    wrong = []
    if metadata.get("issuer") != args.issuer:
        wrong.append(f"issuer {metadata.get('issuer')!r}, not {args.issuer!r}")
    for field, path in ENDPOINTS.items():
        if metadata.get(field) != args.issuer + path:
            wrong.append(f"{field} {metadata.get(field)!r}, not {args.issuer + path!r}")
    for field, values in LISTS.items():
        got = metadata.get(field)
        if not isinstance(got, list) or sorted(got) != sorted(values):
            wrong.append(f"{field} {got!r}, not {values!r}")
    if metadata.get("authorization_response_iss_parameter_supported") is not True:
        wrong.append("authorization_response_iss_parameter_supported "
                     f"{metadata.get('authorization_response_iss_parameter_supported')!r}")
    summary["discovery"] = {"issuer": metadata.get("issuer"), "scopes_supported": metadata.get("scopes_supported"),
                            "grant_types_supported": metadata.get("grant_types_supported")}
    if wrong:
        raise StepFailed("the discovery document: " + "; ".join(wrong))
    return metadata


def oauth_session(args):
    session = OAuth2Session(
        args.client_id,
        args.client_secret,
        token_endpoint_auth_method="client_secret_basic",
        revocation_endpoint_auth_method="client_secret_basic",
        scope=SCOPE,
        redirect_uri=args.redirect_uri,
        code_challenge_method="S256",
    )
    session.trust_env = False  # only 127.0.0.1: no proxy from the environment
    return session


def read_state(args):
    try:
        with open(args.state_file) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise StepFailed(f"STATE_FILE {args.state_file}: {e}")
    for field in ("issuer", "client_id", "redirect_uri"):
        if saved.get(field) != getattr(args, field):
            raise StepFailed(f"STATE_FILE was written for {field} {saved.get(field)!r}, not {getattr(args, field)!r}")
    return saved


def at_hash(access_token):
    """OpenID Connect Core 3.1.3.6 for RS256: the left half of the SHA-256
    of the access token, base64url."""
    return urlsafe_b64encode(hashlib.sha256(access_token.encode("ascii")).digest()[:16]).decode()


def is_uuid(value):
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def id_token_claims(args, metadata, http, saved, token, deadline):
    """Step 4: the ID token's claims, checked by authlib.jose."""
    response = http.get(metadata["jwks_uri"], timeout=deadline.left())
    jwks = json_object(response, "the JWKS")
    if response.status_code != 200:
        raise StepFailed(f"the JWKS: HTTP {response.status_code}")
    keys = JsonWebKey.import_key_set(jwks)
    string = {"validate": lambda claims, value: isinstance(value, str) and bool(value)}
    options = {
        "iss": {"essential": True, "value": args.issuer},
        "aud": {"essential": True, "value": args.client_id},
        "sub": {"essential": True, "validate": lambda claims, value: is_uuid(value)},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "nonce": {"essential": True, "value": saved["nonce"]},
        "auth_time": {"essential": True,
                      "validate": lambda claims, value: isinstance(value, int) and value <= claims["iat"]},
        "sid": {"essential": True, **string},
        "at_hash": {"essential": True, "value": at_hash(token["access_token"])},
        "preferred_username": {"essential": True, **string},
        "email": {"essential": True, "validate": lambda claims, value: isinstance(value, str) and "@" in value},
        "email_verified": {"validate": lambda claims, value: isinstance(value, bool)},
    }
    try:
        claims = JsonWebToken(["RS256"]).decode(token["id_token"], keys, claims_options=options)
        claims.validate(leeway=LEEWAY)
    except JoseError as e:
        raise StepFailed(f"the ID token: {said(e)}")
    except ValueError as e:  # no key in the JWKS for its kid
        raise StepFailed(f"the ID token: {e}")
    if "email_verified" not in claims:
        raise StepFailed("the ID token has no email_verified (scope email)")
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if aud != [args.client_id]:
        raise StepFailed(f"the ID token's aud is {claims['aud']!r}, not {args.client_id!r} alone")
    return claims


def profile(args, http, access_token, deadline):
    """GET ISSUER/profile with a bearer access token: {status, id, username, email}."""
    response = http.get(f"{args.issuer}/profile", headers={"Authorization": f"Bearer {access_token}"},
                        allow_redirects=False, timeout=deadline.left())
    if response.status_code != 200:
        return {"status": response.status_code}
    body = json_object(response, "/profile")
    return {"status": 200, "id": body.get("id"), "username": body.get("username"), "email": body.get("email")}


def profile_works(args, http, access_token, sub, deadline, what):
    seen = profile(args, http, access_token, deadline)
    if seen["status"] != 200:
        raise StepFailed(f"/profile with {what}: HTTP {seen['status']}, not 200")
    if seen["id"] != sub:
        raise StepFailed(f"/profile with {what} is user {seen['id']!r}, the ID token's sub is {sub!r}")
    return seen


def introspect(session, metadata, access_token, deadline, what):
    response = session.introspect_token(metadata["introspection_endpoint"], token=access_token,
                                        token_type_hint="access_token", timeout=deadline.left())
    body = json_object(response, f"introspecting {what}")
    if response.status_code != 200 or not isinstance(body.get("active"), bool):
        raise StepFailed(f"introspecting {what}: HTTP {response.status_code} {body}")
    return body


def start(args, http, deadline, summary, step):
    step("1: discovery")
    metadata = discover(args, http, deadline, summary)

    step("2: create_authorization_url")
    session = oauth_session(args)
    saved = {
        "issuer": args.issuer,
        "client_id": args.client_id,
        "redirect_uri": args.redirect_uri,
        "code_verifier": generate_token(64),
        "nonce": generate_token(32),
    }
    url, saved["state"] = session.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=saved["code_verifier"], nonce=saved["nonce"])
    with open(os.open(args.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(saved, f)
    summary["authorization_url"] = url


def finish(args, http, deadline, summary, step):
    step("1: discovery")
    metadata = discover(args, http, deadline, summary)
    saved = read_state(args)
    session = oauth_session(args)

    step("2: the callback")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(args.callback_url).query))
    summary["callback"] = {"parameters": sorted(query), "iss": query.get("iss"),
                           "state_matches": query.get("state") == saved["state"]}
    if "error" in query:
        raise StepFailed(f"the callback is an error: {query['error']} {query.get('error_description', '')}".rstrip())
    if not summary["callback"]["state_matches"]:
        raise StepFailed("the callback's state is not the one sent")
    if query.get("iss") != args.issuer:
        raise StepFailed(f"the callback's iss {query.get('iss')!r} is not the issuer {args.issuer!r}")

    step("3: fetch_token (client_secret_basic, PKCE)")
    token = session.fetch_token(metadata["token_endpoint"], authorization_response=args.callback_url,
                                state=saved["state"], code_verifier=saved["code_verifier"],
                                timeout=deadline.left())
    summary["token"] = {"token_type": token.get("token_type"), "expires_in": token.get("expires_in"),
                        "scope": token.get("scope")}
    if str(token.get("token_type", "")).lower() != "bearer":
        raise StepFailed(f"token_type {token.get('token_type')!r}, not Bearer")
    for name in ("access_token", "refresh_token", "id_token"):
        if not isinstance(token.get(name), str) or not token[name]:
            raise StepFailed(f"no {name} in the token answer (scope {SCOPE})")

    step("4: the ID token (authlib.jose)")
    claims = id_token_claims(args, metadata, http, saved, token, deadline)
    sub = claims["sub"]
    summary["id_token"] = {k: claims.get(k) for k in (
        "iss", "sub", "aud", "exp", "iat", "auth_time", "sid", "preferred_username", "email", "email_verified")}
    summary["id_token"].update({"alg": claims.header.get("alg"), "kid": claims.header.get("kid"),
                                "nonce_matches": True, "at_hash_matches": True})

    step("5: userinfo")
    response = session.get(metadata["userinfo_endpoint"], timeout=deadline.left())
    userinfo = json_object(response, "userinfo")
    summary["userinfo"] = userinfo
    if response.status_code != 200 or userinfo.get("sub") != sub:
        raise StepFailed(f"userinfo: HTTP {response.status_code} with sub {userinfo.get('sub')!r}, not {sub!r}")
    for name in ("preferred_username", "email"):
        if userinfo.get(name) != claims[name]:
            raise StepFailed(f"userinfo's {name} {userinfo.get(name)!r}, the ID token's {claims[name]!r}")

    step("6: /profile with the access token")
    seen = summary["profile"] = profile_works(args, http, token["access_token"], sub, deadline, "the access token")
    if (seen["username"], seen["email"]) != (claims["preferred_username"], claims["email"]):
        raise StepFailed(f"/profile is {seen['username']} <{seen['email']}>, "
                         f"the ID token {claims['preferred_username']} <{claims['email']}>")

    step("7: refresh (rotation)")
    first = dict(token)
    token = session.refresh_token(metadata["token_endpoint"], refresh_token=first["refresh_token"],
                                  timeout=deadline.left())
    if token.get("refresh_token") == first["refresh_token"]:
        raise StepFailed("the refresh gave no new refresh token (no rotation)")
    summary["refresh"] = {
        "new_refresh_token": True,
        "new_access_token": token["access_token"] != first["access_token"],
        "profile": profile_works(args, http, token["access_token"], sub, deadline,
                                 "the refreshed access token")["status"],
    }

    step("8: introspection of the refreshed access token")
    answer = introspect(session, metadata, token["access_token"], deadline, "the refreshed access token")
    summary["introspection"] = answer
    if answer["active"] is not True:
        raise StepFailed(f"the refreshed access token introspects {answer}")
    if answer.get("client_id", args.client_id) != args.client_id or answer.get("sub", sub) != sub:
        raise StepFailed(f"the refreshed access token introspects as client {answer.get('client_id')!r}, "
                         f"sub {answer.get('sub')!r}")

    step("9: revocation of the refresh token")
    response = session.revoke_token(metadata["revocation_endpoint"], token=token["refresh_token"],
                                    token_type_hint="refresh_token", timeout=deadline.left())
    revoked = summary["revocation"] = {"status": response.status_code}
    if response.status_code != 200:
        raise StepFailed(f"revoking the refresh token: HTTP {response.status_code} {response.text[:200]!r}")
    try:
        session.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"],
                              timeout=deadline.left())
    except OAuthError as e:
        revoked["refresh_after"] = e.error
    else:
        raise StepFailed("the revoked refresh token still refreshes")
    if revoked["refresh_after"] != "invalid_grant":
        raise StepFailed(f"refreshing with the revoked refresh token: {revoked['refresh_after']}, not invalid_grant")
    revoked["profile_after"] = profile(args, http, token["access_token"], deadline)["status"]
    if revoked["profile_after"] != 401:
        raise StepFailed(f"/profile with the access token of the revoked grant: "
                         f"HTTP {revoked['profile_after']}, not 401")
    revoked["introspection_after"] = introspect(session, metadata, token["access_token"], deadline,
                                                "the access token of the revoked grant")
    if revoked["introspection_after"]["active"] is not False:
        raise StepFailed(f"the access token of the revoked grant introspects {revoked['introspection_after']}")


def watchdog(seconds):
    """The last resort: a call stuck past every deadline still ends the run."""

    def expire():
        print(f"oidc_authlib: still running {seconds:.0f}s after the start; giving up",
              file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main():
    args = parse_args(sys.argv[1:])
    watchdog(args.max_seconds + 15)
    deadline = Deadline(args.max_seconds)
    summary = {"command": args.command, "steps_passed": []}
    current = {"step": None}

    def step(name):
        if current["step"] is not None:
            summary["steps_passed"].append(current["step"])
        current["step"] = name

    error = None
    http = plain_session()
    try:
        {"start": start, "finish": finish}[args.command](args, http, deadline, summary, step)
        step(None)
    except StepFailed as e:
        error = str(e)
    except AuthlibBaseError as e:  # OAuthError: the provider's error answers
        error = f"authlib: {said(e)}"
    except ValueError as e:  # authlib: a token answer that is not a JSON object
        error = f"authlib: {e}"
    except requests.RequestException as e:
        error = f"{type(e).__name__}: {e}"
    if error:
        summary["failed_step"] = current["step"]
        summary["error"] = error
    print(json.dumps(summary), flush=True)
    if error:
        print(f"oidc_authlib {args.command}: step {current['step']}: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

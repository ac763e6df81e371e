"""Legacy password hashes made by the reference libraries themselves
(Werkzeug, Django's hashers, passlib, bcrypt, argon2-cffi), with cheap
parameters so the test stays fast, written as an import file.

    legacy_hashes.py OUT.jsonl [REALM.json]

With REALM.json, also a Keycloak realm export built from Keycloak's
documented credential representation (secretData and credentialData as
JSON strings; PBKDF2 through hashlib, as Keycloak's providers derive it).

One JSON line per format: {"username", "email", "password_hash", "format",
"password"}; the importer ignores nothing, so the test strips "format" and
"password" before importing (see hub/tests/it/import.rs).
"""

import base64
import hashlib
import json
import os
import sys
import uuid

import argon2
import bcrypt
from django.conf import settings

settings.configure(
    PASSWORD_HASHERS=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
        "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
        "django.contrib.auth.hashers.BCryptPasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
    ]
)
from django.contrib.auth import hashers  # noqa: E402
from passlib.hash import pbkdf2_sha1, pbkdf2_sha256, pbkdf2_sha512, scrypt as passlib_scrypt  # noqa: E402
from werkzeug.security import check_password_hash, generate_password_hash  # noqa: E402


class CheapArgon2(hashers.Argon2PasswordHasher):
    time_cost, memory_cost, parallelism = 1, 1024, 2


class CheapBcryptSha256(hashers.BCryptSHA256PasswordHasher):
    rounds = 4


class CheapBcrypt(hashers.BCryptPasswordHasher):
    rounds = 4


def main():
    out = sys.argv[1]
    cases = {
        "werkzeug-pbkdf2-sha256": lambda p: generate_password_hash(p, "pbkdf2:sha256:1000"),
        "werkzeug-pbkdf2-sha512": lambda p: generate_password_hash(p, "pbkdf2:sha512:1000"),
        "werkzeug-scrypt": lambda p: generate_password_hash(p, "scrypt:1024:8:1"),
        "django-pbkdf2-sha256": lambda p: hashers.PBKDF2PasswordHasher().encode(p, hashers.PBKDF2PasswordHasher().salt(), 1000),
        "django-pbkdf2-sha1": lambda p: hashers.PBKDF2SHA1PasswordHasher().encode(p, hashers.PBKDF2SHA1PasswordHasher().salt(), 1000),
        "django-bcrypt-sha256": lambda p: CheapBcryptSha256().encode(p, CheapBcryptSha256().salt()),
        "django-bcrypt": lambda p: CheapBcrypt().encode(p, CheapBcrypt().salt()),
        "django-argon2": lambda p: CheapArgon2().encode(p, CheapArgon2().salt()),
        "passlib-pbkdf2-sha256": lambda p: pbkdf2_sha256.using(rounds=1000).hash(p),
        "passlib-pbkdf2-sha512": lambda p: pbkdf2_sha512.using(rounds=1000).hash(p),
        "passlib-pbkdf2-sha1": lambda p: pbkdf2_sha1.using(rounds=1000).hash(p),
        "passlib-scrypt": lambda p: passlib_scrypt.using(rounds=10, block_size=8, parallelism=1).hash(p),
        "argon2id": lambda p: argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(p),
        "argon2i": lambda p: argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=argon2.Type.I).hash(p),
        "bcrypt-2b": lambda p: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode(),
        "bcrypt-2a": lambda p: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4, prefix=b"2a")).decode(),
        "bcrypt-2y": lambda p: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1),
    }
    with open(out, "w") as f:
        for i, (name, make) in enumerate(cases.items()):
            password = f"correct horse {name}"
            hashed = make(password)
            # Each library checks its own hash, so the file holds what it says.
            if name.startswith("werkzeug"):
                assert check_password_hash(hashed, password)
            elif name.startswith("django"):
                assert hashers.check_password(password, hashed, preferred="default") or hashers.identify_hasher(hashed)
            username = f"legacy{i:02d}"
            f.write(json.dumps({"username": username, "email": f"{username}@example.com",
                                "password_hash": hashed, "format": name, "password": password}) + "\n")
        # One more, over the test's ceiling (bcrypt cost 4): refused at import.
        over = bcrypt.hashpw(b"too costly", bcrypt.gensalt(5)).decode()
        f.write(json.dumps({"username": "costly", "email": "costly@example.com",
                            "password_hash": over, "format": "over-ceiling", "password": "too costly"}) + "\n")
    # The SHA-256 pre-hash Django's bcrypt_sha256 applies is what polyhub applies.
    assert len(hashlib.sha256(b"x").hexdigest()) == 64


def keycloak_user(username, password, algorithm, digest, iterations, key_bytes, **extra):
    salt = os.urandom(16)
    value = hashlib.pbkdf2_hmac(digest, password.encode(), salt, iterations, key_bytes)
    user = {
        "id": str(uuid.uuid4()), "username": username, "enabled": True,
        "createdTimestamp": 1577934245000,
        "credentials": [{
            "id": str(uuid.uuid4()), "type": "password", "createdDate": 1577934245000,
            "secretData": json.dumps({"value": base64.b64encode(value).decode(),
                                      "salt": base64.b64encode(salt).decode(), "additionalParameters": {}}),
            "credentialData": json.dumps({"hashIterations": iterations, "algorithm": algorithm,
                                          "additionalParameters": {}}),
        }],
        "realmRoles": ["default-roles-legacy"],
    }
    user.update(extra)
    return user


def realm(out):
    users = [
        keycloak_user("kc-sha256", "correct horse kc-sha256", "pbkdf2-sha256", "sha256", 1000, 64,
                      email="kc-sha256@example.com"),
        keycloak_user("kc-sha512", "correct horse kc-sha512", "pbkdf2-sha512", "sha512", 1000, 64,
                      email="kc-sha512@example.com", realmRoles=["default-roles-legacy", "admin"]),
        keycloak_user("kc-sha1", "correct horse kc-sha1", "pbkdf2", "sha1", 1000, 20,
                      email="kc-sha1@example.com"),
        keycloak_user("kc-noemail", "correct horse kc-noemail", "pbkdf2-sha256", "sha256", 1000, 64),
        keycloak_user("kc-argon", "correct horse kc-argon", "argon2", "sha256", 1000, 64,
                      email="kc-argon@example.com"),
    ]
    export = {"id": "legacy", "realm": "legacy", "enabled": True, "users": users,
              "roles": {"realm": [{"name": "admin"}]}, "clients": []}
    with open(out, "w") as f:
        json.dump(export, f, indent=2)


if __name__ == "__main__":
    main()
    if len(sys.argv) > 2:
        realm(sys.argv[2])

"""Legacy hashes at each library's own defaults, and how long the library
itself takes to verify each (best of three). Prints a JSON list of
{"format", "hash", "password", "seconds"} for hub/benches/import.rs.
"""

import json
import timeit

import argon2
import bcrypt
from django.conf import settings

settings.configure(PASSWORD_HASHERS=[
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
])
from django.contrib.auth import hashers  # noqa: E402
from passlib.hash import pbkdf2_sha256, scrypt as passlib_scrypt  # noqa: E402
from werkzeug.security import check_password_hash, generate_password_hash  # noqa: E402

PASSWORD = "correct horse battery staple"
argon = argon2.PasswordHasher()


def best(check):
    return min(timeit.repeat(check, number=1, repeat=3))


cases = [
    ("werkzeug pbkdf2:sha256 (default)", generate_password_hash(PASSWORD),
     lambda h: check_password_hash(h, PASSWORD)),
    ("werkzeug scrypt (default)", generate_password_hash(PASSWORD, "scrypt"),
     lambda h: check_password_hash(h, PASSWORD)),
    ("django pbkdf2_sha256 (default)", hashers.make_password(PASSWORD, hasher="pbkdf2_sha256"),
     lambda h: hashers.check_password(PASSWORD, h)),
    ("django bcrypt_sha256 (default)", hashers.make_password(PASSWORD, hasher="bcrypt_sha256"),
     lambda h: hashers.check_password(PASSWORD, h)),
    ("django argon2 (default)", hashers.make_password(PASSWORD, hasher="argon2"),
     lambda h: hashers.check_password(PASSWORD, h)),
    ("passlib pbkdf2_sha256 (default)", pbkdf2_sha256.hash(PASSWORD),
     lambda h: pbkdf2_sha256.verify(PASSWORD, h)),
    ("passlib scrypt (default)", passlib_scrypt.hash(PASSWORD),
     lambda h: passlib_scrypt.verify(PASSWORD, h)),
    ("argon2-cffi argon2id (default)", argon.hash(PASSWORD), lambda h: argon.verify(h, PASSWORD)),
    ("bcrypt cost 12 (default)", bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode(),
     lambda h: bcrypt.checkpw(PASSWORD.encode(), h.encode())),
]
out = []
for name, hashed, check in cases:
    assert check(hashed)
    out.append({"format": name, "hash": hashed, "password": PASSWORD,
                "seconds": best(lambda: check(hashed))})
print(json.dumps(out))

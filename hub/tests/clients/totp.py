"""TOTP codes as an authenticator app computes them, by pyotp (RFC 6238).

Usage: totp.py SECRET OFFSET...
Prints one code per OFFSET (seconds from now, e.g. 0 or 30), a JSON list.
"""

import json
import sys
import time

import pyotp


def main() -> None:
    secret, offsets = sys.argv[1], sys.argv[2:]
    totp = pyotp.TOTP(secret)
    now = time.time()
    print(json.dumps([totp.at(now + int(offset)) for offset in offsets]))


if __name__ == "__main__":
    main()

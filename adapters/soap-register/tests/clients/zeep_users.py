"""A legacy enterprise client, as one would write it: zeep, pointed at nothing
but our WSDL URLs, registers and looks up users through the SOAP 1.1 and the
SOAP 1.2 port of each service.

usage: zeep_users.py REGISTER_WSDL_URL LOOKUP_WSDL_URL UNIQUE_SUFFIX
Exits non-zero, saying why, on the first thing that is not as it should be.
"""

import sys

from lxml import etree
from zeep import Client, Settings
from zeep.exceptions import Fault


def detail_of(fault: Fault) -> str:
    return etree.tostring(fault.detail).decode() if fault.detail is not None else ""


def expect_fault(call, code: str) -> None:
    try:
        call()
    except Fault as fault:
        detail = detail_of(fault)
        assert code in detail, f"expected {code} in the fault detail, got {detail!r}"
        assert "RequestId" in detail, f"no RequestId in {detail!r}"
    else:
        raise AssertionError(f"expected a fault carrying {code}")


def main() -> None:
    register_wsdl, lookup_wsdl, suffix = sys.argv[1:4]
    settings = Settings(strict=True)
    registration = Client(register_wsdl, settings=settings)
    lookup = Client(lookup_wsdl, settings=settings)

    for soap in ("Soap11", "Soap12"):
        register = registration.bind("UserRegistrationService", f"UserRegistration{soap}")
        find = lookup.bind("UserLookupService", f"UserLookup{soap}")
        name = f"zeep.{soap.lower()}.{suffix}"

        made = register.RegisterUser(
            username=name, email=f"{name}@example.com", password="correct horse battery"
        )
        assert made.username == name, made
        assert made.email == f"{name}@example.com", made
        assert made.createdAt is not None, made

        found = find.LookupUser(username=name.upper())
        assert found.userId == made.userId, (found, made)
        assert found.username == name, found
        fields = set(found.__values__)
        assert fields == {"userId", "username", "createdAt"}, f"lookup says too much: {fields}"

        expect_fault(
            lambda: register.RegisterUser(
                username=name.upper(), email=f"other.{name}@example.com", password="correct horse battery"
            ),
            "USERNAME_TAKEN",
        )
        expect_fault(
            lambda: register.RegisterUser(
                username=f"x{name}", email=f"{name}@example.com", password="correct horse battery"
            ),
            "EMAIL_TAKEN",
        )
        expect_fault(
            lambda: register.RegisterUser(username="no way!", email="a@example.com", password="correct horse"),
            "INVALID_USERNAME",
        )
        expect_fault(lambda: find.LookupUser(username=f"nobody{suffix}"), "USER_NOT_FOUND")
        print(f"zeep {soap}: register, lookup and faults as expected")


if __name__ == "__main__":
    main()

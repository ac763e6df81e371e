"""A legacy enterprise client with WS-Security, as one would write it: zeep,
pointed at nothing but our WSDL URLs, signs its requests in with an OASIS WSS
UsernameToken (PasswordText, next to a wsu:Timestamp) on the SOAP 1.1 and the
SOAP 1.2 port of each service.

usage: zeep_wsse.py REGISTER_WSDL_URL LOOKUP_WSDL_URL USERNAME PASSWORD UNIQUE_SUFFIX

USERNAME/PASSWORD is an existing admin account. For each binding it registers
`zeep.wsse.<soap>.<suffix>` with role "admin" and looks it up, both as that
admin; then checks that a PasswordDigest token is refused
(wsse:UnsupportedSecurityToken, UNSUPPORTED_SECURITY_TOKEN) and that a wrong
password is refused (wsse:FailedAuthentication, INVALID_CREDENTIALS) without
registering anyone.
Exits non-zero, saying why, on the first thing that is not as it should be.
"""

import sys
from datetime import datetime, timedelta, timezone

from lxml import etree
from zeep import Client, Settings
from zeep.exceptions import Fault
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken
from zeep.wsse.utils import WSU, get_timestamp

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
TNS = "urn:polyhub:users:v1"
# What each binding answers a fault with (the SOAP 1.1 and 1.2 HTTP bindings).
FAULT_STATUS = {"Soap11": 500, "Soap12": 400}


class RecordingTransport(Transport):
    """zeep's transport, keeping the last HTTP response: zeep turns any
    non-200 answer into a Fault and tells neither its status nor, in SOAP 1.1,
    the namespace of the faultcode's prefix."""

    last = None

    def post_xml(self, address, envelope, headers):
        self.last = super().post_xml(address, envelope, headers)
        return self.last


def timestamp() -> etree._Element:
    """A fresh wsu:Timestamp: Created now, Expires in five minutes (UTC, Z)."""
    now = datetime.now(timezone.utc)
    return WSU.Timestamp(
        WSU.Created(get_timestamp(now, zulu_timestamp=True)),
        WSU.Expires(get_timestamp(now + timedelta(minutes=5), zulu_timestamp=True)),
    )


def password_text(username: str, password: str) -> UsernameToken:
    return UsernameToken(username, password, timestamp_token=timestamp())


def qname(text: str, nsmap: dict) -> etree.QName:
    """A fault code's QName text (`wsse:X`, or `{ns}X` tolerated) resolved."""
    text = text.strip()
    if text.startswith("{"):
        return etree.QName(text)
    prefix, _, local = text.rpartition(":")
    namespace = nsmap.get(prefix or None)
    assert namespace, f"fault code {text!r}: prefix {prefix!r} is not declared"
    return etree.QName(namespace, local)


def wsse_code(fault: Fault, soap: str, transport: RecordingTransport) -> etree.QName:
    """The fault's WS-Security code: SOAP 1.1's faultcode, SOAP 1.2's Subcode
    (under env:Sender)."""
    if soap == "Soap12":
        # zeep 4.3.3: code is Code/Value's text as sent, subcodes the Subcode
        # Values as resolved lxml QNames.
        local = (fault.code or "").rsplit("}", 1)[-1].rsplit(":", 1)[-1]
        assert local == "Sender", f"expected env:Sender as the SOAP 1.2 fault code, got {fault.code!r}"
        assert fault.subcodes, f"no Subcode under {fault.code!r}: {fault.message!r}"
        return etree.QName(fault.subcodes[0])
    # zeep 4.3.3: code is faultcode's text as sent; resolve its prefix where
    # it was declared, in the answer itself.
    assert fault.code, f"a SOAP 1.1 fault without a faultcode: {fault.message!r}"
    envelope = etree.fromstring(transport.last.content)
    node = envelope.find(f"{{{SOAP11_ENV}}}Body/{{{SOAP11_ENV}}}Fault/faultcode")
    assert node is not None and node.text.strip() == fault.code.strip(), (fault.code, node)
    return qname(node.text, node.nsmap)


def expect_fault(call, soap: str, transport: RecordingTransport, code: str, error_code: str) -> Fault:
    try:
        call()
    except Fault as fault:
        status = transport.last.status_code
        assert status == FAULT_STATUS[soap], (
            f"{soap}: expected HTTP {FAULT_STATUS[soap]} with {error_code}, got {status}"
        )
        got = wsse_code(fault, soap, transport)
        assert (got.namespace, got.localname) == (WSSE, code), (
            f"{soap}: expected wsse:{code} ({{{WSSE}}}{code}) as the fault code, got {got}"
        )
        detail = fault.detail
        assert detail is not None, f"{soap}: a fault without a detail: {fault.message!r}"
        found = detail.findtext(f"{{{TNS}}}ServiceFault/{{{TNS}}}ErrorCode")
        assert found == error_code, (
            f"{soap}: expected tns:ServiceFault/tns:ErrorCode {error_code}, got "
            f"{etree.tostring(detail).decode()!r}"
        )
        assert detail.findtext(f"{{{TNS}}}ServiceFault/{{{TNS}}}RequestId"), (
            f"{soap}: no RequestId in {etree.tostring(detail).decode()!r}"
        )
        return fault
    raise AssertionError(f"{soap}: expected a fault carrying wsse:{code} and {error_code}")


def main() -> None:
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    register_wsdl, lookup_wsdl, username, password, suffix = sys.argv[1:6]
    settings = Settings(strict=True)
    transport = RecordingTransport()
    registration = Client(register_wsdl, settings=settings, transport=transport)
    lookup = Client(lookup_wsdl, settings=settings, transport=transport)

    fields = [name for name, _ in registration.get_element(f"{{{TNS}}}RegisterUser").type.elements]
    assert fields[:4] == ["username", "email", "password", "role"], (
        f"the WSDL's RegisterUser has {fields}, not the optional role after password"
    )

    for soap in ("Soap11", "Soap12"):
        register = registration.bind("UserRegistrationService", f"UserRegistration{soap}")
        find = lookup.bind("UserLookupService", f"UserLookup{soap}")
        name = f"zeep.wsse.{soap.lower()}.{suffix}"

        # The client's wsse is applied to each request as it is sent: a fresh
        # token (and Timestamp) per call, as a long-lived client would make.
        registration.wsse = password_text(username, password)
        made = register.RegisterUser(
            username=name, email=f"{name}@example.com", password="correct horse battery", role="admin"
        )
        assert made.username == name, made
        assert made.email == f"{name}@example.com", made
        assert made.userId, made
        assert made.createdAt is not None, made
        if "role" in made.__values__:
            assert made.role == "admin", made

        lookup.wsse = password_text(username, password)
        found = find.LookupUser(username=name)
        assert found.userId == made.userId, (found, made)
        assert found.username == name, found

        lookup.wsse = UsernameToken(username, password, use_digest=True)
        refused = expect_fault(
            lambda: find.LookupUser(username=name),
            soap, transport, "UnsupportedSecurityToken", "UNSUPPORTED_SECURITY_TOKEN",
        )
        assert "PasswordDigest" in (refused.message or ""), (
            f"{soap}: the refusal does not name PasswordDigest: {refused.message!r}"
        )

        # A wrong password must be refused, not taken for an anonymous caller.
        other = f"zeep.no.{soap.lower()}.{suffix}"
        registration.wsse = password_text(username, password + "x")
        expect_fault(
            lambda: register.RegisterUser(
                username=other, email=f"{other}@example.com", password="correct horse battery", role="admin"
            ),
            soap, transport, "FailedAuthentication", "INVALID_CREDENTIALS",
        )
        lookup.wsse = password_text(username, password)
        try:
            ghost = find.LookupUser(username=other)
        except Fault as fault:
            assert fault.detail is not None and fault.detail.findtext(
                f"{{{TNS}}}ServiceFault/{{{TNS}}}ErrorCode"
            ) == "USER_NOT_FOUND", f"{soap}: looking {other} up: {fault.message!r}"
        else:
            raise AssertionError(f"{soap}: a wrong password registered {other}: {ghost}")

        print(
            f"zeep wsse {soap}: PasswordText+Timestamp registers an admin and looks it up; "
            "PasswordDigest and a wrong password are refused as expected"
        )


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        sys.exit(f"zeep_wsse.py: {failure}")
    except Fault as fault:
        detail = etree.tostring(fault.detail).decode() if fault.detail is not None else ""
        sys.exit(f"zeep_wsse.py: unexpected fault {fault.code} {fault.subcodes}: {fault.message} {detail}")

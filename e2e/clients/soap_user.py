"""zeep, pointed at nothing but the WSDL URL: registers a user over SOAP 1.1
and looks it up, or looks a name up only.

    soap_user.py register REGISTER_WSDL LOOKUP_WSDL USERNAME EMAIL PASSWORD
    soap_user.py lookup LOOKUP_WSDL USERNAME

Prints one JSON document; a SOAP fault prints its ErrorCode instead.
"""

import json
import sys

from lxml import etree
from zeep import Client, Settings
from zeep.exceptions import Fault


def fault_code(fault: Fault) -> str:
    detail = fault.detail
    if detail is None:
        return ""
    codes = detail.xpath(".//*[local-name()='ErrorCode']")
    return codes[0].text if codes else etree.tostring(detail).decode()


def main() -> None:
    settings = Settings(strict=True)
    try:
        if sys.argv[1] == "register":
            register_wsdl, lookup_wsdl, username, email, password = sys.argv[2:7]
            service = Client(register_wsdl, settings=settings).bind(
                "UserRegistrationService", "UserRegistrationSoap11"
            )
            registered = service.RegisterUser(username=username, email=email, password=password)
            found = Client(lookup_wsdl, settings=settings).bind(
                "UserLookupService", "UserLookupSoap11"
            ).LookupUser(username=username)
            print(json.dumps({"registered": str(registered.userId), "found": str(found.userId)}))
        else:
            lookup_wsdl, username = sys.argv[2:4]
            found = Client(lookup_wsdl, settings=settings).bind(
                "UserLookupService", "UserLookupSoap11"
            ).LookupUser(username=username)
            print(json.dumps({"found": str(found.userId)}))
    except Fault as fault:
        print(json.dumps({"fault": fault_code(fault)}))


if __name__ == "__main__":
    main()

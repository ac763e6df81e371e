"""zeep runs a list of SOAP calls and reports each one's outcome.

    soap_cases.py REGISTER_WSDL LOOKUP_WSDL CASES_JSON

CASES_JSON is a list of {"op": "register"|"lookup", "soap": "Soap11"|"Soap12",
"args": {...}}. Prints a JSON list: "OK" or the fault's ErrorCode, in order.
"""

import json
import sys

from zeep import Client, Settings
from zeep.exceptions import Fault


def main() -> None:
    register_wsdl, lookup_wsdl, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    settings = Settings(strict=True)
    registration = Client(register_wsdl, settings=settings)
    lookup = Client(lookup_wsdl, settings=settings)
    outcomes = []
    for case in cases:
        if case["op"] == "register":
            service = registration.bind("UserRegistrationService", f"UserRegistration{case['soap']}")
            call = lambda: service.RegisterUser(**case["args"])  # noqa: E731
        else:
            service = lookup.bind("UserLookupService", f"UserLookup{case['soap']}")
            call = lambda: service.LookupUser(**case["args"])  # noqa: E731
        try:
            call()
            outcomes.append("OK")
        except Fault as fault:
            codes = fault.detail.xpath(".//*[local-name()='ErrorCode']") if fault.detail is not None else []
            outcomes.append(codes[0].text if codes else f"no ErrorCode in {fault}")
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()

"""Passkeys in a real browser: Debian's Chromium, headless, driven by
selenium through Debian's chromedriver (nothing is downloaded), with
Chromium's virtual authenticator (the DevTools protocol's WebAuthn domain)
as the user's device: a resident key that verifies its user.

    passkey_browser.py BASE NAME PASSWORD OUT_DIR AXE_JS

BASE is rest-auth's address with the host name `localhost` (WebAuthn takes
no IP address as the relying party's id; the hub is configured with the RP
ID `localhost` on any port). The account NAME exists already, with
PASSWORD and no second factor. The user adds a passkey on the Security
page, renames it, signs in with it and no password, then uses it as the
second step after the password, and removes it; then the refusals: the
removed passkey, a browser with no passkey, and a forged answer. Every
page inspected is checked as mfa_browser.py checks its pages (headers,
CSP reports, axe-core, screenshots at 1280 and 390 px into OUT_DIR), and
the pages with a passkey form have exactly the console's policy plus
`script-src 'self'; connect-src 'self'`. Prints a JSON report; exits
non-zero (with the reason on stderr) at the first failed step.
"""

import json
import sys
import uuid

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browser_kit import Journey, fill, is_gone, text

BASE, NAME, PASSWORD, OUT, AXE = sys.argv[1:6]
BASE = BASE.rstrip("/")
# What a page with a passkey form adds to the console's policy.
SCRIPTED = "; script-src 'self'; connect-src 'self'"
SIGNIN_BUTTON = 'form[data-passkey="get"][action="/account/signin/passkey"] button[type=submit]'
STEP_BUTTON = 'form[data-passkey="get"][action="/account/signin/mfa"] button[type=submit]'
ADD_BUTTON = 'form[data-passkey="create"] button[type=submit]'

report = {
    "pages": [], "screenshots": [], "violations": [], "csp_reports": [],
    "script_errors": [], "steps": {}, "policies": {},
}


class PasskeyJourney(Journey):
    """A failure also tells the browser's console and, when no next page
    came, what the passkey form's status line says."""

    def tell(self, driver):
        super().tell(driver)
        for entry in driver.get_log("browser"):
            sys.stderr.write(f"  console: {entry.get('level')} {entry.get('message')}\n")

    def stuck(self, driver):
        status = driver.find_elements(By.CSS_SELECTOR, "form[data-passkey] p[role=status]")
        said = [s.text for s in status if s.text]
        return f"; the passkey form says {said}"


kit = PasskeyJourney("passkey browser test", report, BASE, OUT, AXE, network=True,
                     page_load_seconds=10, next_page_seconds=15)
fail, check, step, browser, go, press = kit.fail, kit.check, kit.step, kit.browser, kit.go, kit.press
sign_in, sign_out = kit.sign_in, kit.sign_out


def authenticator(driver):
    """The virtual authenticator of `driver`'s tab: a platform one (a
    laptop's), holding resident keys, verifying its user, present."""
    driver.execute_cdp_cmd("WebAuthn.enable", {})
    made = driver.execute_cdp_cmd("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }})
    return made["authenticatorId"]


def credentials(driver, device):
    return driver.execute_cdp_cmd("WebAuthn.getCredentials", {"authenticatorId": device})["credentials"]


def notice(driver):
    found = driver.find_elements(By.CSS_SELECTOR, "p.notice[role=status]")
    return found[0].text if found else ""


def error_code(driver):
    found = driver.find_elements(By.CSS_SELECTOR, "p.error[role=alert] span.code code")
    return found[0].text if found else ""


def console(driver, name):
    """The browser's console since the last look: CSP violations and
    script errors are reported, named after `name`."""
    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        if "Content Security Policy" in message:
            report["csp_reports"].append({"page": name, "message": message})
        elif entry.get("level") == "SEVERE" and ("Uncaught" in message or "passkeys.js" in message):
            report["script_errors"].append({"page": name, "message": message})


def check_policy(name, headers, scripted):
    """The console's policy, exactly; with the passkey script's two
    directives added on a page with a passkey form, and nothing else."""
    policy = headers.get("content-security-policy", "")
    report["policies"][name] = policy
    check(policy.startswith("default-src 'none';") and "frame-ancestors 'none'" in policy
          and "unsafe-inline" not in policy and "unsafe-eval" not in policy,
          f"{name}: the CSP is {policy!r}")
    if scripted:
        check(policy == CONSOLE_POLICY + SCRIPTED and policy.count("script-src") == 1
              and policy.count("connect-src") == 1,
              f"{name}: the CSP is {policy!r}, not the console's {CONSOLE_POLICY!r} + {SCRIPTED!r}")
    else:
        check(policy == CONSOLE_POLICY and "script-src" not in policy and "connect-src" not in policy,
              f"{name}: a page with no passkey form has the CSP {policy!r}")


def inspect(driver, name, headers, scripted=True):
    """Everything checked on every page: headers, CSP reports and script
    errors, the page's scripts, axe, screenshots."""
    check_policy(name, headers, scripted)
    kit.check_caching(name, headers)
    console(driver, name)
    check(not report["csp_reports"], f"{name}: CSP violations {report['csp_reports']}")
    check(not report["script_errors"], f"{name}: script errors {report['script_errors']}")
    # The page's own script is there, from this origin.
    scripts = [s.get_attribute("src") for s in driver.find_elements(By.CSS_SELECTOR, "script")]
    if scripted:
        check(scripts and all(s == BASE + "/account/passkeys.js" for s in scripts),
              f"{name}: scripts {scripts}")
    kit.axe_and_screenshots(driver, name)


def signed_in(driver):
    """On the account's overview, the header naming the user."""
    who = driver.find_elements(By.CSS_SELECTOR, "header form.signout .who strong")
    return (driver.current_url.rstrip("/") == BASE + "/account"
            and len(who) == 1 and who[0].text == NAME)


def signed_out(driver):
    """The account's pages send this browser to the sign-in page."""
    status, _ = go(driver, "/account")
    return status == 200 and driver.current_url.startswith(BASE + "/account/signin")


def at_second_step(driver, status):
    ticket = driver.find_elements(
        By.CSS_SELECTOR, 'form[data-passkey="get"][action="/account/signin/mfa"] input[type=hidden][name=ticket]')
    button = driver.find_elements(By.CSS_SELECTOR, STEP_BUTTON)
    return (status == 200 and driver.title == "Second step · polyhub"
            and len(ticket) == 1 and ticket[0].get_attribute("value") != ""
            and len(button) == 1 and button[0].text == "Use a passkey")


def cards(driver):
    """The passkeys listed on the Security page: name, and the label of
    its Remove button."""
    found = []
    for card in driver.find_elements(By.CSS_SELECTOR, 'section[aria-labelledby="passkeys"] li.card'):
        remove = card.find_elements(By.CSS_SELECTOR, 'form[action$="/remove"] button')
        found.append({
            "name": card.find_element(By.TAG_NAME, "strong").text,
            "remove": remove[0].get_attribute("aria-label") if remove else None,
            "text": card.text,
        })
    return found


def status_line(driver):
    found = driver.find_elements(By.CSS_SELECTOR, "form[data-passkey] p[role=status]")
    return found[0].text if found else ""


alice = browser()
device = authenticator(alice)

# ---- the console's policy, from a page with no passkey form ----
status, headers = go(alice, "/account/signup")
CONSOLE_POLICY = headers.get("content-security-policy", "")
check(status == 200 and CONSOLE_POLICY.startswith("default-src 'none';")
      and "script-src" not in CONSOLE_POLICY and "connect-src" not in CONSOLE_POLICY
      and not alice.find_elements(By.CSS_SELECTOR, "form[data-passkey], script"),
      f"the sign-up page: {status} {CONSOLE_POLICY!r}")
report["policies"]["signup"] = CONSOLE_POLICY

# ---- the sign-in page offers a passkey ----
status, headers = go(alice, "/account/signin")
button = alice.find_elements(By.CSS_SELECTOR, SIGNIN_BUTTON)
step("signin_offers_passkey", status == 200 and len(button) == 1 and button[0].text == "Sign in with a passkey",
     f"{status}: {text(alice)}")
inspect(alice, "passkey-signin", headers)

# ---- signed in with the password; a passkey added on the Security page ----
sign_in(alice, NAME, PASSWORD)
check(signed_in(alice), f"signed in with the password: {text(alice)}")
status, headers = go(alice, "/account")
check_policy("account", headers, scripted=False)
status, headers = press(alice, alice.find_element(By.LINK_TEXT, "Security"))
add = alice.find_elements(By.CSS_SELECTOR, ADD_BUTTON)
step("security_offers_passkey", status == 200 and len(add) == 1 and add[0].text == "Add a passkey"
     and not cards(alice), f"{status}: {text(alice)}")
inspect(alice, "passkey-security-empty", headers)
fill(alice, {"passkey-name": "Laptop", "passkey_password": PASSWORD})
status, headers = press(alice, alice.find_element(By.CSS_SELECTOR, ADD_BUTTON))
listed = cards(alice)
step("passkey_added", status == 200 and alice.current_url == BASE + "/account/security/passkeys"
     and notice(alice) == "The passkey Laptop is added."
     and [(c["name"], c["remove"]) for c in listed] == [("Laptop", "Remove the passkey Laptop")],
     f"{status} {notice(alice)!r} {listed}: {text(alice)}")
held = credentials(alice, device)
report["credential"] = [{k: c.get(k) for k in ("rpId", "isResidentCredential", "signCount")} for c in held]
step("authenticator_holds_resident_key", len(held) == 1 and held[0].get("isResidentCredential") is True
     and held[0].get("rpId") == "localhost", f"the authenticator holds {report['credential']}")

# ---- renamed ----
rename = alice.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="passkeys"] li.card form[action$="/rename"]')
field = rename.find_element(By.CSS_SELECTOR, "input[name=name]")
field.clear()
field.send_keys("Work laptop")
status, headers = press(alice, rename.find_element(By.CSS_SELECTOR, "button[type=submit]"))
listed = cards(alice)
step("passkey_renamed", status == 200 and notice(alice) == "The passkey is renamed."
     and [(c["name"], c["remove"]) for c in listed] == [("Work laptop", "Remove the passkey Work laptop")],
     f"{status} {notice(alice)!r} {listed}: {text(alice)}")
inspect(alice, "passkey-security", headers)

# ---- signed in with the passkey alone: no name, no password ----
sign_out(alice)
status, headers = go(alice, "/account/signin")
check(status == 200, f"the sign-in page: {status}")
press(alice, alice.find_element(By.CSS_SELECTOR, SIGNIN_BUTTON))
step("signed_in_with_passkey", signed_in(alice), f"{alice.current_url}: {text(alice)}")

# ---- the password then asks for the second step: the passkey answers ----
sign_out(alice)
status, headers = sign_in(alice, NAME, PASSWORD)
step("password_asks_for_passkey", at_second_step(alice, status), f"{status} {alice.title}: {text(alice)}")
inspect(alice, "passkey-second-step", headers)
press(alice, alice.find_element(By.CSS_SELECTOR, STEP_BUTTON))
step("signed_in_with_password_and_passkey", signed_in(alice), f"{alice.current_url}: {text(alice)}")

# ---- the Security page tells when it was used; it is removed ----
status, headers = go(alice, "/account/security")
listed = cards(alice)
step("passkey_shows_last_use", status == 200 and len(listed) == 1 and "Last used" in listed[0]["text"],
     f"{status} {listed}")
status, headers = press(alice, alice.find_element(
    By.CSS_SELECTOR, 'button[aria-label="Remove the passkey Work laptop"]'))
step("passkey_removed", status == 200 and notice(alice) == "The passkey is removed." and not cards(alice)
     and len(alice.find_elements(By.CSS_SELECTOR, ADD_BUTTON)) == 1,
     f"{status} {notice(alice)!r}: {text(alice)}")

# ---- refused: the removed passkey (the browser still holds it) ----
sign_out(alice)
go(alice, "/account/signin")
status, headers = press(alice, alice.find_element(By.CSS_SELECTOR, SIGNIN_BUTTON))
step("removed_passkey_refused", status == 401 and alice.title == "Sign in · polyhub"
     and error_code(alice) == "INVALID_PASSKEY", f"{status} {alice.title} {error_code(alice)!r}: {text(alice)}")
step("removed_passkey_signs_nobody_in", signed_out(alice), f"{alice.current_url}: {text(alice)}")

# ---- refused: a browser with no passkey for this site ----
alice.execute_cdp_cmd("WebAuthn.clearCredentials", {"authenticatorId": device})
check(credentials(alice, device) == [], "the authenticator's credentials are not cleared")
go(alice, "/account/signin")
page = alice.find_element(By.TAG_NAME, "html")
alice.find_element(By.CSS_SELECTOR, SIGNIN_BUTTON).click()
try:
    WebDriverWait(alice, 20).until(lambda d: status_line(d).startswith("The passkey did not answer:"))
except Exception:
    fail(f"no_credential_refused: the status says {status_line(alice)!r}")
report["no_credential_status"] = status_line(alice)
step("no_credential_refused", not is_gone(page) and alice.current_url == BASE + "/account/signin",
     f"{alice.current_url}: {text(alice)}")
console(alice, "passkey-signin-no-credential")
check(not report["script_errors"], f"script errors {report['script_errors']}")
step("no_credential_signs_nobody_in", signed_out(alice), f"{alice.current_url}: {text(alice)}")

# ---- refused: a forged answer, posted by the form itself ----
go(alice, "/account/signin")
page = alice.find_element(By.TAG_NAME, "html")
forged = json.dumps({
    "id": "Zm9yZ2Vk", "rawId": "Zm9yZ2Vk", "type": "public-key", "extensions": {},
    "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA",
                 "userHandle": None},
})
alice.execute_script(
    "const form = document.querySelector('form[data-passkey=\"get\"][action=\"/account/signin/passkey\"]');"
    "form.elements.ceremony.value = arguments[0];"
    "form.elements.credential.value = arguments[1];"
    "HTMLFormElement.prototype.submit.call(form);",
    str(uuid.uuid4()), forged)
status, headers = kit.wait_for_next_page(alice, page, "posting a forged answer")
step("forged_answer_refused", status == 401 and alice.title == "Sign in · polyhub"
     and error_code(alice) == "INVALID_PASSKEY"
     and len(alice.find_elements(By.CSS_SELECTOR, SIGNIN_BUTTON)) == 1,
     f"{status} {alice.title} {error_code(alice)!r}: {text(alice)}")
inspect(alice, "passkey-signin-error", headers)
step("forged_answer_signs_nobody_in", signed_out(alice), f"{alice.current_url}: {text(alice)}")

kit.finish()

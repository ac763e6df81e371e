"""Second factors in a real browser: Debian's Chromium, headless, driven by
selenium through Debian's chromedriver (nothing is downloaded); pyotp
computes every code, as an authenticator app would.

    mfa_browser.py BASE NAME PASSWORD OUT_DIR AXE_JS

BASE is rest-auth's address (the console is mounted there). The account
NAME exists already, with PASSWORD and no second factor. The user sets up
an authenticator app on the Security page, then signs in with it, with a
wrong code, a replayed one and recovery codes. Every page inspected is
checked as console_browser.py checks its pages: the headers of the answer
the browser got (CSP, no-store, referrer policy), the browser's console
reports no CSP violation, axe-core's violations are reported, and a
screenshot at 1280 and 390 px wide goes to OUT_DIR. Prints a JSON report;
exits non-zero (with the reason on stderr) at the first failed step.
"""

import re
import sys
import time

import pyotp
from selenium.webdriver.common.by import By

from browser_kit import Journey, field_error, fill, text

BASE, NAME, PASSWORD, OUT, AXE = sys.argv[1:6]
RECOVERY_CODE = re.compile(r"^[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}$")

report = {"pages": [], "screenshots": [], "violations": [], "csp_reports": [], "steps": {}}
kit = Journey("mfa browser test", report, BASE, OUT, AXE, network=True,
              page_load_seconds=10, next_page_seconds=10)
check, step, browser, go, press, submit, inspect = (
    kit.check, kit.step, kit.browser, kit.go, kit.press, kit.submit, kit.inspect)
sign_in, sign_out = kit.sign_in, kit.sign_out


def at_second_step(driver, status):
    form = 'form[action="/account/signin/mfa"]'
    code = driver.find_elements(By.CSS_SELECTOR, f"{form} input[name=code]")
    ticket = driver.find_elements(By.CSS_SELECTOR, f"{form} input[type=hidden][name=ticket]")
    return (status == 200 and driver.title == "Second step · polyhub"
            and len(code) == 1 and code[0].get_attribute("autocomplete") == "one-time-code"
            and len(ticket) == 1 and ticket[0].get_attribute("value") != "")


def second_step(driver, code):
    """A code typed at the second step; the answer."""
    fill(driver, {"code": code})
    return submit(driver, "/account/signin/mfa")


def refused(driver, status):
    return (status == 401 and driver.title == "Second step · polyhub"
            and "INVALID_MFA_CODE" in field_error(driver, "code"))


def signed_in(driver):
    return driver.current_url.rstrip("/").endswith("/account") and NAME in text(driver)


alice = browser()

# ---- signed in with the password alone ----
sign_in(alice, NAME, PASSWORD)
step("signed_in_with_password", signed_in(alice), text(alice))

# ---- an authenticator app set up on the Security page ----
press(alice, alice.find_element(By.LINK_TEXT, "Security"))
fill(alice, {"setup_password": PASSWORD})
status, headers = submit(alice, "/account/security/totp")
secret = alice.find_element(By.CSS_SELECTOR, "code.secret").text
qr = alice.find_elements(By.CSS_SELECTOR, "figure.qr svg")
step("setup_shows_key_and_qr", status == 200 and re.fullmatch(r"[A-Z2-7]{32}", secret) and len(qr) == 1,
     f"{status} {secret!r}: {text(alice)}")
inspect(alice, "security-setup", headers)
totp = pyotp.TOTP(secret)
fill(alice, {"code": totp.now()})
status, headers = submit(alice, "/account/security/totp/confirm")
step("authenticator_on", status == 200 and "The authenticator app is on" in text(alice),
     f"{status}: {text(alice)}")
codes = [c.text for c in alice.find_elements(By.CSS_SELECTOR, "ul.codes code")]
step("ten_recovery_codes", len(codes) == 10 and len(set(codes)) == 10
     and all(RECOVERY_CODE.match(c) for c in codes), f"recovery codes {codes}")
remove = alice.find_elements(By.CSS_SELECTOR, 'form[action="/account/security/totp/remove"] input[name=code]')
renew = alice.find_elements(By.CSS_SELECTOR, 'form[action="/account/security/recovery-codes"] button')
step("security_offers_remove_and_new_codes", len(remove) == 1 and len(renew) == 1, text(alice))
inspect(alice, "security-codes", headers)

# ---- the password asks for a code: a wrong one, then the next step's ----
sign_out(alice)
status, headers = sign_in(alice, NAME, PASSWORD)
step("password_asks_for_code", at_second_step(alice, status), f"{status} {alice.title}: {text(alice)}")
inspect(alice, "second-step", headers)
# The step after the one used to turn the app on: taken with one step of skew.
code = totp.at(time.time() + 30)
wrong = f"{(int(code) + 1) % 10**6:06d}"
status, headers = second_step(alice, wrong)
step("wrong_code_refused", refused(alice, status), f"{status}: {text(alice)}")
inspect(alice, "second-step-error", headers)
second_step(alice, code)
step("signed_in_with_totp", signed_in(alice), text(alice))

# ---- the same code again is refused; a recovery code signs in ----
sign_out(alice)
status, _ = sign_in(alice, NAME, PASSWORD)
check(at_second_step(alice, status), f"second sign-in: {status} {alice.title}")
status, _ = second_step(alice, code)
step("replayed_code_refused", refused(alice, status), f"{status}: {text(alice)}")
second_step(alice, codes[0])
step("signed_in_with_recovery_code", signed_in(alice), text(alice))

# ---- a recovery code works once ----
sign_out(alice)
status, _ = sign_in(alice, NAME, PASSWORD)
check(at_second_step(alice, status), f"third sign-in: {status} {alice.title}")
status, _ = second_step(alice, codes[0])
step("used_recovery_code_refused", refused(alice, status), f"{status}: {text(alice)}")
second_step(alice, codes[1])
step("signed_in_with_second_recovery_code", signed_in(alice), text(alice))

# ---- the Security page counts what is left ----
status, headers = go(alice, "/account/security")
step("eight_recovery_codes_left", status == 200 and "8 unused." in text(alice), text(alice))
inspect(alice, "security-on", headers)

kit.finish()

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

import json
import pathlib
import re
import sys
import tempfile
import time

import pyotp
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BASE, NAME, PASSWORD, OUT, AXE = sys.argv[1:6]
OUT = pathlib.Path(OUT)
OUT.mkdir(parents=True, exist_ok=True)
AXE_SOURCE = pathlib.Path(AXE).read_text()
WIDTHS = (1280, 390)
RECOVERY_CODE = re.compile(r"^[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}$")

report = {"pages": [], "screenshots": [], "violations": [], "csp_reports": [], "steps": {}}
browsers = []


def fail(why):
    sys.stderr.write(f"mfa browser test failed: {why}\n")
    for driver in browsers:
        try:
            page = driver.find_element(By.TAG_NAME, "body").text[:600]
            sys.stderr.write(f"  at {driver.current_url}:\n{page}\n")
        except Exception as e:
            sys.stderr.write(f"  (a browser that cannot tell: {e})\n")
    for driver in browsers:
        try:
            driver.quit()
        except Exception:
            pass
    sys.exit(1)


def on_error(kind, value, trace):
    """Any exception: its trace, then where every browser stood."""
    import traceback
    traceback.print_exception(kind, value, trace)
    fail(f"{kind.__name__}: {value}")


sys.excepthook = on_error


def check(condition, why):
    if not condition:
        fail(why)


def step(name, condition, why):
    """A step of the journey, named in the report once it has passed."""
    check(condition, f"{name}: {why}")
    report["steps"][name] = True


def browser():
    """A browser with a profile of its own (its own cookies), logging its
    console and its network."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='polyhub-chromium-')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(10)
    browsers.append(driver)
    return driver


def answer(driver):
    """The status and headers of the page the browser shows, from its
    network log: a page that answered a POST cannot be fetched again."""
    found = None
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.responseReceived" and event["params"]["type"] == "Document":
            found = event["params"]["response"]
    check(found is not None and found["url"] == driver.current_url,
          f"no answer logged for {driver.current_url} (last one: {found and found['url']})")
    headers = {name.lower(): value for name, value in found["headers"].items()}
    return found["status"], headers


def go(driver, path):
    driver.get(BASE + path)
    return answer(driver)


def fill(driver, values):
    for name, value in values.items():
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)


def press(driver, element):
    """Clicks `element`, waits for the next page; its status and headers."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    try:
        WebDriverWait(driver, 10).until(lambda _: is_gone(page))
    except Exception as e:  # the page did not change: say where it stood
        fail(f"no next page after pressing {element_name(element)}: {type(e).__name__} {e}")
    return answer(driver)


def is_gone(element):
    """Whether `element` left the document: stale, or (a race Chromium's
    inspector reports on its own words while the next page replaces it) a
    node that no longer belongs to it."""
    try:
        element.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise


def element_name(element):
    try:
        return f"{element.tag_name} {element.text!r}"
    except Exception:
        return "an element that is gone"


def submit(driver, action):
    return press(driver, driver.find_element(By.CSS_SELECTOR, f'form[action="{action}"] button[type=submit]'))


def text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def field_error(driver, name):
    found = driver.find_elements(By.ID, f"{name}-error")
    return found[0].text if found else ""


def inspect(driver, name, headers):
    """Everything checked on every page: headers, CSP reports, axe, screenshots."""
    policy = headers.get("content-security-policy", "")
    check(policy.startswith("default-src 'none';") and "frame-ancestors 'none'" in policy
          and "script-src" not in policy and "unsafe-inline" not in policy,
          f"{name}: the CSP is {policy!r}")
    check(headers.get("cache-control") == "no-store", f"{name}: cache-control {headers.get('cache-control')}")
    check(headers.get("referrer-policy") == "same-origin", f"{name}: referrer policy")
    # Chromium logs each CSP violation to the console.
    for entry in driver.get_log("browser"):
        if "Content Security Policy" in entry.get("message", ""):
            report["csp_reports"].append({"page": name, "message": entry["message"]})
    check(not report["csp_reports"], f"{name}: CSP violations {report['csp_reports']}")
    # axe-core, injected through the driver (page scripts stay forbidden).
    driver.execute_script(AXE_SOURCE)
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map("
        "v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))))"
        ".catch(e => done([{id: 'axe-failed', impact: 'critical', nodes: [String(e)]}]));"
    )
    report["violations"].extend({"page": name, **v} for v in result)
    for width in WIDTHS:
        driver.set_window_size(width, 900)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(max(height + 140, 600), 2400))
        shot = OUT / f"{name}-{width}.png"
        driver.save_screenshot(str(shot))
        report["screenshots"].append(shot.name)
        # Nothing is cut off sideways at this width.
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        check(overflow <= 1, f"{name}: {overflow} px wider than the window at {width} px")
    # The narrowest phones: nothing cut off sideways at 360 px either.
    driver.set_window_size(360, 900)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    check(overflow <= 1, f"{name}: {overflow} px wider than the window at 360 px")
    driver.set_window_size(1280, 900)
    report["pages"].append({"page": name})


def sign_in(driver):
    """The password, on the sign-in page; the answer."""
    go(driver, "/account/signin")
    fill(driver, {"login": NAME, "password": PASSWORD})
    return submit(driver, "/account/signin")


def sign_out(driver):
    press(driver, driver.find_element(By.CSS_SELECTOR, "form.signout button"))
    check("You are signed out" in text(driver), f"signed out: {text(driver)}")


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
sign_in(alice)
step("signed_in_with_password", signed_in(alice), text(alice))

# ---- an authenticator app set up on the Security page ----
press(alice, alice.find_element(By.LINK_TEXT, "Security"))
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
status, headers = sign_in(alice)
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
status, _ = sign_in(alice)
check(at_second_step(alice, status), f"second sign-in: {status} {alice.title}")
status, _ = second_step(alice, code)
step("replayed_code_refused", refused(alice, status), f"{status}: {text(alice)}")
second_step(alice, codes[0])
step("signed_in_with_recovery_code", signed_in(alice), text(alice))

# ---- a recovery code works once ----
sign_out(alice)
status, _ = sign_in(alice)
check(at_second_step(alice, status), f"third sign-in: {status} {alice.title}")
status, _ = second_step(alice, codes[0])
step("used_recovery_code_refused", refused(alice, status), f"{status}: {text(alice)}")
second_step(alice, codes[1])
step("signed_in_with_second_recovery_code", signed_in(alice), text(alice))

# ---- the Security page counts what is left ----
status, headers = go(alice, "/account/security")
step("eight_recovery_codes_left", status == 200 and "8 unused." in text(alice), text(alice))
inspect(alice, "security-on", headers)

for driver in browsers:
    driver.quit()
print(json.dumps(report))

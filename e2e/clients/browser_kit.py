"""What the browser tests in this folder share: Debian's Chromium, headless,
driven by selenium through Debian's chromedriver (nothing is downloaded),
and the checks every console page gets.

  chromium()     a browser with a profile of its own;
  is_gone()      whether the next page replaced an element's page;
  Journey        one script's browsers and JSON report: fail, check and
                 step; go, press and submit (with the status and headers
                 of the page reached, from the network log, when the
                 browsers log it); inspect(), which checks a page's headers
                 and CSP reports, runs axe-core on it and takes its
                 screenshots at 1280 and 390 px (nothing cut off sideways
                 there, nor at 360 px).

oidc_browser.py uses chromium() and is_gone(); console_browser.py,
mfa_browser.py and passkey_browser.py a Journey each.
"""

import json
import pathlib
import sys
import tempfile
import traceback

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WIDTHS = (1280, 390)
# axe-core's violations, each with its impact and the nodes it found.
AXE_RUN = (
    "const done = arguments[arguments.length - 1];"
    "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map("
    "v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))))"
    ".catch(e => done([{id: 'axe-failed', impact: 'critical', nodes: [String(e)]}]));"
)


def chromium(profile, page_load_timeout, logs=()):
    """Chromium with its profile (its own cookies) in `profile`, keeping the
    `logs` named ("browser": its console, "performance": its network)."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    if logs:
        options.set_capability("goog:loggingPrefs", {log: "ALL" for log in logs})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(page_load_timeout)
    return driver


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


def fill(driver, values):
    """Types each value into the field with that id, cleared first."""
    for name, value in values.items():
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)


def text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def field_error(driver, name):
    found = driver.find_elements(By.ID, f"{name}-error")
    return found[0].text if found else ""


def overflow(driver):
    """How many px the page is wider than the window."""
    return driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")


class Journey:
    """One script's browsers and its report.

    `label` names the test in a failure; `report` is the script's JSON
    report, with at least "pages", "screenshots" and "csp_reports" (and
    "steps" for step(), "violations" for inspect() with no `axe_fails_on`).
    With `network`, the browsers log their network and go, press and submit
    return the status and headers of the page reached. A page may take
    `page_load_seconds` to load, and a press `next_page_seconds` to bring
    the next page. `axe_fails_on` is the impacts ("serious", ...) of axe-core
    violations that fail a page at once; without it, every violation goes
    into the report's "violations" (for the caller to judge).

    Any exception ends the run as fail() does.
    """

    def __init__(self, label, report, base, out, axe_js, *, network,
                 page_load_seconds, next_page_seconds, axe_fails_on=None):
        self.label = label
        self.report = report
        self.base = base
        self.out = pathlib.Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.axe_source = pathlib.Path(axe_js).read_text()
        self.network = network
        self.page_load_seconds = page_load_seconds
        self.next_page_seconds = next_page_seconds
        self.axe_fails_on = axe_fails_on
        self.browsers = []
        sys.excepthook = self.on_error

    # ---- ending ----

    def fail(self, why):
        """Says why and where every browser stood, on stderr; exits 1."""
        sys.stderr.write(f"{self.label} failed: {why}\n")
        for driver in self.browsers:
            try:
                self.tell(driver)
            except Exception as e:
                sys.stderr.write(f"  (a browser that cannot tell: {e})\n")
        for driver in self.browsers:
            try:
                driver.quit()
            except Exception:
                pass
        sys.exit(1)

    def tell(self, driver):
        """Where `driver` stands, on stderr."""
        page = text(driver)[:600]
        sys.stderr.write(f"  at {driver.current_url}:\n{page}\n")

    def on_error(self, kind, value, trace):
        """Any exception: its trace, then where every browser stood."""
        traceback.print_exception(kind, value, trace)
        self.fail(f"{kind.__name__}: {value}")

    def check(self, condition, why):
        if not condition:
            self.fail(why)

    def step(self, name, condition, why):
        """A step of the journey, named in the report once it has passed."""
        self.check(condition, f"{name}: {why}")
        self.report["steps"][name] = True

    def finish(self):
        """Every browser closed; the report printed."""
        for driver in self.browsers:
            driver.quit()
        print(json.dumps(self.report))

    # ---- browsing ----

    def browser(self):
        """A browser with a profile of its own (its own cookies), logging its
        console (and its network, with `network`)."""
        logs = ("browser", "performance") if self.network else ("browser",)
        profile = tempfile.mkdtemp(prefix="polyhub-chromium-")
        driver = chromium(profile, self.page_load_seconds, logs)
        self.browsers.append(driver)
        return driver

    def answer(self, driver):
        """The status and headers of the page the browser shows, from its
        network log: a page that answered a POST cannot be fetched again."""
        found = None
        for entry in driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            if event["method"] == "Network.responseReceived" and event["params"]["type"] == "Document":
                found = event["params"]["response"]
        self.check(found is not None and found["url"] == driver.current_url,
                   f"no answer logged for {driver.current_url} (last one: {found and found['url']})")
        headers = {name.lower(): value for name, value in found["headers"].items()}
        return found["status"], headers

    def reached(self, driver):
        """The page reached: its status and headers with `network`."""
        return self.answer(driver) if self.network else None

    def go(self, driver, path):
        driver.get(self.base + path)
        return self.reached(driver)

    def press(self, driver, element, keys=None):
        """Clicks `element` (or types `keys` into it) and waits for the next page."""
        page = driver.find_element(By.TAG_NAME, "html")
        what = f"pressing {element_name(element)}"
        if keys is None:
            element.click()
        else:
            element.send_keys(keys)
        return self.wait_for_next_page(driver, page, what)

    def wait_for_next_page(self, driver, page, what):
        """Waits until the next page replaces `page` (the html element)."""
        try:
            WebDriverWait(driver, self.next_page_seconds).until(lambda _: is_gone(page))
        except Exception as e:  # the page did not change: say where it stood
            self.fail(f"no next page after {what}: {type(e).__name__} {e}{self.stuck(driver)}")
        return self.reached(driver)

    def stuck(self, driver):
        """What a page that did not change says, added to the failure."""
        return ""

    def submit(self, driver, action):
        return self.press(driver, driver.find_element(
            By.CSS_SELECTOR, f'form[action="{action}"] button[type=submit]'))

    def sign_in(self, driver, name, password):
        """The password, on the sign-in page; the answer."""
        self.go(driver, "/account/signin")
        fill(driver, {"login": name, "password": password})
        return self.submit(driver, "/account/signin")

    def sign_out(self, driver):
        self.press(driver, driver.find_element(By.CSS_SELECTOR, "form.signout button"))
        self.check("You are signed out" in text(driver), f"signed out: {text(driver)}")

    # ---- every page's checks ----

    def inspect(self, driver, name, headers):
        """Everything checked on every page: headers, CSP reports, axe, screenshots."""
        policy = headers.get("content-security-policy", "")
        self.check(policy.startswith("default-src 'none';") and "frame-ancestors 'none'" in policy
                   and "script-src" not in policy and "unsafe-inline" not in policy,
                   f"{name}: the CSP is {policy!r}")
        self.check_caching(name, headers)
        # Chromium logs each CSP violation to the console.
        for entry in driver.get_log("browser"):
            if "Content Security Policy" in entry.get("message", ""):
                self.report["csp_reports"].append({"page": name, "message": entry["message"]})
        self.check(not self.report["csp_reports"], f"{name}: CSP violations {self.report['csp_reports']}")
        self.axe_and_screenshots(driver, name)

    def check_caching(self, name, headers):
        """No copy kept anywhere, no address told to other sites."""
        self.check(headers.get("cache-control") == "no-store",
                   f"{name}: cache-control {headers.get('cache-control')}")
        self.check(headers.get("referrer-policy") == "same-origin", f"{name}: referrer policy")

    def axe_and_screenshots(self, driver, name):
        """axe-core on the page, injected through the driver (page scripts
        stay forbidden), then its screenshots; the page is then in the
        report's "pages"."""
        driver.execute_script(self.axe_source)
        violations = driver.execute_async_script(AXE_RUN)
        if self.axe_fails_on:
            bad = [v for v in violations if v["impact"] in self.axe_fails_on]
            self.check(not bad, f"{name}: axe found {bad}")
            page = {"page": name, "minor_axe": [v["id"] for v in violations]}
        else:
            self.report["violations"].extend({"page": name, **v} for v in violations)
            page = {"page": name}
        self.screenshots(driver, name)
        self.report["pages"].append(page)

    def screenshots(self, driver, name):
        """The whole page at 1280 and 390 px wide, into the screenshots
        folder; nothing cut off sideways there, nor at 360 px."""
        for width in WIDTHS:
            driver.set_window_size(width, 900)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(max(height + 140, 600), 2400))
            shot = self.out / f"{name}-{width}.png"
            driver.save_screenshot(str(shot))
            self.report["screenshots"].append(shot.name)
            wider = overflow(driver)
            self.check(wider <= 1, f"{name}: {wider} px wider than the window at {width} px")
        # The narrowest phones.
        driver.set_window_size(360, 900)
        wider = overflow(driver)
        self.check(wider <= 1, f"{name}: {wider} px wider than the window at 360 px")
        driver.set_window_size(1280, 900)

"""A person at polyhub's OpenID Connect sign-in, played by Debian's Chromium,
headless, driven by selenium through Debian's chromedriver (nothing is
downloaded): the browser half of the code flow oidc_rp.mjs and
oidc_authlib.py start and finish.

    oidc_browser.py AUTHORIZATION_URL USERNAME PASSWORD REDIRECT_URI
                    [--deny] [--expect-consent yes|no] [--max-seconds S]

AUTHORIZATION_URL is what the client's `start` printed
({issuer}/oauth2/authorize?...). REDIRECT_URI points at a loopback port
where nothing listens: the browser shows its own error page there, and its
address is the callback. Each run is a new browser with a profile of its
own, so it always signs in afresh.

  1. open AUTHORIZATION_URL: a browser without a session is sent to the
     console's sign-in page (/account/signin?next=..., on the issuer);
  2. sign in there as USERNAME (inputs login and password);
  3. if the consent page comes (a client that is not first-party), press
     allow, or deny with --deny; with --expect-consent, it must have come
     (yes) or not (no);
  4. wait for the browser to land on REDIRECT_URI: with code, the state of
     AUTHORIZATION_URL and iss (the issuer); with --deny, with
     error=access_denied, that state and no code.

Prints one JSON document, {"callback_url", "pages", "consent_shown", ...},
and exits 0; on a failure, prints what it saw so far with "failed_step" and
"error", says why (and where the browser stood) on stderr, exits 1. Every
page load and wait has a timeout, and the whole run is bounded by
--max-seconds (default 90).
"""

import argparse
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from browser_kit import chromium, is_gone

# How long one page may take.
WAIT = 20.0
AUTHORIZE_PATH = "/oauth2/authorize"
SIGNIN_PATH = "/account/signin"


class StepFailed(Exception):
    pass


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="oidc_browser.py", description=__doc__.split("\n")[0])
    for name in ("authorization_url", "username", "password", "redirect_uri"):
        parser.add_argument(name)
    parser.add_argument("--deny", action="store_true", help="deny on the consent page")
    parser.add_argument("--expect-consent", choices=("yes", "no"),
                        help="whether the consent page must come")
    parser.add_argument("--max-seconds", type=float, default=90.0)
    args = parser.parse_args(argv)
    url = urllib.parse.urlsplit(args.authorization_url)
    if url.scheme != "http" or not loopback(url.hostname) or url.port is None \
            or not url.path.endswith(AUTHORIZE_PATH):
        parser.error(f"AUTHORIZATION_URL must be http://127.0.0.1:PORT{AUTHORIZE_PATH}?..., "
                     f"not {args.authorization_url!r}")
    redirect = urllib.parse.urlsplit(args.redirect_uri)
    if redirect.scheme not in ("http", "https") or not redirect.netloc or redirect.query or redirect.fragment:
        parser.error(f"REDIRECT_URI must be an absolute URL without a query, not {args.redirect_uri!r}")
    if args.deny and args.expect_consent == "no":
        parser.error("--deny presses deny on the consent page: it cannot go with --expect-consent no")
    return args


def loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False


class Deadline:
    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, most=WAIT):
        left = min(most, self.end - time.monotonic())
        if left <= 0:
            raise StepFailed(f"--max-seconds {self.seconds} passed")
        return left


def press(driver, button, deadline):
    """Clicks `button` and waits for the next page (one the browser cannot
    load, like the callback where nothing listens, is a next page too)."""
    page = driver.find_element(By.TAG_NAME, "html")
    name = button.get_attribute("outerHTML")[:120]
    driver.set_page_load_timeout(deadline.left())
    button.click()
    end = time.monotonic() + deadline.left()
    while not is_gone(page):
        if time.monotonic() > end:
            raise StepFailed(f"no next page after pressing {name}")
        time.sleep(0.1)


def same_origin(a, b):
    a, b = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def what_page(driver):
    """"signin", "consent", or None (a page still loading, or another)."""
    if driver.find_elements(By.CSS_SELECTOR, "input[name=login]") \
            and driver.find_elements(By.CSS_SELECTOR, "input[name=password]"):
        return "signin"
    if driver.find_elements(By.CSS_SELECTOR, "button[name=decision][value=allow]"):
        return "consent"
    return None


def sign_in(driver, args, deadline, seen):
    url = urllib.parse.urlsplit(driver.current_url)
    if not same_origin(driver.current_url, args.authorization_url) or url.path != SIGNIN_PATH:
        raise StepFailed(f"the sign-in form is at {url.scheme}://{url.netloc}{url.path}, "
                         f"not the issuer's {SIGNIN_PATH}")
    next_ = urllib.parse.parse_qs(url.query).get("next", [None])[0]
    if not next_:
        raise StepFailed(f"the sign-in page has no next= (at {driver.current_url})")
    seen["signin_next"] = urllib.parse.urlsplit(next_).path
    for name, value in (("login", args.username), ("password", args.password)):
        field = driver.find_element(By.CSS_SELECTOR, f"input[name={name}]")
        field.clear()
        field.send_keys(value)
    form = driver.find_element(By.CSS_SELECTOR, "input[name=password]").find_element(By.XPATH, "ancestor::form")
    press(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]"), deadline)


def decide(driver, args, deadline):
    if not same_origin(driver.current_url, args.authorization_url):
        raise StepFailed(f"the consent page is at {driver.current_url}, not on the issuer")
    deny = driver.find_elements(By.CSS_SELECTOR, "button[name=decision][value=deny]")
    if not deny:
        raise StepFailed("the consent page has an allow button but no deny button")
    choice = "deny" if args.deny else "allow"
    press(driver, driver.find_element(By.CSS_SELECTOR, f"button[name=decision][value={choice}]"), deadline)


def note_page(driver, pages):
    """Adds the page the browser is on to `pages` (path and title), once."""
    url = urllib.parse.urlsplit(driver.current_url)
    try:
        title = driver.title
    except WebDriverException:
        title = None
    entry = {"path": f"{url.scheme}://{url.netloc}{url.path}" if url.netloc else driver.current_url,
             "title": title}
    if not pages or pages[-1] != entry:
        pages.append(entry)


def at_callback(driver, args):
    return driver.current_url.startswith(args.redirect_uri)


def walk(driver, args, deadline, report, step):
    """Steps 1 to 3: from AUTHORIZATION_URL to the callback."""
    step("1: open AUTHORIZATION_URL")
    try:
        driver.set_page_load_timeout(deadline.left())
        driver.get(args.authorization_url)
    except WebDriverException as e:
        # Chromium reports a page it cannot load as an error of get(); the
        # callback where nothing listens is where the walk ends anyway.
        if not at_callback(driver, args):
            raise StepFailed(f"opening AUTHORIZATION_URL: {e.msg}")
    last_url, since = None, time.monotonic()
    while not at_callback(driver, args):
        note_page(driver, report["pages"])
        page = what_page(driver)
        if page == "signin":
            step("2: sign in")
            if report["signin_shown"]:
                raise StepFailed(f"the sign-in page came back after signing in: {body_text(driver)[:300]!r}")
            report["signin_shown"] = True
            sign_in(driver, args, deadline, report)
        elif page == "consent":
            step("3: the consent page")
            if report["consent_shown"]:
                raise StepFailed("the consent page came back after a decision")
            if not report["signin_shown"]:
                raise StepFailed("the consent page came before any sign-in")
            report["consent_shown"] = True
            decide(driver, args, deadline)
        elif driver.current_url != last_url:
            last_url, since = driver.current_url, time.monotonic()
        elif time.monotonic() - since > WAIT:
            raise StepFailed(f"stuck at {driver.current_url}: neither the sign-in nor the consent page, "
                             f"nor REDIRECT_URI: {body_text(driver)[:300]!r}")
        else:
            time.sleep(min(0.2, deadline.left()))
    note_page(driver, report["pages"])


def body_text(driver):
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        return ""


def check_callback(args, report, step):
    """Step 4: what the browser landed on."""
    step("4: the callback")
    callback = report["callback_url"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)
    one = {k: v[0] for k, v in query.items() if len(v) == 1}
    sent = urllib.parse.parse_qs(urllib.parse.urlsplit(args.authorization_url).query)
    state = sent.get("state", [None])[0]
    issuer = args.authorization_url.split(AUTHORIZE_PATH)[0]
    report["callback"] = {
        "parameters": sorted(query),
        "error": one.get("error"),
        "state_matches": state is not None and one.get("state") == state,
        "iss": one.get("iss"),
    }
    repeated = sorted(k for k, v in query.items() if len(v) != 1)
    if repeated:
        raise StepFailed(f"the callback repeats {repeated}")
    if not report["signin_shown"]:
        raise StepFailed("the callback came without the sign-in page: a browser without a session got through")
    if args.expect_consent is not None and report["consent_shown"] != (args.expect_consent == "yes"):
        raise StepFailed(f"the consent page {'came' if report['consent_shown'] else 'did not come'}, "
                         f"with --expect-consent {args.expect_consent}")
    if args.deny:
        if not report["consent_shown"]:
            raise StepFailed("--deny: there was no consent page to deny on")
        if one.get("error") != "access_denied" or "code" in one:
            raise StepFailed(f"after deny the callback has error {one.get('error')!r} and "
                             f"{'a' if 'code' in one else 'no'} code, not error=access_denied without one")
    elif "error" in one or not one.get("code"):
        raise StepFailed(f"the callback has no code: error {one.get('error')!r} "
                         f"{one.get('error_description', '')!r}")
    if not report["callback"]["state_matches"]:
        raise StepFailed(f"the callback's state {one.get('state')!r} is not AUTHORIZATION_URL's")
    if one.get("iss") != issuer:
        raise StepFailed(f"the callback's iss {one.get('iss')!r} is not the issuer {issuer!r}")


def watchdog(seconds, drivers):
    """The last resort: a call stuck past every timeout still ends the run
    (and the browser)."""

    def expire():
        print(f"oidc_browser: still running {seconds:.0f}s after the start; giving up",
              file=sys.stderr, flush=True)
        quitter = threading.Thread(target=lambda: [d.quit() for d in drivers], daemon=True)
        quitter.start()
        quitter.join(5)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main():
    args = parse_args(sys.argv[1:])
    drivers = []
    watchdog(args.max_seconds + 15, drivers)
    deadline = Deadline(args.max_seconds)
    report = {"callback_url": None, "pages": [], "signin_shown": False, "consent_shown": False}
    current = {"step": "start Chromium"}

    def step(name):
        current["step"] = name

    error = None
    profile = tempfile.mkdtemp(prefix="polyhub-chromium-")
    try:
        drivers.append(chromium(profile, WAIT))
        walk(drivers[0], args, deadline, report, step)
        report["callback_url"] = drivers[0].current_url
        check_callback(args, report, step)
    except StepFailed as e:
        error = str(e)
    except WebDriverException as e:
        error = f"{type(e).__name__}: {e.msg}"
    if error:
        report["failed_step"] = current["step"]
        report["error"] = error
        print(json.dumps(report), flush=True)
        print(f"oidc_browser: step {current['step']}: {error}", file=sys.stderr)
        for driver in drivers:
            try:
                print(f"  at {driver.current_url}:\n{body_text(driver)[:600]}", file=sys.stderr)
            except WebDriverException as e:
                print(f"  (a browser that cannot tell: {e.msg})", file=sys.stderr)
    else:
        print(json.dumps(report), flush=True)
    for driver in drivers:
        try:
            driver.quit()
        except WebDriverException:
            pass
    shutil.rmtree(profile, ignore_errors=True)
    sys.exit(1 if error else 0)


if __name__ == "__main__":
    main()

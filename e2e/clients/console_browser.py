"""The account console in a real browser: Debian's Chromium, headless,
driven by selenium through Debian's chromedriver (nothing is downloaded).

    console_browser.py BASE ADMIN_NAME ADMIN_PASSWORD IMAGE OUT_DIR AXE_JS

BASE is rest-auth's address (the console is mounted there). The admin
account exists already (the caller made it and granted it admin). Every
page visited is checked: the CSP header is there, the browser's console
reports no CSP violation, axe-core finds no serious or critical violation,
and a screenshot at 1280 and 390 px wide goes to OUT_DIR. Prints a JSON
report; exits non-zero (with the reason on stderr) at the first failure.
"""

import pathlib
import re
import sys
import tempfile
import uuid

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser_kit import Journey, field_error, fill, text

BASE, ADMIN, ADMIN_PASSWORD, IMAGE, OUT, AXE = sys.argv[1:7]

report = {"pages": [], "screenshots": [], "refused": {}, "csp_reports": []}
kit = Journey("console browser test", report, BASE, OUT, AXE, network=False,
              page_load_seconds=20, next_page_seconds=30, axe_fails_on=("serious", "critical"))
check, browser, go, press, submit = kit.check, kit.browser, kit.go, kit.press, kit.submit


def inspect(driver, name):
    """The page's headers, fetched again with the browser's cookies, and
    everything else checked on every page."""
    cookies = {c["name"]: c["value"] for c in driver.get_cookies()}
    head = requests.get(driver.current_url, cookies=cookies, timeout=10, allow_redirects=False)
    kit.inspect(driver, name, head.headers)


def hidden(driver, action):
    return driver.find_element(By.CSS_SELECTOR, f'form[action="{action}"] input[name=csrf]').get_attribute("value")


suffix = uuid.uuid4().hex[:8]
NAME = f"dana-{suffix}"
EMAIL = f"{NAME}@example.com"
PASSWORD = "first correct horse"
NEW_PASSWORD = "second correct horse"

# ---- a new user: sign up (after one refusal), sign in ----
alice = browser()
go(alice, "/account/signup")
inspect(alice, "signup")
fill(alice, {"username": NAME, "email": EMAIL, "password": "short"})
submit(alice, "/account/signup")
check("WEAK_PASSWORD" in field_error(alice, "password"), f"weak password shown as {field_error(alice, 'password')!r}")
check(alice.find_element(By.ID, "username").get_attribute("value") == NAME, "the username typed is kept")
inspect(alice, "signup-error")
fill(alice, {"password": PASSWORD})
submit(alice, "/account/signup")
check("/account/signin" in alice.current_url and "created" in text(alice), f"after sign-up: {text(alice)}")
inspect(alice, "signin")
fill(alice, {"login": NAME, "password": "not the password"})
submit(alice, "/account/signin")
check("INVALID_CREDENTIALS" in field_error(alice, "password"), "a wrong password is shown at the password")
fill(alice, {"login": EMAIL, "password": PASSWORD})
submit(alice, "/account/signin")
check(alice.current_url.rstrip("/").endswith("/account") and NAME in text(alice), f"signed in: {text(alice)}")
session_cookie = alice.get_cookie("polyhub_session")
check(session_cookie and session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict",
      f"the session cookie is {session_cookie}")

# ---- profile: email and password ----
NEW_EMAIL = f"{NAME}-new@example.com"
fill(alice, {"email": NEW_EMAIL, "email_current_password": "wrong wrong wrong"})
submit(alice, "/account/email")
check("INVALID_CREDENTIALS" in field_error(alice, "email_current_password"), "a wrong current password is shown")
fill(alice, {"email": NEW_EMAIL, "email_current_password": PASSWORD})
submit(alice, "/account/email")
check("Your email is changed" in text(alice) and NEW_EMAIL in text(alice), f"email: {text(alice)}")
fill(alice, {"current_password": PASSWORD, "new_password": NEW_PASSWORD})
submit(alice, "/account/password")
check("Your password is changed" in text(alice), f"password: {text(alice)}")
inspect(alice, "account")

# ---- images: upload through the form, see the thumbnail ----
go(alice, "/account/images")
alice.find_element(By.ID, "file").send_keys(IMAGE)
submit(alice, "/account/images")
check("Your image is stored" in text(alice), f"upload: {text(alice)}")
thumbs = alice.find_elements(By.CSS_SELECTOR, "ul.images img")
check(len(thumbs) == 1, f"{len(thumbs)} thumbnails")
loaded = alice.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumbs[0])
check(loaded and loaded > 0, "the thumbnail loads from the public address")
inspect(alice, "images")
# A file that is not an image: refused next to the field, in words and code.
not_image = pathlib.Path(tempfile.mkdtemp()) / "notes.png"
not_image.write_bytes(b"these are not image bytes")
alice.find_element(By.ID, "file").send_keys(str(not_image))
submit(alice, "/account/images")
check("UNSUPPORTED_IMAGE_TYPE" in field_error(alice, "file") or "CORRUPT_IMAGE" in field_error(alice, "file"),
      f"a non-image is shown as {field_error(alice, 'file')!r}")

# ---- a second device, signed in with the keyboard only ----
bob = browser()
go(bob, "/account/signin")
body = bob.find_element(By.TAG_NAME, "body")
body.send_keys(Keys.TAB)
for _ in range(6):
    if bob.switch_to.active_element.get_attribute("id") == "login":
        break
    bob.switch_to.active_element.send_keys(Keys.TAB)
check(bob.switch_to.active_element.get_attribute("id") == "login", "the login field is reached with Tab")
bob.switch_to.active_element.send_keys(NAME)
bob.switch_to.active_element.send_keys(Keys.TAB)
check(bob.switch_to.active_element.get_attribute("id") == "password", "then the password field")
press(bob, bob.switch_to.active_element, NEW_PASSWORD + Keys.ENTER)
check(bob.current_url.rstrip("/").endswith("/account"), "signed in from the keyboard")
bob_token = bob.get_cookie("polyhub_session")["value"]
check(requests.get(BASE + "/profile", headers={"authorization": f"Bearer {bob_token}"}, timeout=10).status_code == 200,
      "the second device's token works on the API")

# ---- devices: two, sign the other out, its token is then refused ----
go(alice, "/account/devices")
cards = alice.find_elements(By.CSS_SELECTOR, "li.device")
check(len(cards) == 2, f"{len(cards)} devices listed")
inspect(alice, "devices")
press(alice, alice.find_element(By.CSS_SELECTOR, 'form[action="/account/devices/signout"] button'))
check("That device is signed out" in text(alice), f"devices: {text(alice)}")
check(len(alice.find_elements(By.CSS_SELECTOR, "li.device")) == 1, "one device left")
refused = requests.get(BASE + "/profile", headers={"authorization": f"Bearer {bob_token}"}, timeout=10)
check(refused.status_code == 401 and refused.json()["error"]["code"] == "INVALID_TOKEN",
      f"the signed-out device's token: {refused.status_code} {refused.text}")
report["refused"]["signed_out_token"] = refused.json()["error"]["code"]
go(bob, "/account")
check("/account/signin" in bob.current_url, "the signed-out browser is sent to sign in")

# ---- forms without their CSRF token or from another origin ----
cookies = {c["name"]: c["value"] for c in alice.get_cookies()}
go(alice, "/account")
token = hidden(alice, "/account/email")
own = BASE.rstrip("/")
attempts = {
    "no_csrf": ({"origin": own}, {"email": "x@example.com", "email_current_password": NEW_PASSWORD}),
    "wrong_csrf": ({"origin": own}, {"csrf": "A" * 43, "email": "x@example.com", "email_current_password": NEW_PASSWORD}),
    "other_origin": ({"origin": "http://evil.example"}, {"csrf": token, "email": "x@example.com", "email_current_password": NEW_PASSWORD}),
    "no_origin": ({}, {"csrf": token, "email": "x@example.com", "email_current_password": NEW_PASSWORD}),
}
for name, (headers, form) in attempts.items():
    answer = requests.post(BASE + "/account/email", data=form, headers=headers, cookies=cookies,
                           allow_redirects=False, timeout=10)
    check(answer.status_code == 403 and "FORBIDDEN" in answer.text, f"{name}: {answer.status_code}")
    report["refused"][name] = answer.status_code
anonymous = requests.post(BASE + "/account/signin", data={"login": NAME, "password": NEW_PASSWORD},
                          headers={"origin": own}, allow_redirects=False, timeout=10)
check(anonymous.status_code == 403, f"sign-in without its CSRF cookie: {anonymous.status_code}")
report["refused"]["signin_no_csrf"] = anonymous.status_code
# Nothing of those changed the account.
go(alice, "/account")
check(NEW_EMAIL in text(alice) and "x@example.com" not in text(alice), "the refused forms changed nothing")

# ---- an admin: find the user, revoke their sessions, grant admin ----
admin = browser()
go(admin, "/account/signin")
fill(admin, {"login": ADMIN, "password": ADMIN_PASSWORD})
submit(admin, "/account/signin")
go(admin, "/admin/users")
fill(admin, {"q": NAME[:7]})
press(admin, admin.find_element(By.CSS_SELECTOR, "form.search button"))
check(NAME in text(admin), f"search: {text(admin)}")
inspect(admin, "admin-users")
press(admin, admin.find_element(By.LINK_TEXT, NAME))
check(len(admin.find_elements(By.CSS_SELECTOR, "li.device")) == 1, "the user's one open session is listed")
inspect(admin, "admin-user")
press(admin, admin.find_element(By.XPATH, "//button[text()='Revoke every session']"))
check("Sessions revoked" in text(admin) and not admin.find_elements(By.CSS_SELECTOR, "li.device"),
      f"revoke: {text(admin)}")
go(alice, "/account")
check("/account/signin" in alice.current_url, "the revoked user's browser is sent to sign in")
press(admin, admin.find_element(By.XPATH, "//button[text()='Grant admin']"))
check("Role changed" in text(admin) and re.search(r"Role\s+admin", text(admin)), f"grant: {text(admin)}")
go(admin, "/admin/system")
check(text(admin).count("Ready") >= 6, f"system: {text(admin)}")
inspect(admin, "admin-system")

# ---- webhooks: a private address is refused at its form; a public one is
# added and its secret shown once (user.deleted never happens here, so
# nothing is ever sent to it) ----
go(admin, "/admin/hooks")
fill(admin, {"url": "http://127.0.0.1:9/hooks", "events": "user.*"})
submit(admin, "/admin/hooks")
check("WEBHOOK_TARGET_REFUSED" in text(admin), f"a loopback webhook: {text(admin)}")
fill(admin, {"url": "http://93.184.216.34/hooks", "events": "user.deleted", "description": "HR system"})
submit(admin, "/admin/hooks")
check("whsec_" in text(admin) and "Active" in text(admin), f"webhook added: {text(admin)}")
inspect(admin, "admin-webhooks")

# ---- applications: an http redirect URI off loopback is refused at the
# form; an https one registers, its secret shown once; its consent page
# (never submitted: the app's host is not reachable from here); the
# admin's own apps page, with nothing allowed yet ----
go(admin, "/admin/apps")
fill(admin, {"name": "Photo app", "redirect_uris": "http://photos.example.com/callback"})
submit(admin, "/admin/apps")
check("http is only for loopback hosts" in text(admin), f"an http redirect URI: {text(admin)}")
fill(admin, {"name": "Photo app", "redirect_uris": "https://photos.example.com/callback"})
submit(admin, "/admin/apps")
registered = re.search(r"Its client id: ([0-9a-f-]{36})", text(admin))
check(registered and "shown this once" in text(admin), f"client registered: {text(admin)}")
inspect(admin, "admin-apps")
client_id = registered.group(1)
go(admin, "/oauth2/authorize?" + "&".join([
    "response_type=code",
    f"client_id={client_id}",
    "redirect_uri=https%3A%2F%2Fphotos.example.com%2Fcallback",
    "scope=openid%20profile%20email",
    "state=screenshot",
    "code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    "code_challenge_method=S256",
]))
check("Allow Photo app to use your account?" in text(admin), f"consent page: {text(admin)}")
inspect(admin, "consent")
go(admin, "/account/apps")
check("No application has access" in text(admin), f"apps page: {text(admin)}")
inspect(admin, "account-apps")

# ---- sign out revokes the session on the server ----
admin_token = admin.get_cookie("polyhub_session")["value"]
press(admin, admin.find_element(By.CSS_SELECTOR, 'form.signout button'))
check("You are signed out" in text(admin), "signed out")
gone = requests.get(BASE + "/profile", headers={"authorization": f"Bearer {admin_token}"}, timeout=10)
check(gone.status_code == 401, f"the signed-out admin token: {gone.status_code}")

kit.finish()

#!/usr/bin/env python3
"""A SMART standalone launch with the Python SMART client (`fhirclient`): it reads the OAuth
endpoints from the gateway's CapabilityStatement (the oauth-uris extension), builds the
authorization URL (with PKCE S256 and state), and exchanges the code for a token; this script
plays the user's browser in between (signs in, picks the patient when asked, approves on the
gateway's server-rendered pages, following their forms as a browser would). Then the client
reads the patient in context.

    python3 smart_standalone.py '{"base": ..., "client_id": ..., "redirect_uri": ...,
                                  "scope": ..., "username": ..., "password": ..., "patient": ...}'

With a refresh token (offline_access), the client then refreshes its token and reads the
patient again. Prints {"patient": ..., "patient_id": ..., "scope": ..., "refreshed": ...} and
exits 0, or exits non-zero with the
reason. Run by gateway/tests/api (the SMART launch tests).
"""
import json
import sys
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient


class Forms(HTMLParser):
    """The forms of a page: action, method, inputs (name, type, value, checked) and buttons."""

    def __init__(self):
        super().__init__()
        self.forms = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action", ""),
                               "method": attrs.get("method", "get").lower(),
                               "inputs": [], "buttons": []})
        elif self.forms and tag == "input":
            self.forms[-1]["inputs"].append(attrs)
        elif self.forms and tag == "button":
            self.forms[-1]["buttons"].append(attrs)


def submit(session, page_url, form, fill, button_match):
    data = []
    for field in form["inputs"]:
        name, kind = field.get("name"), field.get("type", "text")
        if not name or kind in ("submit", "button"):
            continue
        if kind in ("checkbox", "radio"):
            if "checked" in field:
                data.append((name, field.get("value", "on")))
            continue
        data.append((name, fill(field) if fill(field) is not None else field.get("value", "")))
    buttons = [b for b in form["buttons"] + [i for i in form["inputs"] if i.get("type") == "submit"]
               if button_match(b)]
    if buttons and buttons[0].get("name"):
        data.append((buttons[0]["name"], buttons[0].get("value", "")))
    url = urljoin(page_url, form["action"] or page_url)
    return session.post(url, data=data, allow_redirects=False)


def main(options):
    settings = {
        "app_id": options["client_id"],
        "api_base": options["base"],
        "redirect_uri": options["redirect_uri"],
        "scope": options["scope"],
    }
    smart = smart_client.FHIRClient(settings=settings)
    browser = requests.Session()
    response = browser.get(smart.authorize_url, allow_redirects=False)
    for _ in range(8):
        if response.is_redirect:
            location = urljoin(response.url, response.headers["Location"])
            if location.startswith(options["redirect_uri"]):
                smart.handle_callback(location)
                break
            response = browser.get(location, allow_redirects=False)
            continue
        if response.status_code != 200:
            raise SystemExit(f"FAILED: the gateway answered {response.status_code}: {response.text[:500]}")
        parser = Forms()
        parser.feed(response.text)
        page = response.url
        by_type = {f.get("type") for form in parser.forms for f in form["inputs"]}
        if "password" in by_type:
            form = next(f for f in parser.forms if any(i.get("type") == "password" for i in f["inputs"]))
            def fill(field):
                if field.get("type") == "password":
                    return options["password"]
                if "user" in field.get("name", "").lower():
                    return options["username"]
                return None
            response = submit(browser, page, form, fill, lambda b: True)
        elif any("patient" in f.get("name", "").lower() for form in parser.forms for f in form["inputs"]
                 if f.get("type") not in ("hidden",)):
            form = next(f for f in parser.forms if any("patient" in i.get("name", "").lower() for i in f["inputs"]))
            response = submit(browser, page, form,
                              lambda field: options["patient"] if "patient" in field.get("name", "").lower()
                              and field.get("type") != "hidden" else None,
                              lambda b: True)
        else:
            def approves(button):
                text = (button.get("value", "") + button.get("name", "")).lower()
                return "approve" in text or "allow" in text
            form = next((f for f in parser.forms if any(approves(b) for b in f["buttons"] + f["inputs"])), None)
            if form is None:
                raise SystemExit(f"FAILED: a page with no sign-in, patient or approval form: {response.text[:500]}")
            response = submit(browser, page, form, lambda field: None, approves)
    else:
        raise SystemExit("FAILED: the launch did not come back to the app")

    if not smart.ready:
        raise SystemExit("FAILED: the client has no access token")
    patient = Patient.read(smart.patient_id, smart.server)
    result = {"patient": patient.as_json(), "patient_id": smart.patient_id,
              "scope": smart.launch_context.get("scope"), "refreshed": None}
    # with a refresh token: the client's own refresh (reauthorize), then the patient read again
    # with the new access token
    if smart.server.auth.refresh_token:
        before = smart.server.auth.access_token
        if not smart.reauthorize():
            raise SystemExit("FAILED: the client could not refresh its token")
        again = Patient.read(smart.patient_id, smart.server)
        result["refreshed"] = {"new_access_token": smart.server.auth.access_token != before,
                               "patient_id": again.id,
                               "scope": smart.launch_context.get("scope")}
    print(json.dumps(result))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))

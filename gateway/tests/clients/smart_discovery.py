#!/usr/bin/env python3
"""The SMART Python client (`fhirclient`, smart-on-fhir/client-py) reads the gateway's OAuth
endpoints from the CapabilityStatement's `rest.security` (the oauth-uris extension), parsing
the whole statement with its R4 models on the way.

    python3 smart_discovery.py http://127.0.0.1:8080/fhir

Exits non-zero, with the reason, on the first failure. Run by gateway/tests/api/clients.rs.
"""
import sys

import requests
from fhirclient import client


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def main(base: str) -> None:
    smart = client.FHIRClient(settings={"app_id": "discovery-probe", "api_base": base})
    smart.server.get_capability()
    state = smart.server.auth.state
    discovery = requests.get(f"{base}/.well-known/smart-configuration", timeout=30).json()
    check(state.get("token_uri") == discovery["token_endpoint"],
          f"token endpoint {state.get('token_uri')!r} vs {discovery['token_endpoint']!r}")
    check(state.get("registration_uri") == discovery["registration_endpoint"],
          f"registration endpoint {state.get('registration_uri')!r}")
    check(state.get("authorize_uri") == discovery.get("authorization_endpoint"),
          f"authorize endpoint {state.get('authorize_uri')!r}")
    print("fhirclient read the oauth-uris:", state.get("token_uri"), state.get("registration_uri"))


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))

#!/usr/bin/env python3
"""Writes the request paths for the read and search benchmarks from what a running gateway
holds (through its FHIR API only, so it works on either database). Standard library only.

    python3 scripts/bench/prepare.py --base http://127.0.0.1:8080/fhir --out target/bench

reads.txt:    GET [base]/[type]/[id] for a sample of Patients, Observations, Encounters, ...
searches.txt: the search mix, in equal parts
              Patient?name=[family]
              Observation?patient=[id]&code=[system|code]&date=ge[year]
              Observation?patient=[id]&code=[system|code]&_include=Observation:patient
"""
import argparse
import json
import os
import pathlib
import random
import urllib.parse
import urllib.request


def get(url: str) -> dict:
    headers = {"Accept": "application/fhir+json"}
    if os.environ.get("FHIR_TOKEN"):
        # the access token, when the gateway requires one
        headers["Authorization"] = f"Bearer {os.environ['FHIR_TOKEN']}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def search_all(base: str, query: str, limit: int) -> list:
    """The match resources of a search, following `next` links up to `limit` resources."""
    out = []
    url = f"{base}/{query}"
    while url and len(out) < limit:
        bundle = get(url)
        out += [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
    return out[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8080/fhir")
    parser.add_argument("--out", default="target/bench")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    random.seed(args.seed)
    base = args.base.rstrip("/")
    prefix = urllib.parse.urlsplit(base).path

    patients = search_all(base, "Patient?_count=1000", 100000)
    if not patients:
        raise SystemExit("the gateway holds no Patient: run the ingest benchmark first")
    reads, searches = [], []
    for patient in patients:
        pid = patient["id"]
        reads.append(f"{prefix}/Patient/{pid}")
        for name in patient.get("name", [])[:1]:
            if name.get("family"):
                searches.append(f"{prefix}/Patient?name={urllib.parse.quote(name['family'])}")
        for type_name in ("Observation", "Encounter", "Condition", "Procedure", "MedicationRequest"):
            for resource in search_all(base, f"{type_name}?patient={pid}&_count=200", 200):
                reads.append(f"{prefix}/{type_name}/{resource['id']}")
                if type_name != "Observation":
                    continue
                coding = (resource.get("code", {}).get("coding") or [{}])[0]
                date = resource.get("effectiveDateTime", "")[:4]
                if coding.get("system") and coding.get("code") and date:
                    code = urllib.parse.quote(f"{coding['system']}|{coding['code']}", safe="")
                    searches.append(f"{prefix}/Observation?patient={pid}&code={code}&date=ge{date}")
                    searches.append(
                        f"{prefix}/Observation?patient={pid}&code={code}&_include=Observation:patient"
                    )
    # equal parts of the three kinds: Patient by name is the rarest
    names = [s for s in searches if "/Patient?" in s]
    by_date = [s for s in searches if "&date=" in s]
    with_include = [s for s in searches if "_include" in s]
    n = min(len(by_date), len(with_include), max(len(names), 1) * 20)
    mix = names * max(1, n // max(len(names), 1)) + random.sample(by_date, n) + random.sample(with_include, n)
    random.shuffle(reads)
    random.shuffle(mix)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reads.txt").write_text("\n".join(reads) + "\n")
    (out / "searches.txt").write_text("\n".join(mix) + "\n")
    print(f"{len(reads)} read paths, {len(mix)} search paths in {out}")


if __name__ == "__main__":
    main()

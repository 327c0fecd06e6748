#!/usr/bin/env python3
"""Converts Synthea transaction Bundles into FHIR NDJSON files, one per resource type (the
shape of a Bulk Data export), for the `fhir-gateway import` benchmark. Standard library only.

    python3 scripts/bench/synthea_ndjson.py --dir ../shared/data/synthea-r4 --out /tmp/synthea-ndjson

Each resource keeps its id; `urn:uuid:` references are rewritten to `Type/id` through the
Bundle's fullUrls. A resource repeated across Bundles (Synthea repeats the Organizations and
Practitioners of each patient) is written once. The output is generated data: never commit it.
"""
import argparse
import json
import pathlib
import sys


def rewrite(value, urls):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in urls:
                value[key] = urls[item]
            else:
                rewrite(item, urls)
    elif isinstance(value, list):
        for item in value:
            rewrite(item, urls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="a directory of transaction Bundles (*.json)")
    parser.add_argument("--out", required=True, help="where the NDJSON files go")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    seen = set()
    count = 0
    for path in sorted(pathlib.Path(args.dir).glob("*.json")):
        bundle = json.loads(path.read_text())
        entries = bundle.get("entry", [])
        urls = {
            e["fullUrl"]: f'{e["resource"]["resourceType"]}/{e["resource"]["id"]}'
            for e in entries
            if "fullUrl" in e
        }
        for entry in entries:
            resource = entry["resource"]
            key = (resource["resourceType"], resource["id"])
            if key in seen:
                continue
            seen.add(key)
            rewrite(resource, urls)
            name = resource["resourceType"]
            if name not in files:
                files[name] = open(out / f"{name}.ndjson", "w")
            files[name].write(json.dumps(resource, separators=(",", ":")) + "\n")
            count += 1
    for handle in files.values():
        handle.close()
    print(f"{count} resources in {len(files)} files in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

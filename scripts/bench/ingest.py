#!/usr/bin/env python3
"""Ingest benchmark: POSTs transaction Bundles to a running gateway with N concurrent clients
and reports resources per second. Standard library only.

    python3 scripts/bench/ingest.py --base http://127.0.0.1:8080/fhir \
        --dir ../shared/data/synthea-r4 --clients 8
"""
import argparse
import http.client
import os
import json
import pathlib
import queue
import sys
import threading
import time
import urllib.parse

# the access token to send (FHIR_TOKEN), when the gateway requires one
AUTHORIZATION = {"Authorization": f"Bearer {os.environ['FHIR_TOKEN']}"} if os.environ.get("FHIR_TOKEN") else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8080/fhir")
    parser.add_argument("--dir", required=True, help="a directory of transaction Bundles (*.json)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--limit", type=int, default=0, help="at most this many files (0: all)")
    args = parser.parse_args()

    files = sorted(pathlib.Path(args.dir).glob("*.json"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no *.json in {args.dir}", file=sys.stderr)
        return 2
    bodies = []
    resources = 0
    for path in files:
        data = path.read_bytes()
        resources += len(json.loads(data).get("entry", []))
        bodies.append((path.name, data))

    url = urllib.parse.urlsplit(args.base)
    work: queue.Queue = queue.Queue()
    for item in bodies:
        work.put(item)
    failures = []
    latencies = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
        while True:
            try:
                name, data = work.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            conn.request(
                "POST",
                url.path or "/",
                body=data,
                headers={
                    "Content-Type": "application/fhir+json",
                    "Accept": "application/fhir+json",
                    "Prefer": "return=minimal",
                    **AUTHORIZATION,
                },
            )
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if response.status != 200:
                    failures.append((name, response.status, body[:300]))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started

    latencies.sort()
    print(f"bundles: {len(bodies)}  resources: {resources}  clients: {args.clients}")
    print(f"elapsed: {elapsed:.2f} s  throughput: {resources / elapsed:,.0f} resources/s")
    print(f"bundle latency: median {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s")
    for name, status, body in failures:
        print(f"FAILED {name}: {status} {body!r}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

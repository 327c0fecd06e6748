#!/usr/bin/env python3
"""Anchored-log benchmark: time from an acknowledged write to its version being anchored.

Starts the release gateway on a fresh database (embedded SQLite, or a new PostgreSQL database
with --postgres) with its embedded anvil chain, writes small Patients and Observations at a
steady rate from one client, and watches the versions' `$proof` until every one is
`anchored`. Reports, from each write's acknowledgement, the time to its batch being sealed,
submitted (the anchor transaction mined and recorded) and anchored (confirmed), as
p50/p90/p99/max. Standard library only.

    python3 scripts/bench/anchored.py                       # defaults: 20 writes/s for 60 s
    python3 scripts/bench/anchored.py --age 2 --confirmations 1
    python3 scripts/bench/anchored.py --postgres postgres://postgres@127.0.0.1:5432

How the times are taken: the writes are sent one at a time, so the log numbers them in
write order (README: a write acknowledged before another was sent has the smaller index)
and a batch's `firstIndex` and `size` name its writes. A watcher polls, every --poll-ms, the
`$proof` of the first write not yet in a known batch (which finds each batch as it is
sealed) and of one write of each batch not yet anchored; a batch's sealed, submitted and
anchored times are the first polls that see them, so they are late by at most one poll
interval plus a request. At the end every write's `$proof` is read once more to check that
it is anchored in the batch its log index says.
"""
import argparse
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
PG_DATABASE = "fhir_bench_anchored"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second (20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of writing (60)")
    parser.add_argument("--age", type=int,
                        help="ledger.batch_max_age_secs (default: the gateway's, 12)")
    parser.add_argument("--confirmations", type=int,
                        help="chain.confirmations (default: the gateway's, 3)")
    parser.add_argument("--poll-ms", type=int, default=100,
                        help="how often the watcher polls, in milliseconds (100)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the last anchor after the writes (180)")
    parser.add_argument("--postgres", metavar="URL",
                        help=f"a PostgreSQL server, postgres://user@host:port: the gateway uses a "
                             f"fresh database {PG_DATABASE} there (dropped at the end)")
    parser.add_argument("--binary", default=str(ROOT / "target/release/fhir-gateway"))
    args = parser.parse_args()

    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="fhir-anchored-bench-"))
    port = free_port()
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("FHIR_GATEWAY_"):
            del env[name]  # the gateway's defaults, not whatever this shell has set
    env.update({
        "FHIR_GATEWAY_DATABASE__DATA_DIR": str(data_dir),
        "FHIR_GATEWAY_SERVER__PORT": str(port),
        "FHIR_GATEWAY_CHAIN__ANVIL_PORT": "0",
        "FHIR_GATEWAY_LOG__FILTER": "warn",
        # this benchmark measures anchoring, not authorization
        "FHIR_GATEWAY_AUTH__REQUIRED": "false",
    })
    if args.age is not None:
        env["FHIR_GATEWAY_LEDGER__BATCH_MAX_AGE_SECS"] = str(args.age)
    if args.confirmations is not None:
        env["FHIR_GATEWAY_CHAIN__CONFIRMATIONS"] = str(args.confirmations)
    if args.postgres:
        server = args.postgres.rstrip("/")
        psql(f"{server}/postgres", f"DROP DATABASE IF EXISTS {PG_DATABASE}",
             f"CREATE DATABASE {PG_DATABASE}")
        env["FHIR_GATEWAY_DATABASE__URL"] = f"{server}/{PG_DATABASE}"

    config = json.loads(subprocess.run([args.binary, "config"], env=env, cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout)
    print(f"== machine: {os.cpu_count()} cores, load {load()}")
    print(f"== database: {'PostgreSQL' if args.postgres else 'SQLite (embedded)'}")
    print(f"== ledger: {json.dumps(config['ledger'])}")
    chain = config["chain"]
    print(f"== chain: mode {chain['mode']}, confirmations {chain['confirmations']}, "
          f"poll_interval_ms {chain['poll_interval_ms']}, "
          f"anvil_block_time_secs {chain['anvil_block_time_secs']}")
    print(f"== load: {args.rate:g} writes/s for {args.duration:g} s, one client; "
          f"watcher every {args.poll_ms} ms")

    log_file = open(data_dir / "gateway.log", "wb")
    gateway = subprocess.Popen([args.binary, "serve"], env=env, cwd=ROOT,
                               stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, gateway)
        result = run(base, args)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=60)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        log_file.close()
        if args.postgres:
            psql(f"{args.postgres.rstrip('/')}/postgres",
                 f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    if result != 0:
        print(f"gateway log kept in {data_dir / 'gateway.log'}", file=sys.stderr)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"== load after: {load()}")
    return result


def run(base: str, args) -> int:
    """Writes and watches; prints the figures. Returns the exit status."""
    writes = []  # (vread path, acknowledged at), in write order
    lock = threading.Lock()
    failures = []
    writer = threading.Thread(target=write_steadily, args=(base, args, writes, lock, failures))
    started = time.monotonic()
    writer.start()

    proofs = Proofs(base)
    batches = {}  # number -> Batch
    known_up_to = 0  # writes [0, known_up_to) are in a known batch
    offset = None  # log index of write 0
    deadline = None
    while True:
        tick = time.monotonic()
        with lock:
            written = len(writes)
        # each batch sealed since the last poll, in order
        while known_up_to < written:
            proof = proofs.get(writes[known_up_to][0])
            if proof.batch is None:
                break
            now = time.monotonic()
            if offset is None:
                offset = proof.log_index - known_up_to
            if proof.log_index - offset != known_up_to:
                print(f"write {known_up_to} has log index {proof.log_index}, not "
                      f"{known_up_to + offset}: the writes are not numbered in write order",
                      file=sys.stderr)
                return 1
            number, first_index, size = proof.batch
            batch = batches.setdefault(number, Batch(first_index - offset, size))
            batch.observe(proof.status, now)
            known_up_to = batch.first + batch.size
        # one write of each batch on its way
        for batch in batches.values():
            if batch.anchored is None:
                proof = proofs.get(writes[batch.first][0])
                batch.observe(proof.status, time.monotonic())
        if not writer.is_alive() and written == len(writes) and known_up_to == written \
                and all(b.anchored is not None for b in batches.values()):
            break
        if not writer.is_alive() and deadline is None:
            deadline = time.monotonic() + args.timeout
        if deadline is not None and time.monotonic() > deadline:
            waiting = sum(b.anchored is None for b in batches.values())
            print(f"timed out: {written - known_up_to} writes not sealed, "
                  f"{waiting} batches not anchored", file=sys.stderr)
            return 1
        time.sleep(max(0.0, tick + args.poll_ms / 1000 - time.monotonic()))
    elapsed = time.monotonic() - started
    writer.join()
    if failures:
        print(f"{len(failures)} writes failed, first: {failures[0]}", file=sys.stderr)
        return 1

    # every write once more: anchored, in the batch its log index says
    by_number = {}
    for number, batch in batches.items():
        for k in range(batch.first, batch.first + batch.size):
            by_number[k] = number
    for k, (path, _) in enumerate(writes):
        proof = proofs.get(path)
        if proof.status != "anchored" or proof.batch is None or proof.batch[0] != by_number.get(k) \
                or proof.log_index - offset != k:
            print(f"write {k} ({path}): status {proof.status}, batch {proof.batch}, "
                  f"log index {proof.log_index}; expected anchored in batch {by_number.get(k)}",
                  file=sys.stderr)
            return 1

    sealed, submitted, anchored = [], [], []
    for k, (_, acked) in enumerate(writes):
        batch = batches[by_number[k]]
        sealed.append(batch.sealed - acked)
        submitted.append(batch.submitted - acked)
        anchored.append(batch.anchored - acked)
    sizes = sorted(b.size for b in batches.values())
    print(f"== {len(writes)} writes in {len(batches)} batches (sizes {sizes[0]} to {sizes[-1]}), "
          f"all anchored and checked, {elapsed:.0f} s in all; {proofs.requests} $proof requests")
    print(f"{'from the acknowledgement to':<28} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for name, values in (("sealed", sealed), ("submitted", submitted), ("anchored", anchored)):
        values.sort()
        print(f"{name:<28} " + " ".join(f"{percentile(values, p):6.2f}s" for p in (50, 90, 99))
              + f" {values[-1]:6.2f}s")
    return 0


class Batch:
    """A batch as the watcher saw it: its writes and when it first saw each state."""

    def __init__(self, first: int, size: int):
        self.first = first  # the index of its first write
        self.size = size
        self.sealed = None
        self.submitted = None
        self.anchored = None

    def observe(self, status: str, now: float) -> None:
        # a later state implies the earlier ones (with one confirmation a batch goes from
        # sealed to anchored in one step)
        if self.sealed is None:
            self.sealed = now
        if status in ("submitted", "anchored") and self.submitted is None:
            self.submitted = now
        if status == "anchored" and self.anchored is None:
            self.anchored = now


class Proof:
    def __init__(self, parameters: dict):
        self.status = None
        self.log_index = None
        self.batch = None  # (number, first index, size)
        for parameter in parameters["parameter"]:
            name = parameter["name"]
            if name == "status":
                self.status = parameter["valueCode"]
            elif name == "logIndex":
                self.log_index = int(parameter["valueDecimal"])
            elif name == "batch":
                parts = {p["name"]: p.get("valueDecimal") for p in parameter["part"]}
                self.batch = (int(parts["number"]), int(parts["firstIndex"]), int(parts["size"]))


class Proofs:
    """Reads `$proof` over one kept-alive connection."""

    def __init__(self, base: str):
        url = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        self.requests = 0

    def get(self, path: str) -> Proof:
        self.conn.request("GET", f"{path}/$proof", headers={"Accept": "application/fhir+json"})
        response = self.conn.getresponse()
        body = response.read()
        self.requests += 1
        if response.status != 200:
            raise RuntimeError(f"GET {path}/$proof: {response.status} {body[:300]!r}")
        return Proof(json.loads(body))


def write_steadily(base: str, args, writes: list, lock: threading.Lock, failures: list) -> None:
    """Writes at a steady rate, one request at a time, alternating a Patient and an
    Observation of it; records each version's vread path and acknowledgement time."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    count = int(args.rate * args.duration)
    start = time.monotonic()
    patient = None
    for k in range(count):
        pause = start + k / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if k % 2 == 0 or patient is None:
            resource = {"resourceType": "Patient",
                        "name": [{"family": "Bench", "given": [f"N{k}"]}],
                        "birthDate": "1970-01-01"}
        else:
            resource = {"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                        "subject": {"reference": patient},
                        "valueQuantity": {"value": 60 + k % 40, "unit": "/min",
                                          "system": "http://unitsofmeasure.org", "code": "/min"}}
        conn.request("POST", f"/fhir/{resource['resourceType']}",
                     body=json.dumps(resource).encode(),
                     headers={"Content-Type": "application/fhir+json",
                              "Prefer": "return=minimal"})
        response = conn.getresponse()
        response.read()
        acked = time.monotonic()
        if response.status != 201:
            failures.append((resource["resourceType"], response.status))
            return
        # Location: [base]/[type]/[id]/_history/[vid]
        path = urllib.parse.urlsplit(response.getheader("Location")).path
        if resource["resourceType"] == "Patient":
            patient = "Patient/" + path.split("/")[-3]
        with lock:
            writes.append((path, acked))
    conn.close()


def percentile(values: list, p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def wait_ready(base: str, gateway: subprocess.Popen) -> None:
    """Waits until the gateway answers and its anchoring worker has a registry on chain."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise RuntimeError(f"the gateway exited with {gateway.returncode}")
        try:
            url = urllib.parse.urlsplit(base)
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
            conn.request("GET", "/health/ready")
            health = json.loads(conn.getresponse().read())
            conn.close()
            anchoring = health["checks"]["log:anchoring"][0]
            if anchoring.get("registry") and anchoring.get("lastSuccessAt"):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not become ready with a registry in 120 s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])


def psql(url: str, *commands: str) -> None:
    args = ["psql", url, "-q", "-v", "ON_ERROR_STOP=1", "-c", "SET client_min_messages = warning"]
    for command in commands:
        args += ["-c", command]
    subprocess.run(args, check=True)


if __name__ == "__main__":
    sys.exit(main())

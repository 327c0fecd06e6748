#!/usr/bin/env bash
# Read throughput with authorization on and off (BENCHMARKS.md, "SMART enforcement"): one
# PostgreSQL database (fhir_bench_auth, dropped after) loaded with the Synthea bundles, then
# the read-by-id load of run.sh (32 connections) against the gateway with
# auth.required = false and with auth.required = true and a token minted by
# `fhir-gateway token issue` (system/*.cruds), in alternating runs (ORDER, ROUNDS) after a
# 5 s warm-up each. Usage: scripts/bench/auth.sh [SYNTHEA_DIR]; DUR (default 20s).
# Needs wrk (apt-get install wrk), python3 and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/synthea-r4}
ORDER=${ORDER:-off on}
ROUNDS=${ROUNDS:-2}
PG=postgres://postgres@127.0.0.1:5432
PORT=8191
OUT=target/bench-auth
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
cargo build --release --bin fhir-gateway
DUR=${DUR:-20s}
mkdir -p $OUT
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_auth" -c "CREATE DATABASE fhir_bench_auth"
rm -rf "$OUT/gateway-data"
BASEENV=(FHIR_GATEWAY_DATABASE__URL="$PG/fhir_bench_auth" FHIR_GATEWAY_SERVER__PORT=$PORT
  FHIR_GATEWAY_SERVER__BASE_URL="http://127.0.0.1:$PORT/fhir" FHIR_GATEWAY_SERVER__WORKERS=2
  FHIR_GATEWAY_DATABASE__MAX_CONNECTIONS=16
  FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/gateway-data" FHIR_GATEWAY_CHAIN__MODE=off
  FHIR_GATEWAY_LOG__FILTER=warn)
start() {
  env "${BASEENV[@]}" FHIR_GATEWAY_AUTH__REQUIRED=$1 target/release/fhir-gateway serve &
  SERVER=$!
  until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }
trap 'kill $SERVER 2>/dev/null || true' EXIT
TOKEN=$(env "${BASEENV[@]}" target/release/fhir-gateway token issue --scope 'system/*.cruds' --lifetime-secs 3600)
start false
FHIR_TOKEN= python3 scripts/bench/ingest.py --base "http://127.0.0.1:$PORT/fhir" --dir "$DATA" --clients 8
psql "$PG/fhir_bench_auth" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
FHIR_TOKEN= python3 scripts/bench/prepare.py --base "http://127.0.0.1:$PORT/fhir" --out "$OUT"
stop
for round in $(seq "$ROUNDS"); do
  for mode in $ORDER; do
    if [ $mode = on ]; then start true; T=$TOKEN; else start false; T=; fi
    # warm up, then measure
    wrk -t2 -c32 -d5s -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" "$T" >/dev/null
    echo "== round $round, auth $mode, load $(cut -d' ' -f1-3 /proc/loadavg)"
    wrk -t2 -c32 -d"$DUR" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" "$T" | grep -E "Requests/sec|50%|99%|Non-2xx|requests in"
    stop
  done
done
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_auth WITH (FORCE)" || true

#!/usr/bin/env bash
# The server benchmarks of BENCHMARKS.md, end to end, against a release build on PostgreSQL:
#   (a) ingest of the Synthea bundles with 8 concurrent clients
#   (b) read by id at 32 concurrent connections
#   (c) the search mix (Patient by name; Observation by patient + code + date; with _include)
#   (d) with ANCHORED=1 only (about 75 s more): time from write to anchored at the default
#       settings (scripts/bench/anchored.py, its own gateway and database fhir_bench_anchored)
# Usage: scripts/bench/run.sh [SYNTHEA_DIR] (default ../shared/data/synthea-r4)
# Needs wrk (apt-get install wrk), python3, and PostgreSQL on 127.0.0.1:5432 (it creates and
# drops the database fhir_bench). DURATION (default 30s) sets each wrk run's length.
# AUTH=on (default) sends an access token minted with `fhir-gateway token issue` on every
# request; AUTH=off runs the gateway with auth.required = false (to compare the two).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/synthea-r4}
DURATION=${DURATION:-30s}
PORT=${PORT:-8190}
PG=postgres://postgres@127.0.0.1:5432
OUT=target/bench
AUTH=${AUTH:-on}

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
cargo build --release --bin fhir-gateway
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench" -c "CREATE DATABASE fhir_bench"

# the embedded chain's files go to a fresh directory, anvil to a free port
rm -rf "$OUT/gateway-data"
GATEWAY_ENV=(FHIR_GATEWAY_DATABASE__URL="$PG/fhir_bench" FHIR_GATEWAY_SERVER__PORT=$PORT
  FHIR_GATEWAY_SERVER__BASE_URL="http://127.0.0.1:$PORT/fhir"
  FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/gateway-data" FHIR_GATEWAY_CHAIN__ANVIL_PORT=0
  FHIR_GATEWAY_LOG__FILTER=warn)
if [ "$AUTH" = off ]; then
  GATEWAY_ENV+=(FHIR_GATEWAY_AUTH__REQUIRED=false)
  FHIR_TOKEN=
else
  GATEWAY_ENV+=(FHIR_GATEWAY_AUTH__REQUIRED=true)
  # makes the signing key in the data directory, where `serve` finds it
  FHIR_TOKEN=$(env "${GATEWAY_ENV[@]}" target/release/fhir-gateway token issue \
    --scope 'system/*.cruds' --lifetime-secs 3600)
fi
export FHIR_TOKEN
env "${GATEWAY_ENV[@]}" target/release/fhir-gateway serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done

echo "== machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); auth $AUTH"
echo "== (a) ingest, 8 clients"
python3 scripts/bench/ingest.py --base "http://127.0.0.1:$PORT/fhir" --dir "$DATA" --clients 8
# what autovacuum would do shortly after a bulk load; without statistics the planner
# guesses 1 row per index lookup
psql "$PG/fhir_bench" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
python3 scripts/bench/prepare.py --base "http://127.0.0.1:$PORT/fhir" --out "$OUT"

echo "== (b) read by id, 32 connections"
wrk -t2 -c32 -d"$DURATION" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" "$FHIR_TOKEN"
echo "== (c) search mix, 8 connections"
wrk -t2 -c8 -d"$DURATION" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/searches.txt" "$FHIR_TOKEN"
echo "== (c) search mix, 32 connections"
wrk -t2 -c32 -d"$DURATION" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/searches.txt" "$FHIR_TOKEN"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench WITH (FORCE)" || true

if [ "${ANCHORED:-0}" = 1 ]; then
  kill $SERVER; wait $SERVER 2>/dev/null || true
  echo "== (d) write to anchored, default settings"
  python3 scripts/bench/anchored.py --postgres "$PG"
fi

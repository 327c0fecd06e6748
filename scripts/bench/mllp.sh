#!/usr/bin/env bash
# HL7 v2 over MLLP under load (BENCHMARKS.md, "HL7 v2 over MLLP"): a release gateway on a
# fresh PostgreSQL database (fhir_bench_mllp, dropped after unless KEEP=1) with the embedded
# chain, consent off, the MLLP listener on; a warm-up of 8 x 100 messages and VACUUM ANALYZE, then
# scripts/bench/mllp_load.py over CONNECTIONS (8) connections x MESSAGES (1000) each. Prints
# messages/s, ACK latency and the CPU time the gateway and its PostgreSQL backends spent per
# message (from /proc, so the machine's other load does not move it).
# AUDIT (default false) is audit.enabled: issue 6's figure is a message translated, stored,
# logged and acknowledged; AUDIT=true adds the AuditEvent each message writes before its ACK.
# PG_OPTIONS sets PostgreSQL settings for the gateway's connections (e.g.
# '-c synchronous_commit=off'). PERF=1 records a call-graph profile of the gateway during the measured run
# of the whole machine (target/bench-mllp/perf.data; `perf report -i ... --sort comm,dso`).
# Needs PostgreSQL on 127.0.0.1:5432 and npm ci (anvil, for the embedded chain).
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNECTIONS=${CONNECTIONS:-8}
MESSAGES=${MESSAGES:-1000}
AUDIT=${AUDIT:-false}
PG=postgres://postgres@127.0.0.1:5432
PORT=8193
MLLP_PORT=8575
OUT=target/bench-mllp
# GATEWAY names a binary built before (e.g. a copy of another commit's) to measure instead
if [ -z "${GATEWAY:-}" ]; then cargo build --release --bin fhir-gateway; fi
BIN=${GATEWAY:-target/release/fhir-gateway}
mkdir -p $OUT
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_mllp WITH (FORCE)" -c "CREATE DATABASE fhir_bench_mllp"
rm -rf "$OUT/gateway-data"
DB_URL="$PG/fhir_bench_mllp"
[ -z "${PG_OPTIONS:-}" ] || DB_URL="$DB_URL?options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$PG_OPTIONS")"
env FHIR_GATEWAY_DATABASE__URL="$DB_URL" FHIR_GATEWAY_SERVER__PORT=$PORT \
  FHIR_GATEWAY_SERVER__BASE_URL="http://127.0.0.1:$PORT/fhir" FHIR_GATEWAY_SERVER__WORKERS=2 \
  FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/gateway-data" FHIR_GATEWAY_CONSENT__ENFORCE=false \
  FHIR_GATEWAY_MLLP__ENABLED=true FHIR_GATEWAY_MLLP__PORT=$MLLP_PORT FHIR_GATEWAY_LOG__FILTER=warn \
  FHIR_GATEWAY_AUDIT__ENABLED=$AUDIT $BIN serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done
source scripts/bench/lib.sh
ticks() { cpu_ticks $SERVER fhir_bench_mllp; }
python3 scripts/bench/mllp_load.py 127.0.0.1 $MLLP_PORT "$CONNECTIONS" 100 >/dev/null
# statistics and the warm-up's dead rows dealt with, as autovacuum does on a running server
# (the development and CI machines' cluster runs with autovacuum = off)
psql "$PG/fhir_bench_mllp" -qc "VACUUM ANALYZE"
read -r g0 p0 < <(ticks)
if [ -n "${PERF:-}" ]; then
  perf record -F 499 -a -g -o $OUT/perf.data 2>/dev/null &
  PERF_PID=$!
fi
python3 scripts/bench/mllp_load.py 127.0.0.1 $MLLP_PORT "$CONNECTIONS" "$MESSAGES"
read -r g1 p1 < <(ticks)
[ -z "${PERF:-}" ] || { kill -INT $PERF_PID; wait $PERF_PID || true; }
n=$((CONNECTIONS * MESSAGES))
echo "audit.enabled = $AUDIT; CPU per message: gateway $(( (g1 - g0) * 10000000 / n / 1000 )) µs, PostgreSQL $(( (p1 - p0) * 10000000 / n / 1000 )) µs (load $(cut -d' ' -f1-3 /proc/loadavg))"
kill $SERVER; wait $SERVER 2>/dev/null || true
[ -n "${KEEP:-}" ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_mllp WITH (FORCE)" || true

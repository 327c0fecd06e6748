#!/usr/bin/env bash
# Read-by-id throughput with the audit trail on and off (BENCHMARKS.md, "Audit trail"), and
# the AuditEvent write rate it sustains: one PostgreSQL database (fhir_bench_audit, dropped
# after) loaded with the Synthea bundles (auditing off while loading, so both runs read the
# same data), then the read-by-id load of run.sh (wrk, 32 connections, a system/*.rs token)
# with audit.enabled = true and false in alternating runs (ORDER, ROUNDS) after a 5 s
# warm-up each. Every audited read stores one AuditEvent (resource, version, index rows, log
# leaf) before it is answered, so the "on" runs' reads per second are also AuditEvents
# written per second; the script counts them in the database to check. Each run also prints
# the CPU time the gateway and its PostgreSQL backends spent per request (/proc), which the
# machine's other load does not move.
# Usage: scripts/bench/audit.sh [SYNTHEA_DIR]; DUR (default 20s); ROUNDS (default 2); BIN (a
# gateway binary to measure instead of building target/release/fhir-gateway, e.g. one built
# at an earlier commit, for a before/after on the same machine and data).
# PGSS=1 prints, after each measured run, the statements that took the most PostgreSQL time
# per request (needs pg_stat_statements in the server's shared_preload_libraries).
# Needs wrk (apt-get install wrk), python3 and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/synthea-r4}
ORDER=${ORDER:-off on}
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-20s}
PG=postgres://postgres@127.0.0.1:5432
DB=fhir_bench_audit
PORT=8194
OUT=target/bench-audit
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --bin fhir-gateway
  BIN=target/release/fhir-gateway
fi
mkdir -p $OUT
rm -rf "$OUT/gateway-data"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
BASEENV=(FHIR_GATEWAY_DATABASE__URL="$PG/$DB" FHIR_GATEWAY_SERVER__PORT=$PORT
  FHIR_GATEWAY_SERVER__BASE_URL="http://127.0.0.1:$PORT/fhir" FHIR_GATEWAY_SERVER__WORKERS=2
  FHIR_GATEWAY_DATABASE__MAX_CONNECTIONS=16 FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/gateway-data"
  FHIR_GATEWAY_CHAIN__MODE=off FHIR_GATEWAY_CONSENT__ENFORCE=false FHIR_GATEWAY_LOG__FILTER=warn)
start() {  # start AUTH_REQUIRED AUDIT_ENABLED
  env "${BASEENV[@]}" FHIR_GATEWAY_AUTH__REQUIRED=$1 FHIR_GATEWAY_AUDIT__ENABLED=$2 "$BIN" serve &
  SERVER=$!
  until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }
source scripts/bench/lib.sh
trap 'kill $SERVER 2>/dev/null || true' EXIT
audit_events() { psql -Atq "$PG/$DB" -c "SELECT COUNT(*) FROM resource WHERE resource_type = 'AuditEvent'"; }
TOKEN=$(env "${BASEENV[@]}" "$BIN" token issue --scope 'system/*.rs' --lifetime-secs 7200)
start false false
FHIR_TOKEN= python3 scripts/bench/ingest.py --base "http://127.0.0.1:$PORT/fhir" --dir "$DATA" --clients 8
[ -z "${PGSS:-}" ] || psql "$PG/$DB" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
psql "$PG/$DB" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
FHIR_TOKEN= python3 scripts/bench/prepare.py --base "http://127.0.0.1:$PORT/fhir" --out "$OUT"
stop
echo "== machine: $(nproc) cores, $(uname -r)"
for round in $(seq "$ROUNDS"); do
  for mode in $ORDER; do
    if [ $mode = on ]; then start true true; else start true false; fi
    wrk -t2 -c32 -d5s -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" "$TOKEN" >/dev/null
    echo "== round $round, audit $mode, reads, load $(cut -d' ' -f1-3 /proc/loadavg)"
    before=$(audit_events)
    [ -z "${PGSS:-}" ] || psql "$PG/$DB" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
    read -r g0 p0 < <(cpu_ticks $SERVER $DB)
    wrk -t2 -c32 -d"$DUR" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" "$TOKEN" > $OUT/wrk.txt
    read -r g1 p1 < <(cpu_ticks $SERVER $DB)
    grep -E "Requests/sec|50%|99%|Non-2xx|requests in" $OUT/wrk.txt
    n=$(awk '/requests in/ {print $1}' $OUT/wrk.txt)
    echo "CPU per request: gateway $(( (g1 - g0) * 10000000 / n / 1000 )) µs, PostgreSQL $(( (p1 - p0) * 10000000 / n / 1000 )) µs"
    echo "AuditEvents stored during the run: $(( $(audit_events) - before )) for $n requests"
    [ -z "${PGSS:-}" ] || psql "$PG/$DB" -qAF ' | ' -c "SELECT round((total_exec_time + total_plan_time) * 1000 / $n) AS us_per_request, calls, round(total_exec_time * 1000 / calls) AS exec_us, left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1 DESC LIMIT 12"
    stop
  done
done
[ -n "${KEEP:-}" ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true

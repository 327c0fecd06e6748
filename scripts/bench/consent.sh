#!/usr/bin/env bash
# Read and search throughput with on-chain consent enforced and not (BENCHMARKS.md, "Consent"):
# one PostgreSQL database (fhir_bench_consent, dropped after) loaded with the Synthea bundles,
# a local anvil with the ConsentRegistry the gateway deploys, every Patient bound to a fresh
# wallet that grants every type for treatment to the benchmark's app ("operator", the client
# of `fhir-gateway token issue`), then the read-by-id and search loads of run.sh (wrk, 32
# connections, a system/*.rs token) with consent.enforce = true and false, in alternating
# runs (ORDER, ROUNDS) after a 5 s warm-up each. Both runs use the same token, chain and
# database; "off" serves by scopes alone. Besides throughput, each run prints the CPU time the
# gateway and its PostgreSQL backends spent per request, which the machine's other load does
# not move (the same work costs the same CPU), unlike requests per second.
# Usage: scripts/bench/consent.sh [SYNTHEA_DIR]; DUR (default 20s); KEEP=1 keeps the database;
# AUDIT=true measures with the audit trail on (off by default, as the figures before it);
# PG_OPTIONS sets PostgreSQL settings for the gateway's connections (e.g.
# '-c plan_cache_mode=force_generic_plan'); PGLOG=1 has PostgreSQL log every statement of the measured runs (with their parameters, for
# EXPLAIN), in its server log. PGSS=1 prints, after each measured run, the statements that
# took the most PostgreSQL time per request (needs pg_stat_statements in the server's
# shared_preload_libraries; the script creates the extension in the benchmark database).
# PERF=1 records the gateway's profile of each measured run with perf (target/bench-consent/
# perf-[n].data, PERF_HZ samples a second, default 499; `perf report -i` it).
# BINS: gateway binaries to compare (space-separated; default the release build of this tree,
# built first): each round measures each of them, off and on, against the same database,
# chain and grants (the first one loads them).
# Needs wrk (apt-get install wrk), python3, npm ci (anvil) and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/synthea-r4}
ORDER=${ORDER:-off on}
ROUNDS=${ROUNDS:-2}
DUR=${DUR:-20s}
PG=postgres://postgres@127.0.0.1:5432
PORT=8192
ANVIL_PORT=8593
OUT=target/bench-consent
# anvil's first two dev accounts (published test keys): anchoring, and relaying consent
ANCHOR_KEY=ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
RELAYER_KEY=59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
if [ -z "${BINS:-}" ]; then
  cargo build --release --bin fhir-gateway --example bench_consent_grants
  BINS=target/release/fhir-gateway
else
  cargo build --release --example bench_consent_grants
fi
read -r BIN _ <<<"$BINS"
mkdir -p $OUT
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_consent" -c "CREATE DATABASE fhir_bench_consent"
rm -rf "$OUT/gateway-data"
node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil --port $ANVIL_PORT >/dev/null &
ANVIL=$!
DB_URL="$PG/fhir_bench_consent"
[ -z "${PG_OPTIONS:-}" ] || DB_URL="$DB_URL?options=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$PG_OPTIONS")"
BASEENV=(FHIR_GATEWAY_DATABASE__URL="$DB_URL" FHIR_GATEWAY_SERVER__PORT=$PORT
  FHIR_GATEWAY_SERVER__BASE_URL="http://127.0.0.1:$PORT/fhir" FHIR_GATEWAY_SERVER__WORKERS=2
  FHIR_GATEWAY_DATABASE__MAX_CONNECTIONS=16
  FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/gateway-data" FHIR_GATEWAY_CHAIN__MODE=rpc
  FHIR_GATEWAY_CHAIN__RPC_URL="http://127.0.0.1:$ANVIL_PORT" FHIR_GATEWAY_CHAIN__SIGNER_KEY=$ANCHOR_KEY
  FHIR_GATEWAY_CONSENT__RELAYER_KEY=$RELAYER_KEY FHIR_GATEWAY_CONSENT__CONFIRMATIONS=1
  FHIR_GATEWAY_LOG__FILTER=warn
  # consent's own cost, as measured before the audit trail existed (scripts/bench/audit.sh)
  FHIR_GATEWAY_AUDIT__ENABLED=${AUDIT:-false})
start() {  # start AUTH_REQUIRED CONSENT_ENFORCE
  env "${BASEENV[@]}" FHIR_GATEWAY_AUTH__REQUIRED=$1 FHIR_GATEWAY_CONSENT__ENFORCE=$2 "$BIN" serve &
  SERVER=$!
  until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done
}
stop() { kill $SERVER; wait $SERVER 2>/dev/null || true; }
source scripts/bench/lib.sh
ticks() { cpu_ticks $SERVER fhir_bench_consent; }
trap 'kill $SERVER $ANVIL 2>/dev/null || true' EXIT
until curl -sf -X POST -H 'content-type: application/json' --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "http://127.0.0.1:$ANVIL_PORT" >/dev/null; do sleep 0.2; done
TOKEN=$(env "${BASEENV[@]}" "$BIN" token issue --scope 'system/*.rs' --lifetime-secs 7200)
start false true
FHIR_TOKEN= python3 scripts/bench/ingest.py --base "http://127.0.0.1:$PORT/fhir" --dir "$DATA" --clients 8
[ -z "${PGSS:-}" ] || psql "$PG/fhir_bench_consent" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
psql "$PG/fhir_bench_consent" -qc "VACUUM ANALYZE" -c "CHECKPOINT"${PGLOG:+ -c "ALTER DATABASE fhir_bench_consent SET log_min_duration_statement = 0"}
FHIR_TOKEN= python3 scripts/bench/prepare.py --base "http://127.0.0.1:$PORT/fhir" --out "$OUT"
REGISTRY=$(curl -s "http://127.0.0.1:$PORT/health/ready" | python3 -c 'import json,sys; print(json.load(sys.stdin)["checks"]["consent:index"][0]["registry"])')
stop
target/release/examples/bench_consent_grants "$PG/fhir_bench_consent" "http://127.0.0.1:$ANVIL_PORT" "$REGISTRY" operator $RELAYER_KEY
for round in $(seq "$ROUNDS"); do
  for BIN in $BINS; do
    for mode in $ORDER; do
      if [ $mode = on ]; then start true true; else start true false; fi
      # the index caught up with the grants before measuring
      until curl -s "http://127.0.0.1:$PORT/health/ready" | grep -q '"consent:index":\[{[^]]*"status":"pass"'; do sleep 0.2; done
      # the index's tables were filled after the load's VACUUM ANALYZE; a deployment's
      # autovacuum would have analyzed them since (this machine's PostgreSQL runs without it)
      [ -n "${ANALYZED:-}" ] || { psql "$PG/fhir_bench_consent" -qc "ANALYZE"; ANALYZED=1; }
      for load in reads searches; do
        wrk -t2 -c32 -d5s -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/$load.txt" "$TOKEN" >/dev/null
        echo "== round $round, $BIN, consent $mode, $load, load $(cut -d' ' -f1-3 /proc/loadavg)"
        [ -z "${PGSS:-}" ] || psql "$PG/fhir_bench_consent" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
        read -r g0 p0 < <(ticks)
        RUN=$((${RUN:-0} + 1))
        [ -z "${PERF:-}" ] || { perf record -q -F ${PERF_HZ:-499} -g -p $SERVER -o "$OUT/perf-$RUN.data" >/dev/null 2>&1 & PERFPID=$!; }
        wrk -t2 -c32 -d"$DUR" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/$load.txt" "$TOKEN" > $OUT/wrk.txt
        read -r g1 p1 < <(ticks)
        [ -z "${PERF:-}" ] || { kill -INT $PERFPID; wait $PERFPID || true; echo "profile: $OUT/perf-$RUN.data"; }
        grep -E "Requests/sec|50%|99%|Non-2xx|requests in" $OUT/wrk.txt
        n=$(awk '/requests in/ {print $1}' $OUT/wrk.txt)
        echo "CPU per request: gateway $(( (g1 - g0) * 10000000 / n / 1000 )) µs, PostgreSQL $(( (p1 - p0) * 10000000 / n / 1000 )) µs"
        [ -z "${PGSS:-}" ] || psql "$PG/fhir_bench_consent" -qAF ' | ' -c "SELECT round((total_exec_time + total_plan_time) * 1000 / $n) AS us_per_request, calls, round(total_exec_time * 1000 / calls) AS exec_us, left(regexp_replace(query, '\s+', ' ', 'g'), 160) AS query FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1 DESC LIMIT 8"
      done
      stop
    done
  done
done
[ -n "${KEEP:-}" ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_consent WITH (FORCE)" || true

#!/usr/bin/env bash
# What OpenTelemetry costs a read by id (BENCHMARKS.md, "Telemetry"): the same gateway and
# data, driven by wrk at 32 connections, with
#   off     telemetry.trace_filter = "off": no OpenTelemetry span is made (logs only)
#   local   the defaults: spans made (trace ids in logs and `traceresponse`), nothing exported
#   export  spans and metrics exported over OTLP/HTTP to a local sink, /metrics on
# Usage: scripts/bench/telemetry.sh (DURATION, default 20s; PostgreSQL on 127.0.0.1:5432; it
# creates and drops the database fhir_bench_otel). Needs wrk, python3, a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
DURATION=${DURATION:-20s}
PORT=${PORT:-8191}
SINK_PORT=${SINK_PORT:-4318}
PG=postgres://postgres@127.0.0.1:5432
OUT=target/bench-otel
BIN=target/release/fhir-gateway
[ -x "$BIN" ] || { echo "build it first: cargo build --release --bin fhir-gateway" >&2; exit 2; }
mkdir -p "$OUT"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_otel" -c "CREATE DATABASE fhir_bench_otel"

# an OTLP/HTTP sink: 200 to every POST, bodies counted and dropped
python3 - "$SINK_PORT" <<'EOF' &
import sys, http.server
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
SINK=$!
SERVER=
trap 'kill $SERVER $SINK 2>/dev/null || true' EXIT

BASE_ENV=(FHIR_GATEWAY_DATABASE__URL="$PG/fhir_bench_otel" FHIR_GATEWAY_SERVER__PORT=$PORT
  FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/data" FHIR_GATEWAY_CHAIN__MODE=off
  FHIR_GATEWAY_AUTH__REQUIRED=false FHIR_GATEWAY_CONSENT__ENFORCE=false
  FHIR_GATEWAY_SERVER__WORKERS=2 FHIR_GATEWAY_LOG__FILTER=warn)

start() {
  env "${BASE_ENV[@]}" "$@" "$BIN" serve >/dev/null 2>&1 &
  SERVER=$!
  until curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null; do sleep 0.2; done
}
stop() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }

# 500 Patients to read
start
: >"$OUT/reads.txt"
for i in $(seq 1 500); do
  curl -sf -o /dev/null -D - -H 'content-type: application/fhir+json' \
    -d '{"resourceType":"Patient","gender":"other","birthDate":"1970-01-01"}' \
    "http://127.0.0.1:$PORT/fhir/Patient" | tr -d '\r' | awk '/^[Ll]ocation:/ {print $2}' |
    sed -E 's#^https?://[^/]+##; s#/_history/.*##' >>"$OUT/reads.txt"
done
stop
psql "$PG/fhir_bench_otel" -qc "VACUUM ANALYZE"

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in off local export; do
  case $mode in
    off) start FHIR_GATEWAY_TELEMETRY__TRACE_FILTER=off ;;
    local) start ;;
    export) start FHIR_GATEWAY_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" \
      FHIR_GATEWAY_TELEMETRY__METRICS_EXPORT_INTERVAL_MS=5000 FHIR_GATEWAY_TELEMETRY__PROMETHEUS=true ;;
  esac
  before=$(cpu_ticks "$SERVER" fhir_bench_otel)
  echo "== $mode: read by id, 32 connections"
  wrk -t2 -c32 -d"$DURATION" --latency -s scripts/bench/paths.lua "http://127.0.0.1:$PORT" -- "$OUT/reads.txt" |
    tee "$OUT/$mode.txt" | grep -E "Requests/sec|50%|99%|requests in"
  after=$(cpu_ticks "$SERVER" fhir_bench_otel)
  requests=$(awk '/requests in/ {print $1}' "$OUT/$mode.txt")
  awk -v b="$before" -v a="$after" -v n="$requests" 'BEGIN {
    split(b, x, " "); split(a, y, " ");
    printf "   gateway CPU per request: %.1f us\n", (y[1] - x[1]) * 10000 / n }'
  stop
done
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_bench_otel"

#!/usr/bin/env bash
# The NDJSON import benchmark of BENCHMARKS.md: the Synthea Bundles converted to one NDJSON
# file per type (scripts/bench/synthea_ndjson.py, into target/bench/synthea-ndjson, never
# committed), imported by a release build into a fresh PostgreSQL database (fhir_import_bench,
# created and dropped here) and, with SQLITE=1, into a fresh SQLite file too.
# Usage: scripts/bench/import.sh [SYNTHEA_DIR] (default ../shared/data/synthea-r4)
# BATCH (default 2000) is --batch-size.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data/synthea-r4}
BATCH=${BATCH:-2000}
PG=postgres://postgres@127.0.0.1:5432
OUT=target/bench
# GATEWAY names a binary built before (e.g. a copy of another commit's) to measure instead
if [ -z "${GATEWAY:-}" ]; then cargo build --release --bin fhir-gateway; fi
BIN=${GATEWAY:-target/release/fhir-gateway}
rm -rf "$OUT/synthea-ndjson" "$OUT/import-data"
python3 scripts/bench/synthea_ndjson.py --dir "$DATA" --out "$OUT/synthea-ndjson"
echo "== machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_import_bench" -c "CREATE DATABASE fhir_import_bench"
# migrations first, so that the timed run measures the import alone
FHIR_GATEWAY_DATABASE__URL="$PG/fhir_import_bench" $BIN client list >/dev/null
echo "== PostgreSQL"
# the CPU of the import's PostgreSQL backends, sampled every 0.1 s (the last tenth is lost)
( while :; do
    for pid in $(pgrep -f "postgres: .*fhir_import_bench"); do
      echo "$pid $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)"
    done
    sleep 0.1
  done ) > "$OUT/pg-ticks" &
WATCH=$!
/usr/bin/time -f "import process: %U s user, %S s system, %e s elapsed" \
  env FHIR_GATEWAY_DATABASE__URL="$PG/fhir_import_bench" FHIR_GATEWAY_LOG__FILTER=warn \
  $BIN import "$OUT"/synthea-ndjson/*.ndjson --batch-size "$BATCH" \
  --no-progress --errors "$OUT/import-errors.ndjson" || [ $? -eq 2 ]  # 2: some lines rejected
kill $WATCH
echo "PostgreSQL backends: $(awk '{ if ($2 > m[$1]) m[$1] = $2 } END { for (p in m) t += m[p]; printf "%.2f", t / 100 }' "$OUT/pg-ticks") s of CPU (load $(cut -d' ' -f1-3 /proc/loadavg))"
if [ "${SQLITE:-0}" = 1 ]; then
  echo "== SQLite"
  env -u FHIR_GATEWAY_DATABASE__URL FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/import-data" \
    FHIR_GATEWAY_LOG__FILTER=warn $BIN client list >/dev/null
  env -u FHIR_GATEWAY_DATABASE__URL FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/import-data" \
    FHIR_GATEWAY_LOG__FILTER=warn $BIN import "$OUT"/synthea-ndjson/*.ndjson \
    --batch-size "$BATCH" --no-progress --errors "$OUT/import-errors-sqlite.ndjson" || [ $? -eq 2 ]
fi
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_import_bench"

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
cargo build --release --bin fhir-gateway
rm -rf "$OUT/synthea-ndjson" "$OUT/import-data"
python3 scripts/bench/synthea_ndjson.py --dir "$DATA" --out "$OUT/synthea-ndjson"
echo "== machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_import_bench" -c "CREATE DATABASE fhir_import_bench"
# migrations first, so that the timed run measures the import alone
FHIR_GATEWAY_DATABASE__URL="$PG/fhir_import_bench" target/release/fhir-gateway client list >/dev/null
echo "== PostgreSQL"
env FHIR_GATEWAY_DATABASE__URL="$PG/fhir_import_bench" FHIR_GATEWAY_LOG__FILTER=warn \
  target/release/fhir-gateway import "$OUT"/synthea-ndjson/*.ndjson --batch-size "$BATCH" \
  --no-progress --errors "$OUT/import-errors.ndjson" || [ $? -eq 2 ]  # 2: some lines rejected
if [ "${SQLITE:-0}" = 1 ]; then
  echo "== SQLite"
  env -u FHIR_GATEWAY_DATABASE__URL FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/import-data" \
    FHIR_GATEWAY_LOG__FILTER=warn target/release/fhir-gateway client list >/dev/null
  env -u FHIR_GATEWAY_DATABASE__URL FHIR_GATEWAY_DATABASE__DATA_DIR="$OUT/import-data" \
    FHIR_GATEWAY_LOG__FILTER=warn target/release/fhir-gateway import "$OUT"/synthea-ndjson/*.ndjson \
    --batch-size "$BATCH" --no-progress --errors "$OUT/import-errors-sqlite.ndjson" || [ $? -eq 2 ]
fi
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS fhir_import_bench"

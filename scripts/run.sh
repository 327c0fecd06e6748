#!/usr/bin/env bash
# Starts the gateway locally with embedded defaults: SQLite in .data/, listening on
# http://127.0.0.1:8080/fhir. (The local anvil chain joins with the anchored-log work.)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --bin fhir-gateway -- serve "$@"

#!/usr/bin/env bash
# Starts the whole system locally with embedded defaults: SQLite in .data/, a local anvil
# chain (from the project's npm-installed Foundry) with the AnchorRegistry deployed, and the
# gateway listening on http://127.0.0.1:8080/fhir. Extra arguments go to `fhir-gateway serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/anvil ]; then
    npm ci --no-audit --no-fund
fi
exec cargo run --release --bin fhir-gateway -- serve "$@"

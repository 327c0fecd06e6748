#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, and the whole test suite against real
# PostgreSQL (127.0.0.1:5432, or $TEST_POSTGRES_URL) and SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL must be up (it is on every development and CI machine; start it if it is down)
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  fi
fi

# the official FHIR R4 examples (npm registry), for the round-trip and validation tests
bash fhir-profiles/scripts/fetch-examples.sh

# independent FHIR clients (Python) for the client smoke test
if ! .cache/venv/bin/python3 -m pip --version >/dev/null 2>&1; then
  rm -rf .cache/venv
  python3 -m venv .cache/venv
fi
.cache/venv/bin/python3 -m pip install --quiet --disable-pip-version-check -r gateway/tests/clients/requirements.txt

# a real browser for the SMART App Launch tests: Debian's chromium, driven by playwright-core
# (npm, installed with the contracts' toolchain below)
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# --- contracts/ (issue 3): npm ci of the Foundry/solcjs toolchain when missing or stale, then
# forge fmt --check, the forge tests against .gas-snapshot, and the artifact drift check
bash contracts/scripts/test.sh
# --- end contracts/ ---

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc   # nextest does not run doc tests

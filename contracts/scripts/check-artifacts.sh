#!/usr/bin/env bash
# Fails when contracts/artifacts/ differs from what the sources compile to (a source changed
# without `contracts/scripts/update-artifacts.sh`, or an artifact was edited by hand).
set -euo pipefail
contracts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT
bash "$contracts/scripts/update-artifacts.sh" "$fresh"
if ! difference="$(diff -r "$contracts/artifacts" "$fresh" 2>&1)"; then
  echo "contracts/artifacts/ is out of date with the Solidity sources; run contracts/scripts/update-artifacts.sh and commit the result:" >&2
  printf '%s\n' "$difference" | cut -c1-200 | head -n 20 >&2
  exit 1
fi
echo "contracts/artifacts/ matches the sources"

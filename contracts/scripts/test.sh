#!/usr/bin/env bash
# The contracts' checks (run by the project's scripts/test.sh): the npm toolchain installed
# from package-lock.json, formatting, the tests (the deterministic ones against the committed
# gas snapshot, then the fuzz and invariant tests), and the committed artifacts against the
# sources.
set -euo pipefail
contracts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$contracts/.." && pwd)"
forge() { "$contracts/scripts/foundry" forge "$@"; }

# npm ci when node_modules is missing or was installed from another package.json/lock
stamp="$root/node_modules/.installed-from"
wanted="$(cat "$root/package.json" "$root/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  (cd "$root" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$wanted" >"$stamp"
fi

cd "$contracts"
forge fmt --check
build=(--offline --use "$contracts/scripts/solc-wrapper")
# deterministic tests, compared with .gas-snapshot (refresh it with
# `forge snapshot --no-match-test 'testFuzz|invariant'` after a change that moves gas)
forge snapshot "${build[@]}" --check --no-match-test 'testFuzz|invariant'
forge test "${build[@]}" --match-test 'testFuzz|invariant'
bash "$contracts/scripts/check-artifacts.sh"

#!/usr/bin/env bash
# Measures the gas of real `anchor` transactions (21,000 base, calldata and execution: what a
# gateway pays) on a local anvil from the npm toolchain, with the committed artifact.
# For each batch size: the first batch of a fresh log, then the next batch of that log.
# The cost does not depend on the batch size (only a few calldata bytes do), so the gas per
# record is the gas per batch divided by the size.
#
#   contracts/scripts/measure-gas.sh      (prints a Markdown table)
set -euo pipefail
contracts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
foundry="$contracts/scripts/foundry"
artifact="$contracts/artifacts/AnchorRegistry.json"

anvil_log="$(mktemp)"
"$foundry" anvil --port 0 --accounts 5 >"$anvil_log" 2>&1 &
anvil_pid=$!
trap 'kill "$anvil_pid" 2>/dev/null || true; wait "$anvil_pid" 2>/dev/null || true; rm -f "$anvil_log"' EXIT
for _ in $(seq 100); do
  grep -q '^Listening on ' "$anvil_log" && break
  kill -0 "$anvil_pid" 2>/dev/null || { cat "$anvil_log" >&2; exit 1; }
  sleep 0.1
done
rpc="http://$(sed -n 's/^Listening on //p' "$anvil_log")"
[ "$rpc" != "http://" ] || { echo "anvil did not start" >&2; exit 1; }

cast() { "$foundry" cast "$1" --rpc-url "$rpc" "${@:2}"; }
# anvil's unlocked development accounts: the first deploys, each other one anchors its own log
mapfile -t accounts < <(cast rpc eth_accounts | node -e 'for (const a of JSON.parse(require("fs").readFileSync(0))) console.log(a)')
gas_used() { node -e 'console.log(Number(JSON.parse(require("fs").readFileSync(0)).gasUsed))'; }
send() { cast send --unlocked --from "$@" --json; }

bytecode="$(node -p 'require(process.argv[1]).bytecode.object' "$artifact")"
deployment="$(send "${accounts[0]}" --create "$bytecode")"
registry="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(0)).contractAddress)' <<<"$deployment")"
echo "deployment: $(gas_used <<<"$deployment") gas (registry $registry, anvil $("$foundry" anvil --version | head -n 1))"
echo
echo "| batch size | first batch of a log | next batch | gas per record (next batch) |"
echo "|---:|---:|---:|---:|"
account=1
for size in 10 100 1000 10000; do
  anchorer="${accounts[$account]}"
  account=$((account + 1))
  first="$(send "$anchorer" "$registry" 'anchor(uint64,uint64,bytes32)' 0 "$size" "$("$foundry" cast keccak "batch 0 of $size")" | gas_used)"
  next="$(send "$anchorer" "$registry" 'anchor(uint64,uint64,bytes32)' "$size" "$size" "$("$foundry" cast keccak "batch 1 of $size")" | gas_used)"
  per_record="$(node -p "($next / $size).toFixed($size >= 1000 ? 1 : 0)")"
  echo "| $size | $first | $next | $per_record |"
done

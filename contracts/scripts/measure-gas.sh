#!/usr/bin/env bash
# Measures the gas of real `anchor` transactions (21,000 base, calldata and execution: what a
# gateway pays) on a local anvil from the npm toolchain, with the committed artifact.
# For each batch size: the first batch of a fresh log, then the next batch of that log.
# The cost does not depend on the batch size (only a few calldata bytes do), so the gas per
# record is the gas per batch divided by the size.
#
# Then the ConsentRegistry's transactions: direct and signed (EIP-712, signed with
# `cast wallet sign --data` as a wallet signs) grants of one resource type, and revocations.
#
#   contracts/scripts/measure-gas.sh      (prints Markdown tables)
set -euo pipefail
contracts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
foundry="$contracts/scripts/foundry"
artifact="$contracts/artifacts/AnchorRegistry.json"

anvil_log="$(mktemp)"
"$foundry" anvil --port 0 --accounts 8 >"$anvil_log" 2>&1 &
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

# --- the ConsentRegistry ------------------------------------------------------------------------
consent_artifact="$contracts/artifacts/ConsentRegistry.json"
bytecode="$(node -p 'require(process.argv[1]).bytecode.object' "$consent_artifact")"
deployment="$(send "${accounts[0]}" --create "$bytecode")"
consent="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(0)).contractAddress)' <<<"$deployment")"
chain_id="$(cast chain-id)"
echo
echo "ConsentRegistry deployment: $(gas_used <<<"$deployment") gas"
echo
# two patients: development account 5 sends its own grants; the published development key 6
# (the default mnemonic) signs, and the relayer (account 0) sends them
direct_patient="${accounts[5]}"
signing_key=0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d4b8d88b2b4ec1564e
signing_patient="$("$foundry" cast wallet address --private-key "$signing_key")"
grantee="$("$foundry" cast keccak "client:smart-app")"
deadline=4102444800 # 2100-01-01
# the typed data JSON of a grant or revocation, as anchor::consent::typed_data_* builds it
typed_data() {
  node -e '
    const [kind, chainId, registry, patient, arg1, nonce, deadline] = process.argv.slice(1);
    const domain = [["name","string"],["version","string"],["chainId","uint256"],["verifyingContract","address"]];
    const types = {
      Grant: [["patient","address"],["grantee","bytes32"],["resourceTypes","string[]"],["purpose","string"],["expiresAt","uint64"],["nonce","uint256"],["deadline","uint256"]],
      Revoke: [["patient","address"],["grantId","uint64"],["nonce","uint256"],["deadline","uint256"]],
    };
    const fields = (list) => list.map(([name, type]) => ({ name, type }));
    const message = kind === "Grant"
      ? { patient, grantee: arg1, resourceTypes: ["Observation"], purpose: "TREAT", expiresAt: "0", nonce, deadline }
      : { patient, grantId: arg1, nonce, deadline };
    console.log(JSON.stringify({
      types: { EIP712Domain: fields(domain), [kind]: fields(types[kind]) },
      primaryType: kind,
      domain: { name: "ConsentRegistry", version: "1", chainId: Number(chainId), verifyingContract: registry },
      message,
    }));
  ' "$@"
}
signed() { "$foundry" cast wallet sign --private-key "$signing_key" --data "$(typed_data "$@")"; }
grant_direct() {
  send "$direct_patient" "$consent" 'grant(bytes32,string[],string,uint64)' "$grantee" '["Observation"]' TREAT 0 | gas_used
}
grant_by_sig() {
  local nonce="$1"
  local signature
  signature="$(signed Grant "$chain_id" "$consent" "$signing_patient" "$grantee" "$nonce" "$deadline")"
  send "${accounts[0]}" "$consent" \
    'grantBySig(address,bytes32,string[],string,uint64,uint256,uint256,bytes)' \
    "$signing_patient" "$grantee" '["Observation"]' TREAT 0 "$nonce" "$deadline" "$signature" | gas_used
}
# a first grant by someone else, so that no measured grant pays for the registry's id counter
send "${accounts[4]}" "$consent" 'grant(bytes32,string[],string,uint64)' "$grantee" '[]' TREAT 0 >/dev/null
echo "| transaction (one resource type, purpose TREAT) | gas |"
echo "|---|---:|"
echo "| \`grant\`, the patient's first | $(grant_direct) |"
echo "| \`grant\`, a later one | $(grant_direct) |"
echo "| \`grantBySig\`, the patient's first (nonce 0) | $(grant_by_sig 0) |"
echo "| \`grantBySig\`, a later one | $(grant_by_sig 1) |"
echo "| \`revoke\` | $(send "$direct_patient" "$consent" 'revoke(uint64)' 2 | gas_used) |"
revocation="$(signed Revoke "$chain_id" "$consent" "$signing_patient" 4 2 "$deadline")"
echo "| \`revokeBySig\` | $(send "${accounts[0]}" "$consent" 'revokeBySig(address,uint64,uint256,uint256,bytes)' "$signing_patient" 4 2 "$deadline" "$revocation" | gas_used) |"

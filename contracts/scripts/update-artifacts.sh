#!/usr/bin/env bash
# Regenerates contracts/artifacts/ from the Solidity sources: the ABI and bytecode of each
# contract the Rust crates use, in the shape of a forge artifact (what alloy's `sol!` reads),
# so that `cargo build` needs no node toolchain. Commit the result with the source change.
#
#   contracts/scripts/update-artifacts.sh [DEST]    (DEST defaults to contracts/artifacts)
set -euo pipefail
contracts="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$contracts/artifacts}"
artifacts=(AnchorRegistry ConsentRegistry)

build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cd "$contracts"
# a build of its own (sources only, no cache), so that nothing left in out/ can leak in
"$contracts/scripts/foundry" forge build --offline --use "$contracts/scripts/solc-wrapper" --skip test \
  --out "$build/out" --cache-path "$build/cache" --quiet

mkdir -p "$dest"
for name in "${artifacts[@]}"; do
  node -e '
    const artifact = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const shape = {
      abi: artifact.abi,
      bytecode: { object: artifact.bytecode.object },
      deployedBytecode: { object: artifact.deployedBytecode.object },
    };
    process.stdout.write(JSON.stringify(shape, null, 2) + "\n");
  ' "$build/out/$name.sol/$name.json" >"$dest/$name.json"
done

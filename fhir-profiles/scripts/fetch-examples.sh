#!/usr/bin/env bash
# Fetches the official FHIR R4 examples package (hl7.fhir.r4.examples@4.0.1) from the npm
# registry into .cache/hl7.fhir.r4.examples/package, once. Tests and scripts read it there
# (or from $FHIR_R4_EXAMPLES_DIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/hl7.fhir.r4.examples"
if [ -f "$dest/package/package.json" ]; then
  exit 0
fi
mkdir -p "$dest"
cd "$dest"
npm pack hl7.fhir.r4.examples@4.0.1 --silent >/dev/null
tar xzf hl7.fhir.r4.examples-4.0.1.tgz
rm hl7.fhir.r4.examples-4.0.1.tgz
echo "fetched $(ls package | wc -l) files into $dest/package"

#!/usr/bin/env node
// Adds to package-lock.json the Foundry platform packages that npm could not resolve when it
// wrote the lock, so that `npm ci` accepts it. The @foundry-rs/{anvil,cast,forge} packages name
// one optional package per platform; the registry this project is developed against serves
// only some of them, npm leaves the others out of the lock, and `npm ci` then refuses the lock
// as out of sync with package.json. The added entries carry version, os and cpu (so npm skips
// them on other platforms) but no integrity hash, since they could not be fetched here.
// Run it after `npm install` changes a Foundry version:
//   node contracts/scripts/complete-lockfile.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const lockPath = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "package-lock.json");
const lock = JSON.parse(readFileSync(lockPath, "utf8"));
const platforms = {
  "darwin-amd64": { os: "darwin", cpu: "x64" },
  "darwin-arm64": { os: "darwin", cpu: "arm64" },
  "linux-amd64": { os: "linux", cpu: "x64" },
  "linux-arm64": { os: "linux", cpu: "arm64" },
  "win32-amd64": { os: "win32", cpu: "x64" },
};

const packages = lock.packages;
const added = [];
for (const tool of ["anvil", "cast", "forge"]) {
  const meta = packages[`node_modules/@foundry-rs/${tool}`];
  if (!meta) continue;
  for (const [name, version] of Object.entries(meta.optionalDependencies ?? {})) {
    const key = `node_modules/${name}`;
    if (packages[key]) continue;
    const platform = platforms[name.slice(`@foundry-rs/${tool}-`.length)];
    if (!platform) throw new Error(`unknown platform package ${name}`);
    packages[key] = {
      version,
      cpu: [platform.cpu],
      dev: true,
      license: meta.license,
      optional: true,
      os: [platform.os],
      bin: { [tool]: `bin/${tool}${platform.os === "win32" ? ".exe" : ""}` },
      engines: { node: ">=20" },
    };
    added.push(`${name}@${version}`);
  }
}
lock.packages = Object.fromEntries(
  Object.entries(packages).sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a < b ? -1 : a > b ? 1 : 0)),
);
writeFileSync(lockPath, JSON.stringify(lock, null, 2) + "\n");
console.log(added.length ? `added ${added.join(", ")}` : "package-lock.json already names every platform package");

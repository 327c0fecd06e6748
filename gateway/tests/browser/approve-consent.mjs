// Drives a patient's approval of an app with "Also record this consent on the blockchain"
// ticked, in headless Chromium: the gateway's own page scripts (sign-in, then the approval
// page's consent script) talk to a test wallet injected as `window.ethereum` (EIP-1193), whose
// `personal_sign` (EIP-191) and `eth_signTypedData_v4` (EIP-712) are answered in node by
// Foundry's `cast wallet sign` (`--data` for typed data) with a test key. The wallet checks
// that it is asked for its own account and that the typed data names it. Prints what
// happened, as JSON, on stdout.
//
//   node approve-consent.mjs '<json>'   with
//   { "authorizeUrl": an authorization request URL, "privateKey": hex, "address": 0x...,
//     "redirectUri": the app's redirect URI (its host need not exist),
//     "untick": a scope to untick on the approval page (optional) }
//
// Exit 0 with {"offer": the consent offer's text, "signedTypedData": how many grants the
// wallet signed, "back": the redirect back to the app, "errors": [...]}, or 1 with
// {"error": ...}.

import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const options = JSON.parse(process.argv[2]);

/** Foundry's cast from node_modules (npm ci), or cast on the PATH. */
function castPath() {
  try {
    return join(dirname(require.resolve("@foundry-rs/cast-linux-amd64/package.json")), "bin", "cast");
  } catch {
    return "cast";
  }
}

/** `cast wallet sign` with the test key: of the bytes `hex` (EIP-191), or with `--data` of
 * the typed data `json` (EIP-712). */
async function castSign(args) {
  const { stdout } = await promisify(execFile)(castPath(), [
    "wallet",
    "sign",
    "--private-key",
    options.privateKey,
    ...args,
  ]);
  return stdout.trim();
}

let signedTypedData = 0;

async function signTypedData(json) {
  const typed = JSON.parse(json);
  if (String(typed.message.patient).toLowerCase() !== options.address.toLowerCase()) {
    throw new Error(`the typed data names ${typed.message.patient}, not the wallet`);
  }
  signedTypedData += 1;
  return await castSign(["--data", json]);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});

let exitCode = 1;
try {
  const errors = [];
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.exposeFunction("testWalletSign", (hex) => castSign([hex]));
  await page.exposeFunction("testWalletSignTypedData", signTypedData);
  await page.addInitScript((address) => {
    const mine = (account) => {
      if (String(account).toLowerCase() !== address.toLowerCase()) {
        throw Object.assign(new Error("unknown account"), { code: 4100 });
      }
    };
    window.ethereum = {
      isTestWallet: true,
      async request({ method, params }) {
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [address];
        if (method === "personal_sign") {
          mine(params[1]);
          return await window.testWalletSign(params[0]);
        }
        if (method === "eth_signTypedData_v4") {
          mine(params[0]);
          if (typeof params[1] !== "string") {
            throw Object.assign(new Error("typed data must be a JSON string"), { code: -32602 });
          }
          return await window.testWalletSignTypedData(params[1]);
        }
        throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
      },
    };
  }, options.address);

  // sign in with the wallet
  await page.goto(options.authorizeUrl);
  await page.getByRole("button", { name: "Sign in with Ethereum wallet" }).click();
  const approval = page.getByRole("heading", { level: 1, name: /^Allow/ }).or(page.getByRole("alert"));
  await approval.first().waitFor({ timeout: 15000 });
  if (await page.getByRole("alert").count()) {
    throw new Error(`sign-in refused: ${await page.getByRole("alert").textContent()}`);
  }

  // the approval page: the offer is there, ticked
  const box = page.getByLabel("Also record this consent on the blockchain");
  if (!(await box.isChecked())) throw new Error("the consent box is not ticked");
  const offer = await page.locator("#consent-hint").textContent();
  if (options.untick) await page.getByRole("checkbox", { name: options.untick }).uncheck();
  await page.getByLabel("How long the consent holds").selectOption({ label: "For one year" });

  // Allow: the wallet signs the grant, the gateway relays it, the app gets its code (the
  // app's host does not exist: the request for it is what counts)
  const back = page
    .waitForRequest((request) => request.url().startsWith(options.redirectUri), { timeout: 30000 })
    .then((request) => ({ url: request.url() }))
    .catch((error) => ({ alert: `no redirect to the app: ${error}` }));
  const refused = page
    .getByRole("alert")
    .waitFor({ timeout: 30000 })
    .then(async () => ({ alert: await page.getByRole("alert").textContent() }))
    .catch(() => new Promise(() => {})); // no alert: the redirect decides
  await page.getByRole("button", { name: /^allow$/i }).click();
  const outcome = await Promise.race([back, refused]);
  if (!outcome.url) throw new Error(`approval refused: ${outcome.alert}`);
  process.stdout.write(
    JSON.stringify({ offer, signedTypedData, back: outcome.url, errors }) + "\n",
  );
  exitCode = 0;
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error), signedTypedData }) + "\n");
} finally {
  await browser.close();
}
process.exit(exitCode);

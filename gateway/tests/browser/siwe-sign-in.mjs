// Drives a patient's Sign-In with Ethereum on the gateway's sign-in page in headless Chromium:
// the page's own script (served by the gateway) talks to a test wallet injected as
// `window.ethereum` (EIP-1193), whose `personal_sign` is answered in node by Foundry's `cast
// wallet sign` (EIP-191) with a test key. Also checks that without a wallet the page says one
// is needed. Prints what happened, as JSON, on stdout.
//
//   node siwe-sign-in.mjs '<json>'   with
//   { "authorizeUrl": an authorization request URL, "privateKey": hex, "address": 0x...,
//     "redirectUri": the app's redirect URI (its host need not exist) }
//
// Exit 0 with {"noWallet": status text, "back": the redirect back to the app, "errors": [...]},
// or 1 with {"error": ...}.

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

/** EIP-191 personal_sign of the bytes `hex` (0x...) with the test key. */
async function sign(hex) {
  const { stdout } = await promisify(execFile)(castPath(), [
    "wallet",
    "sign",
    "--private-key",
    options.privateKey,
    hex,
  ]);
  return stdout.trim();
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

/** A page in a fresh context that records console errors (CSP violations among them). */
async function newPage(errors) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(String(error)));
  return page;
}

let exitCode = 1;
try {
  const errors = [];
  const button = (page) => page.getByRole("button", { name: "Sign in with Ethereum wallet" });
  const status = (page) => page.getByRole("status");

  // without a wallet: the page says one is needed
  const plain = await newPage(errors);
  await plain.goto(options.authorizeUrl);
  await button(plain).click();
  await status(plain).filter({ hasText: /wallet/ }).waitFor({ timeout: 10000 });
  const noWallet = await status(plain).textContent();

  // with the test wallet
  const page = await newPage(errors);
  await page.exposeFunction("testWalletSign", sign);
  await page.addInitScript((address) => {
    window.ethereum = {
      isTestWallet: true,
      async request({ method, params }) {
        if (method === "eth_requestAccounts" || method === "eth_accounts") return [address];
        if (method === "personal_sign") {
          if (params[1].toLowerCase() !== address.toLowerCase()) {
            throw Object.assign(new Error("unknown account"), { code: 4100 });
          }
          return await window.testWalletSign(params[0]);
        }
        throw Object.assign(new Error(`unsupported method ${method}`), { code: 4200 });
      },
    };
  }, options.address);
  await page.goto(options.authorizeUrl);
  await button(page).click();
  // the approval page (or the sign-in page again, with an error summary), then back to the app
  const outcome = page.getByRole("heading", { level: 1, name: /^Allow/ }).or(page.getByRole("alert"));
  await outcome.first().waitFor({ timeout: 15000 });
  if (await page.getByRole("alert").count()) {
    throw new Error(`refused: ${await page.getByRole("alert").textContent()}`);
  }
  const heading = await page.getByRole("heading", { level: 1 }).textContent();
  // the app's host does not exist: the request for it is what counts
  const [back] = await Promise.all([
    page.waitForRequest((request) => request.url().startsWith(options.redirectUri), {
      timeout: 15000,
    }),
    page.getByRole("button", { name: /^allow$/i }).click(),
  ]);
  process.stdout.write(JSON.stringify({ noWallet, heading, back: back.url(), errors }) + "\n");
  exitCode = 0;
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error) }) + "\n");
} finally {
  await browser.close();
}
process.exit(exitCode);

// Drives a patient's redemption of a link code on the gateway's link page in headless
// Chromium: the page's own script (served by the gateway) talks to a test wallet injected as
// `window.ethereum` (EIP-1193), whose `personal_sign` is answered in node by Foundry's `cast
// wallet sign` (EIP-191) with a test key. Also checks that with the code field empty the page
// asks for the code before anything is signed. Prints what happened, as JSON, on stdout.
//
//   node link-wallet.mjs '<json>'   with
//   { "linkUrl": the link page's URL with the code (as issued), "privateKey": hex,
//     "address": 0x... }
//
// Exit 0 with {"noCode": status text, "heading": the final page's heading, "text": its
// text, "url": its URL, "errors": [...]}, or 1 with {"error": ...}.

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

let exitCode = 1;
try {
  const errors = [];
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(String(error)));
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
  await page.goto(options.linkUrl);
  const code = page.getByLabel("Link code");
  const issued = await code.inputValue();
  const button = page.getByRole("button", { name: "Link with Ethereum wallet" });
  const status = page.getByRole("status");

  // without the code: the page asks for it
  await code.fill("");
  await button.click();
  await status.filter({ hasText: /code/ }).waitFor({ timeout: 10000 });
  const noCode = await status.textContent();

  // the code as a patient types it (lower case, spaces), then the wallet
  await code.fill(issued.toLowerCase().replaceAll("-", " "));
  await button.click();
  const outcome = page
    .getByRole("heading", { level: 1, name: "Your wallet is now linked" })
    .or(page.getByRole("alert"));
  await outcome.first().waitFor({ timeout: 15000 });
  if (await page.getByRole("alert").count()) {
    throw new Error(`refused: ${await page.getByRole("alert").textContent()}`);
  }
  const heading = await page.getByRole("heading", { level: 1 }).textContent();
  const text = await page.locator("main").textContent();
  process.stdout.write(
    JSON.stringify({ noCode, heading, text, url: page.url(), errors }) + "\n",
  );
  exitCode = 0;
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error) }) + "\n");
} finally {
  await browser.close();
}
process.exit(exitCode);

// Drives a SMART App Launch in headless Chromium with the real SMART JS client (npm
// `fhirclient`), against a running gateway: serves the test app (smart-app/ and the client's
// browser bundle) on 127.0.0.1, opens the launch URL, signs in on the gateway's page, picks the
// patient when asked, approves, and prints what the app read, as JSON, on stdout.
//
//   node smart-launch.mjs '<json>'   with
//   { "port": 0..65535, "iss": FHIR base URL, "clientId", "scope",
//     "launch": EHR launch value (omit for a standalone launch),
//     "username", "password", "patient": id to pick when the gateway asks }
//
// Exit 0 with {"patient": ..., "context": ...}, or 1 with {"error": ...}.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const bundle = require.resolve("fhirclient/build/fhir-client.js");
const options = JSON.parse(process.argv[2]);

const files = {
  "/launch.html": [join(here, "smart-app", "launch.html"), "text/html"],
  "/index.html": [join(here, "smart-app", "index.html"), "text/html"],
  "/fhir-client.js": [bundle, "text/javascript"],
};

const server = createServer(async (req, res) => {
  const file = files[new URL(req.url, "http://x").pathname];
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": file[1] }).end(await readFile(file[0]));
});
await new Promise((resolve) => server.listen(options.port, "127.0.0.1", resolve));

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
  const page = await browser.newPage();
  const params = new URLSearchParams({ iss: options.iss });
  if (options.launch) params.set("launch", options.launch);
  const settings = encodeURIComponent(
    JSON.stringify({ clientId: options.clientId, scope: options.scope }),
  );
  await page.goto(`http://127.0.0.1:${options.port}/launch.html?${params}#${settings}`);

  // the gateway's pages, until the browser is back at the app
  const app = `http://127.0.0.1:${options.port}/index.html`;
  for (let step = 0; step < 6 && !page.url().startsWith(app); step++) {
    await page.waitForLoadState();
    if (page.url().startsWith(app)) break;
    const password = page.getByLabel(/password/i);
    const patientPicker = page.getByLabel(/patient/i);
    const approve = page.getByRole("button", { name: /approve|allow/i });
    if (await password.count()) {
      await page.getByLabel(/user ?name/i).fill(options.username);
      await password.fill(options.password);
      await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: /sign in/i }).click()]);
    } else if (await approve.count()) {
      await Promise.all([page.waitForNavigation(), approve.click()]);
    } else if (await patientPicker.count()) {
      await patientPicker.first().fill(options.patient);
      await Promise.all([
        page.waitForNavigation(),
        page.getByRole("button", { name: /continue|select|choose/i }).click(),
      ]);
    } else {
      await page.waitForTimeout(200);
    }
  }
  await page.waitForSelector("body[data-done]", { timeout: 30000 });
  const result = JSON.parse(await page.locator("#result").textContent());
  process.stdout.write(JSON.stringify(result) + "\n");
  exitCode = result.error ? 1 : 0;
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error) }) + "\n");
} finally {
  await browser.close();
  server.close();
}
process.exit(exitCode);

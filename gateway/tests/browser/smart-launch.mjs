// Drives a SMART App Launch in headless Chromium with the real SMART JS client (npm
// `fhirclient`), against a running gateway: serves the test app (smart-app/ and the client's
// browser bundle) on 127.0.0.1, opens the launch URL, signs in on the gateway's page, picks the
// patient when asked, approves, and prints what the app read, as JSON, on stdout.
//
//   node smart-launch.mjs
//
// The app is served on a port the OS picks: the script first prints {"port": N} as one line on
// stdout (the test then registers the app's redirect and launch URIs on that port), then reads
// one line of JSON on stdin:
//   { "iss": FHIR base URL, "clientId", "scope",
//     "launch": EHR launch value (omit for a standalone launch),
//     "ehrLaunchPage": the gateway's EHR launch page: the browser starts there instead, and the
//                      user launches the app for "patient" (and "encounter") from it,
//     "username", "password", "patient": id to pick when the gateway asks, "encounter",
//     "clientKey": {"pem": path of a PKCS#8 private key, "alg": "ES384" or "RS384", "kid"}
//                  for a confidential asymmetric app (private_key_jwt), omit for a public one }
//
// Exit 0 with {"patient": ..., "context": ..., "steps": [...]}, or 1 with {"error": ..., "steps"}
// as the last line on stdout ("steps": the pages the browser went through, for the test's
// failure message).

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { createPrivateKey } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const bundle = require.resolve("fhirclient/build/fhir-client.js");

let options = {};
const files = {
  "/launch.html": [join(here, "smart-app", "launch.html"), "text/html"],
  "/index.html": [join(here, "smart-app", "index.html"), "text/html"],
  "/fhir-client.js": [bundle, "text/javascript"],
};

const server = createServer(async (req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/favicon.ico") {
    res.writeHead(204).end();
    return;
  }
  if (path === "/settings.js") {
    // the app's settings (an EHR launch page opens launch.html with iss and launch only)
    const settings = { clientId: options.clientId, scope: options.scope };
    if (options.clientKey) {
      // the app's private key as a JWK, as the SMART JS client takes it (clientPrivateJwk)
      const pem = await readFile(options.clientKey.pem);
      const jwk = createPrivateKey(pem).export({ format: "jwk" });
      settings.clientPrivateJwk = { ...jwk, alg: options.clientKey.alg, kid: options.clientKey.kid };
    }
    res.writeHead(200, { "content-type": "text/javascript", "cache-control": "no-store" });
    res.end(`window.appSettings = ${JSON.stringify(settings)};`);
    return;
  }
  const file = files[path];
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": file[1] }).end(await readFile(file[0]));
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;
process.stdout.write(JSON.stringify({ port }) + "\n");
options = JSON.parse(await firstLine(process.stdin));

/** The first line of a stream. */
async function firstLine(stream) {
  let text = "";
  for await (const chunk of stream) {
    text += chunk;
    const end = text.indexOf("\n");
    if (end >= 0) return text.slice(0, end);
  }
  return text;
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
const steps = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30000);
  // what the browser saw, for the test's failure message (CORS refusals show up here)
  page.on("console", (message) => steps.push(`console ${message.type()}: ${message.text()}`));
  page.on("response", (response) => {
    if (response.status() >= 400) steps.push(`HTTP ${response.status()}: ${response.request().method()} ${response.url()}`);
  });
  page.on("pageerror", (error) => steps.push(`page error: ${error}`));
  page.on("requestfailed", (request) =>
    steps.push(`request failed: ${request.method()} ${request.url()} ${request.failure()?.errorText}`),
  );
  if (options.ehrLaunchPage) {
    await page.goto(options.ehrLaunchPage);
  } else {
    const params = new URLSearchParams({ iss: options.iss });
    if (options.launch) params.set("launch", options.launch);
    await page.goto(`http://127.0.0.1:${port}/launch.html?${params}`);
  }

  // the gateway's pages, until the browser is back at the app
  const app = `http://127.0.0.1:${port}/index.html`;
  const gateway = new URL(options.iss).origin;
  for (let step = 0; step < 12; step++) {
    await page.waitForLoadState();
    const url = page.url();
    if (url.startsWith(app)) break;
    if (!url.startsWith(gateway)) {
      // still on the launch page (the client reads the discovery document first)
      const error = await page.locator("body").getAttribute("data-error");
      if (error) throw new Error(`the client could not start the launch: ${error}`);
      await page.waitForURL((u) => u.origin === gateway || u.href.startsWith(app));
      continue;
    }
    const heading = (await page.locator("h1").first().textContent().catch(() => "")) || "";
    steps.push(`${url.split("?")[0]}: ${heading.trim()}`);
    const password = page.getByLabel(/password/i);
    const approve = page.getByRole("button", { name: /^(approve|allow)$/i });
    const launch = page.getByRole("button", { name: /^launch$/i });
    const patientPicker = page.getByLabel(/patient/i);
    if (await password.count()) {
      await page.getByLabel(/user ?name/i).fill(options.username);
      await password.fill(options.password);
      await Promise.all([page.waitForNavigation(), page.getByRole("button", { name: /^sign in$/i }).click()]);
    } else if (await approve.count()) {
      await Promise.all([page.waitForNavigation(), approve.click()]);
    } else if (await launch.count()) {
      await page.getByLabel(/^app$/i).selectOption(options.clientId);
      await page.getByLabel(/patient/i).fill(options.patient);
      if (options.encounter) await page.getByLabel(/encounter/i).fill(options.encounter);
      await Promise.all([page.waitForNavigation(), launch.click()]);
    } else if (await patientPicker.count()) {
      await patientPicker.first().fill(options.patient);
      await Promise.all([
        page.waitForNavigation(),
        page.getByRole("button", { name: /continue|select|choose/i }).click(),
      ]);
    } else {
      throw new Error(`an unexpected page at ${url}: ${(await page.locator("body").innerText()).slice(0, 800)}`);
    }
  }
  await page.waitForSelector("body[data-done]");
  const result = JSON.parse(await page.locator("#result").textContent());
  result.steps = steps;
  process.stdout.write(JSON.stringify(result) + "\n");
  exitCode = result.error ? 1 : 0;
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error), steps }) + "\n");
} finally {
  await browser.close();
  server.close();
}
process.exit(exitCode);

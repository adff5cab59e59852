// Browser test of the admin UI: a real gateway binary, a real backend
// process (python3 -m http.server, health-checked over HTTP), headless
// Chromium through playwright-core. Run by scripts/admin-ui-test.sh.
//
//   node admin-ui.mjs GATEWAY_BINARY SCREENSHOT_DIR
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import net from "node:net";
import { chromium } from "playwright-core";

const [gatewayBin, shotDir] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const children = [];
const cleanup = () => { for (const c of children) if (c.exitCode === null) c.kill("SIGKILL"); };
process.on("exit", cleanup);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on("error", reject);
  });
}

async function startGateway(at = {}) {
  const a = (k) => at[k] || "127.0.0.1:0";
  const gw = spawn(gatewayBin, ["--public", a("public"), "--internal", a("internal"),
    "--registration", a("registration"), "--admin", a("admin")], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  children.push(gw);
  const line = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: gw.stdout });
    rl.once("line", resolve);
    gw.once("exit", (c) => reject(new Error(`gateway exited (${c})`)));
  });
  const addr = Object.fromEntries(line.split(/\s+/).filter((w) => w.includes("=")).map((w) => w.split("=")));
  return { gw, addr, admin: `http://${addr.admin}`, registration: `http://${addr.registration}` };
}

async function step(what, f) {
  const t = Date.now();
  await f();
  console.log(`ok - ${what} (${Date.now() - t} ms)`);
}

const backendPort = await freePort();
const backend = spawn("python3", ["-m", "http.server", String(backendPort), "--bind", "127.0.0.1"], { stdio: "ignore" });
children.push(backend);

const { gw, addr, admin, registration } = await startGateway();
const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
let page;
try {
  page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  await step("page opens and the live feed connects", async () => {
    await page.goto(admin + "/");
    await page.locator("#conn[data-state=open]").waitFor({ timeout: 10000 });
  });

  await step("an instance registered through the API appears without reload", async () => {
    const resp = await fetch(`${registration}/v1/registrations`, {
      method: "PUT", headers: { "content-type": "application/json" },
      body: JSON.stringify({ service: "web", instance_id: "web-1", address: `127.0.0.1:${backendPort}`,
        routes: [{ path_prefix: "/web" }],
        health: { kind: "http", http_path: "/", interval_ms: 300, timeout_ms: 300 }, lease_ms: 600000 }),
    });
    if (!resp.ok) throw new Error(`registration refused: ${resp.status} ${await resp.text()}`);
    await page.locator('tr[data-instance="web/web-1"]').waitFor({ timeout: 10000 });
    await page.locator('tr[data-instance="web/web-1"][data-health=passing]').waitFor({ timeout: 10000 });
    await page.locator('#events li[data-kind=registered]', { hasText: "web/web-1" }).waitFor({ timeout: 10000 });
    await page.locator("#routes tbody tr", { hasText: "/web" }).waitFor({ timeout: 10000 });
  });

  await step("killing the backend flips its health on the page", async () => {
    backend.kill("SIGKILL");
    await page.locator('tr[data-instance="web/web-1"][data-health=failing]').waitFor({ timeout: 15000 });
    await page.locator("#events li[data-kind=health]", { hasText: "failing" }).waitFor({ timeout: 10000 });
  });

  await step("the explain form explains by keyboard", async () => {
    await page.locator('#explain input[name=path]').focus();
    await page.keyboard.press("Control+A");
    await page.keyboard.type("/web/x");
    await page.keyboard.press("Enter");
    await page.locator("#explain-out .verdict", { hasText: "503" }).waitFor({ timeout: 10000 });
    await page.locator("#explain-out", { hasText: "health" }).waitFor({ timeout: 10000 });
    await page.locator('#explain input[name=path]').fill("bad path");
    await page.locator("#explain button").click();
    await page.locator("#explain-out .error", { hasText: "path" }).waitFor({ timeout: 10000 });
    await page.locator('#explain input[name=path]').fill("/web/x");
    await page.locator("#explain button").click();
  });

  await page.waitForTimeout(300);
  await page.screenshot({ path: `${shotDir}/admin-ui.png`, fullPage: true });
  console.log(`screenshot: ${shotDir}/admin-ui.png`);

  await step("the page reconnects by itself after a gateway restart", async () => {
    gw.kill("SIGTERM");
    await page.locator("#conn[data-state=closed]").waitFor({ timeout: 15000 });
    await new Promise((r) => gw.exitCode === null ? gw.once("exit", r) : r());
    await startGateway(addr);
    await page.locator("#conn[data-state=open]").waitFor({ timeout: 15000 });
    // The new gateway's registry is empty: the instance is gone from the page.
    await page.locator('tr[data-instance="web/web-1"]').waitFor({ state: "detached", timeout: 10000 });
  });

  await page.screenshot({ path: `${shotDir}/admin-ui-restarted.png`, fullPage: true });
} catch (e) {
  if (page) await page.screenshot({ path: `${shotDir}/admin-ui-failure.png`, fullPage: true }).catch(() => {});
  console.error(`not ok - ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  cleanup();
}

// Browser test of the admin UI: two real gateway binaries, each the other's
// peer (plus a peer that is down), a real backend process (python3 -m
// http.server, health-checked over HTTP), headless Chromium through
// playwright-core, at 1366x768. Run by scripts/admin-ui-test.sh.
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

async function startGateway(at = {}, peers = []) {
  const a = (k) => at[k] || "127.0.0.1:0";
  const peerArgs = peers.flatMap((p) => ["--admin-peer", p]);
  const gw = spawn(gatewayBin, ["--public", a("public"), "--internal", a("internal"),
    "--registration", a("registration"), "--admin", a("admin"), ...peerArgs], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } });
  children.push(gw);
  // A gateway that never prints its addresses fails the test, not hangs it.
  const line = await new Promise((resolve, reject) => {
    const rl = createInterface({ input: gw.stdout });
    const timer = setTimeout(() => reject(new Error("gateway did not print its addresses within 30 s")), 30000);
    rl.once("line", (l) => { clearTimeout(timer); resolve(l); });
    gw.once("exit", (c) => { clearTimeout(timer); reject(new Error(`gateway exited (${c})`)); });
  });
  const addr = Object.fromEntries(line.split(/\s+/).filter((w) => w.includes("=")).map((w) => w.split("=")));
  return { gw, addr, admin: `http://${addr.admin}`, registration: `http://${addr.registration}`,
    public: `http://${addr.public}`, node: addr.node_id };
}

async function step(what, f) {
  const t = Date.now();
  await f();
  console.log(`ok - ${what} (${Date.now() - t} ms)`);
}

const backendPort = await freePort();
const backend = spawn("python3", ["-m", "http.server", String(backendPort), "--bind", "127.0.0.1"], { stdio: "ignore" });
children.push(backend);

// Two replicas, each listing both (and a third that never started) as peers,
// as every replica would list HAProxy's servers.
const [adminA, adminB, deadPort] = [await freePort(), await freePort(), await freePort()];
const peers = [`http://127.0.0.1:${adminA}`, `http://127.0.0.1:${adminB}`, `http://127.0.0.1:${deadPort}`];
const { gw, addr, admin, registration, public: publicUrl, node: nodeA } = await startGateway({ admin: `127.0.0.1:${adminA}` }, peers);
const { node: nodeB } = await startGateway({ admin: `127.0.0.1:${adminB}` }, peers);
const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
let page;
try {
  page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  await step("page opens and the live feed connects", async () => {
    await page.goto(admin + "/");
    await page.locator("#conn[data-state=open]").waitFor({ timeout: 10000 });
  });

  await step("both replicas' columns show side by side, and the peer that is down", async () => {
    await page.locator(`#replicas th[data-replica="${nodeA}"][data-up=true]`, { hasText: "this replica" }).waitFor({ timeout: 10000 });
    await page.locator(`#replicas th[data-replica="${nodeB}"][data-up=true]`).waitFor({ timeout: 10000 });
    await page.locator(`#replicas th[data-replica="http://127.0.0.1:${deadPort}"][data-up=false]`, { hasText: "connect" }).waitFor({ timeout: 10000 });
    const columns = await page.locator("#replicas th[data-replica]").count();
    if (columns !== 3) throw new Error(`expected 3 replica columns, found ${columns}`);
  });

  await step("registry and sync state show", async () => {
    await page.locator("#registry-state", { hasText: "memory" }).waitFor({ timeout: 10000 });
    await page.locator("#registry-connected", { hasText: "yes" }).waitFor({ timeout: 10000 });
    await page.locator("#registry-state", { hasText: "Kafka sync" }).waitFor({ timeout: 10000 });
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
    // Side by side: registered on A (memory registries: B does not know it).
    await page.locator(`#replicas tr[data-instance="web/web-1"] td[data-replica="${nodeA}"][data-health=passing]`).waitFor({ timeout: 10000 });
    await page.locator(`#replicas tr[data-instance="web/web-1"] td[data-replica="${nodeB}"][data-health=absent]`).waitFor({ timeout: 10000 });
  });

  await step("an upstream error shows in the log pane with its request id", async () => {
    // The backend speaks HTTP/1 only: the gRPC call to it fails.
    const rid = "ui-test-upstream-1";
    const resp = await fetch(`${publicUrl}/web/x`, { headers: { "x-request-id": rid } });
    if (resp.status < 500) throw new Error(`expected an upstream error, got ${resp.status}`);
    await page.locator(`#logs li[data-request-id="${rid}"][data-level=WARN]`).waitFor({ timeout: 10000 });
    // Keyboard: the filter keeps only that request's lines.
    await page.locator("#log-filter").focus();
    await page.keyboard.type(rid);
    const shown = await page.locator("#logs li:not([hidden])").count();
    const theirs = await page.locator(`#logs li[data-request-id="${rid}"]:not([hidden])`).count();
    if (shown === 0 || shown !== theirs) throw new Error(`filter shows ${shown} lines, ${theirs} of the request`);
    await page.keyboard.press("Control+A");
    await page.keyboard.press("Backspace");
  });

  await step("killing the backend flips its health on the page", async () => {
    backend.kill("SIGKILL");
    await page.locator('tr[data-instance="web/web-1"][data-health=failing]').waitFor({ timeout: 15000 });
    await page.locator("#events li[data-kind=health]", { hasText: "failing" }).waitFor({ timeout: 10000 });
    await page.locator(`#replicas tr[data-instance="web/web-1"] td[data-replica="${nodeA}"][data-health=failing]`).waitFor({ timeout: 10000 });
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
  // What a 1366x768 laptop shows without scrolling.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: `${shotDir}/admin-ui-1366x768.png` });
  console.log(`screenshots: ${shotDir}/admin-ui.png, ${shotDir}/admin-ui-1366x768.png`);

  await step("the page reconnects by itself after a gateway restart", async () => {
    gw.kill("SIGTERM");
    await page.locator("#conn[data-state=closed]").waitFor({ timeout: 15000 });
    await new Promise((r) => gw.exitCode === null ? gw.once("exit", r) : r());
    await startGateway(addr, peers);
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

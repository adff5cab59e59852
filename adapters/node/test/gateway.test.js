'use strict';
// Through a real gateway over HTTP: the conformance server (an Express app
// behind serve()) registers with the `gateway` binary, and plain HTTP
// requests reach it over Send and over Stream. Runs when
// FORWARDING_GATEWAY_BIN names the binary (scripts/adapter-node.sh builds it
// and sets it); skipped otherwise.
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const readline = require('node:readline');
const { spawn } = require('node:child_process');

const BIN = process.env.FORWARDING_GATEWAY_BIN;

/** Starts a process; resolves to the first stdout line matching `re`. */
function start(cmd, args, re, env) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let err = '';
  child.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${cmd}: no ${re} within 20 s; stderr: ${err}`)), 20000);
    child.on('exit', (code) => reject(new Error(`${cmd} exited ${code}: ${err}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = re.exec(line);
      if (m) {
        clearTimeout(t);
        resolve({ child, m });
      }
    });
  });
}

const pattern = (n) => Buffer.from(Array.from({ length: n }, (_, i) => i % 251));

test('HTTP through the gateway reaches the Express app over Send and Stream', { skip: !BIN && 'FORWARDING_GATEWAY_BIN not set' }, async (t) => {
  const gw = await start(BIN, ['--public', '127.0.0.1:0', '--no-internal', '--registration', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    /public=(\S+) .*registration=(\S+)/);
  t.after(() => gw.child.kill());
  const [, pub, registration] = gw.m;
  const server = await start(process.execPath,
    [path.join(__dirname, '..', 'conformance', 'server.js'), '--gateway', `http://${registration}`], /^READY (\S+)/);
  t.after(() => server.child.kill());
  const base = `http://${pub}`;

  // Routed once the registration is in (the gateway answers 404/503 before).
  let echo;
  for (let i = 0; i < 100; i++) {
    const r = await fetch(`${base}/conformance/echo/a%2Fb?x=1&x=2`, { headers: { 'x-a': '1' } });
    if (r.status === 200) {
      echo = await r.json();
      break;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.ok(echo, 'the gateway never routed to the Node backend');
  assert.equal(echo.path, '/conformance/echo/a%2Fb');
  assert.equal(echo.query, 'x=1&x=2');
  assert.ok(echo.headers.some((h) => h.name === 'x-a' && h.value === '31'));
  // The gateway splits the context over two fields (lib/proto.js): the
  // request id must survive next to the deadline.
  const rid = echo.headers.find((h) => h.name === 'x-request-id');
  assert.ok(rid, JSON.stringify(echo));
  assert.equal(echo.request_id, Buffer.from(rid.value, 'hex').toString());
  assert.ok(echo.deadline_ms > 0);

  // A status of the app's own, with gRPC OK in between.
  const teapot = await fetch(`${base}/conformance/s`, { headers: { 'x-conformance-status': '418' } });
  assert.equal(teapot.status, 418);

  // An event stream: the gateway calls Stream; three parts, in order.
  const sse = await fetch(`${base}/conformance/sse`, {
    headers: { accept: 'text/event-stream', 'x-conformance-body-size': '3000', 'x-conformance-chunks': '3' },
  });
  assert.equal(sse.status, 200);
  assert.ok(Buffer.from(await sse.arrayBuffer()).equals(pattern(3000)));

  // A request body of unknown length (chunked): Stream, and the digest matches.
  const body = crypto.randomBytes(300000);
  const chunks = [body.subarray(0, 100000), body.subarray(100000)];
  const up = await fetch(`${base}/conformance/upload`, {
    method: 'POST',
    body: new ReadableStream({ pull(c) { if (chunks.length) c.enqueue(chunks.shift()); else c.close(); } }),
    duplex: 'half',
  });
  const got = await up.json();
  assert.equal(got.body_length, body.length);
  assert.equal(got.body_sha256, crypto.createHash('sha256').update(body).digest('hex'));
});

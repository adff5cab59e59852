'use strict';
// End to end over gRPC: serve() an Express app, call it as the gateway does
// (Send, Stream, health), and check the lifecycle against a registration API
// stand-in (a node http server speaking openapi/registry.v1.yaml).
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { once } = require('node:events');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const express = require('express');
const { serve } = require('..');
const { PROTO_DIR } = require('../lib/proto');

const def = protoLoader.loadSync(['forwarding/v1/forwarding.proto', 'grpc/health/v1/health.proto'], {
  keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
});
const pkg = grpc.loadPackageDefinition(def);

function app() {
  const a = express();
  a.set('env', 'test'); // Express logs a handler's throw outside 'test'
  a.get('/hello', (req, res) => res.type('text').send(`hello ${req.query.name}`));
  a.get('/events', async (req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (let i = 0; i < 3; i++) {
      res.write(`data: ${i}\n\n`);
      await new Promise((r) => setTimeout(r, 20));
    }
    res.end();
  });
  a.post('/upload', async (req, res) => {
    let n = 0;
    for await (const c of req) n += c.length;
    res.json({ n, trailers: req.rawTrailers });
  });
  a.get('/throws', () => { throw new Error('handler bug'); });
  a.post('/too-large', (req, res) => res.status(413).json({ error: 'too large' })); // never reads the body
  a.get('/slow', (req, res) => {
    const t = setTimeout(() => res.end('late'), 5000);
    res.on('close', () => { clearTimeout(t); a.locals.slowClosed = !res.writableFinished; });
  });
  return a;
}

function fwdReq(over = {}) {
  return {
    protocol_version: 1, method: 'GET', scheme: 'http', authority: 'svc', path: '/hello',
    query: 'name=node', has_query: true, version: 'HTTP_VERSION_HTTP_1_1', headers: [], body: Buffer.alloc(0),
    trailers: [], context: { request_id: 'r-1', deadline_ms: '0' }, ...over,
  };
}

async function withBackend(fn, options = {}) {
  const backend = await serve(app(), { handleSignals: false, log: () => {}, onError: () => {}, ...options });
  const client = new pkg.forwarding.v1.ForwardingService(backend.address, grpc.credentials.createInsecure());
  const health = new pkg.grpc.health.v1.Health(backend.address, grpc.credentials.createInsecure());
  try {
    await fn({ backend, client, health });
  } finally {
    client.close();
    health.close();
    backend.forceShutdown();
  }
}

const unary = (client, method, req) => new Promise((resolve) => {
  client[method](req, (err, resp) => resolve({ err, resp }));
});

/** Runs one Stream call: sends frames, half-closes, collects the answer. */
function stream(client, frames) {
  return new Promise((resolve) => {
    const call = client.Stream();
    const got = [];
    call.on('data', (f) => got.push(f));
    call.on('error', (err) => resolve({ err, got }));
    call.on('end', () => resolve({ err: null, got }));
    for (const f of frames) call.write(f);
    call.end();
  });
}

test('Send: an Express answer becomes one ForwardingResp', async () => {
  await withBackend(async ({ client }) => {
    const { err, resp } = await unary(client, 'Send', fwdReq());
    assert.equal(err, null);
    assert.equal(resp.status, 200);
    assert.equal(resp.body.toString(), 'hello node');
    const ct = resp.headers.find((h) => h.name === 'content-type');
    assert.match(ct.value.toString(), /^text\/plain/);
  });
});

test('Stream: each res.write() is its own body frame, after one head', async () => {
  await withBackend(async ({ client }) => {
    const { err, got } = await stream(client, [{ head: fwdReq({ path: '/events', has_query: false, query: '' }) }, { end: {} }]);
    assert.equal(err, null);
    assert.deepEqual(got.map((f) => f.frame), ['head', 'body', 'body', 'body', 'end']);
    assert.equal(got[0].head.status, 200);
    assert.deepEqual(got.slice(1, 4).map((f) => f.body.data.toString()), ['data: 0\n\n', 'data: 1\n\n', 'data: 2\n\n']);
  });
});

test('Stream: a request body in frames, with trailers', async () => {
  await withBackend(async ({ client }) => {
    const frames = [{ head: fwdReq({ method: 'POST', path: '/upload', has_query: false, query: '' }) }];
    for (let i = 0; i < 50; i++) frames.push({ body: { data: Buffer.alloc(1000, i) } });
    frames.push({ end: { trailers: [{ name: 'x-sum', value: Buffer.from('1') }] } });
    const { err, got } = await stream(client, frames);
    assert.equal(err, null);
    const body = Buffer.concat(got.filter((f) => f.frame === 'body').map((f) => f.body.data));
    assert.deepEqual(JSON.parse(body), { n: 50000, trailers: ['x-sum', '1'] });
  });
});

test('bad input is INVALID_ARGUMENT with a message, and the process lives on', async () => {
  await withBackend(async ({ client }) => {
    const badName = await unary(client, 'Send', fwdReq({ headers: [{ name: 'bad name', value: Buffer.from('x') }] }));
    assert.equal(badName.err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(badName.err.details, /header "bad name"/);
    const negative = await unary(client, 'Send', fwdReq({ context: { deadline_ms: '18446744073709551615' } }));
    assert.equal(negative.err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(negative.err.details, /negative/);
    const order = await stream(client, [{ body: { data: Buffer.from('x') } }]);
    assert.equal(order.err.code, grpc.status.INVALID_ARGUMENT);
    const thrown = await unary(client, 'Send', fwdReq({ path: '/throws', has_query: false, query: '' }));
    // Express turns a handler's throw into its own 500 page: an HTTP answer, gRPC OK.
    assert.equal(thrown.err, null);
    assert.equal(thrown.resp.status, 500);
    const ok = await unary(client, 'Send', fwdReq());
    assert.equal(ok.err, null);
  });
});

test('a listener that throws fails only its call', async () => {
  const backend = await serve(() => { throw new Error('raw listener bug'); }, {
    handleSignals: false, log: () => {}, onError: () => {},
  });
  const client = new pkg.forwarding.v1.ForwardingService(backend.address, grpc.credentials.createInsecure());
  try {
    const { err } = await unary(client, 'Send', fwdReq());
    assert.equal(err.code, grpc.status.INTERNAL);
    const again = await stream(client, [{ head: fwdReq() }, { end: {} }]);
    assert.equal(again.err.code, grpc.status.INTERNAL);
  } finally {
    client.close();
    backend.forceShutdown();
  }
});

test('Stream: an answer before the body is read (a 413 of its own) ends the call OK', async () => {
  await withBackend(async ({ client }) => {
    const frames = [{ head: fwdReq({ method: 'POST', path: '/too-large', has_query: false, query: '' }) }];
    for (let i = 0; i < 20; i++) frames.push({ body: { data: Buffer.alloc(65536) } });
    frames.push({ end: {} });
    const { err, got } = await stream(client, frames);
    assert.equal(err, null);
    assert.equal(got[0].head.status, 413);
  });
});

test('the deadline reaches the handler as close without finish', async () => {
  const a = app();
  const backend = await serve(a, { handleSignals: false, log: () => {} });
  const client = new pkg.forwarding.v1.ForwardingService(backend.address, grpc.credentials.createInsecure());
  try {
    const r = await new Promise((resolve) => {
      client.Send(fwdReq({ path: '/slow', has_query: false, query: '' }), { deadline: Date.now() + 200 }, (err) => resolve(err));
    });
    assert.equal(r.code, grpc.status.DEADLINE_EXCEEDED);
    for (let i = 0; i < 50 && a.locals.slowClosed === undefined; i++) await new Promise((res) => setTimeout(res, 20));
    assert.equal(a.locals.slowClosed, true);
  } finally {
    client.close();
    backend.forceShutdown();
  }
});

test('health: SERVING for "" and the forwarding service, NOT_FOUND otherwise', async () => {
  await withBackend(async ({ health }) => {
    const all = await unary(health, 'Check', { service: '' });
    assert.equal(all.resp.status, 'SERVING');
    const fwd = await unary(health, 'Check', { service: 'forwarding.v1.ForwardingService' });
    assert.equal(fwd.resp.status, 'SERVING');
    const other = await unary(health, 'Check', { service: 'nope' });
    assert.equal(other.err.code, grpc.status.NOT_FOUND);
  });
});

test('lifecycle: register, renew, register again after a 404, deregister then drain', async () => {
  const seen = [];
  let forget = false;
  const registry = http.createServer(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    seen.push(`${req.method} ${req.url}`);
    res.setHeader('content-type', 'application/json');
    if (req.method === 'PUT') {
      const reg = JSON.parse(body);
      seen.push(reg);
      return res.end(JSON.stringify({ instance_id: 'hello-1', lease_ms: 300, created: true }));
    }
    if (req.url.endsWith('/renew') && forget) {
      forget = false;
      res.statusCode = 404;
      return res.end('{"error":{"code":"not_found","message":"gone","field":null}}');
    }
    return res.end(req.method === 'DELETE' ? '{"existed":true}' : '{}');
  });
  registry.listen(0, '127.0.0.1');
  await once(registry, 'listening');
  const gateway = `http://127.0.0.1:${registry.address().port}`;
  try {
    const backend = await serve(app(), {
      gateway, service: 'hello', routes: ['/hello', { path_prefix: '/events', stream: true }],
      handleSignals: false, log: () => {}, drainMs: 200,
    });
    const waitFor = async (pred) => {
      for (let i = 0; i < 100 && !pred(); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(pred(), JSON.stringify(seen));
    };
    await waitFor(() => seen.filter((s) => typeof s === 'string' && s.endsWith('/renew')).length >= 2);
    const reg = seen[1];
    assert.deepEqual(reg, {
      service: 'hello', address: backend.address, streaming: true,
      routes: [{ path_prefix: '/hello' }, { path_prefix: '/events', stream: true }],
    });
    forget = true;
    await waitFor(() => seen.filter((s) => s === 'PUT /v1/registrations').length >= 2);

    const client = new pkg.forwarding.v1.ForwardingService(backend.address, grpc.credentials.createInsecure());
    const stopping = backend.shutdown();
    await waitFor(() => seen.includes('DELETE /v1/registrations/hello/hello-1'));
    // Deregistered, and still serving during the drain.
    const during = await unary(client, 'Send', fwdReq());
    assert.equal(during.err, null);
    await stopping;
    client.close();
  } finally {
    registry.close();
  }
});

test('a Fastify app works through its request handler (app.routing)', async () => {
  const Fastify = require('fastify');
  const fastify = Fastify();
  fastify.addHook('onRequest', async (req, reply) => { reply.header('x-hook', 'ran'); });
  fastify.post('/items/:id', async (req) => ({ id: req.params.id, q: req.query.q, body: req.body }));
  await fastify.ready();
  const backend = await serve(fastify.routing, { handleSignals: false, log: () => {} });
  const client = new pkg.forwarding.v1.ForwardingService(backend.address, grpc.credentials.createInsecure());
  try {
    const { err, resp } = await unary(client, 'Send', fwdReq({
      method: 'POST', path: '/items/7', query: 'q=z', body: Buffer.from('{"a":1}'),
      headers: [{ name: 'content-type', value: Buffer.from('application/json') },
        { name: 'content-length', value: Buffer.from('7') }],
    }));
    assert.equal(err, null);
    assert.equal(resp.status, 200);
    assert.deepEqual(JSON.parse(resp.body), { id: '7', q: 'z', body: { a: 1 } });
    assert.equal(resp.headers.find((h) => h.name === 'x-hook').value.toString(), 'ran');
  } finally {
    client.close();
    backend.forceShutdown();
    await fastify.close();
  }
});

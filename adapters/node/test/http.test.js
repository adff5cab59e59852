'use strict';
// Unit tests of the conversion: ForwardingReq -> (req, res) -> sink calls,
// without sockets.
const test = require('node:test');
const assert = require('node:assert/strict');
const express = require('express');
const { ForwardedRequest, ForwardedResponse, Malformed, checkRequest } = require('../lib/http');

function fwdReq(over = {}) {
  return {
    protocol_version: 1,
    method: 'GET',
    scheme: 'http',
    authority: 'example.test',
    path: '/a%2Fb/./c',
    query: 'x=1&x=2',
    has_query: true,
    version: 'HTTP_VERSION_HTTP_1_1',
    headers: [],
    body: Buffer.alloc(0),
    trailers: [],
    context: { request_id: 'r-1', client_addresses: ['10.0.0.1', '127.0.0.1:5555'], deadline_ms: '1500' },
    upgrade: '',
    ...over,
  };
}

const h = (name, value) => ({ name, value: Buffer.from(value, 'latin1') });

/** Runs a listener on one request; resolves to what reached the sink. */
function exchange(listener, fwd) {
  return new Promise((resolve, reject) => {
    const got = { head: null, body: [], trailers: null, aborted: null };
    const req = new ForwardedRequest(fwd, null);
    const res = new ForwardedResponse(req, {
      head(status, headers) { got.head = { status, headers }; },
      body(buf) { got.body.push(buf); return true; },
      end(trailers, done) { got.trailers = trailers; done(); resolve(got); },
      abort(err) { got.aborted = err; resolve(got); },
    });
    req.pushBody(fwd.body);
    req.endBody(fwd.trailers);
    try { listener(req, res); } catch (e) { reject(e); }
  });
}

const text = (got) => Buffer.concat(got.body).toString();
const headerList = (got) => got.head.headers.map((f) => [f.name, f.value.toString('latin1')]);

test('the request keeps the raw target, header bytes, duplicates and order', async () => {
  const fwd = fwdReq({
    headers: [h('x-a', '1'), h('x-a', '2'), h('x-bytes', 'caf\xe9'), h('set-cookie', 'a=1'), h('set-cookie', 'b=2')],
    trailers: [h('x-checksum', 'ab')],
    body: Buffer.from('hello'),
  });
  const got = await exchange(async (req, res) => {
    let body = '';
    for await (const c of req) body += c;
    res.end(JSON.stringify({
      url: req.url,
      raw: req.rawHeaders,
      joined: req.headers['x-a'],
      cookies: req.headers['set-cookie'],
      bytes: Buffer.from(req.headers['x-bytes'], 'latin1').toString('hex'),
      trailers: req.rawTrailers,
      body,
      host: req.headers.host,
      peer: req.socket.remoteAddress,
      ctx: req.forwarding.context.request_id,
      version: req.httpVersion,
    }));
  }, fwd);
  const echo = JSON.parse(text(got));
  assert.equal(echo.url, '/a%2Fb/./c?x=1&x=2');
  assert.deepEqual(echo.raw.slice(0, 4), ['x-a', '1', 'x-a', '2']);
  assert.equal(echo.joined, '1, 2');
  assert.deepEqual(echo.cookies, ['a=1', 'b=2']);
  assert.equal(echo.bytes, '636166e9');
  assert.deepEqual(echo.trailers, ['x-checksum', 'ab']);
  assert.equal(echo.body, 'hello');
  assert.equal(echo.host, 'example.test');
  assert.equal(echo.peer, '127.0.0.1');
  assert.equal(echo.ctx, 'r-1');
  assert.equal(echo.version, '1.1');
});

test('"/a?" and "/a" stay different', async () => {
  const url = (fwd) => exchange((req, res) => res.end(req.url), fwd).then(text);
  assert.equal(await url(fwdReq({ path: '/a', query: '', has_query: true })), '/a?');
  assert.equal(await url(fwdReq({ path: '/a', query: '', has_query: false })), '/a');
});

test('response headers keep duplicates, order and bytes; trailers go in order', async () => {
  const got = await exchange((req, res) => {
    res.setHeader('x-one', '1');
    res.appendHeader('set-cookie', 'a=1');
    res.appendHeader('set-cookie', 'b=2');
    res.setHeader('x-bytes', 'caf\xe9');
    res.addTrailers([['x-t', '1'], ['x-t', '2']]);
    res.writeHead(201, { 'x-late': 'yes' });
    res.write('ab');
    res.end(Buffer.from('cd'));
  }, fwdReq());
  assert.equal(got.head.status, 201);
  assert.deepEqual(headerList(got), [
    ['x-one', '1'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['x-bytes', 'caf\xe9'], ['x-late', 'yes'],
  ]);
  assert.equal(got.head.headers[3].value.toString('hex'), '636166e9');
  assert.equal(text(got), 'abcd');
  assert.deepEqual(got.trailers.map((f) => [f.name, f.value.toString()]), [['x-t', '1'], ['x-t', '2']]);
});

test('writeHead with a raw header array keeps its order', async () => {
  const got = await exchange((req, res) => {
    res.writeHead(200, ['x-b', '1', 'x-a', '2', 'x-b', '3']);
    res.end();
  }, fwdReq());
  assert.deepEqual(headerList(got), [['x-b', '1'], ['x-b', '3'], ['x-a', '2']]);
});

test('end(body) with no head yet announces the length, as node does', async () => {
  const got = await exchange((req, res) => res.end('hello'), fwdReq());
  assert.deepEqual(headerList(got), [['content-length', '5']]);
});

test('a 1xx head is dropped and the final answer still comes', async () => {
  const got = await exchange((req, res) => {
    res.writeHead(103, { link: '</a.css>; rel=preload' });
    res.end('ok');
  }, fwdReq());
  assert.equal(got.head.status, 200);
  assert.equal(text(got), 'ok');
});

test('HEAD and 204 answers carry no body', async () => {
  const head = await exchange((req, res) => res.end('ignored'), fwdReq({ method: 'HEAD' }));
  assert.equal(head.body.length, 0);
  const noContent = await exchange((req, res) => { res.statusCode = 204; res.end('ignored'); }, fwdReq());
  assert.equal(noContent.body.length, 0);
});

test('res.destroy() before the end aborts instead of answering', async () => {
  const got = await exchange((req, res) => {
    res.write('partial');
    res.destroy(new Error('boom'));
  }, fwdReq());
  assert.equal(got.aborted.message, 'boom');
  assert.equal(got.trailers, null);
});

test('an Express app works unchanged (its prototype swap keeps the adapter)', async () => {
  const app = express();
  app.get('/items/:id', (req, res) => {
    res.set('x-id', req.params.id).status(202).json({ id: req.params.id, q: req.query.q, ip: req.ip });
  });
  const got = await exchange(app, fwdReq({ path: '/items/42', query: 'q=z', has_query: true }));
  assert.equal(got.head.status, 202);
  assert.deepEqual(JSON.parse(text(got)), { id: '42', q: 'z', ip: '127.0.0.1' });
  const names = got.head.headers.map((f) => f.name);
  assert.ok(names.includes('x-id') && names.includes('content-type'));
  const missing = await exchange(app, fwdReq({ path: '/nope', has_query: false }));
  assert.equal(missing.head.status, 404);
});

test('malformed requests are Malformed, with a message', () => {
  const bad = [
    [{ method: 'GE T' }, /method/],
    [{ headers: [h('bad name', 'x')] }, /header "bad name"/],
    [{ headers: [h('Upper', 'x')] }, /lower-case token/],
    [{ headers: [h('x-a', 'a\r\nb')] }, /CR, LF/],
    [{ trailers: [h('x:y', 'a')] }, /trailer/],
    [{ path: 'no-slash' }, /path/],
    [{ context: { request_id: '', client_addresses: [], deadline_ms: '18446744073709551615' } }, /negative/],
  ];
  for (const [over, re] of bad) {
    assert.throws(() => checkRequest(fwdReq(over)), (e) => e instanceof Malformed && re.test(e.message));
  }
  assert.doesNotThrow(() => checkRequest(fwdReq({ method: 'PURGE-X' })));
});

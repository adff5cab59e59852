'use strict';
// The conformance behaviour (proto/proto/forwarding/v1/CONFORMANCE.md) as an
// ordinary Express app: plain req/res code, nothing gateway-specific except
// `req.forwarding.context` for the request id and deadline the echo reports.

const crypto = require('node:crypto');
const { once } = require('node:events');
const express = require('express');

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const ID = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_CALLS = 10000;

class BadControl extends Error {}

/** Fates of calls made with `x-conformance-id`. */
class Calls {
  constructor() { this.records = new Map(); }
  start(id) {
    if (this.records.size >= MAX_CALLS) this.records.delete(this.records.keys().next().value);
    const r = { state: 'running', body_bytes_sent: 0 };
    this.records.set(id, r);
    return r;
  }
  get(id) { return this.records.get(id); }
}

/** Header fields as the request carried them: [name, value] in order, duplicates kept. */
function fields(raw) {
  const out = [];
  for (let i = 0; i < raw.length; i += 2) out.push([raw[i].toLowerCase(), raw[i + 1]]);
  return out;
}

function controls(headers) {
  const all = (name) => headers.filter(([n]) => n === name).map(([, v]) => v);
  const number = (name) => {
    const v = all(name)[0];
    if (v === undefined) return undefined;
    if (!/^\s*\d+\s*$/.test(v)) throw new BadControl(`${name}: not a number`);
    return Number(v);
  };
  const fieldArg = (name) => all(name).map((v) => {
    const i = v.indexOf(':');
    if (i < 0 || !TOKEN.test(v.slice(0, i))) throw new BadControl(`${name}: expected 'name: value'`);
    return [v.slice(0, i).toLowerCase(), v.slice(i + 1).replace(/^[ \t]+/, '')];
  });
  const status = number('x-conformance-status') || 200;
  if (status < 200 || status > 599) throw new BadControl('x-conformance-status: not 200-599');
  const chunks = number('x-conformance-chunks') || 1;
  if (chunks < 1 || chunks > 65536) throw new BadControl('x-conformance-chunks: not 1-65536');
  const id = all('x-conformance-id')[0];
  if (id !== undefined && !ID.test(id)) throw new BadControl('x-conformance-id: not 1-64 of [A-Za-z0-9._-]');
  return {
    status,
    headers: fieldArg('x-conformance-header'),
    trailers: fieldArg('x-conformance-trailer'),
    bodySize: number('x-conformance-body-size'),
    delayMs: number('x-conformance-delay-ms') || 0,
    chunks,
    chunkDelayMs: number('x-conformance-chunk-delay-ms') || 0,
    id,
    abort: all('x-conformance-abort')[0] === '1',
  };
}

const BASE = Buffer.from(Array.from({ length: 251 }, (_, i) => i));

/** Bytes [start, start + n) of the pattern (byte i is i mod 251). */
function pattern(start, n) {
  const out = Buffer.allocUnsafe(n);
  let off = start % 251;
  for (let i = 0; i < n;) {
    const k = BASE.copy(out, i, off);
    i += k;
    off = 0;
  }
  return out;
}

function hexFields(list) {
  return list.map(([name, value]) => ({ name, value: Buffer.from(value, 'latin1').toString('hex') }));
}

function app() {
  const calls = new Calls();
  const a = express();
  a.set('etag', false);
  a.set('x-powered-by', false);

  a.get('/conformance/calls/:id', (req, res) => {
    const r = calls.get(req.params.id);
    if (!r) return res.status(404).json({ id: req.params.id, state: 'unknown', body_bytes_sent: 0 });
    return res.json({ id: req.params.id, ...r });
  });

  a.all(/^\/conformance/, async (req, res) => {
    const headers = fields(req.rawHeaders);
    const url = req.originalUrl;
    let c;
    try {
      c = controls(headers);
    } catch (e) {
      if (e instanceof BadControl) return res.status(400).json({ error: e.message });
      throw e;
    }
    const record = c.id ? calls.start(c.id) : { state: 'running', body_bytes_sent: 0 };
    let gone = false;
    res.on('close', () => {
      gone = !res.writableFinished;
      if (gone && record.state === 'running') record.state = 'cancelled';
    });
    // Waits ms; false when the exchange ended meanwhile.
    const wait = (ms) => new Promise((resolve) => {
      if (gone || res.destroyed) return resolve(false);
      const t = setTimeout(() => { res.off('close', stop); resolve(!gone); }, ms);
      const stop = () => { clearTimeout(t); resolve(false); };
      res.once('close', stop);
      return undefined;
    });

    // 1. The whole body, then its trailers.
    const hash = crypto.createHash('sha256');
    let length = 0;
    try {
      for await (const chunk of req) {
        hash.update(chunk);
        length += chunk.length;
      }
    } catch {
      return undefined; // the exchange broke off while reading
    }
    const ctx = (req.forwarding && req.forwarding.context) || {};
    const deadlineMs = Number(ctx.deadline_ms || 0);

    // 2. The delay, cut short by the deadline or a cancellation.
    if (c.delayMs) {
      if (deadlineMs && c.delayMs >= deadlineMs) {
        await wait(deadlineMs);
        if (record.state === 'running') record.state = 'cancelled';
        if (!res.destroyed) res.status(504).json({ error: 'the deadline passed' });
        return undefined;
      }
      if (!(await wait(c.delayMs))) return undefined;
    }

    // 3. The answer.
    let size;
    let make;
    if (c.bodySize === undefined) {
      const echo = Buffer.from(JSON.stringify({
        method: req.method,
        path: url.split('?')[0],
        query: url.includes('?') ? url.slice(url.indexOf('?') + 1) : '',
        has_query: url.includes('?'),
        headers: hexFields(headers),
        trailers: hexFields(fields(req.rawTrailers)),
        body_length: length,
        body_sha256: hash.digest('hex'),
        deadline_ms: deadlineMs,
        request_id: ctx.request_id || '',
      }));
      res.setHeader('content-type', 'application/json');
      size = echo.length;
      make = (from, to) => echo.subarray(from, to);
    } else {
      size = c.bodySize;
      make = (from, to) => pattern(from, to - from);
    }
    res.statusCode = c.status;
    for (const [name, value] of c.headers) res.appendHeader(name, value);
    res.flushHeaders();
    for (let i = 0; i < c.chunks; i++) {
      if (i && c.chunkDelayMs && !(await wait(c.chunkDelayMs))) return undefined;
      const part = make(Math.floor((i * size) / c.chunks), Math.floor(((i + 1) * size) / c.chunks));
      if (!part.length) continue;
      if (gone) return undefined;
      const more = res.write(part);
      record.body_bytes_sent += part.length;
      // Backpressure: a caller that does not read holds the producer here.
      if (!more) await Promise.race([once(res, 'drain'), once(res, 'close')]);
    }
    if (gone) return undefined;
    if (c.abort) {
      record.state = 'aborted';
      res.destroy(new Error('aborted as asked (x-conformance-abort)'));
      return undefined;
    }
    if (c.trailers.length) res.addTrailers(c.trailers);
    res.end(() => { if (record.state === 'running') record.state = 'completed'; });
    return undefined;
  });

  a.use((req, res) => res.status(404).json({ error: 'not found' }));
  return a;
}

module.exports = { app, pattern };

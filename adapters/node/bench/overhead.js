#!/usr/bin/env node
'use strict';
// CPU per small request: the adapter against the raw contract, on grpc-js.
//
//   node bench/overhead.js [requests=20000] [concurrency=16]
//
// Starts one server process per variant, sends the same small `Send`
// request (a GET with the headers a gateway adds, 5-byte answer) from this
// process, and reads the server's own CPU time (process.cpuUsage: user +
// system) around the measured run, after a warm-up. Prints microseconds of
// server CPU per request:
//   raw      a ForwardingService.Send written on the contract directly
//   adapter  serve() with a plain http listener doing the same
//   express  serve() with an Express app doing the same (Express's own cost included)
const { spawn } = require('node:child_process');
const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { PROTO_DIR } = require('../lib/proto');

const LOAD = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] };

function server(kind) {
  const answer = Buffer.from('hello');
  const ready = (address) => {
    process.stdout.write(`READY ${address}\n`);
    readline.createInterface({ input: process.stdin }).on('line', () => {
      process.stdout.write(`${JSON.stringify(process.cpuUsage())}\n`);
    });
  };
  if (kind === 'raw') {
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync('forwarding/v1/forwarding.proto', LOAD));
    const s = new grpc.Server();
    s.addService(pkg.forwarding.v1.ForwardingService.service, {
      Send(call, cb) {
        cb(null, { status: 200, headers: [{ name: 'content-type', value: Buffer.from('text/plain') }], body: answer, trailers: [] });
      },
      Stream(call) { call.emit('error', { code: grpc.status.UNIMPLEMENTED }); },
    });
    s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, port) => ready(`127.0.0.1:${port}`));
    return;
  }
  const { serve } = require('..');
  let listener;
  if (kind === 'express') {
    const express = require('express');
    const app = express();
    app.set('etag', false);
    app.set('x-powered-by', false);
    app.get('/hello', (req, res) => res.type('text/plain').send(answer));
    listener = app;
  } else {
    listener = (req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(answer);
    };
  }
  serve(listener, { handleSignals: false, log: () => {} }).then((b) => ready(b.address));
}

const REQUEST = {
  protocol_version: 1, method: 'GET', scheme: 'http', authority: 'bench.test', path: '/hello', query: '',
  has_query: false, version: 'HTTP_VERSION_HTTP_1_1',
  headers: [
    ['accept', '*/*'], ['user-agent', 'bench/1'], ['x-forwarded-for', '127.0.0.1'],
    ['x-forwarded-proto', 'http'], ['x-forwarded-host', 'bench.test'], ['x-request-id', 'r-0123456789'],
  ].map(([name, value]) => ({ name, value: Buffer.from(value) })),
  body: Buffer.alloc(0), trailers: [],
  context: { request_id: 'r-0123456789', client_addresses: ['127.0.0.1:50000'], deadline_ms: '30000', service: 'bench' },
};

async function measure(kind, n, concurrency) {
  const child = spawn(process.execPath, [__filename, '--server', kind], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const address = (await lines.next()).value.split(' ')[1];
  const cpu = async () => {
    child.stdin.write('cpu\n');
    const u = JSON.parse((await lines.next()).value);
    return u.user + u.system;
  };
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync('forwarding/v1/forwarding.proto', LOAD));
  const client = new pkg.forwarding.v1.ForwardingService(address, grpc.credentials.createInsecure());
  const run = async (count) => {
    let next = 0;
    const worker = async () => {
      while (next++ < count) {
        await new Promise((resolve, reject) => client.Send(REQUEST, (e, r) => (e || r.status !== 200 ? reject(e || new Error(`status ${r.status}`)) : resolve())));
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  };
  await run(Math.min(n, 3000)); // warm-up: JIT, connection
  const before = await cpu();
  const t0 = process.hrtime.bigint();
  await run(n);
  const wall = Number(process.hrtime.bigint() - t0) / 1e6;
  const used = (await cpu()) - before;
  client.close();
  child.kill();
  return { kind, usPerRequest: used / n, requestsPerSecond: Math.round((n / wall) * 1000) };
}

async function main() {
  const n = Number(process.argv[2] || 20000);
  const concurrency = Number(process.argv[3] || 16);
  console.log(`node ${process.version}, ${n} requests, concurrency ${concurrency}; server CPU per request:`);
  const rows = [];
  for (const kind of ['raw', 'adapter', 'express']) rows.push(await measure(kind, n, concurrency));
  const raw = rows[0].usPerRequest;
  for (const r of rows) {
    const over = r.kind === 'raw' ? '' : ` (+${(r.usPerRequest - raw).toFixed(1)} us, x${(r.usPerRequest / raw).toFixed(2)})`;
    console.log(`${r.kind.padEnd(8)} ${r.usPerRequest.toFixed(1).padStart(7)} us/request${over}, ${r.requestsPerSecond} req/s`);
  }
}

if (process.argv[2] === '--server') server(process.argv[3]);
else main().catch((e) => { console.error(e); process.exit(1); });

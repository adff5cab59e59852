#!/usr/bin/env node
'use strict';
// The conformance behaviour, served through the adapter: an Express app
// (conformance/app.js) behind serve().
//
//   node conformance/server.js [--listen 127.0.0.1:0] [--gateway http://127.0.0.1:8090]
//   # READY 127.0.0.1:43117
//   gateway-conformance --target grpc://127.0.0.1:43117
//
// Prints one line to stdout, `READY <host:port>`, once serving. With
// --gateway it registers as service `conformance` (routes /conformance,
// streaming) and deregisters on SIGTERM, so `gateway-conformance
// --backend-cmd 'node conformance/server.js --gateway {registry}'` checks the
// lifecycle.
const { serve } = require('..');
const { app } = require('./app');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

serve(app(), {
  listen: arg('--listen', '127.0.0.1:0'),
  gateway: arg('--gateway'),
  service: arg('--service', 'conformance'),
  routes: [{ path_prefix: '/conformance', stream: false }],
}).then((backend) => {
  process.stdout.write(`READY ${backend.address}\n`);
}, (e) => {
  process.stderr.write(`conformance server: ${e.stack || e}\n`);
  process.exit(2);
});

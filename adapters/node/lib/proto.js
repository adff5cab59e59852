'use strict';
// The forwarding contract and grpc.health.v1, loaded at run time with
// @grpc/proto-loader (no code generation). The .proto files ship in the
// package (proto/); test/proto.test.js fails when proto/forwarding/v1 drifts
// from the repository's copy.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', 'proto');

const LOAD_OPTIONS = {
  keepCase: true, // field names as in the .proto (deadline_ms, not deadlineMs)
  longs: String, // uint64 deadline_ms: a string, so a "negative" one is seen exactly
  enums: String,
  defaults: true,
  oneofs: true, // StreamRequest.frame names the frame kind
};

let loaded;

/** The service definitions, loaded once. */
function protos() {
  if (!loaded) {
    const def = protoLoader.loadSync(
      ['forwarding/v1/forwarding.proto', 'grpc/health/v1/health.proto'],
      { ...LOAD_OPTIONS, includeDirs: [PROTO_DIR] },
    );
    const pkg = grpc.loadPackageDefinition(def);
    loaded = {
      forwarding: pkg.forwarding.v1.ForwardingService.service,
      health: pkg.grpc.health.v1.Health.service,
    };
  }
  return loaded;
}

module.exports = { protos, PROTO_DIR };

'use strict';
// The package ships its own copy of the contract (proto/): it must be the
// repository's, byte for byte. Skipped outside the repository.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { PROTO_DIR } = require('../lib/proto');

const REPO_PROTO = path.join(__dirname, '..', '..', '..', 'proto', 'proto', 'forwarding', 'v1', 'forwarding.proto');

test('proto/forwarding/v1/forwarding.proto is the repository copy', { skip: !fs.existsSync(REPO_PROTO) }, () => {
  const shipped = fs.readFileSync(path.join(PROTO_DIR, 'forwarding', 'v1', 'forwarding.proto'));
  assert.ok(shipped.equals(fs.readFileSync(REPO_PROTO)),
    'adapters/node/proto drifted: cp proto/proto/forwarding/v1/forwarding.proto adapters/node/proto/forwarding/v1/');
});

'use strict';
// The gateway writes ForwardingReq.context twice (everything but the
// deadline, then the deadline alone); protobuf says merge, protobufjs
// replaces. The adapter's deserialisers merge (lib/proto.js).
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const protobuf = require('protobufjs');
const { protos, PROTO_DIR } = require('../lib/proto');

const root = new protobuf.Root().loadSync(path.join(PROTO_DIR, 'forwarding/v1/forwarding.proto'), { keepCase: true });
const Req = root.lookupType('forwarding.v1.ForwardingReq');
const Ctx = root.lookupType('forwarding.v1.RequestContext');
const StreamReq = root.lookupType('forwarding.v1.StreamRequest');

/** A ForwardingReq as the gateway encodes it: the context in two fields. */
function gatewayStyle() {
  const base = Req.encode(Req.create({ method: 'GET', path: '/a' })).finish();
  const ctx = (c) => {
    const bytes = Ctx.encode(Ctx.create(c)).finish();
    return Buffer.concat([protobuf.Writer.create().uint32((12 << 3) | 2).uint32(bytes.length).finish(), bytes]);
  };
  return Buffer.concat([
    base,
    ctx({ request_id: 'r-1', client_addresses: ['10.0.0.1', '127.0.0.1:5'], service: 'svc' }),
    ctx({ deadline_ms: 1500 }),
  ]);
}

test('Send: a context split over two fields is merged', () => {
  const req = protos().forwarding.Send.requestDeserialize(gatewayStyle());
  assert.equal(req.method, 'GET');
  assert.equal(req.context.request_id, 'r-1');
  assert.deepEqual(req.context.client_addresses, ['10.0.0.1', '127.0.0.1:5']);
  assert.equal(req.context.service, 'svc');
  assert.equal(req.context.deadline_ms, '1500');
});

test('Stream: the head\'s split context is merged too; other frames untouched', () => {
  const head = gatewayStyle();
  const frame = Buffer.concat([protobuf.Writer.create().uint32((1 << 3) | 2).uint32(head.length).finish(), head]);
  const got = protos().forwarding.Stream.requestDeserialize(frame);
  assert.equal(got.frame, 'head');
  assert.equal(got.head.context.request_id, 'r-1');
  assert.equal(got.head.context.deadline_ms, '1500');
  const body = StreamReq.encode(StreamReq.create({ body: { data: Buffer.from('x') } })).finish();
  assert.equal(protos().forwarding.Stream.requestDeserialize(body).body.data.toString(), 'x');
});

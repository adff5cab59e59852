'use strict';
// The forwarding contract and grpc.health.v1, loaded at run time with
// @grpc/proto-loader (no code generation). The .proto files ship in the
// package (proto/); test/proto.test.js fails when proto/forwarding/v1 drifts
// from the repository's copy.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.join(__dirname, '..', 'proto');

const LOAD_OPTIONS = {
  keepCase: true, // field names as in the .proto (deadline_ms, not deadlineMs)
  longs: String, // uint64 deadline_ms: a string, so a "negative" one is seen exactly
  enums: String,
  defaults: true,
  oneofs: true, // StreamRequest.frame names the frame kind
};

let loaded;

// ---------------------------------------------------------------------------
// `ForwardingReq.context` split over several fields.
//
// The gateway writes the context twice (gateway-core/src/convert/wire.rs):
// once with every field but `deadline_ms`, then, per attempt, a second
// `context` holding only `deadline_ms`. That is valid protobuf: a parser
// must merge repeated occurrences of a singular message field. protobufjs
// (under @grpc/proto-loader) does not: the last occurrence replaces the
// earlier ones, so a grpc-js backend would see only `deadline_ms` and lose
// the request id, client addresses, trace context, service and prefix.
// The deserialisers below re-read the context fields and merge them the way
// the protobuf spec says (set scalars of later occurrences win, repeated
// fields are concatenated). Only when there is more than one occurrence.

const CONTEXT_FIELD = 12; // ForwardingReq.context
const HEAD_FIELD = 1; // StreamRequest.head

/** The payloads of every length-delimited occurrence of `field` in `buf` (top level). */
function fieldSlices(buf, field) {
  const out = [];
  let i = 0;
  const varint = () => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new RangeError('truncated varint');
      const b = buf[i++];
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
      shift += 7;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const wire = key % 8;
    const num = Math.floor(key / 8);
    if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      if (num === field) out.push(buf.subarray(i, i + len));
      i += len;
    } else throw new RangeError(`wire type ${wire}`);
  }
  return out;
}

function mergeContexts(ctxType, slices, options) {
  const merged = ctxType.create();
  for (const slice of slices) {
    const part = ctxType.decode(slice);
    for (const f of ctxType.fieldsArray) {
      const v = part[f.name];
      if (f.repeated) {
        if (v && v.length) merged[f.name] = (merged[f.name] || []).concat(v);
      } else if (Object.prototype.hasOwnProperty.call(part, f.name) && v != null) {
        merged[f.name] = v;
      }
    }
  }
  return ctxType.toObject(merged, options);
}

/** Replaces `deserialize`'s context with the merge of every occurrence. */
function withMergedContext(deserialize, ctxType, options, stream) {
  return (buf) => {
    const obj = deserialize(buf);
    try {
      let req = buf;
      if (stream) {
        if (obj.frame !== 'head') return obj;
        const heads = fieldSlices(buf, HEAD_FIELD);
        req = heads[heads.length - 1];
      }
      const slices = fieldSlices(req, CONTEXT_FIELD);
      if (slices.length > 1) (stream ? obj.head : obj).context = mergeContexts(ctxType, slices, options);
    } catch {
      // protobufjs decoded it; keep its reading.
    }
    return obj;
  };
}

/** The service definitions, loaded once. */
function protos() {
  if (!loaded) {
    const def = protoLoader.loadSync(
      ['forwarding/v1/forwarding.proto', 'grpc/health/v1/health.proto'],
      { ...LOAD_OPTIONS, includeDirs: [PROTO_DIR] },
    );
    const service = def['forwarding.v1.ForwardingService'];
    const ctxType = new protobuf.Root().loadSync(path.join(PROTO_DIR, 'forwarding/v1/forwarding.proto'), { keepCase: true })
      .lookupType('forwarding.v1.RequestContext');
    for (const [name, stream] of [['Send', false], ['Stream', true]]) {
      service[name].requestDeserialize = withMergedContext(service[name].requestDeserialize, ctxType, LOAD_OPTIONS, stream);
    }
    const pkg = grpc.loadPackageDefinition(def);
    loaded = {
      forwarding: pkg.forwarding.v1.ForwardingService.service,
      health: pkg.grpc.health.v1.Health.service,
    };
  }
  return loaded;
}

module.exports = { protos, PROTO_DIR, fieldSlices };

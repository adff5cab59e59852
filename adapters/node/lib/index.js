'use strict';
// Serve a node http request listener ((req, res) => ..., an Express or
// Fastify app's handler) behind the forwarding gateway, with the lifecycle
// of the Rust service SDK: serve ForwardingService and grpc.health.v1,
// register with the gateway and renew, and on SIGTERM deregister, keep
// serving for the drain time, then stop.

const grpc = require('@grpc/grpc-js');
const { protos } = require('./proto');
const { forwardingService } = require('./service');
const { Registration } = require('./registration');
const { ForwardedRequest, ForwardedResponse, Malformed, checkRequest } = require('./http');

const FORWARDING = 'forwarding.v1.ForwardingService';

/** grpc.health.v1: SERVING for "" and the forwarding service until the drain. */
function healthService(state) {
  const status = (service) => {
    if (service !== '' && service !== FORWARDING) return null;
    return state.draining ? 'NOT_SERVING' : 'SERVING';
  };
  return {
    Check(call, callback) {
      const s = status(call.request.service);
      if (!s) return callback({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
      return callback(null, { status: s });
    },
    Watch(call) {
      const send = () => call.write({ status: status(call.request.service) || 'SERVICE_UNKNOWN' });
      send();
      state.watchers.add(send);
      call.on('cancelled', () => state.watchers.delete(send));
    },
  };
}

function normaliseRoutes(routes) {
  return routes.map((r) => (typeof r === 'string' ? { path_prefix: r } : r));
}

/**
 * Serves `listener` over gRPC; resolves to a running backend.
 * See index.d.ts (ServeOptions) for the options.
 */
async function serve(listener, options = {}) {
  const {
    listen = '127.0.0.1:0',
    gateway,
    service,
    address,
    routes,
    streaming = true,
    instanceId,
    token,
    registration: extra = {},
    drainMs = 500,
    shutdownGraceMs = 5000,
    handleSignals = true,
    log = (msg) => process.stderr.write(`[forwarding-adapter] ${msg}\n`),
    onError,
  } = options;
  if (gateway && !service) throw new Error('serve: `service` is required with `gateway`');

  const server = new grpc.Server({
    // Bodies of several MiB travel in one Send message.
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': -1,
  });
  const state = { draining: false, watchers: new Set() };
  const { forwarding, health } = protos();
  server.addService(forwarding, forwardingService(listener, onError ? { onError } : {}));
  server.addService(health, healthService(state));
  const port = await new Promise((resolve, reject) => {
    server.bindAsync(listen, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const host = listen.slice(0, listen.lastIndexOf(':'));
  const bound = `${host}:${port}`;

  let reg = null;
  let renewing = null;
  if (gateway) {
    const advertised = address || bound;
    if (!address && /^(0\.0\.0\.0|\[::\]|::)$/.test(host)) {
      throw new Error('serve: listening on a wildcard address; set `address` to what the gateway should dial');
    }
    reg = new Registration(gateway, {
      ...extra,
      service,
      address: advertised,
      ...(instanceId ? { instance_id: instanceId } : {}),
      ...(routes ? { routes: normaliseRoutes(routes) } : {}),
      streaming,
    }, { token, log });
    renewing = reg.run();
  }

  let stopping = null;
  const backend = {
    address: bound,
    port,
    server,
    registration: reg,
    /** Deregister, keep serving for drainMs, then stop (idempotent). */
    shutdown() {
      if (!stopping) {
        stopping = (async () => {
          log('shutting down: deregistering, then draining');
          // As the Rust SDK: health says NOT_SERVING first, so a gateway
          // that health-checks before it hears of the deregistration stops
          // routing here too.
          state.draining = true;
          for (const send of state.watchers) send();
          if (reg) {
            // Stop the renewal loop and let a call in flight land first, so
            // a registration racing the shutdown cannot outlive the DELETE.
            reg.stop();
            await renewing;
            try {
              await reg.deregister();
            } catch (e) {
              log(`deregistering failed: ${e.message}`);
            }
          }
          await new Promise((r) => setTimeout(r, drainMs));
          // Calls still open (an SSE feed, a long poll) get shutdownGraceMs
          // more, then are cancelled: a stream must not hold the exit forever.
          await new Promise((r) => {
            const t = setTimeout(() => { server.forceShutdown(); r(); }, shutdownGraceMs);
            server.tryShutdown(() => { clearTimeout(t); r(); });
          });
        })();
      }
      return stopping;
    },
    /** Stop at once: cancel every call, no deregistration. */
    forceShutdown() {
      if (reg) reg.stop();
      server.forceShutdown();
    },
  };

  if (handleSignals) {
    const onSignal = () => {
      backend.shutdown().then(() => process.exit(0), () => process.exit(1));
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  }
  return backend;
}

module.exports = {
  serve,
  forwardingService,
  healthService,
  Registration,
  ForwardedRequest,
  ForwardedResponse,
  Malformed,
  checkRequest,
};

'use strict';
// The ForwardingService implementation: each call becomes one (req, res) for
// the user's request listener.
//
//   Send:   the whole ForwardingReq is the request; the response is buffered
//           (the contract answers in one message) and sent on res.end().
//   Stream: the head starts the listener at once (as node's http server does
//           at the end of the request head); body frames are pushed into req
//           as they arrive, with backpressure both ways; res.writeHead() /
//           the first write becomes the `head` frame, each res.write() a
//           `body` frame, res.end() the `end` frame with res.addTrailers().

const grpc = require('@grpc/grpc-js');
const { ForwardedRequest, ForwardedResponse, Malformed, checkRequest, checkFields } = require('./http');

const Status = grpc.status;

function invalid(message) {
  return { code: Status.INVALID_ARGUMENT, details: message };
}

function aborted(err) {
  return {
    code: Status.INTERNAL,
    details: `the handler aborted the response${err && err.message ? `: ${err.message}` : ''}`,
  };
}

/** Runs the listener; a synchronous throw fails the call instead of the process. */
function dispatch(listener, req, res, onError) {
  try {
    const r = listener(req, res);
    if (r && typeof r.then === 'function') r.then(undefined, onError);
  } catch (e) {
    onError(e);
  }
}

/**
 * A ForwardingService implementation (for grpc.Server#addService) that
 * serves `listener`, a node http request listener: (req, res) => void.
 */
function forwardingService(listener, { onError = defaultOnError } = {}) {
  return {
    Send(call, callback) {
      const fwd = call.request;
      try {
        checkRequest(fwd);
      } catch (e) {
        if (e instanceof Malformed) return callback(invalid(e.message));
        throw e;
      }
      let head = null;
      const chunks = [];
      let done = false;
      const finish = (err, resp) => {
        if (done) return;
        done = true;
        callback(err, resp);
      };
      const req = new ForwardedRequest(fwd, null);
      const res = new ForwardedResponse(req, {
        head(status, headers) { head = { status, headers }; },
        body(buf) { chunks.push(buf); return true; },
        end(trailers, handedOver) {
          // One copy: the parts into the one `bytes body` of the message.
          const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
          finish(null, { status: head.status, headers: head.headers, body, trailers });
          handedOver();
        },
        abort(err) { finish(aborted(err)); },
      });
      call.on('cancelled', () => {
        done = true;
        res._cancelled();
      });
      req.pushBody(fwd.body);
      req.endBody(fwd.trailers);
      dispatch(listener, req, res, (e) => {
        onError(e, req);
        res.destroy(e);
      });
    },

    Stream(call) {
      new StreamExchange(call, listener, onError).start();
    },
  };
}

function defaultOnError(err, req) {
  process.emitWarning(`request listener failed on ${req.method} ${req.url}: ${err && err.stack ? err.stack : err}`);
}

/** One `Stream` call: frame order, both directions' flow control, the end. */
class StreamExchange {
  constructor(call, listener, onError) {
    this.call = call;
    this.listener = listener;
    this.onError = onError;
    this.req = null;
    this.res = null;
    this.state = 'head'; // head -> body -> ended -> half-closed
    this.over = false; // the gRPC status is decided
    this.answered = null; // set when res.end() has written the `end` frame
  }

  start() {
    const { call } = this;
    call.on('data', (frame) => {
      try {
        this.onFrame(frame);
      } catch (e) {
        // A bug of ours must not take the process down: fail this call only.
        this.fail({ code: Status.INTERNAL, details: `adapter error: ${e.message}` });
      }
    });
    call.on('end', () => this.onHalfClose());
    call.on('error', () => {}); // a cancelled call; 'cancelled' handles it
    call.on('cancelled', () => {
      this.over = true;
      if (this.res) this.res._cancelled();
    });
    call.on('drain', () => { if (this.res) this.res.emit('drain'); });
  }

  fail(status) {
    if (this.over) return;
    this.over = true;
    this.call.emit('error', status);
    if (this.res) this.res._cancelled();
  }

  onFrame(frame) {
    if (this.over) return;
    const kind = frame.frame;
    if (this.state === 'head') {
      if (kind !== 'head') return this.fail(invalid(`malformed Stream: the first frame is \`${kind}\`, not \`head\``));
      return this.onHead(frame.head);
    }
    if (kind === 'head') return this.fail(invalid('malformed Stream: a second `head` frame'));
    if (this.state !== 'body' && (kind === 'body' || kind === 'end')) {
      return this.fail(invalid(`malformed Stream: a \`${kind}\` frame after \`end\``));
    }
    if (kind === 'body') {
      if (!this.req.pushBody(frame.body.data)) this.call.pause();
      return undefined;
    }
    if (kind === 'end') {
      try {
        checkFields(frame.end.trailers, 'trailer');
      } catch (e) {
        return this.fail(invalid(`malformed Stream: ${e.message}`));
      }
      this.state = 'ended';
      this.req.endBody(frame.end.trailers);
      return undefined;
    }
    return this.fail(invalid(`malformed Stream: a \`${kind}\` frame in an exchange that is not a WebSocket`));
  }

  onHead(fwd) {
    try {
      checkRequest(fwd);
      if (fwd.trailers.length) throw new Malformed('trailers in `head` (they belong in `end`)');
    } catch (e) {
      if (e instanceof Malformed) return this.fail(invalid(`malformed Stream: ${e.message}`));
      throw e;
    }
    if (fwd.upgrade) {
      // WebSocket is not supported yet (README): refuse the upgrade with an answer.
      this.over = true;
      const body = Buffer.from('{"error":"websocket not supported by this backend"}');
      this.call.write({ head: { status: 501, headers: [{ name: 'content-type', value: Buffer.from('application/json') }] } });
      this.call.write({ body: { data: body } });
      this.call.end();
      return undefined;
    }
    this.state = 'body';
    const { call } = this;
    const req = new ForwardedRequest(fwd, () => call.resume());
    this.req = req;
    const self = this;
    this.res = new ForwardedResponse(req, {
      head(status, headers) {
        if (!self.over) call.write({ head: { status, headers } });
      },
      body(data) {
        if (self.over) return false;
        return call.write({ body: { data } });
      },
      end(trailers, handedOver) {
        if (self.over) return;
        call.write({ end: { trailers } }, () => handedOver());
        self.answered = true;
        self.maybeFinish();
      },
      abort(err) { self.fail(aborted(err)); },
    });
    if (fwd.body.length) req.pushBody(fwd.body);
    dispatch(this.listener, req, this.res, (e) => {
      this.onError(e, req);
      this.res.destroy(e);
    });
    return undefined;
  }

  onHalfClose() {
    if (this.over) return;
    if (this.state !== 'ended') {
      this.fail(invalid('malformed Stream: the request stream was half-closed before its `end` frame'));
      return;
    }
    this.state = 'half-closed';
    this.maybeFinish();
  }

  // The call ends OK once the answer is complete and the request side is
  // settled: after the gateway's half-close when the request body was
  // whole (so a malformed frame after `end` is still answered
  // INVALID_ARGUMENT), or at once when the handler answered before reading
  // the whole body (a 413 of its own: the gateway stops sending).
  maybeFinish() {
    if (this.over || !this.answered) return;
    if (this.state === 'ended') {
      if (!this.halfCloseTimer) this.halfCloseTimer = setTimeout(() => this.finish(), 1000).unref();
      return;
    }
    this.finish();
  }

  finish() {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.halfCloseTimer);
    this.call.end();
  }
}

module.exports = { forwardingService };

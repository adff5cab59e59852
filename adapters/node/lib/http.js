'use strict';
// ForwardingReq -> a Node http (req, res) pair, and res -> ForwardingResp.
//
// The request is a real `http.IncomingMessage` and the response a real
// `http.ServerResponse` (subclassed), so Express, Fastify and middleware that
// reach for their prototypes work unchanged. Nothing is serialised as
// HTTP/1.1: the response overrides the methods that would write to a socket
// and hands status, headers, body chunks and trailers to a *sink* (the Send
// or Stream side, lib/service.js).
//
// Header values are bytes on the wire and latin1 strings in Node (that is
// how node's own HTTP parser gives obs-text to handlers), so both ways use
// latin1 and every byte survives.

const http = require('node:http');
const { Duplex } = require('node:stream');

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/; // a token in lower case
const INT64_MAX = 2n ** 63n - 1n;

/** A ForwardingReq that cannot be an HTTP request (gRPC INVALID_ARGUMENT). */
class Malformed extends Error {}

function checkFields(fields, what) {
  for (const f of fields) {
    if (!NAME.test(f.name)) throw new Malformed(`${what} ${JSON.stringify(f.name)}: not a lower-case token`);
    const v = f.value;
    if (v.includes(0x0d) || v.includes(0x0a) || v.includes(0x00)) {
      throw new Malformed(`${what} ${JSON.stringify(f.name)}: CR, LF or NUL in the value`);
    }
  }
}

/**
 * Throws Malformed when `req` (a ForwardingReq as proto-loader decodes it)
 * is not an HTTP request a framework could be given.
 */
function checkRequest(req) {
  if (!TOKEN.test(req.method)) throw new Malformed(`method ${JSON.stringify(req.method)}: not a token`);
  if (!req.path.startsWith('/') || /[\s#?]/.test(req.path)) {
    throw new Malformed(`path ${JSON.stringify(req.path)}: not an origin-form path`);
  }
  if (/[\s#]/.test(req.query)) throw new Malformed(`query ${JSON.stringify(req.query)}: whitespace or '#'`);
  checkFields(req.headers, 'header');
  checkFields(req.trailers, 'trailer');
  const deadline = req.context ? req.context.deadline_ms : '0';
  // uint64 on the wire: a sender's negative int64 arrives as 2^64 - n.
  if (BigInt(deadline || '0') > INT64_MAX) {
    throw new Malformed(`context.deadline_ms ${deadline}: negative (as a signed 64-bit number)`);
  }
}

const VERSIONS = {
  HTTP_VERSION_HTTP_0_9: [0, 9],
  HTTP_VERSION_HTTP_1_0: [1, 0],
  HTTP_VERSION_HTTP_2: [2, 0],
  HTTP_VERSION_HTTP_3: [3, 0],
};

function rawFields(fields) {
  const raw = [];
  for (const f of fields) raw.push(f.name, f.value.toString('latin1'));
  return raw;
}

/**
 * Sets rawHeaders (or, once `complete`, rawTrailers) and the parsed
 * headers/trailers objects the way node's HTTP parser does, through
 * IncomingMessage#_addHeaderLines: same joining of duplicates (", ",
 * set-cookie as an array, first of single-valued fields).
 */
function setFields(msg, raw) {
  if (raw.length) msg._addHeaderLines(raw, raw.length);
}

/**
 * Stands in for the TCP socket: what handlers read of it (peer address,
 * `encrypted` for req.protocol) and no-ops for what they call on it.
 * Nothing is ever written to it.
 */
class ForwardedSocket extends Duplex {
  constructor(fwd) {
    super();
    const peer = (fwd.context && fwd.context.client_addresses.at(-1)) || '';
    const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(peer);
    this.remoteAddress = m && m[1] ? (m[2] ? m[1] : peer) : undefined;
    this.remotePort = m && m[2] ? Number(m[2]) : undefined;
    this.encrypted = fwd.scheme === 'https' ? true : undefined;
  }
  _read() {}
  _write(chunk, encoding, cb) { cb(); }
  setTimeout() { return this; }
  setNoDelay() { return this; }
  setKeepAlive() { return this; }
}

/**
 * The request a handler gets: an http.IncomingMessage with the raw target
 * (`url` is path + '?' + query exactly as received), headers and trailers in
 * order with duplicates (`rawHeaders`, `rawTrailers`), and the body pushed as
 * it arrives. `req.forwarding` is the ForwardingReq head (context: request
 * id, deadline, client addresses; body and trailers left out).
 */
class ForwardedRequest extends http.IncomingMessage {
  constructor(fwd, onRead) {
    super(new ForwardedSocket(fwd));
    this._onRead = onRead;
    this.method = fwd.method;
    this.url = fwd.path + (fwd.has_query ? `?${fwd.query}` : '');
    const [major, minor] = VERSIONS[fwd.version] || [1, 1];
    this.httpVersionMajor = major;
    this.httpVersionMinor = minor;
    this.httpVersion = `${major}.${minor}`;
    const raw = rawFields(fwd.headers);
    if (!fwd.headers.some((h) => h.name === 'host') && fwd.authority) {
      // HTTP/2 carries the authority as :authority; frameworks look for Host.
      raw.push('host', fwd.authority);
    }
    setFields(this, raw);
    this.forwarding = { ...fwd, body: undefined, trailers: undefined };
    pinOverrides(this, ForwardedRequest.prototype);
  }

  // Body backpressure: ask the sink for more only when the reader wants it.
  _read() {
    if (this._onRead) this._onRead();
  }

  /** The next body bytes; false when the handler's buffer is full. */
  pushBody(buf) {
    return buf.length === 0 || this.push(buf);
  }

  /** The body is complete; the trailers are known. */
  endBody(trailers) {
    this.complete = true; // before setFields: complete means "these are trailers"
    setFields(this, rawFields(trailers));
    this.push(null);
  }
}

const kSink = Symbol('sink');

/**
 * Express re-parents req and res (Object.setPrototypeOf(res, app.response),
 * whose prototype is http.ServerResponse.prototype), which would skip a
 * subclass's methods. So the overrides are also copied onto each instance,
 * where no prototype swap reaches them.
 */
const pinned = new Map(); // prototype -> [methods], {accessors}

function pinOverrides(obj, proto) {
  let p = pinned.get(proto);
  if (!p) {
    const methods = [];
    const accessors = {};
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor') continue;
      const d = Object.getOwnPropertyDescriptor(proto, name);
      if (typeof d.value === 'function') methods.push([name, d.value]);
      else accessors[name] = { ...d, enumerable: false };
    }
    p = [methods, accessors];
    pinned.set(proto, p);
  }
  // Plain assignment keeps the object's fast shape; defineProperty would not.
  for (const [name, fn] of p[0]) obj[name] = fn;
  Object.defineProperties(obj, p[1]);
}

/**
 * The response a handler writes: an http.ServerResponse whose head, body
 * chunks and trailers go to a sink instead of a socket.
 *
 * sink.head(status, headers)   once, before any body
 * sink.body(buffer) -> bool    false: wait for res 'drain' (Stream flow control)
 * sink.end(trailers, done)     the answer is complete; done() once handed over
 * sink.abort(error)            the handler destroyed the response: fail the call
 */
class ForwardedResponse extends http.ServerResponse {
  constructor(req, sink) {
    super(req);
    this[kSink] = sink;
    this._fwdTrailers = [];
    this._fwdFinished = false;
    this.sendDate = false; // the gateway's client gets the gateway's Date
    pinOverrides(this, ForwardedResponse.prototype);
  }

  get writableFinished() {
    return this._fwdFinished;
  }

  writeHead(statusCode, reason, headers) {
    if (this._header) {
      const e = new Error('Cannot write headers after they are sent to the client');
      e.code = 'ERR_HTTP_HEADERS_SENT';
      throw e;
    }
    if (typeof reason !== 'string') {
      headers = reason;
      reason = undefined;
    }
    statusCode |= 0;
    if (statusCode < 100 || statusCode > 999) {
      const e = new RangeError(`Invalid status code: ${statusCode}`);
      e.code = 'ERR_HTTP_INVALID_STATUS_CODE';
      throw e;
    }
    if (statusCode < 200 && statusCode !== 101) {
      // 1xx informational: not forwarded (the contract says so); the final
      // answer still to come is a 200 unless the handler says otherwise.
      return this; // its headers go with it
    }
    this.statusCode = statusCode;
    if (reason) this.statusMessage = reason;
    if (Array.isArray(headers)) {
      if (headers.length && Array.isArray(headers[0])) {
        for (const [k, v] of headers) this.appendHeader(k, v);
      } else {
        for (let i = 0; i + 1 < headers.length; i += 2) this.appendHeader(headers[i], headers[i + 1]);
      }
    } else if (headers) {
      for (const k of Object.keys(headers)) if (k) this.setHeader(k, headers[k]);
    }
    if (statusCode === 204 || statusCode === 304 || this.req.method === 'HEAD') this._hasBody = false;
    const fields = [];
    for (const name of this.getHeaderNames()) {
      const v = this.getHeader(name);
      for (const one of Array.isArray(v) ? v : [v]) {
        fields.push({ name, value: Buffer.from(String(one), 'latin1') });
      }
    }
    this._header = `${statusCode}`; // headersSent is now true; nothing else reads it
    this._headerSent = true;
    this[kSink].head(statusCode, fields);
    return this;
  }

  // Node's own write path calls this; compression middleware does too.
  _implicitHeader() {
    const status = this.statusCode;
    this.writeHead(status < 200 && status !== 101 ? 200 : status);
  }

  flushHeaders() {
    if (!this._header) this._implicitHeader();
  }

  writeContinue() {}
  writeProcessing() {}
  writeEarlyHints(hints, cb) { if (cb) process.nextTick(cb); }

  write(chunk, encoding, cb) {
    if (typeof encoding === 'function') {
      cb = encoding;
      encoding = undefined;
    }
    if (this.finished || this.destroyed) {
      const e = new Error(this.destroyed ? 'write after destroy' : 'write after end');
      e.code = this.destroyed ? 'ERR_STREAM_DESTROYED' : 'ERR_STREAM_WRITE_AFTER_END';
      if (cb) process.nextTick(cb, e);
      return false;
    }
    if (!this._header) this._implicitHeader();
    let ok = true;
    if (chunk != null && this._hasBody) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk, encoding || 'utf8')
        : Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      if (buf.length) ok = this[kSink].body(buf);
    }
    if (cb) process.nextTick(cb);
    return ok;
  }

  end(chunk, encoding, cb) {
    if (typeof chunk === 'function') {
      cb = chunk;
      chunk = undefined;
    } else if (typeof encoding === 'function') {
      cb = encoding;
      encoding = undefined;
    }
    if (this.finished || this.destroyed) {
      if (cb) process.nextTick(cb);
      return this;
    }
    if (!this._header && chunk != null && this._hasBody && !this.hasHeader('content-length')
        && !this.hasHeader('transfer-encoding')) {
      // As node's http does for end(body) with no head yet: the length is known.
      const len = typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding || 'utf8') : chunk.byteLength;
      this.setHeader('content-length', len);
    }
    if (chunk != null) this.write(chunk, encoding);
    else if (!this._header) this._implicitHeader();
    this.finished = true;
    this[kSink].end(this._fwdTrailers, () => {
      this._fwdFinished = true;
      this.emit('prefinish');
      this.emit('finish');
      if (cb) cb();
      this._close();
    });
    return this;
  }

  addTrailers(headers) {
    const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
    for (const [k, v] of pairs) {
      for (const one of Array.isArray(v) ? v : [v]) {
        this._fwdTrailers.push({ name: String(k).toLowerCase(), value: Buffer.from(String(one), 'latin1') });
      }
    }
  }

  destroy(err) {
    if (this.destroyed || this._fwdFinished) return this;
    this.destroyed = true;
    this[kSink].abort(err);
    this._close();
    return this;
  }

  /** The call is over (cancelled by the caller, or the deadline passed). */
  _cancelled() {
    if (this.destroyed || this._fwdFinished) return;
    this.destroyed = true;
    this._close();
  }

  /**
   * Ends the exchange for the handler: 'close' on the response (after
   * 'finish' when it completed) and, on the request, what node's server does:
   * an unread body is discarded after a complete answer, and the request is
   * destroyed ('aborted', 'close') when the exchange broke off.
   */
  _close() {
    if (this._closed) return;
    this._closed = true;
    const req = this.req;
    process.nextTick(() => {
      if (this._fwdFinished) {
        if (!req.readableEnded) req.resume();
      } else if (!req.destroyed) {
        req.destroy();
      }
      this.emit('close');
    });
  }
}

module.exports = { ForwardedRequest, ForwardedResponse, Malformed, checkRequest, checkFields };

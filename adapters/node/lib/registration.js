'use strict';
// Keeping a registration alive over the gateway's HTTP/JSON registration API
// (openapi/registry.v1.yaml), as the Rust SDK does over gRPC: register
// (retrying with backoff while the gateway is down), renew every third of
// the lease, register again when a renewal answers 404 (the gateway
// restarted or the lease ran out), deregister on shutdown.

const MAX_BACKOFF_MS = 5000;

class RegistrationError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

class Registration {
  /**
   * @param {string} gateway  registration listener, e.g. "http://127.0.0.1:8090"
   * @param {object} registration  the Registration JSON (service, address, routes...)
   * @param {{token?: string, log?: (msg: string) => void}} options
   */
  constructor(gateway, registration, { token, log = () => {} } = {}) {
    this.base = gateway.replace(/\/+$/, '');
    this.registration = registration;
    this.token = token;
    this.log = log;
    this.instanceId = registration.instance_id || '';
    this.stopped = false;
    this.timer = null;
    this.wake = null;
  }

  async request(method, path, body) {
    const headers = { 'content-type': 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const res = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
    if (!res.ok) {
      const msg = json && json.error ? `${json.error.code}: ${json.error.message}` : text;
      throw new RegistrationError(`${method} ${path}: ${res.status} ${msg}`, res.status);
    }
    return json;
  }

  /** Registers once; resolves to {instance_id, lease_ms}. */
  async register() {
    const r = await this.request('PUT', '/v1/registrations', this.registration);
    this.instanceId = r.instance_id;
    return r;
  }

  keyPath() {
    return `/v1/registrations/${encodeURIComponent(this.registration.service)}/${encodeURIComponent(this.instanceId)}`;
  }

  /** Deregisters (idempotent); stops the renewal loop. */
  async deregister() {
    this.stop();
    if (!this.instanceId) return;
    await this.request('DELETE', this.keyPath());
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.wake) this.wake();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(resolve, ms);
      this.timer.unref();
    });
  }

  /** Registers, then renews until stop(); never rejects. */
  async run(onRegistered = () => {}) {
    let backoff = 100;
    while (!this.stopped) {
      let lease;
      try {
        lease = Math.max((await this.register()).lease_ms, 300);
        backoff = 100;
        this.log(`registered ${this.registration.service}/${this.instanceId} (lease ${lease} ms)`);
        onRegistered(this.instanceId);
      } catch (e) {
        if (this.stopped) return;
        // A refusal (400/401/403) will not fix itself: say so loudly and
        // retry slowly, in case the operator fixes the gateway's side.
        const refused = e instanceof RegistrationError && e.status >= 400 && e.status < 500;
        this.log(`${refused ? 'registration refused' : 'gateway not reachable'}: ${e.message}; retrying`);
        await this.sleep(refused ? MAX_BACKOFF_MS : backoff * (0.5 + Math.random()));
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
        continue;
      }
      while (!this.stopped) {
        await this.sleep(lease / 3);
        if (this.stopped) return;
        try {
          await this.request('POST', `${this.keyPath()}/renew`);
        } catch (e) {
          // 404: the gateway forgot us; anything else: it may be
          // restarting. Registering is idempotent, so register again.
          this.log(`renewal failed (${e.message}); registering again`);
          break;
        }
      }
    }
  }
}

module.exports = { Registration, RegistrationError };

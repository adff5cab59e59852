// Type declarations for @forwarding-gateway/adapter (hand-written; the
// implementation is plain JavaScript in lib/*.js).

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Server, UntypedServiceImplementation } from '@grpc/grpc-js';

/** A node http request listener: what `http.createServer()` takes, and what an Express app is. */
export type RequestListener = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

/** One header field as the contract carries it: lower-case name, value bytes. */
export interface Header {
  name: string;
  value: Buffer;
}

/** `forwarding.v1.RequestContext` as received (uint64 fields are decimal strings). */
export interface RequestContext {
  request_id: string;
  client_addresses: string[];
  traceparent: string;
  tracestate: string;
  /** Milliseconds left before the gateway gives up, "0" for none. */
  deadline_ms: string;
  gateway_node: string;
  service: string;
  matched_prefix: string;
}

/** The ForwardingReq head, without body and trailers (those are the stream and rawTrailers). */
export interface ForwardingInfo {
  protocol_version: number;
  method: string;
  scheme: string;
  authority: string;
  path: string;
  query: string;
  has_query: boolean;
  version: string;
  headers: Header[];
  context: RequestContext;
  upgrade: string;
}

declare module 'node:http' {
  interface IncomingMessage {
    /** Set on requests that came through the gateway: the ForwardingReq head. */
    forwarding?: ForwardingInfo;
  }
}

/** A route the backend registers (`Route` in openapi/registry.v1.yaml). */
export interface Route {
  path_prefix: string;
  hosts?: string[];
  timeout_ms?: number;
  /** Responses on this route stream (SSE, downloads): the gateway uses `Stream`. */
  stream?: boolean;
  max_duration_ms?: number;
}

export interface ServeOptions {
  /** host:port to listen on for gRPC. Default "127.0.0.1:0" (a free port). */
  listen?: string;
  /** The gateway's registration listener, e.g. "http://127.0.0.1:8090". Without it the backend serves but does not register. */
  gateway?: string;
  /** Service name to register (required with `gateway`). */
  service?: string;
  /** host:port the gateway should dial; default the bound address (required when listening on 0.0.0.0). */
  address?: string;
  /** Routes to register; strings are path prefixes. Default: the gateway's ("/<service>"). */
  routes?: Array<string | Route>;
  /** Register with `streaming = true`, so the gateway may use `Stream`. Default true. */
  streaming?: boolean;
  /** Instance id; default the gateway's (service-address). */
  instanceId?: string;
  /** Registration token, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Further Registration fields (visibility, tags, metadata, weight, health, lease_ms). */
  registration?: Record<string, unknown>;
  /** How long to keep serving after deregistering on shutdown. Default 500 ms. */
  drainMs?: number;
  /** After the drain, how long open calls (SSE feeds) may run before they are cancelled. Default 5000 ms. */
  shutdownGraceMs?: number;
  /** Shut down (deregister, drain, exit 0) on SIGTERM and SIGINT. Default true. */
  handleSignals?: boolean;
  /** Where lifecycle messages go. Default: stderr. */
  log?: (message: string) => void;
  /** Called when the listener throws or its promise rejects (the call then fails with INTERNAL). */
  onError?: (error: unknown, req: IncomingMessage) => void;
}

export interface Backend {
  /** host:port the gRPC server is bound to. */
  readonly address: string;
  readonly port: number;
  readonly server: Server;
  readonly registration: Registration | null;
  /** Deregister, keep serving for `drainMs`, then stop. Idempotent. */
  shutdown(): Promise<void>;
  /** Stop at once: cancel every call, no deregistration. */
  forceShutdown(): void;
}

/** Serve `listener` behind the gateway: ForwardingService + grpc.health.v1, and the registration lifecycle. */
export function serve(listener: RequestListener, options?: ServeOptions): Promise<Backend>;

/** The ForwardingService implementation alone, for a grpc.Server of your own. */
export function forwardingService(
  listener: RequestListener,
  options?: { onError?: (error: unknown, req: IncomingMessage) => void },
): UntypedServiceImplementation;

/** Registration over the gateway's HTTP/JSON API. */
export class Registration {
  constructor(gateway: string, registration: Record<string, unknown>, options?: { token?: string; log?: (message: string) => void });
  readonly instanceId: string;
  register(): Promise<{ instance_id: string; lease_ms: number; created: boolean }>;
  /** Registers, then renews until stop(); registers again when the gateway forgot the instance. */
  run(onRegistered?: (instanceId: string) => void): Promise<void>;
  deregister(): Promise<void>;
  stop(): void;
}

/** A ForwardingReq that cannot be an HTTP request; the adapter answers INVALID_ARGUMENT. */
export class Malformed extends Error {}

/** Throws Malformed when a decoded ForwardingReq is not a valid HTTP request. */
export function checkRequest(req: unknown): void;

#!/usr/bin/env python3
"""The "product" service of the service-discovery demo, as a forwarding backend.

It keeps products and their inventory in memory and speaks the gateway's
forwarding contract (proto/proto/forwarding/v1/forwarding.proto) with grpcio:
`forwarding.v1.ForwardingService/Send` (one request, one response) and
`/Stream` (the same exchange as frames), plus the standard
`grpc.health.v1.Health` service. It registers itself with the gateway over
the HTTP/JSON registration API (Python standard library only), declaring
`streaming` and a stream route for its event stream.

HTTP API, as the gateway forwards it (the route prefix is not stripped):

    GET  /product                 -> 200 JSON list of products
    POST /product                 -> 201 created product, `location` header
    GET  /product/{id}            -> 200 JSON product, 404 when unknown
    PUT  /product/{id}/decrement  -> 200 updated product, 409 when out of stock
    GET  /product/events          -> 200 text/event-stream: `hello`, then one
                                     event per inventory change; ?count=N
                                     ends after N events, ?interval_ms=M adds
                                     a `tick` every M ms (via Send: `hello` only)
    GET  /product/events/stats    -> 200 {"listeners", "last_event_id"}
    POST /product/upload          -> 200 {"bytes", "sha256"[, "trailers"]},
                                     the body hashed as it streams in

Stream: the request frames (head, body chunks, end, half-close) are checked
in order and any other sequence is INVALID_ARGUMENT. Events and uploads are
handled frame by frame; every other request is collected and answered by
the same handler as Send (head, one body chunk, end), so both RPCs give the
same answer.

Usage:

    python3 server.py --listen 127.0.0.1:0 --gateway http://127.0.0.1:8090 \
        [--advertise HOST:PORT] [--token T] [--name product] \
        [--workers 32] [--max-event-streams 16] [--heartbeat-ms 15000]

Prints exactly one line to stdout, `READY <host:port>`, once the gRPC server
is serving and (unless `--gateway ''`) the first registration succeeded.
Everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
GEN_DIR = HERE / "gen"
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto" / "proto"
PROTO_FILES = ("forwarding/v1/forwarding.proto", "forwarding/v1/registry.proto", "forwarding/v1/sync.proto")

log = logging.getLogger("product-service")


# ---------------------------------------------------------------------------
# Generated code: made from the repository's proto/ on first use (and again
# whenever the .proto files change), so a fresh checkout just works.
# ---------------------------------------------------------------------------


def ensure_generated(proto_dir: Path | None = None, force: bool = False) -> Path:
    """Generates the Python code of the forwarding protos into gen/ if it is
    missing or stale; safe to call from several processes at once."""
    proto_dir = Path(proto_dir or os.environ.get("FORWARDING_PROTO_DIR") or DEFAULT_PROTO_DIR)
    digest = hashlib.sha256()
    for name in PROTO_FILES:
        path = proto_dir / name
        if not path.is_file():
            raise SystemExit(f"missing {path} (set FORWARDING_PROTO_DIR to the directory holding forwarding/v1/*.proto)")
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    want = digest.hexdigest()
    GEN_DIR.mkdir(exist_ok=True)
    stamp = GEN_DIR / ".stamp"
    with open(GEN_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and stamp.is_file() and stamp.read_text().strip() == want:
            return GEN_DIR
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={GEN_DIR}",
            f"--grpc_python_out={GEN_DIR}",
            *PROTO_FILES,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"protoc failed ({' '.join(cmd)}):\n{proc.stderr}")
        stamp.write_text(want + "\n")
    return GEN_DIR


def load_protos():
    """Returns (forwarding_pb2, forwarding_pb2_grpc), generating them if needed."""
    gen = str(ensure_generated())
    if gen not in sys.path:
        sys.path.insert(0, gen)
    from forwarding.v1 import forwarding_pb2, forwarding_pb2_grpc  # noqa: E402

    return forwarding_pb2, forwarding_pb2_grpc


# ---------------------------------------------------------------------------
# The product store.
# ---------------------------------------------------------------------------


class OutOfStock(Exception):
    pass


class Subscription:
    """One listener's queue of inventory changes (see ProductStore.subscribe).

    Bounded: a listener that falls `limit` changes behind is marked
    `overflowed` and gets nothing more (its stream should end; an SSE client
    reconnects and starts again from a fresh snapshot). `close()` is
    idempotent and may be called from any thread: it unregisters the listener
    and wakes a reader blocked in `get()`.
    """

    def __init__(self, store: "ProductStore", limit: int) -> None:
        self._store = store
        self._limit = limit
        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque()
        self.overflowed = False
        self.closed = False

    def push(self, event: dict) -> None:
        with self._cond:
            if self.closed or self.overflowed:
                return
            if len(self._items) >= self._limit:
                self.overflowed = True
            else:
                self._items.append(event)
            self._cond.notify_all()

    def get(self, timeout: float | None) -> dict | None:
        """The next change; None on timeout, or at once when closed or overflowed."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self.closed and not self.overflowed:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self.closed or self.overflowed:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._items.clear()
            self._cond.notify_all()
        self._store._unsubscribe(self)


class ProductStore:
    """Products and inventory, in memory, thread-safe.

    Every change (create, decrement) gets the next sequence number and is
    pushed to each current subscriber, under the store lock, so subscribers
    see changes in the order they happened.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._products: dict[str, dict] = {}
        self._next_id = 1
        self._seq = 0  # number of the last change
        self._listeners: set[Subscription] = set()
        for name, price_cents, quantity in (
            ("Espresso beans 1kg", 2490, 10),
            ("Ceramic mug", 850, 25),
            ("Pour-over kettle", 3999, 1),
        ):
            self.create(name, price_cents, quantity)

    def list(self) -> list[dict]:
        with self._lock:
            return self._list_locked()

    def _list_locked(self) -> list[dict]:
        return [dict(p) for p in sorted(self._products.values(), key=lambda p: int(p["id"]))]

    def get(self, product_id: str) -> dict | None:
        with self._lock:
            p = self._products.get(product_id)
            return dict(p) if p else None

    def create(self, name: str, price_cents: int, quantity: int) -> dict:
        with self._lock:
            product_id = str(self._next_id)
            self._next_id += 1
            p = {"id": product_id, "name": name, "price_cents": price_cents, "quantity": quantity}
            self._products[product_id] = p
            self._publish_locked("created", p)
            return dict(p)

    def decrement(self, product_id: str) -> dict | None:
        """The updated product, None when unknown; raises OutOfStock at 0."""
        with self._lock:
            p = self._products.get(product_id)
            if p is None:
                return None
            if p["quantity"] <= 0:
                raise OutOfStock(product_id)
            p["quantity"] -= 1
            self._publish_locked("decremented", p)
            return dict(p)

    def _publish_locked(self, kind: str, product: dict) -> None:
        self._seq += 1
        event = {"seq": self._seq, "type": kind, "product": dict(product)}
        for sub in list(self._listeners):
            sub.push(event)

    def subscribe(self, limit: int = 1024) -> tuple[Subscription, list[dict], int]:
        """A new listener, with the snapshot and sequence number it starts
        from: every change after `seq` reaches the listener, none before."""
        sub = Subscription(self, limit)
        with self._lock:
            self._listeners.add(sub)
            return sub, self._list_locked(), self._seq

    def snapshot(self) -> tuple[list[dict], int]:
        """The products and the number of the last change, consistently."""
        with self._lock:
            return self._list_locked(), self._seq

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._listeners.discard(sub)

    def close_listeners(self) -> int:
        """Closes every subscription (on shutdown); returns how many there were."""
        with self._lock:
            subs = list(self._listeners)
        for sub in subs:
            sub.close()
        return len(subs)

    def stats(self) -> dict:
        with self._lock:
            return {"listeners": len(self._listeners), "last_event_id": self._seq}


# ---------------------------------------------------------------------------
# HTTP semantics on top of ForwardingReq / ForwardingResp.
# ---------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, body=None, headers: list[tuple[str, str]] | None = None,
                 content_type: str = "application/json", raw: bytes | None = None):
        self.status = status
        self.body = body  # JSON-serialisable, or None for an empty body
        self.headers = headers or []
        self.content_type = content_type
        self.raw = raw  # bytes sent as they are (instead of `body` as JSON)

    def body_bytes(self, method: str) -> bytes:
        if method == "HEAD":
            return b""
        if self.raw is not None:
            return self.raw
        if self.body is not None:
            return json.dumps(self.body).encode() + b"\n"
        return b""


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, {"error": message}, headers)


def method_not_allowed(allowed: str) -> Response:
    return error(405, "method not allowed", [("allow", allowed)])


def header(req, name: str) -> str | None:
    """First value of a request header (names arrive lower-case)."""
    for h in req.headers:
        if h.name == name:
            return h.value.decode("latin-1")
    return None


def header_text(value: bytes) -> str:
    """A header value for JSON: UTF-8, undecodable bytes replaced."""
    return value.decode("utf-8", "replace")


def upload_result(size: int, sha256_hex: str, trailers) -> Response:
    """The answer to POST /product/upload: byte count, SHA-256 and the request
    trailers (same-name fields joined with ", ", as RFC 9110 allows)."""
    out: dict = {"bytes": size, "sha256": sha256_hex}
    if trailers:
        fields: dict[str, str] = {}
        for t in trailers:
            v = header_text(t.value)
            fields[t.name] = f"{fields[t.name]}, {v}" if t.name in fields else v
        out["trailers"] = fields
    return Response(200, out)


SSE_HEADERS = [("cache-control", "no-cache")]


def sse_event(event: str, data, event_id: int | None = None) -> bytes:
    """One server-sent event (data is JSON on one line)."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def hello_event(snapshot: list[dict], seq: int) -> bytes:
    return sse_event("hello", {"products": snapshot}, seq)


def change_event(change: dict) -> bytes:
    return sse_event(change["type"], change["product"], change["seq"])


def parse_events_query(query: str) -> tuple[dict | None, str | None]:
    """`count` (events before the stream ends, hello and ticks included) and
    `interval_ms` (a `tick` event every so often) of GET /product/events."""
    try:
        q = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as e:
        return None, f"invalid query: {e}"
    out = {"count": None, "interval_ms": None}
    for name, minimum in (("count", 1), ("interval_ms", 10)):
        vals = q.get(name)
        if not vals:
            continue
        v = vals[-1]
        if not v.isdigit() or int(v) < minimum or int(v) > 10**9:
            return None, f"{name} must be an integer from {minimum} to 1000000000"
        out[name] = int(v)
    return out, None


def parse_new_product(req) -> tuple[dict | None, str | None]:
    ctype = header(req, "content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() not in ("application/json", ""):
        return None, "content-type must be application/json"
    try:
        data = json.loads(req.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return None, f"invalid JSON: {e}"
    if not isinstance(data, dict):
        return None, "body must be a JSON object {name, price_cents, quantity}"
    unknown = sorted(set(data) - {"name", "price_cents", "quantity"})
    if unknown:
        return None, f"unknown field {unknown[0]!r}"
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "name must be a non-empty string"
    for field in ("price_cents", "quantity"):
        v = data.get(field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return None, f"{field} must be a non-negative integer"
    return {"name": name.strip(), "price_cents": data["price_cents"], "quantity": data["quantity"]}, None


class ProductApp:
    """Routes one HTTP request (method + raw path) to the store."""

    def __init__(self, store: ProductStore, prefix: str = "/product") -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    def segments(self, path: str) -> list[str] | None:
        """The path's segments after the prefix, None when outside it."""
        path = path or "/"
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            return None
        return [urllib.parse.unquote(s) for s in path[len(self.prefix):].split("/") if s]

    def stream_kind(self, method: str, path: str) -> str:
        """How `Stream` handles a request: "events" (server-sent events),
        "upload" (body consumed chunk by chunk) or "buffered" (body collected,
        then `handle` as for `Send`)."""
        rest = self.segments(path)
        if rest == ["events"] and method in ("GET", "HEAD"):
            return "events"
        if rest == ["upload"] and method == "POST":
            return "upload"
        return "buffered"

    def handle(self, req) -> Response:
        """One complete request (body included) -> one response."""
        method = req.method
        rest = self.segments(req.path)
        if rest is None:
            return error(404, "not found")
        read = method in ("GET", "HEAD")

        if rest == ["events"]:  # /product/events, without streaming: the hello event only
            if not read:
                return method_not_allowed("GET, HEAD")
            _, problem = parse_events_query(req.query)
            if problem:
                return error(400, problem)
            snapshot, seq = self.store.snapshot()
            return Response(200, headers=list(SSE_HEADERS), content_type="text/event-stream",
                            raw=hello_event(snapshot, seq))

        if rest == ["events", "stats"]:  # /product/events/stats
            if not read:
                return method_not_allowed("GET, HEAD")
            return Response(200, self.store.stats())

        if rest == ["upload"]:  # /product/upload, body in one message
            if method != "POST":
                return method_not_allowed("POST")
            return upload_result(len(req.body), hashlib.sha256(req.body).hexdigest(), req.trailers)

        if not rest:  # /product
            if read:
                return Response(200, self.store.list())
            if method == "POST":
                fields, problem = parse_new_product(req)
                if problem:
                    return error(400, problem)
                p = self.store.create(**fields)
                return Response(201, p, [("location", f"{self.prefix}/{urllib.parse.quote(p['id'], safe='')}")])
            return method_not_allowed("GET, HEAD, POST")

        if len(rest) == 1:  # /product/{id}
            if not read:
                return method_not_allowed("GET, HEAD")
            p = self.store.get(rest[0])
            if p is None:
                return error(404, "product not found")
            cookie_path = f"Path={self.prefix}; SameSite=Lax"
            # Two set-cookie headers, in this order: the gateway must keep both.
            return Response(200, p, [
                ("set-cookie", f"last_viewed={urllib.parse.quote(p['id'], safe='')}; {cookie_path}"),
                ("set-cookie", f"last_viewed_name={urllib.parse.quote(p['name'], safe='')}; {cookie_path}"),
            ])

        if len(rest) == 2 and rest[1] == "decrement":  # /product/{id}/decrement
            if method != "PUT":
                return method_not_allowed("PUT")
            try:
                p = self.store.decrement(rest[0])
            except OutOfStock:
                return error(409, "out of stock")
            if p is None:
                return error(404, "product not found")
            return Response(200, p)

        return error(404, "not found")


# Largest request body `Stream` collects for an ordinary (buffered) handler;
# beyond it the answer is 413 at once. Uploads are not collected at all.
MAX_BUFFERED_BODY = 1 << 20


class Malformed(Exception):
    """The gateway broke the frame order of forwarding.proto's `Stream`."""


class Cancelled(Exception):
    """The call ended under us (the gateway cancelled it, or its deadline passed)."""


class RequestFrames:
    """Reads the gateway's `StreamRequest` frames in the order forwarding.proto
    prescribes: one `head`, then `body` chunks, then one `end`, then the
    half-close. Anything else raises Malformed; a cancelled call raises
    Cancelled."""

    def __init__(self, frames) -> None:
        self._frames = iter(frames)
        self.trailers: list = []
        self.finished = False  # `end` and the half-close were seen

    def _next(self):
        """The next frame, or None at the half-close."""
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except grpc.RpcError:  # grpcio's request iterator on a cancelled call
            raise Cancelled() from None

    def head(self):
        frame = self._next()
        if frame is None:
            raise Malformed("request stream closed before the head frame")
        kind = frame.WhichOneof("frame")
        if kind != "head":
            raise Malformed(f"the first frame must be head, got {kind or 'an empty frame'}")
        if frame.head.body or frame.head.trailers:
            raise Malformed("the head frame must not carry a body or trailers (send them as body and end frames)")
        return frame.head

    def chunks(self):
        """The request body chunk by chunk; `trailers` is set once it is done."""
        while True:
            frame = self._next()
            if frame is None:
                raise Malformed("request stream closed before the end frame")
            kind = frame.WhichOneof("frame")
            if kind == "body":
                if frame.body.data:  # never empty per the contract; tolerated
                    yield frame.body.data
            elif kind == "end":
                self.trailers = list(frame.end.trailers)
                break
            elif kind == "head":
                raise Malformed("a second head frame")
            elif kind in ("message", "close"):
                raise Malformed(f"a WebSocket {kind} frame on a stream that was not upgraded")
            else:
                raise Malformed("an empty frame of an unknown kind")
        frame = self._next()
        if frame is not None:
            raise Malformed(f"{frame.WhichOneof('frame') or 'an empty frame'} frame after end")
        self.finished = True


class EventStream:
    """Resources of one open GET /product/events: the store subscription and a
    slot among --max-event-streams. `close()` is idempotent and thread-safe;
    it runs when the generator ends and from the gRPC termination callback
    (cancellation), whichever comes first."""

    def __init__(self, sub: Subscription, slots: threading.Semaphore, path: str) -> None:
        self.sub = sub
        self._slots = slots
        self._path = path
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.sub.close()
        self._slots.release()
        log.info("event stream closed: %s", self._path)


class ForwardingServicer:
    """forwarding.v1.ForwardingService: one HTTP exchange per `Send`, or per
    `Stream` call as frames (see forwarding.proto)."""

    def __init__(self, pb2, app: ProductApp, instance_id: str, max_event_streams: int = 16,
                 heartbeat_s: float = 15.0) -> None:
        self.pb2 = pb2
        self.app = app
        self.instance_id = instance_id
        self.heartbeat_s = heartbeat_s
        self._event_slots = threading.Semaphore(max_event_streams)

    # -- shared -------------------------------------------------------------

    def _handle(self, req) -> Response:
        try:
            return self.app.handle(req)
        except Exception:  # a bug is still an HTTP answer: 500, gRPC OK
            log.exception("request failed: %s %s", req.method, req.path)
            return error(500, "internal error")

    def _headers(self, req, resp: Response) -> list:
        """content-type, x-request-id, x-served-by, then the endpoint's own."""
        request_id = header(req, "x-request-id") or (req.context.request_id if req.HasField("context") else "")
        headers = [("content-type", resp.content_type)]
        if request_id:
            headers.append(("x-request-id", request_id))
        headers.append(("x-served-by", self.instance_id))
        headers.extend(resp.headers)
        return [self.pb2.Header(name=n, value=v.encode("latin-1")) for n, v in headers]

    # -- Send -----------------------------------------------------------------

    def Send(self, req, context):  # noqa: N802 (gRPC method name)
        resp = self._handle(req)
        log.info("%s %s -> %d", req.method, req.path, resp.status)
        return self.pb2.ForwardingResp(
            status=resp.status,
            headers=self._headers(req, resp),
            body=resp.body_bytes(req.method),
        )

    # -- Stream ---------------------------------------------------------------

    def Stream(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        """Response frames for one exchange. A generator: grpcio sends each
        yielded frame as it is produced, and finishes the call with OK when
        the generator returns."""
        frames = RequestFrames(request_iterator)
        head = None
        state = {"head_sent": False}
        try:
            head = frames.head()
            if head.upgrade:
                # No body or end frame follows an upgrade head: answer at once.
                # Refusing is any status other than 101 (forwarding.proto).
                resp = error(501, f"upgrade to {head.upgrade!r} is not supported")
                yield from self._answer(head, resp, state)
                return
            kind = self.app.stream_kind(head.method, head.path)
            if kind == "events":
                yield from self._events(head, frames, context, state)
            elif kind == "upload":
                yield from self._upload(head, frames, state)
            else:
                yield from self._buffered(head, frames, state)
        except Cancelled:
            log.info("stream cancelled: %s %s", head.method if head else "?", head.path if head else "?")
        except Malformed as e:
            log.warning("malformed request stream: %s", e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request stream: {e}")
        except Exception:
            log.exception("stream failed: %s %s", head.method if head else "?", head.path if head else "?")
            if state["head_sent"] or head is None:
                # Too late for an HTTP answer: a non-OK status aborts the
                # client's response, so it is never mistaken for a whole one.
                context.abort(grpc.StatusCode.INTERNAL, "internal error")
            yield from self._answer(head, error(500, "internal error"), state)

    def _head_frame(self, req, resp: Response, state: dict):
        state["head_sent"] = True
        return self.pb2.StreamResponse(head=self.pb2.ForwardingResp(status=resp.status, headers=self._headers(req, resp)))

    def _body_frame(self, data: bytes):
        return self.pb2.StreamResponse(body=self.pb2.BodyChunk(data=data))

    def _end_frame(self):
        return self.pb2.StreamResponse(end=self.pb2.StreamEnd())

    def _answer(self, req, resp: Response, state: dict):
        """A complete response: head, the body as one chunk (if any), end."""
        log.info("%s %s -> %d (stream)", req.method, req.path, resp.status)
        yield self._head_frame(req, resp, state)
        data = resp.body_bytes(req.method)
        if data:
            yield self._body_frame(data)
        yield self._end_frame()

    def _buffered(self, head, frames: RequestFrames, state: dict):
        """An ordinary request: collect the body, then the same handler as Send."""
        body = bytearray()
        for chunk in frames.chunks():
            body += chunk
            if len(body) > MAX_BUFFERED_BODY:
                # Answered before the body is complete, as an HTTP server may.
                yield from self._answer(head, error(413, f"request body over {MAX_BUFFERED_BODY} bytes"), state)
                return
        req = self.pb2.ForwardingReq()
        req.CopyFrom(head)
        req.body = bytes(body)
        req.trailers.extend(frames.trailers)
        yield from self._answer(req, self._handle(req), state)

    def _upload(self, head, frames: RequestFrames, state: dict):
        """POST /product/upload: hash the body as it arrives, never holding it."""
        digest = hashlib.sha256()
        size = 0
        for chunk in frames.chunks():
            digest.update(chunk)
            size += len(chunk)
        yield from self._answer(head, upload_result(size, digest.hexdigest(), frames.trailers), state)

    def _events(self, head, frames: RequestFrames, context, state: dict):
        """GET /product/events: server-sent events, each its own body frame."""
        params, problem = parse_events_query(head.query)
        for _ in frames.chunks():  # a GET has no body; read up to end anyway
            pass
        if problem:
            yield from self._answer(head, error(400, problem), state)
            return
        if not self._event_slots.acquire(blocking=False):
            resp = error(503, "too many open event streams", [("retry-after", "1")])
            yield from self._answer(head, resp, state)
            return
        sub, snapshot, seq = self.app.store.subscribe()
        stream = EventStream(sub, self._event_slots, head.path)
        try:
            if not context.add_callback(stream.close):
                return  # the call is already over
            yield from self._event_frames(head, params, snapshot, seq, stream, context, state)
        finally:
            stream.close()

    def _event_frames(self, head, params: dict, snapshot, seq: int, stream: EventStream, context, state: dict):
        resp = Response(200, headers=list(SSE_HEADERS), content_type="text/event-stream")
        log.info("%s %s -> 200 (event stream, %s)", head.method, head.path, params)
        yield self._head_frame(head, resp, state)
        if head.method == "HEAD":
            yield self._end_frame()
            return
        count = params["count"]
        interval = params["interval_ms"] / 1000 if params["interval_ms"] else None
        now = time.monotonic()
        # End cleanly (OK) a little before the call's deadline (the route's
        # max_duration_ms), rather than being cut off by it.
        remaining = context.time_remaining()
        end_at = None
        if remaining is not None and remaining < 1e8:
            end_at = now + max(0.0, remaining - min(1.0, remaining / 4))
        next_tick = now + interval if interval else None
        ticks = 0
        sent = 0

        def frame(data: bytes):
            nonlocal sent, next_beat
            sent += 1
            next_beat = time.monotonic() + self.heartbeat_s if self.heartbeat_s else None
            return self._body_frame(data)

        next_beat = None
        yield frame(hello_event(snapshot, seq))
        sub = stream.sub
        while count is None or sent < count:
            now = time.monotonic()
            if end_at is not None and now >= end_at:
                break
            if next_tick is not None and now >= next_tick:
                ticks += 1
                next_tick = max(next_tick + interval, now)
                yield frame(sse_event("tick", {"n": ticks}))
                continue
            if next_beat is not None and now >= next_beat:
                # An SSE comment: keeps an idle stream under the gateway's
                # timeouts.stream_idle; not an event, not counted.
                yield self._body_frame(b": keep-alive\n\n")
                next_beat = now + self.heartbeat_s
                continue
            wakes = [t for t in (end_at, next_tick, next_beat) if t is not None]
            change = sub.get(max(0.0, min(wakes) - now) if wakes else None)
            if change is not None:
                yield frame(change_event(change))
            elif sub.overflowed:
                log.warning("event listener fell behind, ending its stream: %s", head.path)
                break
            elif sub.closed:
                if not context.is_active():
                    return  # cancelled: nobody reads an end frame
                break  # shutting down: end cleanly, the client reconnects elsewhere
        yield self._end_frame()


# ---------------------------------------------------------------------------
# Registration with the gateway (HTTP/JSON, urllib only).
# ---------------------------------------------------------------------------


class GatewayError(Exception):
    def __init__(self, status: int, body: dict | None, text: str):
        self.status = status
        self.body = body or {}
        err = self.body.get("error") if isinstance(self.body.get("error"), dict) else {}
        self.code = err.get("code", "")
        super().__init__(f"HTTP {status} {self.code or ''}: {err.get('message') or text}".strip())


class Registrar:
    """Registers, renews every lease/3 (re-registering on 404) and deregisters."""

    def __init__(self, gateway: str, registration: dict, token: str | None, timeout: float = 3.0):
        self.gateway = gateway.rstrip("/")
        self.registration = registration
        self.token = token
        self.timeout = timeout
        self.registered = False
        self.lease_ms = 0

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.gateway + path, data=data, method=method)
        req.add_header("accept", "application/json")
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            raise GatewayError(e.code, parsed if isinstance(parsed, dict) else None, text) from None

    def _key_path(self) -> str:
        q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
        return f"/v1/registrations/{q(self.registration['service'])}/{q(self.registration['instance_id'])}"

    def register(self) -> dict:
        out = self._call("PUT", "/v1/registrations", self.registration)
        self.registered = True
        self.lease_ms = int(out.get("lease_ms") or 30000)
        return out

    def renew(self) -> None:
        out = self._call("POST", self._key_path() + "/renew")
        self.lease_ms = int(out.get("lease_ms") or self.lease_ms)

    def deregister(self) -> bool:
        out = self._call("DELETE", self._key_path())
        self.registered = False
        return bool(out.get("existed"))

    def run(self, stop: threading.Event, on_first: callable, on_fatal: callable) -> None:
        """Keeps the instance registered until `stop` is set."""
        backoff_min, backoff_max = 0.2, 5.0
        backoff = backoff_min
        first = True
        renew_due = None  # monotonic time of the next renew
        while not stop.is_set():
            if not self.registered:
                try:
                    out = self.register()
                except GatewayError as e:
                    if first and e.status in (400, 401, 403):
                        log.error("registration refused, giving up: %s", e)
                        on_fatal(e)
                        return
                    log.warning("registration failed (retrying in %.1fs): %s", backoff, e)
                except (OSError, ValueError) as e:  # gateway not up yet, timeouts, bad JSON
                    log.warning("gateway %s unreachable (retrying in %.1fs): %s", self.gateway, backoff, e)
                else:
                    log.info("registered %s/%s at %s (created=%s, lease %d ms)", self.registration["service"],
                             out.get("instance_id"), self.registration["address"], out.get("created"), self.lease_ms)
                    backoff = backoff_min
                    renew_due = time.monotonic() + self.lease_ms / 3000
                    if first:
                        first = False
                        on_first()
                    continue
                stop.wait(backoff)
                backoff = min(backoff * 2, backoff_max)
                continue
            if stop.wait(max(0.0, renew_due - time.monotonic())):
                return
            try:
                self.renew()
            except GatewayError as e:
                if e.status == 404:
                    log.warning("gateway forgot this instance (%s): registering again", e)
                    self.registered = False
                    continue
                log.warning("renew failed (retrying in %.1fs): %s", backoff, e)
            except (OSError, ValueError) as e:
                log.warning("renew failed, gateway unreachable (retrying in %.1fs): %s", backoff, e)
            else:
                backoff = backoff_min
                renew_due = time.monotonic() + self.lease_ms / 3000
                continue
            renew_due = time.monotonic() + min(backoff, self.lease_ms / 3000)
            backoff = min(backoff * 2, backoff_max)


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def split_host_port(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"not host:port: {addr!r}")
    return host, int(port)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Product service: a forwarding.v1 backend.")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port to bind the gRPC server to (port 0 = any free port)")
    p.add_argument("--gateway", default="http://127.0.0.1:8090",
                   help="base URL of the gateway's registration listener; '' disables registration")
    p.add_argument("--advertise", default="",
                   help="host:port the gateway should dial (default: the bound address; 127.0.0.1 for a wildcard bind)")
    p.add_argument("--token", default=os.environ.get("REGISTRATION_TOKEN") or None,
                   help="registration token, sent as 'authorization: Bearer <token>' (default: $REGISTRATION_TOKEN)")
    p.add_argument("--name", default="product", help="service name; also the route prefix /<name>")
    p.add_argument("--instance-id", default="", help="instance id (default: <name>-<port>)")
    p.add_argument("--lease-ms", type=int, default=0, help="lease to ask for; 0 = the gateway's default")
    p.add_argument("--grace", type=float, default=5.0, help="seconds to let in-flight requests finish on shutdown")
    p.add_argument("--workers", type=int, default=32,
                   help="gRPC worker threads; every call in progress, open event streams included, holds one")
    p.add_argument("--max-event-streams", type=int, default=16,
                   help="open GET /<name>/events streams at most (503 beyond); must be below --workers")
    p.add_argument("--heartbeat-ms", type=int, default=15000,
                   help="send an SSE comment on an idle event stream this often; 0 = never")
    p.add_argument("--gen-only", action="store_true", help="(re)generate gen/ from the protos and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 1 <= args.max_event_streams < args.workers:
        raise SystemExit("--max-event-streams must be at least 1 and below --workers, "
                         "so ordinary requests always find a worker thread")
    if args.heartbeat_ms < 0:
        raise SystemExit("--heartbeat-ms must not be negative")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s product-service: %(message)s")
    if args.gen_only:
        print(ensure_generated(force=True))
        return 0

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    pb2, pb2_grpc = load_protos()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    try:
        port = server.add_insecure_port(args.listen)
    except RuntimeError as e:
        raise SystemExit(f"cannot bind {args.listen}: {e}")
    if not port:
        raise SystemExit(f"cannot bind {args.listen}")
    host, _ = split_host_port(args.listen)
    if args.advertise:
        advertise = args.advertise
    else:
        adv_host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
        advertise = f"{adv_host}:{port}"
    instance_id = args.instance_id or f"{args.name}-{port}"
    prefix = "/" + args.name

    store = ProductStore()
    app = ProductApp(store, prefix)
    # Also derived from the generated base class, so that an RPC added to the
    # contract later answers UNIMPLEMENTED instead of failing at startup.
    servicer_class = type("Servicer", (ForwardingServicer, pb2_grpc.ForwardingServiceServicer), {})
    servicer = servicer_class(pb2, app, instance_id, max_event_streams=args.max_event_streams,
                              heartbeat_s=args.heartbeat_ms / 1000)
    pb2_grpc.add_ForwardingServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for svc in ("", "forwarding.v1.ForwardingService"):
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    log.info("serving forwarding.v1.ForwardingService on %s (port %d), advertised as %s", args.listen, port, advertise)

    stop = threading.Event()
    fatal: list[Exception] = []

    def on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready():
        print(f"READY {advertise}", flush=True)

    registrar = None
    thread = None
    if args.gateway:
        registration = {
            "service": args.name,
            "instance_id": instance_id,
            "address": advertise,
            "routes": [{"path_prefix": prefix}, {"path_prefix": prefix + "/events", "stream": True}],
            "health": {"kind": "grpc"},
            "streaming": True,
        }
        if args.lease_ms:
            registration["lease_ms"] = args.lease_ms
        registrar = Registrar(args.gateway, registration, args.token)

        def on_fatal(e):
            fatal.append(e)
            stop.set()

        thread = threading.Thread(target=registrar.run, args=(stop, ready, on_fatal), name="registrar", daemon=True)
        thread.start()
    else:
        log.info("registration disabled (--gateway '')")
        ready()

    while not stop.wait(0.5):
        pass

    if thread is not None:
        thread.join(timeout=registrar.timeout + 1)
        if registrar.registered:
            try:
                existed = registrar.deregister()
                log.info("deregistered %s/%s (existed=%s)", args.name, instance_id, existed)
            except (GatewayError, OSError, ValueError) as e:
                log.warning("deregistration failed: %s", e)
    health_servicer.enter_graceful_shutdown()
    # Open event streams would otherwise last until the grace period is over
    # and then be cut off: end them cleanly now (SSE clients reconnect).
    closed = store.close_listeners()
    if closed:
        log.info("ended %d open event stream(s)", closed)
    server.stop(args.grace).wait()
    log.info("stopped")
    return 2 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())

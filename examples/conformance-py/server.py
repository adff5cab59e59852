#!/usr/bin/env python3
"""The conformance behaviour on the raw forwarding contract, in Python.

Implements proto/proto/forwarding/v1/CONFORMANCE.md directly on grpcio, the
way examples/product-service-py implements its API: `Send`, `Stream` and
`grpc.health.v1`, so `gateway-conformance` can check a Python backend.

    python3 server.py --listen 127.0.0.1:0
    # READY 127.0.0.1:43117
    gateway-conformance --target grpc://127.0.0.1:43117

Prints exactly one line to stdout, `READY <host:port>`, once serving; logs
go to stderr. Stops on SIGTERM / SIGINT. It does not register with a
gateway: it is a test backend.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import signal
import sys
import threading
from collections import OrderedDict
from concurrent import futures
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent



def _load_protos():
    """The product example already generates the protos on demand (into its
    git-ignored gen/); load its module under its own name and reuse that."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("product_service", HERE.parent / "product-service-py" / "server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.load_protos()


pb2, pb2_grpc = _load_protos()
log = logging.getLogger("conformance-py")

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_CALLS = 10_000


class Malformed(Exception):
    """A message that cannot be an HTTP request: INVALID_ARGUMENT."""


def check_fields(fields, what):
    for f in fields:
        if not TOKEN.match(f.name) or f.name != f.name.lower():
            raise Malformed(f"{what} {f.name!r}: invalid field name")
        if any(b in f.value for b in (b"\r", b"\n", b"\0")):
            raise Malformed(f"{what} {f.name!r}: control characters in the value")


def check_request(req):
    if not TOKEN.match(req.method):
        raise Malformed(f"invalid method {req.method!r}")
    if not req.path.startswith("/") or any(c in req.path for c in " \r\n#?"):
        raise Malformed(f"invalid path {req.path!r}")
    check_fields(req.headers, "header")
    check_fields(req.trailers, "trailer")


def pattern(start, n):
    base = bytes(range(251))
    off = start % 251
    return (base * ((off + n) // 251 + 1))[off:off + n]


class Calls:
    """Fates of calls made with `x-conformance-id`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records = OrderedDict()

    def start(self, cid):
        with self.lock:
            if len(self.records) >= MAX_CALLS:
                self.records.popitem(last=False)
            self.records[cid] = {"state": "running", "body_bytes_sent": 0}

    def update(self, cid, state=None, sent=0):
        with self.lock:
            r = self.records.get(cid)
            if r is not None:
                r["body_bytes_sent"] += sent
                if state:
                    r["state"] = state

    def get(self, cid):
        with self.lock:
            r = self.records.get(cid)
            return dict(r) if r else None


class Call:
    """One exchange: its controls' id, and whether grpcio ended it early.

    `context.add_callback` runs when the RPC terminates for any reason; if
    the answer was not finished by then, the caller cancelled or the
    deadline passed, and every wait below returns at once.
    """

    def __init__(self, calls, cid, context):
        self.calls, self.cid, self.finished = calls, cid, False
        self.gone = threading.Event()
        if cid:
            calls.start(cid)
        if not context.add_callback(self._terminated):
            self.gone.set()

    def _terminated(self):
        self.gone.set()
        if not self.finished and self.cid:
            self.calls.update(self.cid, state="cancelled")

    def wait(self, ms):
        """Sleeps ms; False when the call ended meanwhile."""
        return not self.gone.wait(ms / 1000) if ms else not self.gone.is_set()

    def sent(self, n):
        if self.cid:
            self.calls.update(self.cid, sent=n)

    def finish(self, state):
        self.finished = True
        if self.cid:
            self.calls.update(self.cid, state=state)


def field_arg(control, raw):
    name, sep, value = raw.partition(b":")
    if not sep or not TOKEN.match(name.decode("latin-1")):
        raise ValueError(f"{control}: expected 'name: value'")
    return name.decode("latin-1").lower(), value.lstrip(b" \t")


def controls(headers):
    """The control headers; ValueError names the bad one."""
    def one(name):
        vals = [h.value for h in headers if h.name == name]
        return vals[0] if vals else None

    def number(name):
        v = one(name)
        if v is None:
            return None
        if not v.strip().isdigit():
            raise ValueError(f"{name}: not a number")
        return int(v)

    status = number("x-conformance-status") or 200
    if not 200 <= status <= 599:
        raise ValueError("x-conformance-status: not 200-599")
    chunks = number("x-conformance-chunks") or 1
    if not 1 <= chunks <= 65536:
        raise ValueError("x-conformance-chunks: not 1-65536")
    cid = one("x-conformance-id")
    if cid is not None and not ID.match(cid.decode("latin-1")):
        raise ValueError("x-conformance-id: not 1-64 of [A-Za-z0-9._-]")
    return {
        "status": status,
        "headers": [field_arg("x-conformance-header", h.value) for h in headers if h.name == "x-conformance-header"],
        "trailers": [field_arg("x-conformance-trailer", h.value) for h in headers if h.name == "x-conformance-trailer"],
        "body_size": number("x-conformance-body-size"),
        "delay_ms": number("x-conformance-delay-ms") or 0,
        "chunks": chunks,
        "chunk_delay_ms": number("x-conformance-chunk-delay-ms") or 0,
        "id": cid.decode() if cid else None,
        "abort": one("x-conformance-abort") == b"1",
    }


def fields_json(fields):
    return [{"name": f.name, "value": f.value.hex()} for f in fields]


def json_answer(status, obj):
    return pb2.ForwardingResp(
        status=status,
        headers=[pb2.Header(name="content-type", value=b"application/json")],
        body=json.dumps(obj).encode(),
    )


class Conformance:
    def __init__(self):
        self.calls = Calls()

    def plan(self, req, body, trailers, context):
        """Either a complete answer (a ForwardingResp) or, for the echo,
        (call, head, parts, trailers, abort): parts is a generator of
        (delay_ms, bytes) made lazily, so a large body is never held whole."""
        if not req.path.startswith("/conformance"):
            return json_answer(404, {"error": "not found"})
        if req.path.startswith("/conformance/calls/") and req.method == "GET":
            cid = req.path[len("/conformance/calls/"):]
            r = self.calls.get(cid)
            if r is None:
                return json_answer(404, {"id": cid, "state": "unknown", "body_bytes_sent": 0})
            return json_answer(200, {"id": cid, **r})
        try:
            c = controls(req.headers)
        except ValueError as e:
            return json_answer(400, {"error": str(e)})
        call = Call(self.calls, c["id"], context)
        if c["delay_ms"]:
            deadline_ms = req.context.deadline_ms or None
            if deadline_ms is not None and c["delay_ms"] >= deadline_ms:
                call.wait(deadline_ms)
                call.finish("cancelled")
                return json_answer(504, {"error": "the deadline passed"})
            if not call.wait(c["delay_ms"]):
                return None
        head = pb2.ForwardingResp(status=c["status"])
        if c["body_size"] is None:
            content = json.dumps({
                "method": req.method, "path": req.path, "query": req.query,
                "has_query": req.has_query, "headers": fields_json(req.headers),
                "trailers": fields_json(trailers), "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "deadline_ms": req.context.deadline_ms, "request_id": req.context.request_id,
            }).encode()
            head.headers.append(pb2.Header(name="content-type", value=b"application/json"))
            size, make = len(content), lambda a, b: content[a:b]
        else:
            size, make = c["body_size"], lambda a, b: pattern(a, b - a)
        for name, value in c["headers"]:
            head.headers.append(pb2.Header(name=name, value=value))
        k = c["chunks"]
        parts = ((c["chunk_delay_ms"] if i else 0, make(i * size // k, (i + 1) * size // k)) for i in range(k))
        resp_trailers = [pb2.Header(name=n, value=v) for n, v in c["trailers"]]
        return call, head, parts, resp_trailers, c["abort"]


class Servicer(pb2_grpc.ForwardingServiceServicer):
    def __init__(self, behaviour):
        self.b = behaviour

    def Send(self, req, context):  # noqa: N802 (gRPC method name)
        try:
            check_request(req)
        except Malformed as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        plan = self.b.plan(req, req.body, req.trailers, context)
        if plan is None or isinstance(plan, pb2.ForwardingResp):
            return plan or pb2.ForwardingResp()
        call, head, parts, trailers, abort = plan
        for delay, data in parts:
            if not call.wait(delay):
                return pb2.ForwardingResp()
            head.body += data
            call.sent(len(data))
        if abort:
            call.finish("aborted")
            context.abort(grpc.StatusCode.INTERNAL, "aborted as asked (x-conformance-abort)")
        head.trailers.extend(trailers)
        call.finish("completed")
        return head

    def Stream(self, request_iterator, context):  # noqa: N802 (gRPC method name)
        def bad(msg):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Stream: {msg}")

        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("frame") != "head":
                bad("the first frame must be `head`")
            req = first.head
            try:
                check_request(req)
            except Malformed as e:
                bad(str(e))
            if req.trailers:
                bad("trailers in `head` (they belong in `end`)")
            if req.upgrade:
                # No WebSocket here: refuse the upgrade with an answer.
                yield pb2.StreamResponse(head=json_answer(501, {"error": "websocket not supported"}))
                return
            body, trailers = bytearray(req.body), None
            # Read to the half-close, checking the order all along (the
            # gateway half-closes right after `end`).
            for frame in request_iterator:
                kind = frame.WhichOneof("frame")
                if kind == "body" and trailers is None:
                    body += frame.body.data
                elif kind == "end" and trailers is None:
                    try:
                        check_fields(frame.end.trailers, "trailer")
                    except Malformed as e:
                        bad(str(e))
                    trailers = list(frame.end.trailers)
                elif kind in ("body", "end"):
                    bad(f"a `{kind}` frame after `end`")
                elif kind == "head":
                    bad("a second `head` frame")
                else:
                    bad(f"a `{kind}` frame in an exchange that is not a WebSocket")
            if trailers is None:
                bad("the request stream was half-closed before its `end` frame")
        except grpc.RpcError:
            return  # cancelled while reading
        plan = self.b.plan(req, bytes(body), trailers, context)
        if plan is None:
            return
        if isinstance(plan, pb2.ForwardingResp):
            yield pb2.StreamResponse(head=pb2.ForwardingResp(status=plan.status, headers=plan.headers))
            yield pb2.StreamResponse(body=pb2.BodyChunk(data=plan.body))
            yield pb2.StreamResponse(end=pb2.StreamEnd())
            return
        call, head, parts, resp_trailers, abort = plan
        yield pb2.StreamResponse(head=head)
        for delay, data in parts:
            if not call.wait(delay):
                return
            if data:
                # grpcio sends a yielded frame before asking for the next:
                # a caller that does not read holds this generator here.
                yield pb2.StreamResponse(body=pb2.BodyChunk(data=data))
                call.sent(len(data))
        if abort:
            call.finish("aborted")
            context.abort(grpc.StatusCode.INTERNAL, "aborted as asked (x-conformance-abort)")
        yield pb2.StreamResponse(end=pb2.StreamEnd(trailers=resp_trailers))
        call.finish("completed")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    port = server.add_insecure_port(args.listen)
    pb2_grpc.add_ForwardingServiceServicer_to_server(Servicer(Conformance()), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for svc in ("", "forwarding.v1.ForwardingService"):
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    host = args.listen.rsplit(":", 1)[0]
    print(f"READY {host}:{port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(2).wait()


if __name__ == "__main__":
    main()

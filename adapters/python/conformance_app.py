"""The conformance behaviour (proto/proto/forwarding/v1/CONFORMANCE.md) as an
ordinary Starlette app, served through the adapter.

Everything here is plain Starlette/ASGI: routes, `Request`, a `Response`
subclass whose `__call__` sends the answer in parts (and trailers through
the ASGI `http.response.trailers` extension). What HTTP has no place for
(`has_query`, `deadline_ms`, `request_id`, request trailers) comes from the
adapter's `forwarding` scope extension.

    python conformance_app.py --listen 127.0.0.1:0      # READY 127.0.0.1:PORT
    gateway-conformance --target grpc://127.0.0.1:PORT
    gateway-conformance --backend-cmd 'python conformance_app.py --gateway {registry}'
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import re
import sys
from collections import OrderedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_CALLS = 10_000

# id -> {"state", "body_bytes_sent"}; one event loop, so no lock.
calls: OrderedDict[str, dict] = OrderedDict()


def pattern(start: int, n: int) -> bytes:
    off = start % 251
    return (bytes(range(251)) * ((off + n) // 251 + 1))[off:off + n]


def field_arg(control: str, raw: bytes) -> tuple[bytes, bytes]:
    name, sep, value = raw.partition(b":")
    if not sep or not TOKEN.match(name):
        raise ValueError(f"{control}: expected 'name: value'")
    return name.lower(), value.lstrip(b" \t")


def controls(headers: list[tuple[bytes, bytes]]) -> dict:
    """The x-conformance-* request headers; ValueError names a bad one."""
    def one(name: bytes):
        return next((v for n, v in headers if n == name), None)

    def number(name: str):
        v = one(name.encode())
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
    cid = one(b"x-conformance-id")
    if cid is not None and not ID.match(cid.decode("latin-1")):
        raise ValueError("x-conformance-id: not 1-64 of [A-Za-z0-9._-]")
    return {
        "status": status,
        "headers": [field_arg("x-conformance-header", v) for n, v in headers if n == b"x-conformance-header"],
        "trailers": [field_arg("x-conformance-trailer", v) for n, v in headers if n == b"x-conformance-trailer"],
        "body_size": number("x-conformance-body-size"),
        "delay_ms": number("x-conformance-delay-ms") or 0,
        "chunks": chunks,
        "chunk_delay_ms": number("x-conformance-chunk-delay-ms") or 0,
        "id": cid.decode() if cid else None,
        "abort": one(b"x-conformance-abort") == b"1",
    }


class Aborted(Exception):
    """x-conformance-abort: fail the call after the head and the body."""


class PartsResponse(Response):
    """An answer sent in parts, with optional trailers, recording its fate."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], size: int, make, chunks: int,
                 chunk_delay_ms: int, trailers: list[tuple[bytes, bytes]], abort: bool, cid: str | None):
        self.status_code = status
        self.raw_headers = headers
        self.size, self.make, self.chunks, self.chunk_delay = size, make, chunks, chunk_delay_ms / 1000
        self.trailers, self.abort, self.cid = trailers, abort, cid
        self.background = None

    def record(self, state: str | None = None, sent: int = 0) -> None:
        r = calls.get(self.cid) if self.cid else None
        if r is not None:
            r["body_bytes_sent"] += sent
            if state:
                r["state"] = state

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers, "trailers": bool(self.trailers)})
            k, size = self.chunks, self.size
            for i in range(k):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                data = self.make(i * size // k, (i + 1) * size // k)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    self.record(sent=len(data))
            if self.abort:
                self.record("aborted")
                raise Aborted("aborted as asked (x-conformance-abort)")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if self.trailers:
                await send({"type": "http.response.trailers", "headers": self.trailers, "more_trailers": False})
            self.record("completed")
        except asyncio.CancelledError:
            self.record("cancelled")
            raise


def start_record(cid: str | None) -> None:
    if cid:
        if len(calls) >= MAX_CALLS:
            calls.popitem(last=False)
        calls[cid] = {"state": "running", "body_bytes_sent": 0}


async def call_state(request: Request) -> JSONResponse:
    cid = request.path_params["id"]
    r = calls.get(cid)
    if r is None:
        return JSONResponse({"id": cid, "state": "unknown", "body_bytes_sent": 0}, status_code=404)
    return JSONResponse({"id": cid, **r})


def hexed(fields) -> list[dict]:
    return [{"name": n.decode("latin-1"), "value": v.hex()} for n, v in fields]


async def echo(request: Request) -> Response:
    headers = request.scope["headers"]
    try:
        c = controls(headers)
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    start_record(c["id"])
    try:
        body = await request.body()
        if c["delay_ms"]:
            await asyncio.sleep(c["delay_ms"] / 1000)
    except asyncio.CancelledError:
        if c["id"]:
            calls[c["id"]]["state"] = "cancelled"
        raise
    fwd = request.scope["extensions"]["forwarding"]
    if c["body_size"] is None:
        content = json.dumps({
            "method": request.method,
            "path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "has_query": fwd["has_query"],
            "headers": hexed(headers),
            "trailers": hexed(fwd["request_trailers"]),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "deadline_ms": fwd["deadline_ms"],
            "request_id": fwd["request_id"],
        }).encode()
        out_headers = [(b"content-type", b"application/json")]
        size, make = len(content), lambda a, b: content[a:b]
    else:
        out_headers = []
        size, make = c["body_size"], lambda a, b: pattern(a, b - a)
    out_headers += c["headers"]
    return PartsResponse(c["status"], out_headers, size, make, c["chunks"], c["chunk_delay_ms"],
                         c["trailers"], c["abort"], c["id"])


async def not_found(request: Request, exc) -> JSONResponse:
    return JSONResponse({"error": "not found"}, status_code=404)


class AnyMethod:
    """A Starlette endpoint for every method, extension tokens included:
    function endpoints default to GET, an ASGI app as endpoint to all."""

    def __init__(self, endpoint) -> None:
        self.app = request_response(endpoint)

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


app = Starlette(
    routes=[
        Route("/conformance/calls/{id}", call_state, methods=["GET"]),
        Route("/conformance{rest:path}", AnyMethod(echo)),
    ],
    exception_handlers={404: not_found},
)


def main() -> None:
    from forwarding_adapter import Config, run

    p = argparse.ArgumentParser(description="The conformance behaviour as a Starlette app, through the adapter.")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--gateway", default="", help="registration API base URL; '' serves without registering")
    p.add_argument("--service", default="conformance")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    run(app, Config(listen=a.listen, gateway=a.gateway or None, service=a.service,
                    stream_routes=["/conformance"]))


if __name__ == "__main__":
    main()

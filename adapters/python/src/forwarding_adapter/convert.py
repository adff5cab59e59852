"""ForwardingReq -> ASGI scope / WSGI environ, and the checks before either.

Pure functions, no I/O: the servicers in `asgi.py` and `wsgi.py` call them,
and the unit tests exercise them without a socket.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from typing import Any, Iterable

from ._pb import forwarding_pb2 as pb

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# A deadline this large is a negative number to every reader that takes the
# uint64 as signed (Go, Java, C): refuse it rather than guess.
MAX_DEADLINE_MS = (1 << 63) - 1

HTTP_VERSIONS = {
    pb.HTTP_VERSION_HTTP_0_9: "1.0",  # ASGI knows no 0.9
    pb.HTTP_VERSION_HTTP_1_0: "1.0",
    pb.HTTP_VERSION_HTTP_1_1: "1.1",
    pb.HTTP_VERSION_HTTP_2: "2",
    pb.HTTP_VERSION_HTTP_3: "3",
}

# The scope extension the adapter adds; see README "What the app sees".
EXTENSION = "forwarding"


class Malformed(ValueError):
    """A ForwardingReq that cannot be an HTTP request: INVALID_ARGUMENT."""


def check_fields(fields: Iterable[pb.Header], what: str) -> None:
    for f in fields:
        if not TOKEN.match(f.name) or f.name != f.name.lower():
            raise Malformed(f"{what} name {f.name!r} is not a lower-case token")
        if b"\r" in f.value or b"\n" in f.value or b"\0" in f.value:
            raise Malformed(f"{what} {f.name!r}: CR, LF or NUL in the value")


def check_request(req: pb.ForwardingReq) -> None:
    """Raises Malformed naming the first thing that is not HTTP."""
    if not TOKEN.match(req.method):
        raise Malformed(f"method {req.method!r} is not a token")
    if not req.path.startswith("/") or any(c in req.path for c in " \r\n\0#?"):
        raise Malformed(f"path {req.path!r} is not an origin-form path")
    if any(c in req.query for c in " \r\n\0#"):
        raise Malformed(f"query {req.query!r} has characters a request target cannot hold")
    if req.context.deadline_ms > MAX_DEADLINE_MS:
        raise Malformed(f"deadline_ms {req.context.deadline_ms} is negative as a signed 64-bit number")
    check_fields(req.headers, "header")
    check_fields(req.trailers, "trailer")


def _host_port(authority: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority.partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        host += "]"
    else:
        host, sep, port = authority.rpartition(":")
        if not sep:
            host, port = authority, ""
    return host or "localhost", int(port) if port.isdigit() else default


def _client(req: pb.ForwardingReq) -> tuple[str, int] | None:
    """The peer the gateway accepted: the last of the client addresses."""
    if not req.context.client_addresses:
        return None
    addr = req.context.client_addresses[-1]
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
    elif addr.count(":") == 1:
        host, _, port = addr.partition(":")
    else:  # a bare IPv4 or IPv6 address
        host, port = addr, ""
    return host, int(port) if port.isdigit() else 0


def asgi_scope(req: pb.ForwardingReq, trailers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI HTTP scope of a request.

    `path` is the percent-decoded path as UTF-8 text (ASGI's rule), `raw_path`
    the bytes as received. `trailers` is the list the adapter fills with the
    request trailers once the body is complete (on Send: already filled).
    """
    raw_path = req.path.encode("latin-1", "strict") if req.path.isascii() else req.path.encode()
    scheme = req.scheme or "http"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": HTTP_VERSIONS.get(req.version, "1.1"),
        "method": req.method,
        "scheme": scheme,
        "path": urllib.parse.unquote(req.path, errors="surrogateescape"),
        "raw_path": raw_path,
        "query_string": req.query.encode(),
        "root_path": "",
        "headers": [(h.name.encode(), h.value) for h in req.headers],
        "client": _client(req),
        "server": _host_port(req.authority, scheme),
        "state": {},
        "extensions": {
            "http.response.trailers": {},
            EXTENSION: forwarding_extension(req, trailers),
        },
    }


def forwarding_extension(req: pb.ForwardingReq, trailers: list) -> dict[str, Any]:
    """What HTTP frameworks have no place for: the gateway's facts."""
    return {
        "has_query": req.has_query,
        "request_id": req.context.request_id,
        "deadline_ms": req.context.deadline_ms,
        "client_addresses": list(req.context.client_addresses),
        "traceparent": req.context.traceparent,
        "service": req.context.service,
        "matched_prefix": req.context.matched_prefix,
        "request_trailers": trailers,
        "request": req,
    }


def wsgi_environ(req: pb.ForwardingReq, body: bytes, trailers: list) -> dict[str, Any]:
    """The PEP 3333 environ of a request with its whole body.

    CONTENT_LENGTH is the body's length (the gateway de-chunks, so a chunked
    request has none of its own, and WSGI frameworks read no more than it).

    Header fields of one name are joined with ", " (CGI has one variable per
    name; `cookie` with "; "). The exact fields, in order, are in
    environ["forwarding.request"].headers.
    """
    import sys

    scheme = req.scheme or "http"
    host, port = _host_port(req.authority, scheme)
    version = HTTP_VERSIONS.get(req.version, "1.1")
    env: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        # PEP 3333: the decoded bytes, as a latin-1 "native string".
        "PATH_INFO": urllib.parse.unquote_to_bytes(req.path).decode("latin-1"),
        "QUERY_STRING": req.query,
        "RAW_URI": req.path + ("?" + req.query if req.has_query else ""),
        "REQUEST_URI": req.path + ("?" + req.query if req.has_query else ""),
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + (version if "." in version else version + ".0"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "forwarding.request": req,
        "forwarding.request_trailers": trailers,
        "forwarding.has_query": req.has_query,
        "forwarding.deadline_ms": req.context.deadline_ms,
        "forwarding.request_id": req.context.request_id,
    }
    client = _client(req)
    if client:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = client[0], str(client[1])
    joined: dict[str, list[str]] = {}
    for h in req.headers:
        joined.setdefault(h.name, []).append(h.value.decode("latin-1"))
    for name, values in joined.items():
        value = ("; " if name == "cookie" else ", ").join(values)
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name == "content-length":
            pass  # the body's own length, below
        else:
            env["HTTP_" + name.upper().replace("-", "_")] = value
    env["CONTENT_LENGTH"] = str(len(body))
    return env


def to_fields(headers: Iterable[tuple[bytes | str, bytes | str]]) -> list[pb.Header]:
    """ASGI/WSGI header pairs -> contract fields (names lower-cased)."""
    out = []
    for name, value in headers:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        out.append(pb.Header(name=name.lower(), value=value))
    return out


def from_fields(fields: Iterable[pb.Header]) -> list[tuple[bytes, bytes]]:
    return [(f.name.encode(), f.value) for f in fields]


def wsgi_status(status: str) -> int:
    """'200 OK' -> 200; ValueError for anything else."""
    code = status.split(" ", 1)[0]
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"WSGI status {status!r} does not start with three digits")
    return int(code)

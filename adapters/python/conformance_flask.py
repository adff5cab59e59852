"""The conformance behaviour as an ordinary Flask (WSGI) app, through the adapter.

Shows what the kit sees of the WSGI side (README "Limits"): no response
trailers (PEP 3333 has none). Control-header parsing is shared with the
Starlette app (conformance_app.py).

    python conformance_flask.py --listen 127.0.0.1:0     # READY 127.0.0.1:PORT
    gateway-conformance --target grpc://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
from collections import OrderedDict

from flask import Flask, Response, request
from werkzeug.routing import BaseConverter, Rule

from conformance_app import MAX_CALLS, controls, pattern

lock = threading.Lock()
calls: OrderedDict[str, dict] = OrderedDict()


def record(cid, state=None, sent=0):
    if not cid:
        return
    with lock:
        r = calls.get(cid)
        if r is not None:
            r["body_bytes_sent"] += sent
            if state:
                r["state"] = state


class AnyPath(BaseConverter):
    """Any rest of the path, `//` and an empty one included (`path` needs a
    first segment)."""

    regex = ".*"
    part_isolating = False


app = Flask(__name__)
app.url_map.merge_slashes = False  # `//` is a path of its own, not a redirect
app.url_map.converters["any_path"] = AnyPath


@app.get("/conformance/calls/<cid>")
def call_state(cid):
    with lock:
        r = calls.get(cid)
        r = dict(r) if r else None
    if r is None:
        return {"id": cid, "state": "unknown", "body_bytes_sent": 0}, 404
    return {"id": cid, **r}


def echo(rest):
    env = request.environ
    fields = [(h.name.encode(), h.value) for h in env["forwarding.request"].headers]  # exact, in order
    try:
        c = controls(fields)
    except ValueError as e:
        return {"error": str(e)}, 400
    cid, cancelled = c["id"], env["forwarding.cancelled"]
    if cid:
        with lock:
            if len(calls) >= MAX_CALLS:
                calls.popitem(last=False)
            calls[cid] = {"state": "running", "body_bytes_sent": 0}
    body = request.get_data()
    if c["delay_ms"] and cancelled.wait(c["delay_ms"] / 1000):
        record(cid, "cancelled")
        return "", 504
    if c["body_size"] is None:
        raw = env["RAW_URI"]
        content = json.dumps({
            "method": request.method,
            "path": raw.split("?", 1)[0],
            "query": env["QUERY_STRING"],
            "has_query": env["forwarding.has_query"],
            "headers": [{"name": n.decode(), "value": v.hex()} for n, v in fields],
            "trailers": [{"name": n.decode(), "value": v.hex()} for n, v in env["forwarding.request_trailers"]],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "deadline_ms": env["forwarding.deadline_ms"],
            "request_id": env["forwarding.request_id"],
        }).encode()
        headers = [("content-type", "application/json")]
        size, make = len(content), lambda a, b: content[a:b]
    else:
        headers = []
        size, make = c["body_size"], lambda a, b: pattern(a, b - a)
    headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in c["headers"]]

    def parts():
        k = c["chunks"]
        try:
            for i in range(k):
                if i and c["chunk_delay_ms"] and cancelled.wait(c["chunk_delay_ms"] / 1000):
                    record(cid, "cancelled")
                    return
                data = make(i * size // k, (i + 1) * size // k)
                if data:
                    yield data
                    record(cid, sent=len(data))
            if c["abort"]:
                record(cid, "aborted")
                raise RuntimeError("aborted as asked (x-conformance-abort)")
            record(cid, "completed")
        except GeneratorExit:  # the adapter closed us: the call ended
            record(cid, "cancelled")
            raise

    resp = Response(parts(), status=c["status"])
    resp.headers.clear()  # no default content type: only what was asked for
    for name, value in headers:
        resp.headers.add(name, value)
    return resp


app.url_map.add(Rule("/conformance<any_path:rest>", endpoint="echo"))  # every method, extensions too
app.view_functions["echo"] = echo


def main() -> None:
    from forwarding_adapter import Config, run

    p = argparse.ArgumentParser(description="The conformance behaviour as a Flask app, through the adapter.")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--gateway", default="")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    run(app, Config(listen=a.listen, gateway=a.gateway or None, service="conformance",
                    stream_routes=["/conformance"]))


if __name__ == "__main__":
    main()

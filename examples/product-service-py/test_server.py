"""Tests of the product service: the forwarding contract over real gRPC, the
health service, and registration against a fake gateway (stdlib HTTP).

    python3 -m pytest examples/product-service-py -q
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
SERVER = HERE / "server.py"

_spec = importlib.util.spec_from_file_location("product_service_server", SERVER)
product_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(product_server)
pb2, pb2_grpc = product_server.load_protos()


class Proc:
    """server.py in a subprocess; stdout is read for the READY line."""

    def __init__(self, *args: str):
        self.log = tempfile.NamedTemporaryFile(prefix="product-service-", suffix=".log", delete=False)
        self.p = subprocess.Popen(
            [sys.executable, str(SERVER), *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.address = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)
            if line.startswith("READY ") and not self._ready.is_set():
                self.address = line.split(" ", 1)[1].strip()
                self._ready.set()

    def stderr(self) -> str:
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not READY (exit {self.p.poll()}):\n{self.stderr()}")
        return self.address

    def terminate(self, timeout: float = 15.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            pytest.fail(f"server did not stop on SIGTERM:\n{self.stderr()}")

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        os.unlink(self.log.name)


@pytest.fixture(scope="module")
def server():
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", "")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.address)
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def send(channel):
    stub = pb2_grpc.ForwardingServiceStub(channel)

    def call(method: str, path: str, body: bytes = b"", headers=(), request_id: str = "req-1"):
        hdrs = [pb2.Header(name="host", value=b"gateway.test")]
        hdrs += [pb2.Header(name=n, value=v.encode()) for n, v in headers]
        if request_id:
            hdrs.append(pb2.Header(name="x-request-id", value=request_id.encode()))
        req = pb2.ForwardingReq(
            protocol_version=1,
            method=method,
            scheme="http",
            authority="gateway.test",
            path=path,
            version=pb2.HTTP_VERSION_HTTP_1_1,
            headers=hdrs,
            body=body,
            context=pb2.RequestContext(request_id=request_id or "gw-generated", service="product", matched_prefix="/product"),
        )
        return stub.Send(req, timeout=5)

    return call


def hdrs(resp) -> list[tuple[str, str]]:
    return [(h.name, h.value.decode()) for h in resp.headers]


def values(resp, name: str) -> list[str]:
    return [v for n, v in hdrs(resp) if n == name]


def body(resp):
    return json.loads(resp.body)


def test_ready_line_names_the_bound_port(server):
    host, port = server.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert server.lines[0] == f"READY {server.address}\n"


def test_list_products(send):
    r = send("GET", "/product")
    assert r.status == 200
    products = body(r)
    assert [p["id"] for p in products][:3] == ["1", "2", "3"]
    for p in products:
        assert set(p) == {"id", "name", "price_cents", "quantity"}
    assert send("GET", "/product/").status == 200


def test_get_product_and_headers(send):
    r = send("GET", "/product/1", request_id="abc-123")
    assert r.status == 200
    p = body(r)
    assert p["id"] == "1" and isinstance(p["name"], str) and isinstance(p["price_cents"], int)
    h = hdrs(r)
    assert h[0] == ("content-type", "application/json")
    assert values(r, "x-request-id") == ["abc-123"]
    assert values(r, "x-served-by")[0].startswith("product-")
    cookies = values(r, "set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("last_viewed=1;") and cookies[1].startswith("last_viewed_name=")
    assert not r.trailers


def test_request_id_falls_back_to_context(send):
    r = send("GET", "/product/2", request_id="")
    assert values(r, "x-request-id") == ["gw-generated"]


def test_unknown_product_is_404_json(send):
    r = send("GET", "/product/999")
    assert r.status == 404
    assert values(r, "content-type") == ["application/json"]
    assert "error" in body(r)


def test_decrement_until_out_of_stock(send):
    before = body(send("GET", "/product/3"))["quantity"]
    assert before >= 1
    for expected in range(before - 1, -1, -1):
        r = send("PUT", "/product/3/decrement")
        assert r.status == 200, r.body
        assert body(r)["quantity"] == expected
    r = send("PUT", "/product/3/decrement")
    assert r.status == 409
    assert body(r) == {"error": "out of stock"}
    assert body(send("GET", "/product/3"))["quantity"] == 0
    assert send("PUT", "/product/999/decrement").status == 404


def test_create_product(send):
    new = {"name": "Milk frother", "price_cents": 1999, "quantity": 4}
    r = send("POST", "/product", json.dumps(new).encode(), headers=[("content-type", "application/json")])
    assert r.status == 201, r.body
    p = body(r)
    assert {k: p[k] for k in new} == new
    assert values(r, "location") == [f"/product/{p['id']}"]
    got = send("GET", values(r, "location")[0])
    assert got.status == 200 and body(got) == p
    assert p["id"] in [x["id"] for x in body(send("GET", "/product"))]


@pytest.mark.parametrize("raw", [
    b"{",
    b"[]",
    b'{"name": "x", "price_cents": 1}',
    b'{"name": "", "price_cents": 1, "quantity": 1}',
    b'{"name": "x", "price_cents": -1, "quantity": 1}',
    b'{"name": "x", "price_cents": 1, "quantity": true}',
    b'{"name": "x", "price_cents": 1, "quantity": 1, "colour": "red"}',
])
def test_create_rejects_bad_bodies(send, raw):
    r = send("POST", "/product", raw, headers=[("content-type", "application/json")])
    assert r.status == 400
    assert "error" in body(r)


def test_unknown_paths_and_methods(send):
    for method, path, status, allow in [
        ("GET", "/", 404, None),
        ("GET", "/products", 404, None),
        ("GET", "/product/1/nope", 404, None),
        ("DELETE", "/product", 405, "GET, HEAD, POST"),
        ("POST", "/product/1", 405, "GET, HEAD"),
        ("GET", "/product/1/decrement", 405, "PUT"),
    ]:
        r = send(method, path)
        assert r.status == status, (method, path)
        assert values(r, "content-type") == ["application/json"]
        assert "error" in body(r)
        if allow:
            assert values(r, "allow") == [allow]


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for svc in ("", "forwarding.v1.ForwardingService"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------
# ForwardingService.Stream
# ---------------------------------------------------------------------------


def make_req(method: str, path: str, query: str = "", headers=(), request_id: str = "req-1", **kw):
    hdrs = [pb2.Header(name="host", value=b"gateway.test")]
    hdrs += [pb2.Header(name=n, value=v.encode()) for n, v in headers]
    if request_id:
        hdrs.append(pb2.Header(name="x-request-id", value=request_id.encode()))
    return pb2.ForwardingReq(
        protocol_version=1, method=method, scheme="http", authority="gateway.test", path=path,
        query=query, has_query=bool(query), version=pb2.HTTP_VERSION_HTTP_1_1, headers=hdrs,
        context=pb2.RequestContext(request_id=request_id or "gw-generated", service="product",
                                   matched_prefix="/product"),
        **kw,
    )


def head(req):
    return pb2.StreamRequest(head=req)


def chunk(data: bytes):
    return pb2.StreamRequest(body=pb2.BodyChunk(data=data))


def end(*trailers):
    return pb2.StreamRequest(end=pb2.StreamEnd(trailers=[pb2.Header(name=n, value=v.encode()) for n, v in trailers]))


@pytest.fixture(scope="module")
def stub(channel):
    return pb2_grpc.ForwardingServiceStub(channel)


def exchange(stub, frames, timeout: float = 10):
    """Sends all `frames` then half-closes; returns (response frames, gRPC code, details)."""
    call = stub.Stream(iter(list(frames)), timeout=timeout)
    out = []
    try:
        for f in call:
            out.append(f)
    except grpc.RpcError:
        pass
    return out, call.code(), call.details()


def assemble(frames):
    """Checks the response frame order (head, body*, end?) and returns
    (head, body bytes, trailers)."""
    kinds = [f.WhichOneof("frame") for f in frames]
    assert kinds and kinds[0] == "head", kinds
    assert all(k == "body" for k in kinds[1:-1]), kinds
    assert kinds[-1] in ("head", "body", "end"), kinds
    h = frames[0].head
    assert not h.body and not h.trailers
    data = b"".join(f.body.data for f in frames if f.WhichOneof("frame") == "body")
    trailers = list(frames[-1].end.trailers) if kinds[-1] == "end" else []
    return h, data, trailers


class OpenStream:
    """A Stream call the test drives frame by frame. Response frames are read
    by a thread into a queue; `next()` waits for one with a deadline."""

    def __init__(self, stub, timeout: float = 30):
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.call = stub.Stream(self._feed(), timeout=timeout)
        threading.Thread(target=self._read, daemon=True).start()

    def _feed(self):
        while True:
            f = self._requests.get()
            if f is None:
                return
            yield f

    def _read(self):
        try:
            for f in self.call:
                self._responses.put(f)
        except grpc.RpcError:
            pass
        self._responses.put(None)

    def send(self, *frames):
        for f in frames:
            self._requests.put(f)

    def half_close(self):
        self._requests.put(None)

    def next(self, timeout: float = 5):
        """The next response frame; None once the call is over."""
        try:
            return self._responses.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no response frame within {timeout}s")

    def cancel(self):
        self.call.cancel()
        self._requests.put(None)


def wait_until(pred, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("method,path,query", [
    ("GET", "/product/1", ""),
    ("GET", "/product", ""),
    ("GET", "/product/999", ""),
    ("HEAD", "/product/2", ""),
    ("DELETE", "/product", ""),
    ("GET", "/nope", ""),
    ("GET", "/product/upload", ""),
    ("POST", "/product/events", ""),
    ("GET", "/product/events", "count=0"),
])
def test_stream_ordinary_request_equals_send(stub, send, method, path, query):
    frames, code, _ = exchange(stub, [head(make_req(method, path, query, request_id="same-1")), end()])
    assert code == grpc.StatusCode.OK
    kinds = [f.WhichOneof("frame") for f in frames]
    unary = stub.Send(make_req(method, path, query, request_id="same-1"), timeout=5)
    assert kinds == (["head", "body", "end"] if unary.body else ["head", "end"])
    h, data, trailers = assemble(frames)
    assert (h.status, hdrs(h), data) == (unary.status, hdrs(unary), unary.body)
    assert not trailers


def test_stream_post_in_chunks_creates_a_product(stub, send):
    raw = json.dumps({"name": "Chunked grinder", "price_cents": 4200, "quantity": 2}).encode()
    frames, code, _ = exchange(stub, [
        head(make_req("POST", "/product", headers=[("content-type", "application/json")])),
        *(chunk(raw[i:i + 7]) for i in range(0, len(raw), 7)),
        end(),
    ])
    assert code == grpc.StatusCode.OK
    h, data, _ = assemble(frames)
    assert h.status == 201, data
    p = json.loads(data)
    assert p["name"] == "Chunked grinder"
    assert values(h, "location") == [f"/product/{p['id']}"]
    assert body(send("GET", f"/product/{p['id']}")) == p


def test_stream_ordinary_body_over_the_limit_is_413(stub):
    big = b"x" * (64 << 10)
    n = product_server.MAX_BUFFERED_BODY // len(big) + 2
    frames, code, _ = exchange(stub, [head(make_req("POST", "/product")), *(chunk(big) for _ in range(n)), end()])
    assert code == grpc.StatusCode.OK
    h, data, _ = assemble(frames)
    assert h.status == 413 and "error" in json.loads(data)


def test_stream_refuses_websocket_without_waiting_for_more_frames(stub):
    s = OpenStream(stub)
    try:
        s.send(head(make_req("GET", "/product/events", upgrade="websocket")))  # no end follows an upgrade head
        f = s.next()
        assert f.WhichOneof("frame") == "head" and f.head.status == 501
        frames = [f]
        while (f := s.next()) is not None:
            frames.append(f)
        assemble(frames)
        assert s.call.code() == grpc.StatusCode.OK
    finally:
        s.cancel()


@pytest.mark.parametrize("name,frames,message", [
    ("nothing", [], "before the head"),
    ("body first", [chunk(b"x")], "first frame must be head, got body"),
    ("end first", [end()], "first frame must be head, got end"),
    ("empty frame first", [pb2.StreamRequest()], "got an empty frame"),
    ("head with a body", [head(make_req("GET", "/product/1", body=b"x")), end()], "must not carry a body"),
    ("second head", [head(make_req("GET", "/product/1")), head(make_req("GET", "/product/1"))], "second head"),
    ("head, body, head", [head(make_req("POST", "/product")), chunk(b"{"), head(make_req("POST", "/product"))],
     "second head"),
    ("body after end", [head(make_req("GET", "/product/1")), end(), chunk(b"x")], "body frame after end"),
    ("end after end", [head(make_req("GET", "/product/1")), end(), end()], "end frame after end"),
    ("no end", [head(make_req("GET", "/product/1"))], "closed before the end frame"),
    ("empty frame", [head(make_req("GET", "/product/1")), pb2.StreamRequest()], "empty frame of an unknown kind"),
    ("websocket message", [head(make_req("GET", "/product/1")),
                           pb2.StreamRequest(message=pb2.WebSocketMessage(text="hi"))], "WebSocket message frame"),
    ("upload: body after end", [head(make_req("POST", "/product/upload")), chunk(b"a"), end(), chunk(b"b")],
     "body frame after end"),
    ("events: second head", [head(make_req("GET", "/product/events")), head(make_req("GET", "/product/events"))],
     "second head"),
])
def test_stream_malformed_frames_are_invalid_argument(stub, send, name, frames, message):
    out, code, details = exchange(stub, frames)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
    assert message in details, details
    assert not out  # nothing was answered
    assert send("GET", "/product/1").status == 200  # and the server is fine


# -- server-sent events ----------------------------------------------------------


def sse(frame) -> dict:
    """The one event a body frame carries, as {"id", "event", "data"}."""
    assert frame is not None and frame.WhichOneof("frame") == "body", frame
    text = frame.body.data.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1, f"not exactly one event: {text!r}"
    ev = {}
    for line in text[:-2].split("\n"):
        k, _, v = line.partition(": ")
        ev[k] = v
    ev["data"] = json.loads(ev["data"])
    return ev


def stats(send) -> dict:
    r = send("GET", "/product/events/stats")
    assert r.status == 200
    return body(r)


def test_events_hello_change_count_and_ok(stub, send):
    s = OpenStream(stub)
    try:
        s.send(head(make_req("GET", "/product/events", "count=3", headers=[("accept", "text/event-stream")])), end())
        s.half_close()
        h = s.next()
        assert h.WhichOneof("frame") == "head" and h.head.status == 200
        assert values(h.head, "content-type") == ["text/event-stream"]
        assert values(h.head, "cache-control") == ["no-cache"]
        assert values(h.head, "x-request-id") == ["req-1"]
        hello = sse(s.next())  # arrives while the stream is still open
        assert hello["event"] == "hello"
        assert [p["id"] for p in hello["data"]["products"]][:3] == ["1", "2", "3"]
        assert s.call.is_active()  # not over yet

        new = {"name": "SSE kettle", "price_cents": 100, "quantity": 5}
        r = send("POST", "/product", json.dumps(new).encode(), headers=[("content-type", "application/json")])
        assert r.status == 201
        created = sse(s.next())
        assert created["event"] == "created" and created["data"] == body(r)
        assert int(created["id"]) > int(hello["id"])

        assert send("PUT", f"/product/{body(r)['id']}/decrement").status == 200
        dec = sse(s.next())
        assert dec["event"] == "decremented" and dec["data"]["quantity"] == 4
        assert int(dec["id"]) == int(created["id"]) + 1

        f = s.next()  # count=3 reached
        assert f.WhichOneof("frame") == "end" and not f.end.trailers
        assert s.next() is None
        assert s.call.code() == grpc.StatusCode.OK
    finally:
        s.cancel()


def test_events_ticks(stub):
    frames, code, _ = exchange(stub, [head(make_req("GET", "/product/events", "interval_ms=10&count=3")), end()])
    assert code == grpc.StatusCode.OK
    kinds = [f.WhichOneof("frame") for f in frames]
    assert kinds == ["head", "body", "body", "body", "end"]
    events = [sse(f) for f in frames[1:4]]
    assert [e["event"] for e in events] == ["hello", "tick", "tick"]
    assert [e["data"] for e in events[1:]] == [{"n": 1}, {"n": 2}]


def test_events_end_cleanly_before_the_deadline(stub):
    # The gateway's grpc-timeout on Stream is the route's max_duration_ms: the
    # stream ends with an end frame and OK shortly before it, not cut off by it.
    started = time.monotonic()
    frames, code, details = exchange(stub, [head(make_req("GET", "/product/events")), end()], timeout=1.5)
    assert code == grpc.StatusCode.OK, details
    assert [f.WhichOneof("frame") for f in frames] == ["head", "body", "end"]
    assert time.monotonic() - started < 1.5


def test_events_head_request(stub):
    frames, code, _ = exchange(stub, [head(make_req("HEAD", "/product/events")), end()])
    assert code == grpc.StatusCode.OK
    assert [f.WhichOneof("frame") for f in frames] == ["head", "end"]
    assert values(frames[0].head, "content-type") == ["text/event-stream"]


@pytest.mark.parametrize("query", ["count=0", "count=x", "interval_ms=5", "interval_ms=-1"])
def test_events_bad_query_is_400(stub, send, query):
    frames, code, _ = exchange(stub, [head(make_req("GET", "/product/events", query)), end()])
    assert code == grpc.StatusCode.OK
    h, data, _ = assemble(frames)
    assert h.status == 400 and "error" in json.loads(data)
    r = stub.Send(make_req("GET", "/product/events", query), timeout=5)
    assert r.status == 400


def test_events_via_send_is_the_hello_event_only(stub, send):
    r = stub.Send(make_req("GET", "/product/events", "count=5"), timeout=5)
    assert r.status == 200
    assert values(r, "content-type") == ["text/event-stream"]
    assert values(r, "cache-control") == ["no-cache"]
    hello = sse(pb2.StreamResponse(body=pb2.BodyChunk(data=r.body)))
    assert hello["event"] == "hello" and hello["data"]["products"] == body(send("GET", "/product"))


def test_cancelling_an_event_stream_releases_its_listener(stub, send):
    before = stats(send)["listeners"]
    s = OpenStream(stub)
    try:
        s.send(head(make_req("GET", "/product/events")), end())
        s.half_close()
        assert s.next().WhichOneof("frame") == "head"
        assert sse(s.next())["event"] == "hello"
        assert stats(send)["listeners"] == before + 1
    finally:
        s.cancel()
    wait_until(lambda: stats(send)["listeners"] == before, what="the listener to be released")
    assert s.call.code() == grpc.StatusCode.CANCELLED


# -- uploads ----------------------------------------------------------------------


def test_upload_10mib_in_64kib_chunks_with_trailers(stub):
    data = os.urandom(10 << 20)
    step = 64 << 10
    frames, code, details = exchange(stub, [
        head(make_req("POST", "/product/upload", headers=[("content-type", "application/octet-stream")])),
        *(chunk(data[i:i + step]) for i in range(0, len(data), step)),
        end(("x-checksum", "sha-256"), ("x-note", "a"), ("x-note", "b")),
    ], timeout=60)
    assert code == grpc.StatusCode.OK, details
    h, out, _ = assemble(frames)
    assert h.status == 200
    assert json.loads(out) == {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "trailers": {"x-checksum": "sha-256", "x-note": "a, b"},
    }


def test_upload_via_send_equals_stream(stub):
    data = b"hello upload\n" * 100
    r = stub.Send(make_req("POST", "/product/upload", body=data,
                           trailers=[pb2.Header(name="x-t", value=b"1")]), timeout=5)
    assert r.status == 200
    assert body(r) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "trailers": {"x-t": "1"}}
    frames, code, _ = exchange(stub, [head(make_req("POST", "/product/upload")), chunk(data[:5]), chunk(data[5:]),
                                      end(("x-t", "1"))])
    h, out, _ = assemble(frames)
    assert (h.status, hdrs(h), out) == (r.status, hdrs(r), r.body)
    empty = stub.Send(make_req("POST", "/product/upload"), timeout=5)
    assert body(empty) == {"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest()}  # no trailers, no key


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    pytest.skip("no VmHWM in /proc")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_upload_200mib_streams_without_holding_the_body(stub, server):
    block = os.urandom(256 << 10)
    n = (200 << 20) // len(block)
    digest = hashlib.sha256()
    for _ in range(n):
        digest.update(block)
    before = peak_rss_kib(server.p.pid)
    frames, code, details = exchange(stub, [head(make_req("POST", "/product/upload")),
                                            *(chunk(block) for _ in range(n)), end()], timeout=120)
    assert code == grpc.StatusCode.OK, details
    _, out, _ = assemble(frames)
    assert json.loads(out) == {"bytes": n * len(block), "sha256": digest.hexdigest()}
    grown_mib = (peak_rss_kib(server.p.pid) - before) / 1024
    assert grown_mib < 64, f"server peak RSS grew by {grown_mib:.0f} MiB for a 200 MiB upload"


def test_cancelled_upload_leaves_the_server_serving(stub, send):
    s = OpenStream(stub)
    s.send(head(make_req("POST", "/product/upload")), chunk(b"x" * 1000))
    s.cancel()
    assert s.next() is None
    assert send("GET", "/product/1").status == 200


# -- a server of its own: stream limit and shutdown -------------------------------


def test_event_stream_limit_and_shutdown_ends_streams_cleanly():
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", "", "--workers", "4", "--max-event-streams", "1",
                "--grace", "30")
    ch = None
    try:
        ch = grpc.insecure_channel(proc.wait_ready())
        st = pb2_grpc.ForwardingServiceStub(ch)
        s = OpenStream(st, timeout=60)
        s.send(head(make_req("GET", "/product/events")), end())
        s.half_close()
        assert s.next().head.status == 200
        assert sse(s.next())["event"] == "hello"

        frames, code, _ = exchange(st, [head(make_req("GET", "/product/events")), end()])
        h, _, _ = assemble(frames)
        assert h.status == 503 and values(h, "retry-after") == ["1"]
        assert st.Send(make_req("GET", "/product/1"), timeout=5).status == 200  # still a worker for it

        started = time.monotonic()
        proc.p.send_signal(signal.SIGTERM)
        f = s.next(timeout=10)
        assert f.WhichOneof("frame") == "end"
        assert s.next() is None and s.call.code() == grpc.StatusCode.OK
        assert proc.p.wait(20) == 0
        assert time.monotonic() - started < 20  # well within --grace 30
        assert "ended 1 open event stream(s)" in proc.stderr()
    finally:
        if ch:
            ch.close()
        proc.close()


# ---------------------------------------------------------------------------
# Registration against a fake gateway registration listener.
# ---------------------------------------------------------------------------


class FakeGateway:
    """Records registration API calls; the first renew answers 404."""

    def __init__(self, port: int = 0, lease_ms: int = 300):
        self.calls: list[tuple[str, str, dict | None, str | None]] = []
        self.lock = threading.Lock()
        self.renews = 0
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                with gw.lock:
                    gw.calls.append((self.command, self.path, json.loads(raw) if raw else None,
                                     self.headers.get("authorization")))

            def do_PUT(self):
                self._record()
                if self.path != "/v1/registrations":
                    return self._answer(404, {"error": {"code": "not_found", "message": "?"}})
                created = not any(c[0] == "PUT" for c in gw.calls[:-1])
                body = gw.calls[-1][2]
                self._answer(201 if created else 200,
                             {"instance_id": body["instance_id"], "lease_ms": lease_ms, "created": created})

            def do_POST(self):
                self._record()
                with gw.lock:
                    gw.renews += 1
                    first = gw.renews == 1
                if first:
                    return self._answer(404, {"error": {"code": "not_found", "message": "not registered", "field": None}})
                self._answer(200, {"lease_ms": lease_ms})

            def do_DELETE(self):
                self._record()
                self._answer(200, {"existed": True})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(list(self.calls)):
                    return
            time.sleep(0.02)
        pytest.fail(f"gateway never saw the expected calls: {self.calls}")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_registers_renews_reregisters_and_deregisters():
    gw = FakeGateway()
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", f"http://127.0.0.1:{gw.port}", "--token", "s3cret")
    try:
        address = proc.wait_ready()
        port = address.rsplit(":", 1)[1]
        method, path, reg, auth = gw.calls[0]
        assert (method, path, auth) == ("PUT", "/v1/registrations", "Bearer s3cret")
        assert reg == {
            "service": "product",
            "instance_id": f"product-{port}",
            "address": address,
            "routes": [{"path_prefix": "/product"}, {"path_prefix": "/product/events", "stream": True}],
            "health": {"kind": "grpc"},
            "streaming": True,
        }
        renew_path = f"/v1/registrations/product/product-{port}/renew"
        # First renew gets 404 -> registers again -> later renews succeed.
        gw.wait_for(lambda c: sum(1 for x in c if x[:2] == ("POST", renew_path)) >= 2)
        puts = [c for c in gw.calls if c[0] == "PUT"]
        assert len(puts) >= 2 and puts[1][2] == reg
        assert all(c[3] == "Bearer s3cret" for c in gw.calls)
        assert proc.terminate() == 0
        assert gw.calls[-1][:2] == ("DELETE", f"/v1/registrations/product/product-{port}")
        assert proc.lines == [f"READY {address}\n"]
    finally:
        proc.close()
        gw.close()


def test_waits_for_a_gateway_that_is_not_up_yet():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", f"http://127.0.0.1:{port}", "--advertise", "product.test:7000")
    gw = None
    try:
        time.sleep(0.8)
        assert proc.p.poll() is None and not proc.lines, "READY before registration"
        gw = FakeGateway(port=port)
        assert proc.wait_ready() == "product.test:7000"
        assert gw.calls[0][2]["address"] == "product.test:7000"
        assert gw.calls[0][2]["instance_id"].startswith("product-")
        assert gw.calls[0][3] is None  # no token, no authorization header
        assert proc.terminate() == 0
    finally:
        proc.close()
        if gw:
            gw.close()


@pytest.mark.parametrize("status,code", [(401, "unauthenticated"), (403, "forbidden")])
def test_refused_registration_exits_nonzero(status, code):
    class Refusing(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_PUT(self):
            data = json.dumps({"error": {"code": code, "message": "refused by the gateway",
                                         "field": None}}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", f"http://127.0.0.1:{httpd.server_address[1]}/")
    try:
        assert proc.p.wait(20) == 2
        assert code in proc.stderr()
        assert not proc.lines
    finally:
        proc.close()
        httpd.shutdown()
        httpd.server_close()


def test_sigterm_stops_a_server_without_gateway():
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", "")
    try:
        proc.wait_ready()
        assert proc.terminate() == 0
        assert "stopped" in proc.stderr()
    finally:
        proc.close()


def test_name_forms_the_route_prefixes():
    gw = FakeGateway()
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", f"http://127.0.0.1:{gw.port}", "--name", "shop")
    try:
        proc.wait_ready()
        reg = gw.calls[0][2]
        assert reg["service"] == "shop" and reg["streaming"] is True
        assert reg["routes"] == [{"path_prefix": "/shop"}, {"path_prefix": "/shop/events", "stream": True}]
        st = pb2_grpc.ForwardingServiceStub(grpc.insecure_channel(proc.address))
        frames, code, _ = exchange(st, [head(make_req("GET", "/shop/events", "count=1")), end()])
        assert code == grpc.StatusCode.OK
        assert [f.WhichOneof("frame") for f in frames] == ["head", "body", "end"]
        assert sse(frames[1])["event"] == "hello"
        assert proc.terminate() == 0
    finally:
        proc.close()
        gw.close()

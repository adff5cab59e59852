"""Tests of the product service: the forwarding contract over real gRPC, the
health service, and registration against a fake gateway (stdlib HTTP).

    python3 -m pytest examples/product-service-py -q
"""

from __future__ import annotations

import importlib.util
import json
import os
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
            "routes": [{"path_prefix": "/product"}],
            "health": {"kind": "grpc"},
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


def test_refused_registration_exits_nonzero():
    class Refusing(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_PUT(self):
            data = json.dumps({"error": {"code": "unauthenticated", "message": "missing or invalid registration token",
                                         "field": None}}).encode()
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    proc = Proc("--listen", "127.0.0.1:0", "--gateway", f"http://127.0.0.1:{httpd.server_address[1]}/")
    try:
        assert proc.p.wait(20) == 2
        assert "unauthenticated" in proc.stderr()
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

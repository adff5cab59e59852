"""End to end in one process: a real grpc.aio server with the adapter in
front of Starlette, FastAPI and Flask apps, called over gRPC as the gateway
calls it; and the lifecycle against a stand-in registration API."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forwarding_adapter import Config, Server
from forwarding_adapter._pb import forwarding_pb2 as pb
from forwarding_adapter._pb import forwarding_pb2_grpc as pb_grpc


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def hello(request):
        body = await request.body()
        return JSONResponse({"path": request.url.path, "q": request.query_params.getlist("q"),
                             "len": len(body), "x": request.headers.getlist("x-a")},
                            headers={"x-out": "1"})

    async def events(request):
        async def gen():
            for i in range(3):
                yield f"data: {i}\n\n"
                await asyncio.sleep(0.01)
        return StreamingResponse(gen(), media_type="text/event-stream")

    async def boom(request):
        raise RuntimeError("boom")

    async def slow(request):
        await asyncio.sleep(5)
        return PlainTextResponse("late")

    return Starlette(routes=[Route("/hello/{rest:path}", hello, methods=["GET", "POST"]),
                             Route("/events", events), Route("/boom", boom), Route("/slow", slow)])


def flask_app():
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.route("/hello/<path:rest>", methods=["GET", "POST"])
    def hello(rest):
        return {"path": request.path, "len": len(request.get_data()), "x": request.headers.get("x-a")}

    @app.route("/download")
    def download():
        return Response((b"%d;" % i for i in range(4)), mimetype="application/octet-stream")

    @app.route("/boom")
    def boom():
        raise RuntimeError("boom")

    return app


def fastapi_app():
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/hello/{name}")
    async def hello(name: str):
        return {"hello": name}

    return app


def req(method="GET", path="/hello/world", query="", headers=(), body=b"", deadline_ms=0):
    return pb.ForwardingReq(method=method, path=path, query=query, has_query=bool(query),
                            headers=[pb.Header(name=n, value=v) for n, v in headers], body=body,
                            context=pb.RequestContext(request_id="r-1", deadline_ms=deadline_ms))


def with_server(app, scenario, **config):
    async def main():
        server = Server(app, Config(drain=0, grace=1, **config))
        address = await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await scenario(pb_grpc.ForwardingServiceStub(channel), channel)
        finally:
            await server.stop()
    asyncio.run(main())


async def stream(stub, head, chunks=(), trailers=()):
    frames = [pb.StreamRequest(head=head)] + [pb.StreamRequest(body=pb.BodyChunk(data=c)) for c in chunks]
    frames.append(pb.StreamRequest(end=pb.StreamEnd(trailers=[pb.Header(name=n, value=v) for n, v in trailers])))
    return [f async for f in stub.Stream(iter(frames))]


def test_starlette_send_keeps_path_query_duplicates_and_body():
    async def scenario(stub, _):
        r = await stub.Send(req("POST", "/hello/a%2Fb", "q=1&q=2", [("x-a", b"1"), ("x-a", b"2")], b"abc"))
        assert r.status == 200
        assert json.loads(r.body) == {"path": "/hello/a/b", "q": ["1", "2"], "len": 3, "x": ["1", "2"]}
        assert ("x-out", b"1") in [(h.name, h.value) for h in r.headers]
    with_server(starlette_app(), scenario)


def test_starlette_404_and_500_are_http_answers_with_grpc_ok():
    async def scenario(stub, _):
        assert (await stub.Send(req(path="/nope"))).status == 404
        assert (await stub.Send(req(path="/boom"))).status == 500
    with_server(starlette_app(), scenario)


def test_starlette_sse_streams_one_frame_per_event():
    async def scenario(stub, _):
        frames = await stream(stub, req(path="/events"))
        kinds = [f.WhichOneof("frame") for f in frames]
        assert kinds == ["head", "body", "body", "body", "end"]
        assert frames[0].head.status == 200
        assert [f.body.data for f in frames[1:4]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    with_server(starlette_app(), scenario)


def test_starlette_stream_request_body_in_many_frames():
    async def scenario(stub, _):
        frames = await stream(stub, req("POST", "/hello/x"), [b"a" * 1000] * 50)
        body = b"".join(f.body.data for f in frames if f.WhichOneof("frame") == "body")
        assert json.loads(body)["len"] == 50_000
    with_server(starlette_app(), scenario)


def test_deadline_ends_the_call():
    async def scenario(stub, _):
        t = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Send(req(path="/slow", deadline_ms=200))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t < 2
    with_server(starlette_app(), scenario)


@pytest.mark.parametrize("bad", [
    req(headers=[("bad name", b"x")]),
    pb.ForwardingReq(method="GET", path="/", context=pb.RequestContext(deadline_ms=(1 << 64) - 1)),
])
def test_malformed_requests_are_invalid_argument_and_the_server_lives_on(bad):
    async def scenario(stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Send(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stream(stub, bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await stub.Send(req())).status == 200
    with_server(starlette_app(), scenario)


def test_websocket_upgrade_is_refused_with_501():
    async def scenario(stub, _):
        head = req(path="/hello/ws")
        head.upgrade = "websocket"
        frames = [f async for f in stub.Stream(iter([pb.StreamRequest(head=head)]))]
        assert frames[0].head.status == 501
    with_server(starlette_app(), scenario)


def test_health_serves():
    async def scenario(_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        r = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with_server(starlette_app(), scenario)


def test_fastapi_send():
    app = fastapi_app()

    async def scenario(stub, _):
        r = await stub.Send(req(path="/hello/ada"))
        assert r.status == 200 and json.loads(r.body) == {"hello": "ada"}
    with_server(app, scenario)


def test_flask_send_stream_and_errors():
    async def scenario(stub, _):
        r = await stub.Send(req("POST", "/hello/a", headers=[("x-a", b"1"), ("x-a", b"2")], body=b"abcd"))
        assert r.status == 200 and json.loads(r.body) == {"path": "/hello/a", "len": 4, "x": "1, 2"}
        frames = await stream(stub, req(path="/download"))
        assert [f.WhichOneof("frame") for f in frames] == ["head", "body", "body", "body", "body", "end"]
        assert b"".join(f.body.data for f in frames[1:5]) == b"0;1;2;3;"
        frames = await stream(stub, req("POST", "/hello/b"), [b"x" * 10] * 3)
        assert json.loads(b"".join(f.body.data for f in frames[1:-1]))["len"] == 30
        assert (await stub.Send(req(path="/boom"))).status == 500
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Send(req(headers=[("bad name", b"x")]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with_server(flask_app(), scenario)


class Registry(BaseHTTPRequestHandler):
    """A stand-in for the gateway's registration API that records calls."""

    calls: list = []

    def _answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):  # noqa: N802
        n = int(self.headers.get("content-length", 0))
        self.calls.append(("PUT", self.path, json.loads(self.rfile.read(n))))
        self._answer(201, {"instance_id": "x", "lease_ms": 300, "created": True})

    def do_POST(self):  # noqa: N802
        self.calls.append(("POST", self.path, None))
        self._answer(200, {"lease_ms": 300})

    def do_DELETE(self):  # noqa: N802
        self.calls.append(("DELETE", self.path, None))
        self._answer(200, {"existed": True})

    def log_message(self, *args):
        pass


def test_lifecycle_registers_renews_and_deregisters():
    Registry.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        async def main():
            server = Server(starlette_app(), Config(gateway=f"http://127.0.0.1:{httpd.server_port}",
                                                    service="hello", stream_routes=["/hello/events"], drain=0))
            address = await server.start()
            await asyncio.sleep(0.35)  # a renewal every lease/3 = 100 ms
            await server.stop()
            return address
        address = asyncio.run(main())
    finally:
        httpd.shutdown()
    kinds = [c[0] for c in Registry.calls]
    assert kinds[0] == "PUT" and kinds[-1] == "DELETE" and kinds.count("POST") >= 2
    reg = Registry.calls[0][2]
    assert reg["address"] == address and reg["streaming"] is True
    assert reg["routes"] == [{"path_prefix": "/hello"}, {"path_prefix": "/hello/events", "stream": True}]
    assert Registry.calls[-1][1] == f"/v1/registrations/hello/{reg['instance_id']}"


async def bare_app(scope, receive, send):
    """An ASGI app that ignores the lifespan scope (returns at once)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_an_app_without_lifespan_support_still_starts():
    async def scenario(stub, _):
        assert (await stub.Send(req())).status == 204
    with_server(bare_app, scenario)


def test_lifespan_startup_and_shutdown_run():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    events = []

    async def hello(request):
        return PlainTextResponse(request.app.state.greeting)

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.greeting = "hi"
        events.append("startup")
        yield
        events.append("shutdown")

    request_app = Starlette(routes=[Route("/hello/world", hello)], lifespan=lifespan)

    async def scenario(stub, _):
        assert (await stub.Send(req())).body == b"hi"
    with_server(request_app, scenario)
    assert events == ["startup", "shutdown"]


def test_a_stop_while_the_gateway_is_unreachable_ends_the_start():
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        stop = asyncio.Event()
        server = Server(bare_app, Config(gateway=f"http://127.0.0.1:{port}", drain=0))
        asyncio.get_running_loop().call_later(0.3, stop.set)
        ready = []
        await asyncio.wait_for(server.serve(stop, ready=ready.append), 5)
        return ready
    assert asyncio.run(main()) == []

"""The smallest apps, to measure the adapter's own cost per request."""

import sys
from concurrent import futures


async def asgi_hello(scope, receive, send):
    """A bare ASGI app: no framework."""
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def raw_hello():
    """The same answer on the raw contract (grpcio, thread pool): the baseline."""
    import grpc

    from forwarding_adapter._pb import forwarding_pb2 as pb
    from forwarding_adapter._pb import forwarding_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.ForwardingServiceServicer):
        def Send(self, req, context):  # noqa: N802
            return pb.ForwardingResp(status=200, headers=[pb.Header(name="content-type", value=b"text/plain")],
                                     body=b"hello")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_ForwardingServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def raw_aio_hello():
    """The same on grpc.aio: separates grpc.aio's cost from the adapter's."""
    import asyncio

    import grpc

    from forwarding_adapter._pb import forwarding_pb2 as pb
    from forwarding_adapter._pb import forwarding_pb2_grpc as pb_grpc

    class Servicer(pb_grpc.ForwardingServiceServicer):
        async def Send(self, req, context):  # noqa: N802
            return pb.ForwardingResp(status=200, headers=[pb.Header(name="content-type", value=b"text/plain")],
                                     body=b"hello")

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_ForwardingServiceServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"READY 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    {"raw": raw_hello, "raw-aio": raw_aio_hello}[sys.argv[1]]()

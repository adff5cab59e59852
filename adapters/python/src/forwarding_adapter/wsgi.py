"""The forwarding contract served by a WSGI application (Flask, Django...).

The gRPC server is grpc.aio (one event loop for both kinds of app); a WSGI
app runs in a thread pool, one thread per call in progress.

`Send`: the request body is `wsgi.input` (a BytesIO over the message's
bytes); the iterable is collected and returned as one `ForwardingResp`.

`Stream`: the request body is read whole first (a WSGI app reads
`wsgi.input` synchronously; see README "Limits"), then each non-empty item
the app's iterable yields is written as its own `body` frame, and the thread
waits for the write, so a client that does not read stops the iteration.

A WSGI thread cannot be interrupted: when the call is cancelled or its
`deadline_ms` passes, the call ends at once, `environ["forwarding.cancelled"]`
(a threading.Event) is set and the iteration stops at its next item.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import grpc

from ._pb import forwarding_pb2 as pb
from ._pb import forwarding_pb2_grpc as pb_grpc
from .asgi import Failure, request_chunks, stream_head
from .convert import Malformed, check_request, from_fields, to_fields, wsgi_environ, wsgi_status

log = logging.getLogger("forwarding_adapter")

WSGIApp = Callable[[dict, Callable], Any]

INTERNAL_ERROR = ("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")],
                  b"Internal Server Error")


class Cancelled(Exception):
    """The call ended while the app was still producing."""


def run_wsgi(app: WSGIApp, environ: dict, on_head: Callable[[int, list], None],
             on_body: Callable[[bytes], None], cancelled: threading.Event) -> None:
    """Runs one WSGI call in this thread: `on_head` once (before the first
    non-empty body item, or at the end), `on_body` per non-empty item.

    An exception before the head is sent becomes a 500; after it, Failure
    (the answer would be truncated).
    """
    state: dict[str, Any] = {"head": None, "sent": False}

    def send_head() -> None:
        if not state["sent"]:
            if state["head"] is None:
                raise RuntimeError("the WSGI app produced a body before calling start_response")
            state["sent"] = True
            on_head(*state["head"])

    def write(data: bytes) -> None:  # the legacy write() callable of PEP 3333
        if data:
            send_head()
            on_body(data)

    def start_response(status: str, headers: list, exc_info=None):
        if exc_info is not None and state["sent"]:
            raise exc_info[1].with_traceback(exc_info[2])
        if state["head"] is not None and exc_info is None:
            raise RuntimeError("start_response called twice without exc_info")
        state["head"] = (wsgi_status(status), to_fields(headers))
        return write

    try:
        result = app(environ, start_response)
        try:
            for item in result:
                if cancelled.is_set():
                    raise Cancelled()
                write(item)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        send_head()
    except Cancelled:
        raise
    except Exception as e:
        if state["sent"]:
            log.warning("WSGI app raised after its response started: %r", e)
            raise Failure(grpc.StatusCode.INTERNAL, f"the app failed after its response started: {e!r}") from None
        log.exception("WSGI app raised before its response started; answering 500")
        status, headers, body = INTERNAL_ERROR
        on_head(wsgi_status(status), to_fields(headers))
        on_body(body)


class WsgiServicer(pb_grpc.ForwardingServiceServicer):
    """`forwarding.v1.ForwardingService` in front of one WSGI app."""

    def __init__(self, app: WSGIApp, executor: ThreadPoolExecutor) -> None:
        self.app = app
        self.executor = executor

    async def _call(self, context, deadline_ms: int, cancelled: threading.Event, fn) -> None:
        """Runs fn in the pool; ends the call at its deadline or cancellation."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.executor, fn)
        # After a deadline or a cancellation nobody awaits the thread any
        # more; its ending (Cancelled, as a rule) is expected, not an error.
        work.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            if deadline_ms:
                await asyncio.wait_for(asyncio.shield(work), deadline_ms / 1000)
            else:
                await work
        except asyncio.TimeoutError:
            cancelled.set()
            raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED,
                          f"the app did not answer within deadline_ms={deadline_ms}") from None
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except Cancelled:
            raise Failure(grpc.StatusCode.CANCELLED, "the call ended while the app was answering") from None

    async def Send(self, req: pb.ForwardingReq, context: grpc.aio.ServicerContext) -> pb.ForwardingResp:  # noqa: N802
        try:
            check_request(req)
        except Malformed as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        cancelled = threading.Event()
        environ = wsgi_environ(req, req.body, from_fields(req.trailers))
        environ["forwarding.cancelled"] = cancelled
        resp = pb.ForwardingResp()
        parts: list[bytes] = []

        def on_head(status: int, headers: list) -> None:
            resp.status = status
            resp.headers.extend(headers)

        def answer() -> None:
            run_wsgi(self.app, environ, on_head, parts.append, cancelled)

        try:
            await self._call(context, req.context.deadline_ms, cancelled, answer)
        except Failure as f:
            await context.abort(f.code, str(f))
        resp.body = b"".join(parts)
        return resp

    async def Stream(self, _requests, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        req = await stream_head(context)
        if req is None:
            return
        trailers: list[tuple[bytes, bytes]] = []
        body = bytearray()
        try:
            async for data in request_chunks(context, req, trailers):
                body += data
        except Malformed as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Stream: {e}")
        cancelled = threading.Event()
        environ = wsgi_environ(req, bytes(body), trailers)
        del body
        environ["forwarding.cancelled"] = cancelled
        loop = asyncio.get_running_loop()

        def write(frame: pb.StreamResponse) -> None:
            # Waits until grpcio took the frame: backpressure for the app.
            if cancelled.is_set():
                raise Cancelled()
            try:
                asyncio.run_coroutine_threadsafe(context.write(frame), loop).result()
            except Exception:
                cancelled.set()
                raise Cancelled() from None

        def on_head(status: int, headers: list) -> None:
            write(pb.StreamResponse(head=pb.ForwardingResp(status=status, headers=headers)))

        def on_body(data: bytes) -> None:
            write(pb.StreamResponse(body=pb.BodyChunk(data=bytes(data))))

        def answer() -> None:
            run_wsgi(self.app, environ, on_head, on_body, cancelled)
            write(pb.StreamResponse(end=pb.StreamEnd()))

        try:
            await self._call(context, req.context.deadline_ms, cancelled, answer)
        except Failure as f:
            await context.abort(f.code, str(f))

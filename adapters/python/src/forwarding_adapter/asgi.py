"""The forwarding contract served by an ASGI application (grpc.aio).

`Send`: the whole request is one `http.request` message; the answer is
collected and returned as one `ForwardingResp`.

`Stream`: request `body` frames become `http.request` messages as they
arrive (a bounded queue, so a slow app slows the gateway through gRPC flow
control); `http.response.start` becomes the `head` frame, each non-empty
`http.response.body` its own `body` frame (written before the app's `send`
returns, so a client that does not read stops the app), and the end of the
body, or the ASGI `http.response.trailers` extension, the `end` frame.

Both: the call's cancellation cancels the app's task (CancelledError at its
next `await`); `context.deadline_ms` is enforced the same way and ends the
call with DEADLINE_EXCEEDED. A malformed request is INVALID_ARGUMENT before
the app sees anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ._pb import forwarding_pb2 as pb
from ._pb import forwarding_pb2_grpc as pb_grpc
from .convert import Malformed, asgi_scope, check_fields, check_request, from_fields, to_fields

log = logging.getLogger("forwarding_adapter")

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# Request body chunks waiting for the app on Stream: a few, so memory stays
# bounded whatever the body's size.
STREAM_QUEUE = 8


class Response:
    """The ASGI response messages of one call, checked in order.

    Subclasses say where each part goes (`Collected` for Send, `Streamed`
    for Stream).
    """

    def __init__(self) -> None:
        self.started = False
        self.body_done = False
        self.complete = False
        self.expect_trailers = False
        self.status = 200
        self.headers: list[pb.Header] = []
        self.trailers: list[pb.Header] = []

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.complete:
            raise RuntimeError(f"ASGI message {kind!r} after the response was complete")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("a second http.response.start")
            self.started = True
            self.status = int(message["status"])
            self.headers = to_fields(message.get("headers") or ())
            self.expect_trailers = bool(message.get("trailers", False))
            await self.on_start()
        elif kind == "http.response.body":
            if not self.started or self.body_done:
                raise RuntimeError("http.response.body before http.response.start or after the last body")
            body = message.get("body", b"")
            if body:
                await self.on_body(body)
            if not message.get("more_body", False):
                self.body_done = True
                if not self.expect_trailers:
                    await self._finish()
        elif kind == "http.response.trailers":
            if not self.expect_trailers or not self.body_done:
                raise RuntimeError("http.response.trailers not announced, or before the last body")
            self.trailers.extend(to_fields(message.get("headers") or ()))
            if not message.get("more_trailers", False):
                await self._finish()
        else:
            raise RuntimeError(f"unsupported ASGI message {kind!r} on an HTTP scope")

    async def _finish(self) -> None:
        self.complete = True
        await self.on_end()

    async def error_500(self) -> None:
        """What an ASGI server answers when the app fails before its head."""
        await self.send({"type": "http.response.start", "status": 500,
                         "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    async def on_start(self) -> None: ...

    async def on_body(self, data: bytes) -> None: ...

    async def on_end(self) -> None: ...


class Collected(Response):
    """Send: the body parts are kept and joined once at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    async def on_body(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    def message(self) -> pb.ForwardingResp:
        # One copy here (join), one in protobuf's serialisation: grpcio needs
        # the whole message as one bytes object.
        return pb.ForwardingResp(status=self.status, headers=self.headers,
                                 body=b"".join(self.parts), trailers=self.trailers)


class CallEnded(Exception):
    """A frame could not be written: the caller cancelled or went away.
    Raised into the app from `send`, as an ASGI server raises OSError on a
    closed connection."""


class Streamed(Response):
    """Stream: every part is written to the call before `send` returns."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        super().__init__()
        self.context = context

    async def _write(self, frame: pb.StreamResponse) -> None:
        try:
            await self.context.write(frame)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise CallEnded(f"the call ended: {e!r}") from None

    async def on_start(self) -> None:
        await self._write(pb.StreamResponse(head=pb.ForwardingResp(status=self.status, headers=self.headers)))

    async def on_body(self, data: bytes) -> None:
        await self._write(pb.StreamResponse(body=pb.BodyChunk(data=bytes(data))))

    async def on_end(self) -> None:
        await self._write(pb.StreamResponse(end=pb.StreamEnd(trailers=self.trailers)))


class Failure(Exception):
    """The call ends with this gRPC status instead of an answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def run_app(app: ASGIApp, scope: dict, receive, response: Response, deadline_ms: int) -> None:
    """Runs the app for one call; raises Failure when there is no whole answer.

    An exception before the head becomes a 500 (as uvicorn does); after the
    head, the answer is truncated, so the call fails (INTERNAL) and the
    client sees an abort instead of a body that looks complete.
    """
    try:
        if deadline_ms:
            await asyncio.wait_for(app(scope, receive, response.send), deadline_ms / 1000)
        else:
            await app(scope, receive, response.send)
    except asyncio.TimeoutError:
        if response.complete:
            return
        raise Failure(grpc.StatusCode.DEADLINE_EXCEEDED, f"the app did not answer within deadline_ms={deadline_ms}")
    except CallEnded as e:
        log.debug("%s", e)
        raise Failure(grpc.StatusCode.CANCELLED, str(e)) from None
    except Exception as e:  # the app's own failure
        if response.complete:
            log.warning("app raised after its response was complete: %r", e)
            return
        if not response.started:
            log.exception("app raised before its response started; answering 500")
            await response.error_500()
            return
        log.warning("app raised after its response started: %r", e)
        raise Failure(grpc.StatusCode.INTERNAL, f"the app failed after its response started: {e!r}") from None
    if not response.started:
        log.error("app returned without a response; answering 500")
        await response.error_500()
    elif not response.complete:
        raise Failure(grpc.StatusCode.INTERNAL, "the app returned before its response was complete")


async def request_chunks(context: grpc.aio.ServicerContext, head: pb.ForwardingReq,
                         trailers: list[tuple[bytes, bytes]]) -> AsyncIterator[bytes]:
    """The request body of a `Stream` call, chunk by chunk, up to the
    half-close; `trailers` gets the `end` frame's. Raises Malformed on any
    frame order the contract does not allow."""
    if head.body:
        yield head.body
    ended = False
    while True:
        frame = await context.read()
        if frame is grpc.aio.EOF:
            if not ended:
                raise Malformed("the request stream was half-closed before its `end` frame")
            return
        kind = frame.WhichOneof("frame")
        if kind == "body" and not ended:
            if frame.body.data:
                yield frame.body.data
        elif kind == "end" and not ended:
            check_fields(frame.end.trailers, "trailer")
            trailers.extend(from_fields(frame.end.trailers))
            ended = True
        elif kind in ("body", "end"):
            raise Malformed(f"a `{kind}` frame after `end`")
        elif kind == "head":
            raise Malformed("a second `head` frame")
        else:
            raise Malformed(f"a `{kind}` frame in an exchange that is not a WebSocket")


async def stream_head(context: grpc.aio.ServicerContext) -> pb.ForwardingReq | None:
    """The checked head of a `Stream` call; aborts INVALID_ARGUMENT on a bad
    one. None when the call asked for a WebSocket upgrade, which was refused
    with a 501 answer (WebSocket is not adapted yet, see README)."""
    first = await context.read()
    if first is grpc.aio.EOF or first.WhichOneof("frame") != "head":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed Stream: the first frame must be `head`")
    req = first.head
    try:
        check_request(req)
        if req.trailers:
            raise Malformed("trailers in `head` (they belong in `end`)")
    except Malformed as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Stream: {e}")
    if req.upgrade:
        body = json.dumps({"error": "websocket_unsupported",
                           "message": "the Python adapter does not serve WebSocket yet"}).encode()
        await context.write(pb.StreamResponse(head=pb.ForwardingResp(
            status=501, headers=[pb.Header(name="content-type", value=b"application/json")], body=body)))
        return None
    return req


class AsgiServicer(pb_grpc.ForwardingServiceServicer):
    """`forwarding.v1.ForwardingService` in front of one ASGI app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def Send(self, req: pb.ForwardingReq, context: grpc.aio.ServicerContext) -> pb.ForwardingResp:  # noqa: N802
        try:
            check_request(req)
        except Malformed as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        scope = asgi_scope(req, from_fields(req.trailers))
        finished = asyncio.Event()
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        response = Collected()
        try:
            await run_app(self.app, scope, receive, response, req.context.deadline_ms)
        except Failure as f:
            await context.abort(f.code, str(f))
        finally:
            finished.set()
        return response.message()

    async def Stream(self, _requests, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        req = await stream_head(context)
        if req is None:
            return

        trailers: list[tuple[bytes, bytes]] = []
        scope = asgi_scope(req, trailers)
        chunks: asyncio.Queue = asyncio.Queue(STREAM_QUEUE)
        finished = asyncio.Event()
        body_done = False

        async def pump() -> None:
            """Frames -> queue; None after the half-close.

            The last `http.request` is delivered only after the half-close
            (which the gateway sends right after `end`), so a frame out of
            order is seen before the app can answer.
            """
            async for data in request_chunks(context, req, trailers):
                await chunks.put(data)
            await chunks.put(None)

        async def receive() -> dict:
            nonlocal body_done
            if not body_done:
                data = await chunks.get()
                if data is not None:
                    return {"type": "http.request", "body": data, "more_body": True}
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        response = Streamed(context)
        pumping = asyncio.ensure_future(pump())
        answering = asyncio.ensure_future(run_app(self.app, scope, receive, response, req.context.deadline_ms))
        failure = None
        try:
            done, _ = await asyncio.wait({pumping, answering}, return_when=asyncio.FIRST_COMPLETED)
            if pumping in done and pumping.exception() is not None:
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
                e = pumping.exception()
                if not isinstance(e, Malformed):
                    raise e  # the call itself broke (cancelled): nothing to answer
                failure = Failure(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Stream: {e}")
            else:
                try:
                    await answering
                except Failure as f:
                    failure = f
        finally:
            finished.set()
            for task in (pumping, answering):
                task.cancel()
            await asyncio.gather(pumping, answering, return_exceptions=True)
        if failure is not None:
            await context.abort(failure.code, str(failure))

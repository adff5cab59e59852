"""The lifecycle: serve, register, renew, drain on SIGTERM, exit.

Same order as the Rust service-sdk: the gRPC server (ForwardingService and
grpc.health.v1) starts first, then the app's ASGI lifespan startup, then
registration. On shutdown: deregister, health NOT_SERVING, keep serving for
`drain` (a gateway replica that has not heard of the deregistration yet
still reaches a live port), stop accepting and let calls in progress finish
for up to `grace`, then the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ._pb import forwarding_pb2_grpc as pb_grpc
from .asgi import AsgiServicer
from .registrar import Registrar
from .wsgi import WsgiServicer

log = logging.getLogger("forwarding_adapter")


@dataclass
class Config:
    """How to serve and register; every field has a default that works on one machine."""

    #: host:port to bind the gRPC server to; port 0 picks a free one.
    listen: str = "127.0.0.1:0"
    #: Base URL of the gateway's registration API (e.g. http://127.0.0.1:8090);
    #: None serves without registering.
    gateway: str | None = None
    #: Service name; also the default route prefix "/<service>".
    service: str = "app"
    #: Instance id; default "<service>-<port>".
    instance_id: str = ""
    #: host:port the gateway dials; default the bound address (127.0.0.1 for a wildcard bind).
    advertise: str = ""
    #: Route prefixes; default ["/<service>"].
    routes: list[str] = field(default_factory=list)
    #: Route prefixes whose responses stream (SSE, downloads): registered with stream = true.
    stream_routes: list[str] = field(default_factory=list)
    #: Declare `streaming`, so the gateway may call `Stream` (large and chunked bodies, SSE).
    streaming: bool = True
    #: Registration token, sent as `authorization: Bearer <token>`.
    token: str | None = None
    #: Lease to ask for in ms; 0 takes the gateway's default.
    lease_ms: int = 0
    #: Seconds to keep serving after deregistering.
    drain: float = 0.5
    #: Seconds calls in progress get to finish once the server stops accepting.
    grace: float = 5.0
    #: Threads for a WSGI app (one per call in progress).
    workers: int = 32
    #: Largest gRPC message either way; a Send body must fit in one.
    max_message_bytes: int = 64 << 20
    #: "asgi", "wsgi" or "auto" (an `async def __call__` is ASGI).
    interface: str = "auto"
    #: ASGI lifespan: "auto" (run it, tolerate apps without), "on", "off".
    lifespan: str = "auto"

    def registration(self, address: str, port: int) -> dict[str, Any]:
        routes = [{"path_prefix": p} for p in (self.routes or ["/" + self.service])]
        routes += [{"path_prefix": p, "stream": True} for p in self.stream_routes]
        reg: dict[str, Any] = {
            "service": self.service,
            "instance_id": self.instance_id or f"{self.service}-{port}",
            "address": address,
            "routes": routes,
            "health": {"kind": "grpc"},
            "streaming": self.streaming,
        }
        if self.lease_ms:
            reg["lease_ms"] = self.lease_ms
        return reg


def is_asgi(app: Any) -> bool:
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
    return inspect.iscoroutinefunction(call)


class Lifespan:
    """The ASGI lifespan protocol, for apps that set things up at startup."""

    def __init__(self, app: Any, mode: str) -> None:
        self.app, self.mode = app, mode
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.outbox.put)
        except Exception as e:
            if self.mode == "on":
                log.exception("ASGI lifespan failed")
            await self.outbox.put({"type": "lifespan.unsupported", "message": repr(e)})
        else:
            # An app that ignores the lifespan scope returns at once; one
            # that finished its shutdown has answered already (ignored).
            await self.outbox.put({"type": "lifespan.unsupported", "message": "the app returned"})

    async def _step(self, event: str) -> None:
        await self.inbox.put({"type": f"lifespan.{event}"})
        out = await self.outbox.get()
        if out["type"] == f"lifespan.{event}.failed":
            raise RuntimeError(f"ASGI lifespan {event} failed: {out.get('message', '')}")
        if out["type"] == "lifespan.unsupported":
            if self.mode == "on":
                raise RuntimeError(f"the app does not support the ASGI lifespan: {out['message']}")
            self.mode = "off"

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self.task = asyncio.ensure_future(self._run())
        await self._step("startup")

    async def shutdown(self) -> None:
        if self.mode == "off" or self.task is None:
            return
        await self._step("shutdown")
        await self.task


class Server:
    """One app behind the gateway. `await start()`, later `await stop()`;
    or `await serve(stop_event)` for both."""

    def __init__(self, app: Any, config: Config | None = None) -> None:
        self.app = app
        self.config = config or Config()
        interface = self.config.interface
        if interface == "auto":
            interface = "asgi" if is_asgi(app) else "wsgi"
        if interface not in ("asgi", "wsgi"):
            raise ValueError(f"Config.interface: expected asgi, wsgi or auto, got {interface!r}")
        self.interface = interface
        self.executor: ThreadPoolExecutor | None = None
        self.lifespan = Lifespan(app, self.config.lifespan if interface == "asgi" else "off")
        self.grpc: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self.registrar: Registrar | None = None
        self.registering: asyncio.Task | None = None
        self.address = ""
        self.port = 0

    def servicer(self) -> pb_grpc.ForwardingServiceServicer:
        if self.interface == "asgi":
            return AsgiServicer(self.app)
        self.executor = ThreadPoolExecutor(self.config.workers, thread_name_prefix="wsgi")
        return WsgiServicer(self.app, self.executor)

    async def start(self) -> str:
        """Serves, runs the lifespan startup, registers (first attempt done
        or failing with retries in the background); returns host:port."""
        c = self.config
        limit = c.max_message_bytes
        self.grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                             ("grpc.max_send_message_length", limit)])
        pb_grpc.add_ForwardingServiceServicer_to_server(self.servicer(), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.port = self.grpc.add_insecure_port(c.listen)
        if not self.port:
            raise OSError(f"cannot bind {c.listen}")
        host = c.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        self.address = c.advertise or f"{host}:{self.port}"
        await self.grpc.start()
        await self.lifespan.startup()
        for name in ("", "forwarding.v1.ForwardingService"):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s app on %s", self.interface.upper(), self.address)
        if c.gateway:
            self.registrar = Registrar(c.gateway, c.registration(self.address, self.port), c.token)
            self.registering = asyncio.ensure_future(self.registrar.run())
            first = asyncio.ensure_future(self.registrar.first.wait())
            await asyncio.wait({first, self.registering}, return_when=asyncio.FIRST_COMPLETED)
            first.cancel()
            if self.registering.done():
                self.registering.result()  # a refused registration: raise it
        return self.address

    async def stop(self) -> None:
        """Deregister, NOT_SERVING, drain, stop, lifespan shutdown."""
        if self.registering is not None:
            self.registering.cancel()
            await asyncio.gather(self.registering, return_exceptions=True)
        if self.registrar is not None:
            await self.registrar.deregister()
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.config.drain)
        if self.grpc is not None:
            await self.grpc.stop(self.config.grace)
        await self.lifespan.shutdown()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def serve(self, stop: asyncio.Event, ready=None) -> None:
        """start(), wait for `stop`, stop(). A stop during start (the gateway
        unreachable, registration retrying) ends the start too."""
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stopped while starting")
                return
            starting.result()  # a start-up error (bind, refused registration) is raised
            if ready is not None:
                ready(self.address)
            await stopping
        finally:
            for task in (starting, stopping):
                task.cancel()
            await asyncio.gather(starting, stopping, return_exceptions=True)
            await self.stop()


def run(app: Any, config: Config | None = None, **overrides: Any) -> None:
    """Serve `app` until SIGTERM or SIGINT, then drain and return.

    Prints `READY host:port` on stdout once serving (and registered, with a
    gateway): scripts and tests wait for that line.
    """
    if config is None:
        config = Config(**overrides)
    elif overrides:
        raise TypeError("pass either a Config or keyword settings, not both")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Server(app, config).serve(stop, ready=lambda a: print(f"READY {a}", flush=True))

    asyncio.run(main())

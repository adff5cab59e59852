"""`python -m forwarding_adapter module:app [options]`, like uvicorn/gunicorn."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .server import Config, run


def load(target: str):
    module, _, attr = target.partition(":")
    if not attr:
        raise SystemExit(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m forwarding_adapter",
                                description="Serve an ASGI or WSGI app behind the forwarding gateway.")
    p.add_argument("app", help="module:attribute of the app, e.g. main:app")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port for the gRPC server (port 0: any free port)")
    p.add_argument("--gateway", default=os.environ.get("FORWARDING_GATEWAY", ""),
                   help="registration API base URL, e.g. http://127.0.0.1:8090; '' serves without registering")
    p.add_argument("--service", default="app", help="service name (default route /<service>)")
    p.add_argument("--instance-id", default="")
    p.add_argument("--advertise", default="", help="host:port the gateway dials (default: the bound address)")
    p.add_argument("--route", action="append", default=[], help="route prefix (repeatable; default /<service>)")
    p.add_argument("--stream-route", action="append", default=[], help="route prefix whose answers stream")
    p.add_argument("--no-streaming", action="store_true", help="do not declare streaming (Send only)")
    p.add_argument("--token", default=os.environ.get("REGISTRATION_TOKEN") or None)
    p.add_argument("--lease-ms", type=int, default=0)
    p.add_argument("--drain", type=float, default=0.5)
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--interface", choices=("auto", "asgi", "wsgi"), default="auto")
    p.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(load(a.app), Config(
        listen=a.listen, gateway=a.gateway or None, service=a.service, instance_id=a.instance_id,
        advertise=a.advertise, routes=a.route, stream_routes=a.stream_route, streaming=not a.no_streaming,
        token=a.token, lease_ms=a.lease_ms, drain=a.drain, grace=a.grace, workers=a.workers,
        interface=a.interface, lifespan=a.lifespan))


if __name__ == "__main__":
    main()

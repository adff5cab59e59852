"""CPU per small request: the adapter against the raw contract, same machine, one run.

    python bench/overhead.py [--requests 3000]

Starts each backend as its own process, sends it `--requests` small `Send`
calls (GET, no body) one after another from this process, and reads the
backend's CPU time (user + system, all threads, /proc/PID/stat) before and
after. Prints one line per backend: microseconds of backend CPU per request.
Pairs: a bare answer (raw grpcio vs raw grpc.aio vs the adapter with a bare
ASGI app vs a Flask app), and the conformance echo (the raw Python example
vs the Starlette app through the adapter).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc

from forwarding_adapter._pb import forwarding_pb2 as pb
from forwarding_adapter._pb import forwarding_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")

BACKENDS = [
    ("hello: raw grpcio (sync, thread pool)", [PY, str(HERE / "hello_apps.py"), "raw"], "/hello"),
    ("hello: raw grpc.aio", [PY, str(HERE / "hello_apps.py"), "raw-aio"], "/hello"),
    ("hello: adapter + bare ASGI app", [PY, "-m", "forwarding_adapter", "hello_apps:asgi_hello"], "/hello"),
    ("hello: adapter + Flask (WSGI)", [PY, "-m", "forwarding_adapter", "flask_hello:app"], "/hello"),
    ("echo: raw example (examples/conformance-py)", [PY, str(REPO / "examples/conformance-py/server.py")],
     "/conformance/echo"),
    ("echo: adapter + Starlette (conformance_app.py)", [PY, str(HERE.parent / "conformance_app.py")],
     "/conformance/echo"),
]


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def measure(name: str, cmd: list[str], path: str, n: int) -> None:
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"{name}: no READY line")
        with grpc.insecure_channel(line.split()[1]) as ch:
            stub = pb_grpc.ForwardingServiceStub(ch)
            req = pb.ForwardingReq(method="GET", path=path, scheme="http", authority="bench",
                                   headers=[pb.Header(name="accept", value=b"*/*")],
                                   context=pb.RequestContext(request_id="r"))
            for _ in range(300):  # warm up
                stub.Send(req)
            before, t = cpu(proc.pid), time.monotonic()
            for _ in range(n):
                stub.Send(req)
            used, wall = cpu(proc.pid) - before, time.monotonic() - t
        print(f"{used / n * 1e6:8.0f} us CPU/request  {n / wall:7.0f} req/s  {name}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=3000)
    a = p.parse_args()
    for name, cmd, path in BACKENDS:
        measure(name, cmd, path, a.requests)


if __name__ == "__main__":
    main()

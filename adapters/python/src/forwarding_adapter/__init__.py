"""Serve an ASGI (FastAPI, Starlette) or WSGI (Flask) app behind the
forwarding gateway, unchanged.

    from forwarding_adapter import run
    run(app, gateway="http://127.0.0.1:8090", service="hello")

See README.md for the lifecycle, configuration and what the app sees.
"""

from .convert import Malformed
from .server import Config, Server, run

__all__ = ["Config", "Malformed", "Server", "run"]
__version__ = "0.1.0"

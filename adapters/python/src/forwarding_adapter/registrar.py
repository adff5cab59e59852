"""Registration with the gateway over its HTTP/JSON API (openapi/registry.v1.yaml).

Register, renew every third of the granted lease (register again on a 404:
the gateway restarted or the lease expired), deregister on shutdown. The
standard library's urllib in a worker thread: no HTTP client dependency.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger("forwarding_adapter")


class GatewayError(Exception):
    """The registration API answered an error status."""

    def __init__(self, status: int, text: str) -> None:
        try:
            err = json.loads(text).get("error") or {}
        except (ValueError, AttributeError):
            err = {}
        self.status = status
        self.code = err.get("code", "") if isinstance(err, dict) else ""
        message = err.get("message", text) if isinstance(err, dict) else text
        super().__init__(f"HTTP {status} {self.code}: {message}".strip())


class Registrar:
    """Keeps one registration alive; `run` until cancelled, then `deregister`."""

    def __init__(self, gateway: str, registration: dict[str, Any], token: str | None = None,
                 timeout: float = 3.0) -> None:
        self.gateway = gateway.rstrip("/")
        self.registration = registration
        self.token = token
        self.timeout = timeout
        self.registered = False
        self.lease_ms = 30_000
        self.first = asyncio.Event()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.gateway + path, data=data, method=method)
        req.add_header("accept", "application/json")
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            raise GatewayError(e.code, e.read().decode("utf-8", "replace")) from None

    def _key(self) -> str:
        q = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
        return f"/v1/registrations/{q(self.registration['service'])}/{q(self.registration['instance_id'])}"

    async def register(self) -> None:
        out = await asyncio.to_thread(self._call, "PUT", "/v1/registrations", self.registration)
        self.registered = True
        self.lease_ms = int(out.get("lease_ms") or self.lease_ms)
        log.info("registered %s/%s at %s (lease %d ms)", self.registration["service"],
                 self.registration["instance_id"], self.registration["address"], self.lease_ms)
        self.first.set()

    async def renew(self) -> None:
        out = await asyncio.to_thread(self._call, "POST", self._key() + "/renew")
        self.lease_ms = int(out.get("lease_ms") or self.lease_ms)

    async def deregister(self) -> None:
        if not self.registered:
            return
        self.registered = False
        try:
            await asyncio.to_thread(self._call, "DELETE", self._key())
            log.info("deregistered %s/%s", self.registration["service"], self.registration["instance_id"])
        except (GatewayError, OSError, ValueError) as e:
            log.warning("deregistration failed: %s", e)

    async def run(self) -> None:
        """Registers and renews until cancelled. A refused first registration
        (400/401/403) is raised: the configuration is wrong, retrying cannot
        help. Everything else is retried with backoff (0.2 s to 5 s)."""
        backoff = 0.2
        while True:
            try:
                if self.registered:
                    await self.renew()
                else:
                    await self.register()
                backoff = 0.2
                await asyncio.sleep(self.lease_ms / 3000)
                continue
            except GatewayError as e:
                if e.status == 404 and self.registered:
                    log.warning("the gateway forgot this instance; registering again")
                    self.registered = False
                    continue
                if e.status in (400, 401, 403) and not self.first.is_set():
                    raise
                log.warning("registration call failed (retrying in %.1fs): %s", backoff, e)
            except (OSError, ValueError) as e:
                log.warning("gateway %s unreachable (retrying in %.1fs): %s", self.gateway, backoff, e)
            await asyncio.sleep(min(backoff, self.lease_ms / 3000))
            backoff = min(backoff * 2, 5.0)

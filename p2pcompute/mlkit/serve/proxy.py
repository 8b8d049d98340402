"""The HTTP proxy an agent runs on its peer: an ASGI app served by uvicorn.

Theory of operation. The proxy keeps the route table (app route prefixes, from the replicated table, refreshed
every half second) and answers each request on the agent's serve loop: the longest matching prefix picks the
app, the app's ingress router picks a replica, and the replica's result becomes the response — streamed
chunk by chunk when the replica returned a generator. `/-/healthz` and `/-/routes` are answered by the proxy
itself. Errors map to status codes: 404 (no route), 400 (`BadRequestError`, e.g. a body that is not JSON),
503 (back-pressure, or no replica), 408 past `request_timeout_s` (if set), the code of an `HTTPException`,
else 500 with the error's message.
Clients not on loopback must present the serve token (`Authorization: Bearer <token>`) when one is set.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time

from p2pcompute.mlkit.serve import handle as hd
from p2pcompute.mlkit.serve import http_util
from p2pcompute.mlkit.serve import replica as rp
from p2pcompute.mlkit.serve import state
from p2pcompute.mlkit.serve.errors import BackPressureError, DeploymentUnavailableError

MAX_BODY_BYTES = 64 * 1024 * 1024


def _loopback(client) -> bool:
    if not client:
        return True  # a Unix socket
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


class Proxy:
    def __init__(self, auth_token: str | None = None, request_timeout_s: float | None = None):
        self.auth_token = auth_token
        self.request_timeout_s = request_timeout_s
        self.routes: dict[str, tuple[str, str]] = {}   # prefix -> (app, ingress deployment)
        self.routes_at = 0.0
        self._refreshing: asyncio.Task | None = None
        self.requests = 0

    async def _refresh_routes(self, force: bool = False) -> None:
        """Re-read the routes; in the background unless there are none yet, the view is old, or `force`."""
        age_s = time.monotonic() - self.routes_at
        if not force and age_s < hd.REFRESH_S:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._read_routes())
        if force or not self.routes or age_s >= 2 * hd.REFRESH_S:
            await asyncio.shield(self._refreshing)

    async def _read_routes(self) -> None:
        try:
            apps = await asyncio.get_running_loop().run_in_executor(None, state.list_apps)
            self.routes = {m["route_prefix"]: (name, m["ingress"]) for name, m in apps.items()
                           if m.get("route_prefix")}
        finally:
            self.routes_at = time.monotonic()

    def match(self, path: str) -> tuple[str, str, str] | None:
        best = None
        for prefix, target in self.routes.items():
            p = prefix.rstrip("/")
            if path == p or path.startswith(p + "/") or p == "":
                if best is None or len(p) > len(best[0]):
                    best = (p or "/", *target)
        return best

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.requests += 1
        path = scope["path"]
        if self.auth_token and not _loopback(scope.get("client")):
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given, f"Bearer {self.auth_token}"):
                return await _text(send, 401, "unauthorized: this serve proxy requires "
                                              "'Authorization: Bearer <serve token>' from non-loopback clients")
        await self._refresh_routes()
        if path == "/-/healthz":
            return await _text(send, 200, "success")
        if path == "/-/routes":
            return await _json(send, 200, {p: a for p, (a, _) in sorted(self.routes.items())})
        found = self.match(path)
        if found is None:
            await self._refresh_routes(force=True)   # an app deployed since the last refresh
            found = self.match(path)
        if found is None:
            return await _text(send, 404, f"no application is routed at {path!r}; routes: {sorted(self.routes)}")
        prefix, app, ingress = found
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                return await _text(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
            if not msg.get("more_body"):
                break
        request = http_util.Request(scope["method"], path, prefix, scope.get("query_string", b""),
                                    list(scope.get("headers") or []), bytes(body), scope.get("client"),
                                    scope.get("scheme", "http"), scope.get("server"))
        router = hd.router_for(app, ingress)
        try:
            name, env = await asyncio.wait_for(router.call("__call__", True, (request,), {}),
                                               self.request_timeout_s)
        except asyncio.TimeoutError:
            return await _text(send, 408, f"the request timed out after {self.request_timeout_s} s "
                                          f"(http_options request_timeout_s)")
        except (BackPressureError, DeploymentUnavailableError) as exc:
            return await _text(send, 503, str(exc))
        except Exception as exc:  # noqa: BLE001 - user errors become HTTP errors
            status, message = http_util.error_status(exc)
            return await _text(send, status, message)
        if env[0] == rp.STREAM:
            return await self._stream(send, router, name, env)
        _, status, headers, payload = env[1]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def _stream(self, send, router, name, env):
        _, sid, status, headers = env
        stream = hd._Stream(router, name, sid)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while True:
                try:
                    chunk = await stream.next()
                except StopAsyncIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - the head is sent: end the body and say why in it
                    await send({"type": "http.response.body", "body": f"\nstream failed: {exc}".encode(),
                                "more_body": True})
                    break
                await send({"type": "http.response.body", "body": http_util.chunk_bytes(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await stream.close()   # a no-op once the stream ended; else the client went away mid-stream

async def _text(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send, status: int, value) -> None:
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

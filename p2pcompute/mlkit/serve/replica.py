"""A replica: the actor that holds one instance of a deployment and runs its requests.

Theory of operation. The agent that fills a slot creates a detached, named actor of `Replica` through a task
pinned to the chosen peer, so the replica is owned by that peer's keeper and lives exactly as long as that
peer. The constructor loads the code from the table, builds the user's object, applies `user_config`, and
marks its slot READY with compare-and-set (only if the slot still names it). Requests arrive as
`handle_request`: the replica counts them, and refuses one beyond `max_ongoing_requests` at once ("rejected")
so routers that do not see each other's traffic still respect the limit — the router then tries another
replica. A generator result becomes a stream the caller pulls with `stream_next`. To stop, the agent marks the
slot DRAINING (routers stop choosing it), then `drain` waits for ongoing requests, after which the replica
answers "stopped" so a late request is retried elsewhere rather than lost.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
import traceback

import cloudpickle

from p2pcompute import kv
from p2pcompute.mlkit.serve import http_util, state

OK, REJECTED, STOPPED, STREAM = "ok", "rejected", "stopped", "stream"
_STREAM_CHUNK_MAX = 256


class Replica:
    def __init__(self, app: str, deployment: str, slot_key: str, name: str, spec: dict):
        self.app, self.deployment, self.slot_key, self.name = app, deployment, slot_key, name
        self.max_ongoing = int(spec["max_ongoing_requests"])
        self.ongoing = 0
        self.served = 0
        self.stopped = False
        self.streams: dict[int, object] = {}
        self._ids = itertools.count(1)
        self.config_hash = ""
        self.instance = None
        self.fn = None
        self.asgi = None
        try:
            code = kv.get(state.code_key(app, deployment, spec["version"]), linearizable=True)
            if code is None:
                raise RuntimeError(f"the code of {app}/{deployment} version {spec['version']} is not in the table "
                                   f"(the app was deleted or redeployed)")
            target, args, kwargs = cloudpickle.loads(code)
            if spec["is_function"]:
                self.fn = target
            else:
                self.instance = target(*args, **kwargs)
                self.asgi = getattr(type(self.instance), "__serve_asgi_app__", None)
                if self.asgi is not None:
                    from p2pcompute.mlkit.serve.ingress import bind_app
                    self.asgi = bind_app(self.asgi, self.instance)
            if spec.get("user_config") is not None:
                result = self._reconfigure_call(spec["user_config"])
                if inspect.isawaitable(result):
                    asyncio.run(_awaited(result))
            self.config_hash = spec["config_hash"]
            self._mark("READY")
        except Exception as exc:  # noqa: BLE001 - recorded so `serve.run` and `serve.status` can say why
            self._mark("FAILED", error="".join(traceback.format_exception(exc))[-4000:])

    # ---- the slot record -------------------------------------------------------------------------------

    def _mark(self, new_state: str, **extra) -> None:
        import p2pcompute as p2p
        for _ in range(20):
            rec = kv.get(self.slot_key, linearizable=True)
            if not isinstance(rec, dict) or rec.get("name") != self.name:
                self.stopped = True   # the slot was given to another replica: this one must not serve
                return
            new = dict(rec, state=new_state, config=self.config_hash, node=p2p.get_runtime_context().get_node_id(),
                       **extra)
            if rec.get("state") == "DRAINING" and new_state == "READY":
                return
            if kv.cas(self.slot_key, rec, new):
                return

    def _reconfigure_call(self, user_config):
        target = self.instance if self.instance is not None else None
        method = getattr(target, "reconfigure", None)
        if method is None:
            raise TypeError(f"deployment {self.deployment} has a user_config but no reconfigure(self, config) "
                            f"method to receive it")
        return method(user_config)

    # ---- requests -----------------------------------------------------------------------------------

    async def handle_request(self, method: str, http: bool, *args, **kwargs):
        if self.stopped:
            return (STOPPED,)
        if self.ongoing >= self.max_ongoing:
            return (REJECTED, self.ongoing)
        self.ongoing += 1
        streaming = False
        try:
            if http and self.asgi is not None:
                return (OK, await _run_asgi(self.asgi, args[0]))
            if self.fn is not None:
                call = self.fn
            else:
                call = getattr(self.instance, method, None)
                if call is None or method.startswith("_") and method != "__call__":
                    raise AttributeError(f"deployment {self.deployment} has no method {method!r}")
            result = call(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if http:
                out = http_util.to_http(result)
                if out[0] == "stream":
                    streaming = True
                    return (STREAM, self._open_stream(out[3]), out[1], out[2])
                return (OK, out)
            if http_util.is_stream(result):
                streaming = True
                return (STREAM, self._open_stream(result), 200, [])
            return (OK, result)
        finally:
            self.served += 1
            if not streaming:
                self.ongoing -= 1

    def _open_stream(self, it) -> int:
        sid = next(self._ids)
        self.streams[sid] = it
        return sid

    async def stream_next(self, sid: int, max_wait_s: float = 0.05):
        """The chunks ready now (at least one unless the stream ended) and whether the stream ended."""
        it = self.streams.get(sid)
        if it is None:
            return [], True
        chunks, done = [], False
        deadline = time.monotonic() + max_wait_s
        try:
            while len(chunks) < _STREAM_CHUNK_MAX:
                if inspect.isasyncgen(it) or hasattr(it, "__anext__"):
                    try:
                        chunks.append(await it.__anext__())
                    except StopAsyncIteration:
                        done = True
                        break
                else:
                    try:
                        chunks.append(next(it))
                    except StopIteration:
                        done = True
                        break
                if time.monotonic() >= deadline:
                    break
        except BaseException:
            done = True
            raise
        finally:
            if done:
                self.streams.pop(sid, None)
                self.ongoing -= 1
        return chunks, done

    async def stream_close(self, sid: int) -> None:
        it = self.streams.pop(sid, None)
        if it is not None:
            self.ongoing -= 1
            close = getattr(it, "aclose", None) or getattr(it, "close", None)
            if close is not None:
                r = close()
                if inspect.isawaitable(r):
                    await r

    # ---- control ------------------------------------------------------------------------------------

    async def metrics(self) -> dict:
        return {"ongoing": self.ongoing, "served": self.served, "stopped": self.stopped}

    async def reconfigure(self, user_config, config_hash: str) -> None:
        result = self._reconfigure_call(user_config)
        if inspect.isawaitable(result):
            await result
        self.config_hash = config_hash
        await asyncio.get_running_loop().run_in_executor(None, self._mark, "READY")

    async def drain(self, grace_s: float, timeout_s: float) -> int:
        """Finish ongoing requests (routers stop sending within `grace_s`), then answer "stopped" to any more."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if time.monotonic() - start >= grace_s and self.ongoing == 0:
                break
            await asyncio.sleep(0.05)  # polling our own counter; bounded by timeout_s
        self.stopped = True
        return self.ongoing


async def _awaited(awaitable):
    return await awaitable


async def _run_asgi(app, request: http_util.Request) -> tuple:
    """Run an ASGI app on one buffered request; ("http", status, headers, body)."""
    sent_body = False
    head: dict = {}
    parts: list[bytes] = []

    async def receive():
        nonlocal sent_body
        if sent_body:
            await asyncio.sleep(3600)  # no disconnect event: the request stays open until the app answers
        sent_body = True
        return {"type": "http.request", "body": request._body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            head.update(status=message["status"], headers=list(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            parts.append(bytes(message.get("body", b"")))

    await app(request.scope(), receive, send)
    headers = [(bytes(k), bytes(v)) for k, v in head.get("headers", []) if bytes(k).lower() != b"content-length"]
    return ("http", head.get("status", 500), headers, b"".join(parts))

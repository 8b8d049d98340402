"""Handles and the router behind them: `handle.method.remote(...)` -> a `DeploymentResponse`.

Theory of operation. Each process that calls a deployment (a driver, a replica calling another, an agent's
HTTP proxy) has one serve event loop on a background thread and one `Router` per deployment on it. A router
keeps the deployment's READY replicas from the table (refreshed every half second, and at once when it finds
none or a replica is gone) and the number of its own requests in flight at each. It places a request with
`ReplicaChooser` (power of two choices below `max_ongoing_requests`), queues it when every replica is full,
and refuses it with `BackPressureError` once `max_queued_requests` wait. A replica that refuses (it is full
because of other routers' traffic), is stopping, or died, is skipped and the request goes to another one:
requests are retried only when the replica did not run them (refused or stopping) or died with them.

`remote()` never blocks: it schedules the call on the serve loop and returns a `DeploymentResponse`, which is
awaitable in async code and has `.result()` for sync code. A response passed as an argument to another call
is resolved by the router, so the caller never waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import random
import threading
import time
from typing import Any

import p2pcompute as p2p
from p2pcompute import kv
from p2pcompute.errors import ActorDiedError, ActorUnavailableError
from p2pcompute.mlkit.serve import replica as rp
from p2pcompute.mlkit.serve import state
from p2pcompute.mlkit.serve.errors import BackPressureError, DeploymentUnavailableError
from p2pcompute.mlkit.serve.routing import Admission, ReplicaChooser, admit

REFRESH_S = 0.5
UNAVAILABLE_TIMEOUT_S = 60.0
_SYSTEM_ERRORS = (ActorDiedError, ActorUnavailableError)

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_routers: dict[tuple[str, str], "Router"] = {}


async def _await_ref(ref):
    """`await ref`, except that a cancelled waiter (a request timeout) leaves the ref's future alone: the
    runtime's waiter thread would otherwise fail setting a result on a cancelled future."""
    return await asyncio.shield(asyncio.wrap_future(ref.future()))


def serve_loop() -> asyncio.AbstractEventLoop:
    """This process's serve event loop (started on first use, on a daemon thread)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            try:
                import uvloop
                loop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="serve-loop", daemon=True).start()
            _loop = loop
        return _loop


def router_for(app: str, deployment: str) -> "Router":
    key = (app, deployment)
    r = _routers.get(key)
    if r is None:
        r = _routers.setdefault(key, Router(app, deployment))
    return r


class Router:
    """Places requests on one deployment's replicas. Lives on the serve loop; use it only from there."""

    def __init__(self, app: str, deployment: str):
        self.app, self.deployment = app, deployment
        self.handles: dict[str, Any] = {}       # actor name -> ActorHandle, READY replicas only
        self.inflight: dict[str, int] = {}
        self.max_ongoing = 5
        self.max_queued = -1
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.refreshed_at = 0.0
        self.gone: dict[str, float] = {}         # replicas that died or stopped -> until when to skip them
        self.chooser = ReplicaChooser(random.Random())
        self._refreshing: asyncio.Future | None = None
        self.exists = True

    # ---- the replica set ------------------------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Re-read the replica set. A router with a recent view refreshes in the background (requests do not
        wait for the table); one with no replicas, a view older than 2 x REFRESH_S (it may name replicas
        stopped since), or after a failure (`force`) waits for the answer."""
        age_s = time.monotonic() - self.refreshed_at
        if not force and age_s < REFRESH_S:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        if force or not self.handles or age_s >= 2 * REFRESH_S:
            await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        try:
            handles, meta = await asyncio.get_running_loop().run_in_executor(None, self._read)
        finally:
            self.refreshed_at = time.monotonic()
        self.exists = meta is not None
        if meta is not None:
            self.max_ongoing = int(meta.get("max_ongoing_requests", self.max_ongoing))
            self.max_queued = int(meta.get("max_queued_requests", self.max_queued))
        self.handles = handles
        for name in list(self.inflight):
            if name not in handles and self.inflight[name] == 0:
                del self.inflight[name]
        for name in handles:
            self.inflight.setdefault(name, 0)
        self._wake(len(self.waiters))

    def _read(self):
        app_meta = kv.get(state.app_key(self.app))
        meta = app_meta.get("deployments", {}).get(self.deployment) if isinstance(app_meta, dict) else None
        now = time.monotonic()
        handles = {}
        for slot in state.list_slots(self.app, self.deployment):
            name = slot.name
            if slot.state != "READY" or self.gone.get(name, 0) > now:
                continue
            h = self.handles.get(name)
            if h is None:
                try:
                    h = p2p.get_actor(name, namespace=state.NAMESPACE)
                except ValueError:
                    continue   # its name is gone: it died, the agents will replace it
            handles[name] = h
        return handles, meta

    def _wake(self, n: int = 1) -> None:
        while n > 0 and self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def _forget(self, name: str, for_s: float) -> None:
        self.gone[name] = time.monotonic() + for_s
        self.handles.pop(name, None)

    # ---- placing a request ----------------------------------------------------------------------------

    async def call(self, method: str, http: bool, args: tuple, kwargs: dict):
        """(replica name, envelope) of a call run by some replica; see `replica.Replica.handle_request`."""
        await self.refresh()
        deadline = time.monotonic() + UNAVAILABLE_TIMEOUT_S
        refused: set[str] = set()
        failures = 0
        queued = False
        while True:
            name = self.chooser.choose({n: self.inflight.get(n, 0) for n in self.handles}, self.max_ongoing,
                                       exclude=refused)
            if name is None:
                if not self.handles:
                    if not self.exists:
                        raise DeploymentUnavailableError(
                            f"there is no deployment {self.deployment!r} in app {self.app!r} (deleted, or never "
                            f"deployed); see serve.status()")
                    if time.monotonic() > deadline:
                        raise DeploymentUnavailableError(
                            f"no replica of deployment {self.deployment!r} (app {self.app!r}) is running; "
                            f"see serve.status()")
                    await asyncio.sleep(0.05)
                    await self.refresh(force=True)
                    continue
                if refused and len(refused) >= len(self.handles):
                    refused.clear()    # every replica said it is full: wait for one of ours to finish
                if not queued and admit(False, len(self.waiters), self.max_queued) is Admission.REJECT:
                    raise BackPressureError(
                        f"deployment {self.deployment!r} of app {self.app!r} is overloaded: all "
                        f"{len(self.handles)} replica(s) have {self.max_ongoing} requests ongoing "
                        f"(max_ongoing_requests) and {len(self.waiters)} are queued (max_queued_requests); "
                        f"retry later or add replicas")
                queued = True
                fut = asyncio.get_running_loop().create_future()
                self.waiters.append(fut)
                try:
                    await asyncio.wait_for(fut, 0.1)
                except asyncio.TimeoutError:
                    await self.refresh()
                finally:
                    if not fut.done():
                        fut.cancel()
                continue
            handle = self.handles[name]
            self.inflight[name] = self.inflight.get(name, 0) + 1
            keep = False
            try:
                env = await _await_ref(handle.handle_request.remote(method, http, *args, **kwargs))
                if env[0] == rp.STREAM:
                    keep = True
                    return name, env
            except _SYSTEM_ERRORS:
                failures += 1
                self._forget(name, 10.0)
                if failures > 3:
                    raise
                await self.refresh(force=True)
                continue
            finally:
                if not keep:
                    self.release(name)
            if env[0] == rp.REJECTED:
                refused.add(name)
                continue
            if env[0] == rp.STOPPED:
                self._forget(name, 30.0)
                await self.refresh(force=True)
                continue
            return name, env

    def release(self, name: str) -> None:
        n = self.inflight.get(name, 0)
        if n > 0:
            self.inflight[name] = n - 1
        self._wake()


async def _resolve(value):
    if isinstance(value, DeploymentResponse):
        return await value
    return value


async def _call_value(router: Router, method: str, args: tuple, kwargs: dict, stream: bool):
    args = tuple([await _resolve(a) for a in args])
    kwargs = {k: await _resolve(v) for k, v in kwargs.items()}
    name, env = await router.call(method, False, args, kwargs)
    if env[0] == rp.STREAM:
        if not stream:
            await _await_ref(router.handles[name].stream_close.remote(env[1])) if name in router.handles else None
            router.release(name)
            raise TypeError(f"{router.deployment}.{method} returned a generator; call it with "
                            f"handle.options(stream=True)")
        return _Stream(router, name, env[1])
    if stream:
        raise TypeError(f"{router.deployment}.{method} did not return a generator, but was called with "
                        f"stream=True")
    return env[1]


class _Stream:
    """Pulls a replica's generator in chunks; releases the router's slot when it ends."""

    def __init__(self, router: Router, name: str, sid: int):
        self.router, self.name, self.sid = router, name, sid
        self.handle = router.handles.get(name) or p2p.get_actor(name, namespace=state.NAMESPACE)
        self.buffer: collections.deque = collections.deque()
        self.done = False

    async def next(self):
        while not self.buffer:
            if self.done:
                raise StopAsyncIteration
            try:
                chunks, self.done = await _await_ref(self.handle.stream_next.remote(self.sid))
            except BaseException:
                self.done = True
                self.router.release(self.name)
                raise
            if self.done:
                self.router.release(self.name)
            self.buffer.extend(chunks)
        return self.buffer.popleft()

    async def close(self) -> None:
        """Abandon the stream early (the client went away): the replica drops its generator."""
        if self.done:
            return
        self.done = True
        self.router.release(self.name)
        try:
            await _await_ref(self.handle.stream_close.remote(self.sid))
        except Exception:  # noqa: BLE001 - the replica is gone: nothing to close
            pass


class DeploymentResponse:
    """The future result of a handle call: `await response` in async code, `response.result()` in sync code."""

    def __init__(self, future: concurrent.futures.Future):
        self._future = future

    def result(self, timeout_s: float | None = None) -> Any:
        try:
            return self._future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the deployment did not answer within {timeout_s} s") from None

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()

    def cancel(self) -> bool:
        return self._future.cancel()

    def done(self) -> bool:
        return self._future.done()


class DeploymentResponseGenerator:
    """The chunks of a streaming call (`handle.options(stream=True)`): iterate it, sync or async."""

    def __init__(self, future: concurrent.futures.Future):
        self._future = future
        self._stream: _Stream | None = None

    async def _next(self):
        if self._stream is None:
            self._stream = await asyncio.wrap_future(self._future)
        return await self._stream.next()

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._next(), serve_loop()))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return asyncio.run_coroutine_threadsafe(self._next(), serve_loop()).result()
        except StopAsyncIteration:
            raise StopIteration from None


class DeploymentHandle:
    """Calls a deployment of a running app: `handle.remote(x)`, `handle.method.remote(x)`."""

    def __init__(self, deployment_name: str, app_name: str, method_name: str = "__call__", stream: bool = False):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._method = method_name
        self._stream = stream

    def options(self, *, method_name: str | None = None, stream: bool | None = None) -> "DeploymentHandle":
        return DeploymentHandle(self.deployment_name, self.app_name, method_name or self._method,
                                self._stream if stream is None else bool(stream))

    def __getattr__(self, name: str) -> "DeploymentHandle":
        if name.startswith("_"):
            raise AttributeError(name)
        return DeploymentHandle(self.deployment_name, self.app_name, name, self._stream)

    def remote(self, *args, **kwargs):
        router = router_for(self.app_name, self.deployment_name)
        fut = asyncio.run_coroutine_threadsafe(_call_value(router, self._method, args, kwargs, self._stream),
                                               serve_loop())
        return DeploymentResponseGenerator(fut) if self._stream else DeploymentResponse(fut)

    def __reduce__(self):
        return (DeploymentHandle, (self.deployment_name, self.app_name, self._method, self._stream))

    def __repr__(self) -> str:
        return f"DeploymentHandle(app={self.app_name!r}, deployment={self.deployment_name!r})"

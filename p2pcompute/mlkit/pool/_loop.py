"""A thread that waits on object refs and on a queue of commands at once.

The pools hand work to the cluster from the caller's thread but learn results on this thread: the loop keeps
the refs in flight, waits for any of them with `p2p.wait` (short timeouts, so commands posted meanwhile are
seen quickly), fetches the values of all that finished in one `get`, and calls the owner's handlers. One
thread per pool instead of one per future keeps thousands of outstanding calls cheap.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import p2pcompute as p2p

# How long one wait for results may block before posted commands are looked at again.
_POLL_S = 0.01


class RefLoop:
    """Runs `on_command(cmd)` for posted commands and `on_result(token, ok, value)` for finished refs."""

    def __init__(self, name: str, on_command: Callable[[Any], None],
                 on_result: Callable[[Any, bool, Any], None]):
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[p2p.ObjectRef, Any] = {}
        self._on_command = on_command
        self._on_result = on_result
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- called from any thread ----
    def post(self, cmd: Any) -> None:
        self._inbox.put(cmd)

    def stop(self) -> None:
        self._inbox.put(_STOP)

    def join(self, timeout_s: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # ---- called on the loop thread only ----
    def track(self, ref: p2p.ObjectRef, token: Any) -> None:
        self._inflight[ref] = token

    def untrack_all(self) -> list:
        tokens = list(self._inflight.values())
        self._inflight.clear()
        return tokens

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while not self._stopped:
            self._drain(block=not self._inflight)
            if self._stopped or not self._inflight:
                continue
            refs = list(self._inflight)
            try:
                ready, _ = p2p.wait(refs, num_returns=1, timeout=_POLL_S)
            except p2p.errors.NotInitializedError:
                return  # the driver shut down under us: nothing more will finish
            if not ready:
                continue
            ready, _ = p2p.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                token = self._inflight.pop(ref)
                try:
                    value = p2p.get(ref)
                    ok = True
                except BaseException as exc:  # noqa: BLE001 - handed to the owner, who decides
                    value, ok = exc, False
                self._on_result(token, ok, value)

    def _drain(self, block: bool) -> None:
        while True:
            try:
                cmd = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if cmd is _STOP:
                self._stopped = True
                return
            self._on_command(cmd)


_STOP = object()

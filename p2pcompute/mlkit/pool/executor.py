"""`Executor`: a `concurrent.futures.Executor` whose calls run as tasks in the cluster.

Theory of operation. `submit` returns a plain `concurrent.futures.Future` at once and queues the call. The
dispatcher thread (`RefLoop`) keeps at most `max_workers` calls running as tasks and starts the next queued
one when one finishes, so a call still queued can be cancelled (`Future.cancel()` returns True, as with a
thread or process pool), while a running call cannot. Results and exceptions land on the future, so
`as_completed`, `wait` and callbacks work unchanged. `map(..., chunksize=k)` sends k calls per task.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
from typing import Callable, Iterable

import p2pcompute as p2p
from p2pcompute.mlkit.pool._loop import RefLoop


def _call(fn, args, kwargs):
    return fn(*args, **kwargs)


def _call_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class Executor(cf.Executor):
    """Runs calls as p2pcompute tasks. `max_workers` bounds the calls running at once (default: twice the
    cluster's CPUs, so the cluster's queues stay short and queued calls stay cancellable)."""

    def __init__(self, max_workers: int | None = None, *, remote_args: dict | None = None):
        if not p2p.is_initialized():
            p2p.init()
        if max_workers is None:
            max_workers = 2 * max(1, int(p2p.cluster_resources().get("CPU", 1)))
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError(f"max_workers must be an int greater than 0, not {max_workers!r}")
        self._max_workers = max_workers
        opts = dict(remote_args or {})
        self._task = p2p.remote(_call).options(**opts) if opts else p2p.remote(_call)
        self._chunk_task = p2p.remote(_call_chunk).options(**opts) if opts else p2p.remote(_call_chunk)
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._shutdown = False
        self._shutting_down = False
        self._loop = RefLoop("p2p-executor", self._on_command, self._on_result)

    def submit(self, fn: Callable, /, *args, **kwargs) -> cf.Future:
        return self._submit(self._task, (fn, args, kwargs))

    def _submit(self, task, task_args) -> cf.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = cf.Future()
            self._loop.post(("call", future, task, task_args))
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1):
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize!r}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        arg_tuples = zip(*iterables)
        chunks = iter(lambda: list(itertools.islice(arg_tuples, chunksize)), [])
        futures = [self._submit(self._chunk_task, (fn, chunk)) for chunk in chunks]
        return _chain(futures, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._loop.post(("cancel_queued",))
        self._loop.post(("shutdown",))
        if wait:
            self._loop.join()

    # ---- the dispatcher thread ----
    def _on_command(self, cmd) -> None:
        kind = cmd[0]
        if kind == "call":
            self._queue.append(cmd[1:])
        elif kind == "cancel_queued":
            while self._queue:
                self._queue.popleft()[0].cancel()
        elif kind == "shutdown":
            self._shutting_down = True
        self._start_some()
        self._maybe_stop()

    def _on_result(self, future: cf.Future, ok: bool, value) -> None:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
        self._start_some()
        self._maybe_stop()

    def _start_some(self) -> None:
        while self._queue and self._loop.inflight < self._max_workers:
            future, task, task_args = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                ref = task.remote(*task_args)
            except BaseException as exc:  # noqa: BLE001 - e.g. an argument that cannot be pickled
                future.set_exception(exc)
                continue
            self._loop.track(ref, future)

    def _maybe_stop(self) -> None:
        if self._shutting_down and not self._queue and self._loop.inflight == 0:
            self._loop.stop()


def _chain(futures: list, timeout: float | None):
    import time
    end = None if timeout is None else time.monotonic() + timeout
    try:
        futures.reverse()
        while futures:
            f = futures.pop()
            chunk = f.result() if end is None else f.result(end - time.monotonic())
            yield from chunk
    finally:
        for f in futures:
            f.cancel()

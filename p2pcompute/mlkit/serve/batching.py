"""`@serve.batch`: calls that arrive one at a time run as one call on a list.

Theory of operation. Each decorated method (per instance) keeps a queue of pending calls. A single batcher
task drains it: when the queue holds `max_batch_size` items, or its oldest item has waited
`batch_wait_timeout_s`, it takes up to `max_batch_size` items, calls the function once with their list, and
hands the i-th result back to the i-th caller. The decision "flush now or wait how long" is `BatchPolicy`, a
pure object; the asyncio part only carries it out. One batch runs at a time per queue, as in Ray.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    """When to run a batch, given how many calls wait and how long the oldest has waited."""

    max_batch_size: int = 10
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self):
        if not isinstance(self.max_batch_size, int) or isinstance(self.max_batch_size, bool) \
                or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, not {self.max_batch_size!r}")
        if not isinstance(self.batch_wait_timeout_s, (int, float)) or self.batch_wait_timeout_s < 0:
            raise ValueError(f"batch_wait_timeout_s must be a number >= 0, not {self.batch_wait_timeout_s!r}")

    def wait_s(self, queued: int, oldest_wait_s: float) -> float | None:
        """0: run a batch now; > 0: wait at most this long for more calls; None: nothing to do."""
        if queued <= 0:
            return None
        if queued >= self.max_batch_size:
            return 0.0
        return max(0.0, self.batch_wait_timeout_s - oldest_wait_s)

    def take(self, queued: int) -> int:
        """How many queued calls go into the next batch."""
        return min(queued, self.max_batch_size)


class _Queue:
    def __init__(self, fn, policy: BatchPolicy):
        self.fn = fn
        self.policy = policy
        self.items: list[tuple[object, asyncio.Future, float]] = []
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def submit(self, owner, item):
        fut = asyncio.get_running_loop().create_future()
        self.items.append((item, fut, time.monotonic()))
        self.wakeup.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain(owner))
        return await fut

    async def _drain(self, owner):
        while self.items:
            wait = self.policy.wait_s(len(self.items), time.monotonic() - self.items[0][2])
            if wait:
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            n = self.policy.take(len(self.items))
            batch, self.items = self.items[:n], self.items[n:]
            live = [(item, fut) for item, fut, _ in batch if not fut.done()]
            if not live:
                continue
            try:
                args = [item for item, _ in live]
                results = await (self.fn(owner, args) if owner is not None else self.fn(args))
                if not isinstance(results, (list, tuple)) or len(results) != len(live):
                    raise TypeError(f"@serve.batch function {self.fn.__qualname__} must return a list with one "
                                    f"result per input ({len(live)}), got {type(results).__name__}"
                                    + (f" of length {len(results)}" if hasattr(results, "__len__") else ""))
                for (_, fut), value in zip(live, results):
                    if not fut.done():
                        fut.set_result(value)
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)


def batch(_fn=None, *, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01):
    """Decorate an `async def` method (or function) taking a list; callers pass one item and get one result.

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
        async def predict(self, rows: list) -> list: ...
    """
    policy = BatchPolicy(max_batch_size, batch_wait_timeout_s)

    def deco(fn):
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@serve.batch needs an async function (async def {fn.__name__}(self, items)); "
                            f"{fn.__qualname__} is not one")
        params = list(inspect.signature(fn).parameters)
        is_method = bool(params) and params[0] == "self"
        attr = f"__serve_batch_{fn.__name__}"
        free_queues: dict[int, _Queue] = {}

        if is_method:
            @functools.wraps(fn)
            async def method_wrapper(self, item):
                queue = self.__dict__.get(attr)
                if queue is None:
                    queue = self.__dict__[attr] = _Queue(fn, policy)
                return await queue.submit(self, item)
            method_wrapper.__serve_batch_policy__ = policy
            return method_wrapper

        @functools.wraps(fn)
        async def function_wrapper(item):
            loop_id = id(asyncio.get_running_loop())
            queue = free_queues.get(loop_id)
            if queue is None:
                queue = free_queues[loop_id] = _Queue(fn, policy)
            return await queue.submit(None, item)
        function_wrapper.__serve_batch_policy__ = policy
        return function_wrapper

    if _fn is not None:
        return deco(_fn)
    return deco

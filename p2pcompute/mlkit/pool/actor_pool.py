"""`ActorPool`: spread calls over a fixed set of actors, as Ray's `ray.util.ActorPool` does.

Each actor takes one call at a time. `submit(fn, value)` runs `fn(actor, value)` (which returns a ref) on an
idle actor, or queues it until one frees up; `get_next` returns results in submission order,
`get_next_unordered` in completion order. `map`/`map_unordered` are generators over the whole input.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable

import p2pcompute as p2p


class ActorPool:
    def __init__(self, actors: list):
        actors = list(actors)
        if not actors:
            raise ValueError("ActorPool needs at least one actor handle")
        for a in actors:
            if not isinstance(a, p2p.ActorHandle):
                raise TypeError(f"ActorPool takes actor handles, not {type(a).__name__}")
        self._idle = list(actors)
        self._future_to_actor: dict[p2p.ObjectRef, tuple[int, Any]] = {}
        self._index_to_future: dict[int, p2p.ObjectRef] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending: collections.deque = collections.deque()

    def map(self, fn: Callable, values: Iterable):
        """Results of `fn(actor, v)` for every value, in order."""
        while self.has_next():  # results of earlier submits are not ours: drop them
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable, values: Iterable):
        """Results of `fn(actor, v)` for every value, as they finish."""
        while self.has_next():
            self.get_next_unordered()
        for v in values:
            self.submit(fn, v)
        while self.has_next():
            yield self.get_next_unordered()

    def submit(self, fn: Callable, value: Any) -> None:
        if self._idle:
            actor = self._idle.pop()
            ref = fn(actor, value)
            if not isinstance(ref, p2p.ObjectRef):
                raise TypeError(f"the function given to ActorPool must return an ObjectRef (actor.method.remote"
                                f"(...)), not {type(ref).__name__}")
            self._future_to_actor[ref] = (self._next_task_index, actor)
            self._index_to_future[self._next_task_index] = ref
            self._next_task_index += 1
        else:
            self._pending.append((fn, value))

    def has_next(self) -> bool:
        return bool(self._future_to_actor)

    def has_free(self) -> bool:
        return bool(self._idle) and not self._pending

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order. Raises TimeoutError after `timeout` seconds."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        ref = self._index_to_future[self._next_return_index]
        ready, _ = p2p.wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                del self._index_to_future[self._next_return_index]
                self._next_return_index += 1
            raise TimeoutError("Timed out waiting for result")
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(ref)
        self._return_actor(actor)
        return p2p.get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """Any next result, whichever finishes first. Raises TimeoutError after `timeout` seconds."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = p2p.wait(list(self._future_to_actor), num_returns=1, timeout=timeout)
        if not ready:
            raise TimeoutError("Timed out waiting for result")
        ref = ready[0]
        index, actor = self._future_to_actor.pop(ref)
        self._index_to_future.pop(index, None)
        self._next_return_index = max(self._next_return_index, index + 1)
        self._return_actor(actor)
        return p2p.get(ref)

    def push(self, actor) -> None:
        """Add an actor to the pool."""
        self._return_actor(actor)

    def pop_idle(self):
        """Take an idle actor out of the pool (None when all are busy)."""
        return self._idle.pop() if self.has_free() else None

    def _return_actor(self, actor) -> None:
        self._idle.append(actor)
        if self._pending:
            self.submit(*self._pending.popleft())

"""Result objects of `Pool`: `ApplyResult`, `MapResult` and the `imap` iterators, with multiprocessing's API.

Each is filled by the pool's dispatcher thread through `_set(index, success, value)` and read by callers;
a condition variable connects the two. `get(timeout)` raises `multiprocessing.TimeoutError`, and an error
raised by the user's function is re-raised with its own type (its remote traceback chained as `__cause__`).
"""

from __future__ import annotations

import collections
import multiprocessing
import threading


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a pool worker, chained as the exception's `__cause__`."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class ApplyResult:
    """The result of `apply_async`: `get`, `wait`, `ready`, `successful`."""

    def __init__(self, callback=None, error_callback=None):
        self._cond = threading.Condition()
        self._done = False
        self._success = None
        self._value = None
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        return self._done

    def successful(self) -> bool:
        if not self._done:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)

    def get(self, timeout: float | None = None):
        self.wait(timeout)
        if not self._done:
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _finish(self, success: bool, value) -> None:
        self._success, self._value = success, value
        if success and self._callback is not None:
            self._callback(value)
        elif not success and self._error_callback is not None:
            self._error_callback(value)
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _set(self, index: int, success: bool, value) -> None:
        self._finish(success, value[0] if success else value)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of `map_async`/`starmap_async`: the chunks' results joined in order."""

    def __init__(self, num_chunks: int, callback=None, error_callback=None):
        super().__init__(callback, error_callback)
        self._parts: list = [None] * num_chunks
        self._remaining = num_chunks
        self._failed = False
        if num_chunks == 0:
            self._finish(True, [])

    def _set(self, index: int, success: bool, value) -> None:
        if self._failed:
            return
        if not success:
            self._failed = True  # the first error wins, like multiprocessing
            self._finish(False, value)
            return
        self._parts[index] = value
        self._remaining -= 1
        if self._remaining == 0:
            self._finish(True, [x for part in self._parts for x in part])


class IMapIterator:
    """The iterator of `imap` (results in order) and `imap_unordered` (results as they come)."""

    def __init__(self, ordered: bool):
        self._cond = threading.Condition()
        self._ordered = ordered
        self._length = None
        self._arrived: dict = {}             # chunk index -> (success, value), ordered mode
        self._queue = collections.deque()     # items ready to hand out
        self._next_chunk = 0
        self._chunks_seen = 0

    def _set_length(self, n: int) -> None:
        self._length = n

    def _set(self, index: int, success: bool, value) -> None:
        with self._cond:
            self._chunks_seen += 1
            if self._ordered:
                self._arrived[index] = (success, value)
                while self._next_chunk in self._arrived:
                    self._push(*self._arrived.pop(self._next_chunk))
                    self._next_chunk += 1
            else:
                self._push(success, value)
            self._cond.notify_all()

    def _push(self, success, value) -> None:
        if success:
            self._queue.extend((True, v) for v in value)
        else:
            self._queue.append((False, value))

    def __iter__(self):
        return self

    def next(self, timeout: float | None = None):
        with self._cond:
            def available():
                return self._queue or self._chunks_seen == self._length
            if not self._cond.wait_for(available, timeout):
                raise multiprocessing.TimeoutError
            if not self._queue:
                raise StopIteration
            success, value = self._queue.popleft()
        if success:
            return value
        raise value

    __next__ = next

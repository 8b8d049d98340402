"""`Pool`: `multiprocessing.Pool`'s interface, with the pool's processes as actors across the cluster.

Theory of operation. A pool of `processes` actors (one CPU each, so they spread over peers) runs the
initializer once in each actor. Every call (`apply`, one chunk of a `map`) becomes a *chunk*: the function,
a list of argument tuples and where its results go. The dispatcher thread (`RefLoop`) keeps at most
`_INFLIGHT_PER_ACTOR` chunks queued at each actor - enough that an actor never waits for the driver, few
enough that a slow chunk does not strand work behind it - and hands the next chunk to whichever actor
frees up. Workers catch exceptions and return them as values (as multiprocessing's workers do), so an
error reaches the caller with its own type and the worker's traceback as its `__cause__`. A chunk whose
actor died is given to another actor (the actor is replaced); `maxtasksperchild` replaces an actor after
that many chunks, like a worker process being recycled.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import p2pcompute as p2p
from p2pcompute import errors
from p2pcompute.mlkit.pool._loop import RefLoop
from p2pcompute.mlkit.pool.results import ApplyResult, IMapIterator, MapResult, RemoteTraceback

_INFLIGHT_PER_ACTOR = 2
# A second chunk is queued at an actor only while its chunks are quick: a slow chunk must not strand the
# one behind it while another actor idles (multiprocessing's workers pull from one shared queue).
_PIPELINE_BELOW_S = 0.02
_CHUNK_RETRIES = 3  # times a chunk is given to a new actor after its actor died


class _PoolWorker:
    """One pool process: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def run(self, func, items, star, kwds):
        out = []
        for args in items:
            try:
                if star:
                    out.append(func(*args, **kwds))
                else:
                    out.append(func(args))
            except BaseException as exc:  # noqa: BLE001 - returned to the caller, like multiprocessing does
                return False, _portable(exc), traceback.format_exc()
        return True, out, None

    def ping(self):
        return True


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError that describes it."""
    import cloudpickle
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure means: send a description instead
        return RuntimeError(f"{type(exc).__name__}: {exc} (the original exception could not be pickled)")


@dataclass
class _Chunk:
    func: Callable
    items: list
    star: bool
    kwds: dict
    sink: Any  # an ApplyResult / MapResult / IMapIterator
    index: int
    attempts: int = 0


@dataclass
class _Slot:
    handle: Any
    inflight: int = 0
    chunks_done: int = 0
    retiring: bool = False
    last_chunk_s: float = float("inf")  # how long its last chunk took, dispatch to result
    sent_at: list = field(default_factory=list)


@dataclass
class _PoolState:
    slots: list = field(default_factory=list)
    pending: collections.deque = field(default_factory=collections.deque)


class Pool:
    """A process pool whose processes are actors in the cluster. Same methods and meanings as
    `multiprocessing.Pool`; `processes` defaults to the cluster's CPU count."""

    def __init__(self, processes: int | None = None, initializer: Callable | None = None, initargs: Iterable = (),
                 maxtasksperchild: int | None = None, context: Any = None, *, ray_remote_args: dict | None = None):
        if not p2p.is_initialized():
            p2p.init()
        if processes is None:
            processes = max(1, int(p2p.cluster_resources().get("CPU", 1)))
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(f"Number of processes must be at least 1, not {processes!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasksperchild = maxtasksperchild
        # One CPU per process while the cluster has that many; more processes than CPUs share them (as
        # multiprocessing's processes share a machine) instead of waiting for CPUs that never come.
        cpus = max(1.0, float(p2p.cluster_resources().get("CPU", 1)))
        opts = {"num_cpus": min(1.0, int(100 * cpus / processes) / 100) or 0.01, "max_restarts": 0}
        opts.update(ray_remote_args or {})
        self._actor_class = p2p.remote(_PoolWorker).options(**opts)
        self._state = "RUN"
        self._lock = threading.Lock()
        self._outstanding = 0  # chunks submitted and not yet delivered
        self._idle = threading.Condition(self._lock)
        self._st = _PoolState()
        self._st.slots = [self._new_slot() for _ in range(processes)]
        self._loop = RefLoop("p2p-pool", self._on_command, self._on_result)

    def __repr__(self) -> str:
        return f"<p2pcompute Pool state={self._state} pool_size={self._processes}>"

    # ---- multiprocessing.Pool's interface ----
    def apply(self, func: Callable, args: tuple = (), kwds: dict | None = None):
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: tuple = (), kwds: dict | None = None, callback=None,
                    error_callback=None) -> ApplyResult:
        self._check_running()
        result = ApplyResult(callback, error_callback)
        self._submit([_Chunk(func, [tuple(args)], True, dict(kwds or {}), result, 0)])
        return result

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None):
        return self.map_async(func, iterable, chunksize).get()

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None):
        return self.starmap_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> MapResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None) -> MapResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, ordered=False)

    def close(self) -> None:
        """No more work may be submitted; the actors stop once what was submitted has finished."""
        with self._lock:
            if self._state == "RUN":
                self._state = "CLOSE"
        self._loop.post(("maybe_finish",))

    def terminate(self) -> None:
        """Stop now: kill the actors; results still outstanding never arrive."""
        with self._lock:
            if self._state == "TERMINATE":
                return
            self._state = "TERMINATE"
        self._loop.post(("terminate",))

    def join(self) -> None:
        if self._state == "RUN":
            raise ValueError("Pool is still running: call close() or terminate() before join()")
        self._loop.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __del__(self):
        try:
            if self._state == "RUN":
                self.terminate()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- internals: caller side ----
    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _new_slot(self) -> _Slot:
        return _Slot(self._actor_class.remote(self._initializer, self._initargs))

    def _default_chunksize(self, n: int) -> int:
        chunksize, extra = divmod(n, self._processes * 4)
        return chunksize + 1 if extra else max(chunksize, 1)

    def _map_async(self, func, iterable, chunksize, star, callback, error_callback) -> MapResult:
        self._check_running()
        items = list(iterable) if not hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize = self._default_chunksize(len(items))
        _check_chunksize(chunksize)
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        result = MapResult(len(chunks), callback, error_callback)
        self._submit([_Chunk(func, c, star, {}, result, i) for i, c in enumerate(chunks)])
        return result

    def _imap(self, func, iterable, chunksize, ordered) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        it = iter(iterable)
        result = IMapIterator(ordered)
        chunks = []
        failure = None
        for i in itertools.count():
            try:
                batch = list(itertools.islice(it, chunksize))
            except Exception as exc:  # noqa: BLE001 - the caller's iterable failed: raised in its place
                failure = exc
                break
            if not batch:
                break
            chunks.append(_Chunk(func, batch, False, {}, result, i))
        result._set_length(len(chunks) + (failure is not None))
        if failure is not None:
            result._set(len(chunks), False, failure)
        self._submit(chunks)
        return result

    def _submit(self, chunks: list) -> None:
        with self._lock:
            self._outstanding += len(chunks)
        self._loop.post(("chunks", chunks))

    # ---- internals: the dispatcher thread ----
    def _on_command(self, cmd) -> None:
        kind = cmd[0]
        if kind == "chunks":
            if self._state == "TERMINATE":
                return
            self._st.pending.extend(cmd[1])
            self._dispatch()
        elif kind == "terminate":
            self._st.pending.clear()
            self._loop.untrack_all()
            for slot in self._st.slots:
                _kill_quietly(slot.handle)
            self._st.slots = []
            self._loop.stop()
        elif kind == "maybe_finish":
            self._maybe_finish()

    def _on_result(self, token, ok: bool, value) -> None:
        slot, chunk = token
        slot.inflight -= 1
        if slot.sent_at:
            slot.last_chunk_s = time.monotonic() - slot.sent_at.pop(0)
        slot.chunks_done += 1
        if not ok and isinstance(value, (errors.ActorDiedError, errors.ActorUnavailableError,
                                         errors.WorkerCrashedError)) and chunk.attempts < _CHUNK_RETRIES:
            chunk.attempts += 1
            self._st.pending.appendleft(chunk)
            self._replace(slot)
        else:
            self._deliver(chunk, ok, value)
        if slot.retiring and slot.inflight == 0 and slot in self._st.slots:
            self._replace(slot)
        self._dispatch()
        self._maybe_finish()

    def _deliver(self, chunk: _Chunk, ok: bool, value) -> None:
        if not ok:
            chunk.sink._set(chunk.index, False, value)
        else:
            success, payload, tb = value
            if not success:
                payload.__cause__ = RemoteTraceback(tb)
            chunk.sink._set(chunk.index, success, payload)
        with self._lock:
            self._outstanding -= 1

    def _replace(self, slot: _Slot) -> None:
        if slot not in self._st.slots:
            return  # already replaced (several of its chunks failed)
        i = self._st.slots.index(slot)
        _kill_quietly(slot.handle)
        self._st.slots[i] = self._new_slot()

    def _dispatch(self) -> None:
        pending = self._st.pending
        while pending:
            free = [s for s in self._st.slots if not s.retiring and (
                s.inflight == 0 or (s.inflight < _INFLIGHT_PER_ACTOR and s.last_chunk_s < _PIPELINE_BELOW_S))]
            if not free:
                return
            slot = min(free, key=lambda s: s.inflight)
            chunk = pending.popleft()
            if self._maxtasksperchild:
                # A recycled worker runs exactly `maxtasksperchild` chunks: count them as they are handed out.
                if slot.chunks_done + slot.inflight + 1 >= self._maxtasksperchild:
                    slot.retiring = True
            ref = slot.handle.run.remote(chunk.func, chunk.items, chunk.star, chunk.kwds)
            slot.inflight += 1
            slot.sent_at.append(time.monotonic())
            self._loop.track(ref, (slot, chunk))

    def _maybe_finish(self) -> None:
        with self._lock:
            done = self._state == "CLOSE" and self._outstanding == 0
        if done:
            for slot in self._st.slots:
                _kill_quietly(slot.handle)
            self._st.slots = []
            self._loop.stop()


def _kill_quietly(handle) -> None:
    try:
        p2p.kill(handle)
    except Exception:  # noqa: BLE001 - already dead, or the driver shut down (a pool dropped at exit)
        pass


def _check_chunksize(chunksize) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


# multiprocessing's names, so code that catches them keeps working.
TimeoutError = multiprocessing.TimeoutError  # noqa: A001

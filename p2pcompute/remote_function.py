"""`@remote` functions: `f.remote(...)` submits a task and returns refs at once.

`.remote()` checks its arguments against the function's signature first (a `TypeError` at the call, as in
Ray), then packs them and hands a task record to the runtime. An `async def` function is supported (Ray
refuses it): the worker runs the coroutine to completion with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from p2pcompute import options as opt
from p2pcompute import serialization, signatures
from p2pcompute.auto_init import runtime as _runtime
from p2pcompute.config import INLINE_MAX_BYTES
from p2pcompute.errors import InvalidArgumentTypeError
from p2pcompute.object_ref import ObjectRef
from p2pcompute.runtime.client import TaskRecord


def pack_args(rt, args: tuple, kwargs: dict):
    """Serialize call arguments. Top-level refs become slots the submitter resolves before the task runs.

    Returns (args_blob | None, args_object | None, slot_refs, nested_refs).
    """
    slot_refs = []
    if args:
        if any(type(a) is ObjectRef for a in args):
            new = []
            for a in args:
                if type(a) is ObjectRef:
                    new.append(serialization.ArgSlot(len(slot_refs)))
                    slot_refs.append((a._id, a._owner))
                else:
                    new.append(a)
            args = tuple(new)
    if kwargs:
        if any(type(v) is ObjectRef for v in kwargs.values()):
            new_kw = {}
            for k, v in kwargs.items():
                if type(v) is ObjectRef:
                    new_kw[k] = serialization.ArgSlot(len(slot_refs))
                    slot_refs.append((v._id, v._owner))
                else:
                    new_kw[k] = v
            kwargs = new_kw
    if not args and not kwargs:
        return _EMPTY_ARGS, None, slot_refs, []
    try:
        ser = serialization.serialize((args, kwargs))
    except Exception as exc:
        raise _which_argument(args, kwargs, exc) from exc
    if ser.nbytes <= INLINE_MAX_BYTES:
        return ser.to_blob(), None, slot_refs, ser.refs
    # Large arguments go to the store once; the worker maps them instead of receiving a copy.
    oid = rt.new_id()
    rt.store.write(oid, ser)
    return None, [oid, ser.nbytes, rt.store.path, rt.peer_addr, rt.node_id], slot_refs, ser.refs


def _which_argument(args: tuple, kwargs: dict, exc: Exception) -> Exception:
    for i, a in enumerate(args):
        try:
            serialization.serialize(a)
        except Exception as inner:
            return serialization.SerializationError(f"argument {i} ({type(a).__name__}) cannot be pickled: {inner}")
    for k, v in kwargs.items():
        try:
            serialization.serialize(v)
        except Exception as inner:
            return serialization.SerializationError(f"keyword argument {k!r} ({type(v).__name__}) cannot be "
                                                    f"pickled: {inner}")
    return exc


_EMPTY_ARGS = serialization.serialize(((), {})).to_blob()


class RemoteFunction:
    """A function that runs as a task. Call `.remote(...)`; `.options(...)` overrides options per call."""

    def __init__(self, fn, options: dict):
        if not callable(fn):
            raise InvalidArgumentTypeError(f"remote() needs a function or a class, not {type(fn).__name__}")
        self._fn = fn
        self._options = opt.check(options, opt.TASK_OPTIONS, f"remote function {_name(fn)}")
        self._call_shape = signatures.of_function(fn)
        self._label = _name(fn)  # for messages about a call (named once: .remote() checks every call)
        # What the worker runs: the function itself, or for `async def` a wrapper that runs the coroutine.
        self._runs = _RunCoroutine(fn) if inspect.iscoroutinefunction(fn) else fn
        self._code: tuple[str, bytes] | None = None
        self._shape: dict | None = None
        self._wire_strategy = opt.wire_strategy(self._options.get("scheduling_strategy"))
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"remote function {_name(self._fn)} cannot be called directly; "
                        f"use {_name(self._fn)}.remote(...) (or {_name(self._fn)}._function(...) to run it here)")

    @property
    def _function(self):
        return self._fn

    def options(self, **options) -> "RemoteFunction":
        merged = dict(self._options)
        merged.update(options)
        clone = RemoteFunction.__new__(RemoteFunction)
        clone.__dict__.update(self.__dict__)
        clone._options = opt.check(merged, opt.TASK_OPTIONS, f"remote function {_name(self._fn)}")
        clone._shape = None
        clone._wire_strategy = opt.wire_strategy(clone._options.get("scheduling_strategy"))
        return clone

    def _export(self) -> tuple[str, bytes]:
        if self._code is None:
            self._code = serialization.dumps_code(self._runs)
        return self._code

    def remote(self, *args, **kwargs):
        if self._call_shape is not None:
            self._call_shape.check(args, kwargs, self._label)
        rt = _runtime()
        o = self._options
        if self._shape is None:
            self._shape = opt.shape_of(o, 1)
        code_id, code = self._export()
        blob, args_object, slot_refs, nested = pack_args(rt, args, kwargs)
        num_returns = o.get("num_returns", 1)
        task_id = rt.new_id()
        return_ids = [f"{task_id}.{i}" for i in range(num_returns)] if num_returns != 1 else [task_id + ".0"]
        refs = [ObjectRef(oid, rt.addr) for oid in return_ids]
        max_retries = o.get("max_retries", 3)
        retry = o.get("retry_exceptions", False)
        if isinstance(retry, (list, tuple)):
            retry = [f"{t.__module__}.{t.__qualname__}" for t in retry]
        rec = TaskRecord(task_id, "task", o.get("name") or self.__name__, code_id, code, blob, args_object,
                         slot_refs, nested, return_ids, self._shape,
                         {"scheduling_strategy": self._wire_strategy, "max_retries": max_retries},
                         max_retries if max_retries >= 0 else 1 << 30, retry)
        if o.get("runtime_env"):
            from p2pcompute import api, runtime_env
            rec.options["env"] = runtime_env.for_call(rt, o["runtime_env"], api.put)
        rt.submit(rec)
        if num_returns == 1:
            return refs[0]
        return refs

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building with .bind() is not supported; call .remote() instead")


class _RunCoroutine:
    """Runs an `async def` task to completion in the worker, on an event loop of its own."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        return asyncio.run(self.fn(*args, **kwargs))


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)

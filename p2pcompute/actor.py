"""`@remote` classes: `C.remote(...)` starts an actor, `handle.method.remote(...)` calls it."""

from __future__ import annotations

import inspect

from p2pcompute import options as opt
from p2pcompute import serialization
from p2pcompute.errors import InvalidArgumentError
from p2pcompute.object_ref import _OP_DEC, _OP_INC, ObjectRef
from p2pcompute import object_ref as _refs
from p2pcompute.remote_function import pack_args
from p2pcompute.runtime.client import TaskRecord
from p2pcompute.state import runtime as _runtime


def method(*, num_returns: int | None = None, **options):
    """Decorate an actor method to set its options, as Ray's `@ray.method(num_returns=2)`."""
    if num_returns is not None:
        options["num_returns"] = num_returns
    opt.check(options, opt.METHOD_OPTIONS, "an actor method")

    def deco(fn):
        fn.__p2p_method_options__ = options
        return fn

    return deco


def _methods_of(cls) -> dict[str, dict]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name != "__call__":
            continue
        if callable(member):
            out[name] = dict(getattr(member, "__p2p_method_options__", {}))
    return out


class ActorClass:
    """A class whose instances run as actors. `C.remote(...)` returns an `ActorHandle`."""

    def __init__(self, cls, options: dict):
        if not inspect.isclass(cls):
            raise InvalidArgumentError(f"expected a class, not {type(cls).__name__}")
        self._cls = cls
        self._options = opt.check(options, opt.ACTOR_OPTIONS, f"actor class {cls.__qualname__}")
        self._code: tuple[str, bytes] | None = None
        self._methods = _methods_of(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self._cls.__qualname__} cannot be instantiated directly; "
                        f"use {self._cls.__qualname__}.remote(...)")

    def options(self, **options) -> "ActorClass":
        merged = dict(self._options)
        merged.update(options)
        clone = ActorClass.__new__(ActorClass)
        clone.__dict__.update(self.__dict__)
        clone._options = opt.check(merged, opt.ACTOR_OPTIONS, f"actor class {self._cls.__qualname__}")
        return clone

    def _export(self) -> tuple[str, bytes]:
        if self._code is None:
            self._code = serialization.dumps_code(self._cls)
        return self._code

    def remote(self, *args, **kwargs) -> "ActorHandle":
        from p2pcompute import api
        o = self._options
        name = o.get("name")
        if o.get("lifetime") == "detached" and not getattr(_runtime(), "is_keeper", False):
            from p2pcompute.runtime import names
            return names.create_detached(_runtime(), self, o, args, kwargs)
        if name is not None:
            return api._named_actor(self, name, o, args, kwargs)
        return self._create(args, kwargs)

    def _create(self, args: tuple, kwargs: dict, detached: bool = False, actor_id: str | None = None,
                name_key: str | None = None, name_record: dict | None = None) -> "ActorHandle":
        rt = _runtime()
        o = self._options
        code_id, code = self._export()
        blob, args_object, slot_refs, nested = pack_args(rt, args, kwargs)
        # Like Ray: an actor needs no CPU to exist unless it asks for one, so many actors fit a small machine.
        shape = opt.shape_of(o, 0)
        actor_id = actor_id or rt.new_id()
        max_task_retries = o.get("max_task_retries", 0)
        handle = ActorHandle(actor_id, rt.addr, self._cls.__qualname__, self._methods, max_task_retries)
        wire = {}
        if o.get("max_concurrency") is not None:
            wire["max_concurrency"] = o["max_concurrency"]
        rec = TaskRecord(rt.new_id(), "actor_create", self._cls.__qualname__, code_id, code, blob, args_object,
                         slot_refs, nested, [actor_id], shape,
                         {"scheduling_strategy": opt.wire_strategy(o.get("scheduling_strategy")), "wire": wire},
                         0, False, actor_id=actor_id)
        max_restarts = o.get("max_restarts", 0)
        detached = detached or o.get("lifetime") == "detached"
        rt.call_soon(lambda: rt.actors.create(rec, max_restarts if max_restarts >= 0 else -1, detached,
                                              name_key, name_record))
        return handle


class ActorHandle:
    """A handle to an actor. Pass it to tasks and other actors; it keeps working there."""

    __slots__ = ("_actor_id", "_owner", "_class_name", "_methods", "_max_task_retries", "__weakref__")

    def __init__(self, actor_id: str, owner_addr: str, class_name: str, methods: dict, max_task_retries: int):
        self._actor_id = actor_id
        self._owner = owner_addr
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries
        hook = _refs._on_created
        if hook is not None:
            hook((_OP_INC, actor_id, owner_addr))

    def __del__(self):
        hook = _refs._on_created
        if hook is not None:
            try:
                hook((_OP_DEC, self._actor_id))
            except Exception:
                pass

    def __reduce__(self):
        serialization.record_ref(self._actor_id, self._owner)
        return (ActorHandle, (self._actor_id, self._owner, self._class_name, self._methods, self._max_task_retries))

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = object.__getattribute__(self, "_methods")
        if name in methods:
            return ActorMethod(self, name, methods[name])
        raise AttributeError(f"actor {object.__getattribute__(self, '_class_name')} has no method {name!r}")

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def _actor_id_hex(self) -> str:
        return self._actor_id


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, options: dict):
        self._handle = handle
        self._name = name
        self._options = options

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly; use .{self._name}.remote(...)")

    def options(self, **options) -> "ActorMethod":
        merged = dict(self._options)
        merged.update(options)
        opt.check(merged, opt.METHOD_OPTIONS, f"actor method {self._name}")
        return ActorMethod(self._handle, self._name, merged)

    def remote(self, *args, **kwargs):
        rt = _runtime()
        h = self._handle
        blob, args_object, slot_refs, nested = pack_args(rt, args, kwargs)
        num_returns = self._options.get("num_returns", 1)
        task_id = rt.new_id()
        return_ids = [f"{task_id}.{i}" for i in range(num_returns)]
        refs = [ObjectRef(oid, rt.addr) for oid in return_ids]
        retries = self._options.get("max_task_retries", h._max_task_retries)
        rec = TaskRecord(task_id, "actor_call", f"{h._class_name}.{self._name}", "", None, blob, args_object,
                         slot_refs, nested, return_ids, {}, {"max_task_retries": retries}, 0, False,
                         actor_id=h._actor_id, method=self._name)
        rt.submit(rec)
        if num_returns == 1:
            return refs[0]
        return refs

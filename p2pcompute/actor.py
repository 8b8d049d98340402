"""`@remote` classes: `C.remote(...)` starts an actor, `handle.method.remote(...)` calls it.

`ActorClass` wraps the user's class and keeps it reachable, as Ray's does: class attributes, static methods
and class methods (`C.create(...)`, bound to the actor class so a factory can call `cls.remote(...)`), `dir()`,
and `class Sub(C)` subclasses the user's class (PEP 560 `__mro_entries__`), which can be decorated again.

Every `.remote()` binds its arguments to the constructor's or method's signature first (see signatures.py);
method signatures travel inside handles as plain data under `_SIG` in each method's entry.

Lifecycle from inside an actor: `exit_actor()` ends it gracefully (see runtime/worker.py for what follows);
`handle.__ray_terminate__.remote()` does the same after the calls queued before it, and
`handle.__ray_ready__.remote()` resolves to True once the constructor has run.
"""

from __future__ import annotations

import inspect
import types

from p2pcompute import object_ref as _refs
from p2pcompute import options as opt
from p2pcompute import serialization, signatures
from p2pcompute.auto_init import runtime as _runtime
from p2pcompute.errors import InvalidArgumentTypeError
from p2pcompute.object_ref import _OP_DEC, _OP_INC, ObjectRef
from p2pcompute.remote_function import pack_args
from p2pcompute.runtime.client import TaskRecord

_SIG = "_sig"  # key of a method's plain-data signature in its entry of the handle's method table

# Methods every actor has, as in Ray; the worker answers them itself (runtime/worker.py).
BUILTIN_METHODS = {"__ray_ready__": {_SIG: []}, "__ray_terminate__": {_SIG: []}}


class _ExitActor(SystemExit):
    """Raised by `exit_actor()`: the worker stops the actor gracefully when it sees it."""


def exit_actor() -> None:
    """Intentionally end the current actor, from inside one of its methods (Ray's `ray.actor.exit_actor`).

    The call that runs it raises `ActorDiedError` at its caller, calls queued behind it fail with
    `ActorDiedError`, `atexit` handlers run, and the actor is not restarted. Outside an actor: TypeError.
    """
    from p2pcompute.runtime import context
    ex = context._worker.get("executor")
    if ex is None or ex.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor's method; to stop an actor from "
                        "outside, use kill(handle)")
    raise _ExitActor(0)


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
            entry = dict(getattr(member, "__p2p_method_options__", {}))
            entry[_SIG] = signatures.to_plain(signatures.of_method(cls, name))
            out[name] = entry
    return out


def _default_namespace() -> str | None:
    """The namespace given to `init(namespace=...)` by this job's driver (workers inherit it)."""
    from p2pcompute.state import STATE
    rt = STATE["runtime"]
    env = getattr(rt, "job_env", None) or {}
    ns = env.get("namespace")
    return ns if isinstance(ns, str) else None


class ActorClass:
    """A class whose instances run as actors. `C.remote(...)` returns an `ActorHandle`."""

    def __init__(self, cls, options: dict):
        if not inspect.isclass(cls):
            raise InvalidArgumentTypeError(f"expected a class, not {type(cls).__name__}")
        self._cls = cls
        self._options = opt.check(options, opt.ACTOR_OPTIONS, f"actor class {cls.__qualname__}")
        self._code: tuple[str, bytes] | None = None
        self._methods = _methods_of(cls)
        self._init_shape = signatures.of_constructor(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    # ---- the user's class stays reachable ---------------------------------------------------------------

    def __getattr__(self, name: str):
        cls = self.__dict__.get("_cls")
        if cls is None or name.startswith("__") and name.endswith("__"):
            # Half-built (unpickling) or a protocol lookup (__setstate__, __deepcopy__, ...): not the class's.
            raise AttributeError(name)
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            raise AttributeError(f"actor class {cls.__qualname__} has no attribute {name!r}") from None
        if isinstance(raw, classmethod):
            # Bound to the actor class, so a factory's `cls.remote(...)` starts an actor.
            return types.MethodType(raw.__func__, self)
        return getattr(cls, name)

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(dir(self._cls)))

    def __mro_entries__(self, bases):
        # `class Sub(C)` for an actor class C subclasses the user's class (Ray refuses; a plain subclass is
        # what people mean, and it can be made an actor again with @remote).
        return (self._cls,)

    @property
    def __ray_actor_class__(self):
        """The user's original class (Ray's attribute of the same name)."""
        return self._cls

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor class {self._cls.__qualname__} cannot be instantiated directly; "
                        f"use {self._cls.__qualname__}.remote(...)")

    def __repr__(self) -> str:
        return f"ActorClass({self._cls.__qualname__})"

    def options(self, **options) -> "ActorClass":
        merged = dict(self._options)
        merged.update(options)
        clone = ActorClass.__new__(ActorClass)
        clone.__dict__.update(self.__dict__)
        clone._options = opt.check(merged, opt.ACTOR_OPTIONS, f"actor class {self._cls.__qualname__}")
        return clone

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building with .bind() is not supported; call .remote() instead")

    def _export(self) -> tuple[str, bytes]:
        if self._code is None:
            self._code = serialization.dumps_code(self._cls)
        return self._code

    def remote(self, *args, **kwargs) -> "ActorHandle":
        if self._init_shape is not None:
            self._init_shape.check(args, kwargs, f"{self._cls.__qualname__}.remote")
        rt = _runtime()
        o = self._options
        name = o.get("name")
        if name is not None and o.get("namespace") is None:
            ns = _default_namespace()
            if ns is not None:
                o = dict(o, namespace=ns)
        if o.get("lifetime") == "detached" and not getattr(rt, "is_keeper", False):
            from p2pcompute.runtime import names
            return names.create_detached(rt, self, o, args, kwargs)
        if name is not None:
            from p2pcompute.runtime import names
            return names.create_named(rt, self, name, o, args, kwargs)
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
        if o.get("runtime_env"):
            from p2pcompute import api, runtime_env
            rec.options["env"] = runtime_env.for_call(rt, o["runtime_env"], api.put)
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
        entry = methods.get(name) or BUILTIN_METHODS.get(name)
        if entry is not None:
            return ActorMethod(self, name, {k: v for k, v in entry.items() if k != _SIG},
                               signatures.from_plain(entry.get(_SIG)))
        raise AttributeError(f"actor {object.__getattribute__(self, '_class_name')} has no method {name!r}")

    def __dir__(self):
        return sorted(set(object.__dir__(self)) | set(self._methods))

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
    def __init__(self, handle: ActorHandle, name: str, options: dict, call_shape=None):
        self._handle = handle
        self._name = name
        self._options = options
        self._call_shape = call_shape

    def __call__(self, *args, **kwargs):
        raise TypeError(f"actor method {self._name} cannot be called directly; use .{self._name}.remote(...)")

    def options(self, **options) -> "ActorMethod":
        merged = dict(self._options)
        merged.update(options)
        opt.check(merged, opt.METHOD_OPTIONS, f"actor method {self._name}")
        return ActorMethod(self._handle, self._name, merged, self._call_shape)

    def bind(self, *args, **kwargs):
        raise NotImplementedError("DAG building with .bind() is not supported; call .remote() instead")

    def remote(self, *args, **kwargs):
        h = self._handle
        if self._call_shape is not None:
            self._call_shape.check(args, kwargs, f"{h._class_name}.{self._name}.remote")
        rt = _runtime()
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

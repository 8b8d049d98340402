"""The public API: Ray's names and meanings, so a Ray user changes one import."""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
import threading
from typing import Any, Sequence

from p2pcompute import object_ref as _refs
from p2pcompute import options as opt
from p2pcompute import serialization
from p2pcompute.actor import ActorClass, ActorHandle
from p2pcompute.errors import InvalidArgumentError, InvalidArgumentTypeError
from p2pcompute.lease import resources
from p2pcompute.object_ref import ObjectRef
from p2pcompute.remote_function import RemoteFunction
from p2pcompute.runtime import messages as rm
from p2pcompute.runtime.context import RuntimeContext
from p2pcompute.auto_init import runtime
from p2pcompute.state import STATE

log = logging.getLogger("p2pcompute")

_lock = threading.RLock()
_state = STATE

# Accepted for compatibility with Ray's init(); they change nothing here.
_IGNORED_INIT_OPTIONS = {"log_to_driver",
                         "configure_logging", "logging_format", "_temp_dir"}


_runtime = runtime


def _attach_worker_runtime(client) -> None:
    """Inside a worker: the worker's own client runtime serves the API for nested tasks."""
    _state["runtime"] = client
    _state["worker"] = True
    _refs.install_hooks(client.ops.append)


def is_initialized() -> bool:
    return _state["runtime"] is not None


def init(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
         resources: dict | None = None, token: str | None = None, ignore_reinit_error: bool = False,
         namespace: str | None = None, logging_level: int | str | None = None,
         object_store_memory: int | None = None, runtime_env: dict | None = None,
         include_dashboard: bool | None = None, dashboard_host: str = "127.0.0.1",
         dashboard_port: int | None = None, **kwargs) -> dict:
    """Start p2pcompute in this process.

    With no address, start an embedded local peer with `num_cpus` workers (default: all CPUs); it stops
    with this process. `address="auto"` attaches to the peer running on this machine; `"host:port"` joins
    the peer there with the cluster `token` (also read from P2P_ADDRESS / P2P_TOKEN).
    """
    with _lock:
        if _state["runtime"] is not None:
            if ignore_reinit_error or _state["worker"]:
                return _info()
            raise RuntimeError("p2pcompute.init() was already called; call shutdown() first, "
                               "or pass ignore_reinit_error=True")
        node_ip = kwargs.pop("_node_ip_address", None)  # Ray's spelling: the address the cluster reaches us at
        from p2pcompute import config
        # Ray's spelling; validated now, and inherited by the embedded peer and every worker it starts.
        config.set_process_config(kwargs.pop("_system_config", None))
        unknown = set(kwargs) - _IGNORED_INIT_OPTIONS
        if unknown:
            raise InvalidArgumentError(f"unknown init() option(s): {', '.join(sorted(unknown))}")
        if logging_level is not None:
            logging.getLogger("p2pcompute").setLevel(logging_level)
        address = address or os.environ.get("P2P_ADDRESS") or None
        token = token or os.environ.get("P2P_TOKEN") or None
        object_store_memory = _positive_bytes(object_store_memory, "object_store_memory")
        if namespace is not None and not isinstance(namespace, str):
            raise InvalidArgumentTypeError(f"namespace must be a string, not {type(namespace).__name__}")
        # Named actors of this job (and of its tasks and actors, which inherit the job's environment) live
        # in this namespace unless they name another.
        _state["namespace"] = namespace
        from p2pcompute.runtime import observe
        runtime_env = observe.check_init(runtime_env, include_dashboard, dashboard_port)
        if address is not None and address.startswith("ipc://"):
            # The address another driver's init() returned: join that embedded peer on this machine.
            if num_cpus is not None or num_gpus is not None or resources or object_store_memory:
                raise InvalidArgumentError("num_cpus, num_gpus, resources and object_store_memory describe a new "
                                           "peer; the peer at this address was started by another driver's "
                                           "init(), which set them")
            from p2pcompute.runtime import local_attach
            local_attach.attach_embedded(_state, address)
        elif address is None:
            _start_embedded(num_cpus, num_gpus, resources, object_store_memory)
        else:
            if num_cpus is not None or num_gpus is not None or resources or object_store_memory:
                raise InvalidArgumentError("num_cpus, num_gpus, resources and object_store_memory describe a new "
                                           "peer; when joining a running peer (address=...), set them on "
                                           "`p2p start` / `p2p join`")
            from p2pcompute.runtime import attach
            attach.attach(_state, address, token, node_ip=node_ip)
        atexit.register(shutdown)
        _register_job()
        observe.after_init(_state, runtime_env, include_dashboard, dashboard_host, dashboard_port)
        return _info()


def _positive_bytes(value, name: str) -> int | None:
    """Ray takes any positive number of bytes (`7e8`); the store wants a whole number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentTypeError(f"{name} must be a number of bytes, not {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidArgumentError(f"{name} must be a number of bytes > 0, not {value!r}")
    return int(value)


def _start_embedded(num_cpus, num_gpus, custom, store_capacity=None) -> None:
    from p2pcompute.net.transport import Context
    from p2pcompute.runtime.client import ClientRuntime
    from p2pcompute.runtime.session import EmbeddedPeer, new_id
    cpus = os.cpu_count() or 1 if num_cpus is None else num_cpus
    total = resources.make_shape(cpus, num_gpus or 0, _default_memory(), custom)
    total.setdefault(resources.CPU, 0)
    peer = EmbeddedPeer(total, store_capacity=store_capacity)
    ctx = Context()
    # Process ids start with their peer's id, so anyone can tell which peer a process lived on.
    proc_id = f"{peer.peer_id}-d{new_id()[:6]}"
    try:
        rt = ClientRuntime(ctx, proc_id=proc_id, kind="driver", job_id=proc_id, job_env=_job_env(),
                           peer_addr=peer.addr, sock_dir=peer.session_dir)
    except BaseException:
        peer.stop()
        ctx.close()
        raise
    _state.update(runtime=rt, peer=peer, ctx=ctx)
    _refs.install_hooks(rt.ops.append)
    rt.start()


def _register_job() -> None:
    import time
    rt = _state["runtime"]
    env = rt.job_env
    rt.table_async(("job_register", rt.job_id, {"job_id": rt.job_id, "entry": env.get("entry", ""),
                                                 "peer": rt.node_id, "driver": rt.proc_id, "pid": os.getpid(),
                                                 "start_time": time.time(), "state": "RUNNING"}))


def _default_memory() -> float:
    try:
        import psutil
        return float(psutil.virtual_memory().total)
    except Exception:
        return 0.0


def _job_env() -> dict:
    main = sys.modules.get("__main__")
    entry = getattr(main, "__file__", None) or "<interactive>"
    path = [p for p in sys.path if isinstance(p, str)]
    if path and path[0] == "":
        path[0] = os.getcwd()
    script_dir = os.path.dirname(os.path.abspath(entry)) if entry != "<interactive>" else os.getcwd()
    if script_dir not in path:
        path.insert(0, script_dir)
    env = {"sys_path": path, "cwd": os.getcwd(), "entry": entry}
    if _state.get("namespace"):
        env["namespace"] = _state["namespace"]
    return env


def _info() -> dict:
    rt = _state["runtime"]
    return {"node_id": rt.node_id, "address": rt.peer_addr, "worker_id": rt.proc_id}


def shutdown() -> None:
    """Stop what init() started: the client runtime and, if embedded, the local peer and its workers."""
    with _lock:
        rt, peer, ctx = _state["runtime"], _state["peer"], _state["ctx"]
        if rt is None or _state["worker"]:
            return
        own_dir = _state.pop("own_dir", None)
        _refs.install_hooks(None)
        dashboard = _state.pop("dashboard", None)
        if dashboard is not None:
            dashboard.stop()
        _state.pop("runtime_env_refs", None)
        _state.update(runtime=None, peer=None, ctx=None)
        try:
            rt.stop()
        finally:
            if peer is not None:
                peer.stop()
            if ctx is not None:
                ctx.close()
            if own_dir:
                import shutil
                shutil.rmtree(own_dir, ignore_errors=True)
        try:
            atexit.unregister(shutdown)
        except Exception:
            pass


def remote(*args, **options):
    """Make a function a remote task or a class an actor: `@remote` or `@remote(num_cpus=2, ...)`."""
    if len(args) == 1 and not options and (callable(args[0]) or inspect.isclass(args[0])):
        return _make_remote(args[0], {})
    if args:
        raise InvalidArgumentTypeError("remote() takes a function or class, or only keyword options: "
                                       "@remote or @remote(num_cpus=1)")
    if not options:
        # As in Ray: empty brackets are a mistake (usually a forgotten option), not a synonym of @remote.
        raise InvalidArgumentTypeError("@remote() needs options inside the brackets; write @remote (no "
                                       "brackets) or @remote(num_cpus=1, ...)")

    def deco(fn):
        return _make_remote(fn, options)

    return deco


def _make_remote(obj, options: dict):
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise InvalidArgumentTypeError(f"remote() needs a function or a class, not {type(obj).__name__}")


def get(refs, *, timeout: float | None = None, progress: bool = False):
    """The value of a ref, or a list of values for a list of refs. Raises the task's error, if any.
    With `progress=True`, a bar on a terminal shows how many are ready (see `p2pcompute.util.progress`)."""
    _check_timeout(timeout)
    if progress:
        from p2pcompute.util.progress import progress as _progress
        return _progress(refs, timeout=timeout)
    rt = _runtime()
    if type(refs) is ObjectRef:
        return rt.get_values([refs], timeout)[0]
    if isinstance(refs, (list, tuple)):
        for i, r in enumerate(refs):
            if type(r) is not ObjectRef:
                raise InvalidArgumentTypeError(f"get() got a list whose item {i} is a {type(r).__name__}, "
                                               f"not an ObjectRef")
        return rt.get_values(list(refs), timeout)
    raise InvalidArgumentTypeError(f"get() expects an ObjectRef or a list of ObjectRefs, not {type(refs).__name__}")


def _check_timeout(timeout) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentTypeError(f"timeout must be None or a number of seconds, not {timeout!r}")
    if not timeout >= 0:
        raise InvalidArgumentError(f"timeout must be None or a number >= 0, not {timeout!r}")


def put(value: Any) -> ObjectRef:
    """Store a value once and get a ref to pass to many tasks."""
    if type(value) is ObjectRef:
        raise InvalidArgumentTypeError("put() of an ObjectRef is not allowed; pass the ref itself instead")
    rt = _runtime()
    ser = serialization.serialize(value)
    oid = rt.new_id()
    ref = ObjectRef(oid, rt.addr)
    rt.put_local(oid, ser)
    return ref


def wait(refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until `num_returns` refs are ready or `timeout` passes. Returns (ready, not_ready), input order."""
    if not isinstance(refs, (list, tuple)):
        hint = "; for one ref write wait([ref])" if type(refs) is ObjectRef else ""
        raise InvalidArgumentTypeError(f"wait() expects a list of ObjectRefs, not {type(refs).__name__}{hint}")
    for i, r in enumerate(refs):
        if type(r) is not ObjectRef:
            raise InvalidArgumentTypeError(f"wait() got a list whose item {i} is a {type(r).__name__}, "
                                           f"not an ObjectRef")
    if len({r._id for r in refs}) != len(refs):
        raise InvalidArgumentError("wait() got the same ref more than once")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise InvalidArgumentTypeError(f"num_returns must be an integer, not {num_returns!r}")
    if not refs and num_returns == 1:
        return [], []  # Ray's answer for an empty list with the default num_returns
    if not 0 <= num_returns <= len(refs):
        raise InvalidArgumentError(f"num_returns must be an integer between 0 and {len(refs)}, not {num_returns!r}")
    _check_timeout(timeout)
    rt = _runtime()
    from p2pcompute.runtime.objects import deadline_of
    ids = [r._id for r in refs]
    flags = rt.objects.wait_ready(ids, num_returns, deadline_of(timeout), rt.request_fetch)
    ready, not_ready = [], []
    for ref, flag in zip(refs, flags):
        (ready if flag and len(ready) < num_returns else not_ready).append(ref)
    return ready, not_ready


def cancel(ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes `ref`. A queued task never runs; a running one is interrupted (or its
    worker killed with `force=True`). `get` then raises TaskCancelledError. With `recursive` (the default)
    the tasks it submitted are cancelled too."""
    if type(ref) is not ObjectRef:
        raise InvalidArgumentTypeError(f"cancel() expects an ObjectRef, not {type(ref).__name__}")
    rt = _runtime()
    if not rt.refs.is_owned(ref._id):
        # A ref received from another process: its owner (the submitter of the task) cancels it.
        from p2pcompute.runtime import remote_cancel
        remote_cancel.ask_owner(rt, ref._id, ref._owner, bool(force), bool(recursive))
        return
    rt.cancel(ref._id, bool(force), bool(recursive))


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor now. Calls in flight fail with ActorDiedError; with no_restart=False it restarts."""
    if not isinstance(actor, ActorHandle):
        raise InvalidArgumentTypeError(f"kill() expects an ActorHandle, not {type(actor).__name__}")
    rt = _runtime()
    actor_id = actor._actor_id
    rt.call_soon(lambda: rt.actors.kill(actor_id, no_restart))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor `name`."""
    from p2pcompute.actor import _default_namespace
    from p2pcompute.runtime import names
    rt = _runtime()
    ns = namespace if namespace is not None else _default_namespace()
    handle = names.get_actor(rt, name, ns)
    caller = rt.actors.callers.get(handle._actor_id)
    if caller is not None and caller.killed:
        # kill() frees the name, but the release may still be on its way to the table: this process knows.
        raise InvalidArgumentError(f"no actor named {name!r} in namespace {ns!r}: it was killed")
    return handle


def _named_actor(actor_class: ActorClass, name: str, options: dict, args: tuple, kwargs: dict) -> ActorHandle:
    from p2pcompute.runtime import names
    return names.create_named(_runtime(), actor_class, name, options, args, kwargs)


def nodes() -> list[dict]:
    """One dict per peer, with Ray's keys: NodeID, Alive, Resources, ..."""
    rt = _runtime()
    reply = rt.peer_request(lambda rid: rm.NodesRequest(rt.addr, rid))
    return reply.nodes


def cluster_resources() -> dict:
    total: dict = {}
    for node in nodes():
        if node.get("Alive"):
            for name, amount in node.get("Resources", {}).items():
                total[name] = total.get(name, 0) + amount
    return total


def available_resources() -> dict:
    total: dict = {}
    for node in nodes():
        if node.get("Alive"):
            for name, amount in node.get("Available", {}).items():
                if amount > 0:
                    total[name] = total.get(name, 0) + amount
    return total


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime())


def get_gpu_ids() -> list:
    """The GPU ids assigned to the calling task or actor (also its CUDA_VISIBLE_DEVICES); [] in a driver or a
    task that asked for no GPU."""
    from p2pcompute.runtime import gpus
    return gpus.get_gpu_ids()

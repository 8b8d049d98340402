"""Run Dask graphs on p2pcompute: a Dask scheduler whose tasks are p2pcompute tasks.

    import dask
    from p2pcompute.mlkit.dask import get as p2p_dask_get, enable_dask_on_p2p
    x.sum().compute(scheduler=p2p_dask_get)     # one computation
    enable_dask_on_p2p()                          # or every computation from now on

Theory of operation. Dask hands a scheduler a graph (key -> task) and the keys it wants. `get` converts the
graph to Dask's task spec, keeps only what the wanted keys need, and walks it in dependency order,
submitting every task at once as a p2pcompute task whose dependencies are the refs of the tasks it reads:
the core runs each task when its inputs are ready, on the peer holding most of their bytes, and passes
intermediate results from store to store - nothing returns to the driver except the wanted keys. Literal
data in the graph (a numpy array given to `from_array`, ...) is `put` once and shared by every task that
reads it. Errors raised by a Dask task surface with their own type (and the remote traceback), as with
Dask's own schedulers. Dask is an optional dependency: `pip install "p2pcompute[dask]"`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import p2pcompute as p2p


def _dask():
    try:
        import dask  # noqa: F401 - absolute import: the real dask, not this module
        from dask import _task_spec
    except ImportError:
        raise ImportError('the Dask scheduler needs dask: pip install "p2pcompute[dask]"') from None
    return _task_spec


def _run_node(node_bytes: bytes, dep_keys: list, *dep_values):
    """Run one Dask task with its dependencies' values (already resolved from their refs)."""
    node = pickle.loads(node_bytes)
    return node(dict(zip(dep_keys, dep_values)))


def _dumps(node) -> bytes:
    # Dask's tasks nearly always name importable functions: plain pickle is several times faster than
    # cloudpickle's per-object checks, which dominate the cost of submitting thousands of tiny tasks.
    try:
        return pickle.dumps(node, protocol=5)
    except Exception:  # noqa: BLE001 - lambdas, closures, __main__ functions
        import cloudpickle
        return cloudpickle.dumps(node, protocol=5)


_run = p2p.remote(_run_node)


def _flatten_keys(keys, out: list) -> list:
    if isinstance(keys, list):
        for k in keys:
            _flatten_keys(k, out)
    else:
        out.append(keys)
    return out


def _pack(keys, values: dict):
    if isinstance(keys, list):
        return [_pack(k, values) for k in keys]
    return values[keys]


def _order(graph: Mapping, wanted: list) -> list:
    """The keys `wanted` needs, each after its dependencies (iterative DFS: graphs can be deep)."""
    done: set = set()
    order: list = []
    for root in wanted:
        if root in done:
            continue
        stack = [(root, False)]
        while stack:
            key, expanded = stack.pop()
            if key in done:
                continue
            if expanded:
                done.add(key)
                order.append(key)
                continue
            if key not in graph:
                raise KeyError(f"the Dask graph has no task for key {key!r}")
            stack.append((key, True))
            for dep in graph[key].dependencies:
                if dep not in done:
                    stack.append((dep, False))
    return order


def get(dsk: Any, keys: Any, *, remote_args: dict | None = None, **kwargs) -> Any:
    """A Dask scheduler: compute `keys` of graph `dsk` as p2pcompute tasks; return their values shaped as
    `keys` (a key, or nested lists of keys). `remote_args` (e.g. {"num_cpus": 2}) apply to every task.
    Other keyword arguments Dask passes to schedulers (`num_workers`, `pool`, ...) are accepted and unused."""
    ts = _dask()
    if not p2p.is_initialized():
        p2p.init()
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    graph = ts.convert_legacy_graph(dict(dsk))
    wanted = _flatten_keys(keys, [])
    task = _run.options(**remote_args) if remote_args else _run
    refs: dict = {}
    for key in _order(graph, wanted):
        node = graph[key]
        if isinstance(node, ts.DataNode):
            refs[key] = p2p.put(node({}))   # literal data: stored once, read by every task that needs it
            continue
        deps = list(node.dependencies)
        refs[key] = task.remote(_dumps(node), deps, *[refs[d] for d in deps])
    values = p2p.get([refs[k] for k in wanted])
    return _pack(keys, dict(zip(wanted, values)))


p2p_dask_get = get
ray_dask_get = get  # the name Ray users know


def enable_dask_on_p2p(**config) -> Any:
    """Make `get` Dask's default scheduler (returns Dask's config context; also works as a `with`)."""
    _dask()
    import dask
    return dask.config.set(scheduler=get, **config)


def disable_dask_on_p2p() -> Any:
    """Back to Dask's default scheduler."""
    _dask()
    import dask
    return dask.config.set(scheduler=None)


enable_dask_on_ray = enable_dask_on_p2p
disable_dask_on_ray = disable_dask_on_p2p

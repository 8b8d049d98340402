"""p2pcompute.mlkit: the machine-learning workloads people run on a cluster, built on the public API only.

    from p2pcompute.mlkit import tune, train, data, pool, serve, rl

Each library repeats the core's split at its own scale: pure *decision objects* (search algorithms, trial
schedulers, routers, autoscalers, dataset planners) that are fed events and answer, and *drivers* that carry
those answers out with tasks, actors and objects. Only the public API is used here, never the runtime or the
protocol cores: if a library needs something the core lacks, the core grows a public feature.

Submodules are imported on first use, so `import p2pcompute.mlkit` costs nothing and optional dependencies
(optuna, gymnasium, an ASGI server, pandas, dask, joblib) are only needed by the feature that uses them.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("tune", "train", "data", "pool", "dask", "serve", "rl")

__all__ = list(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))

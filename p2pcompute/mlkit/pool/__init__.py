"""p2pcompute.mlkit.pool: drop-ins that move existing parallel Python code onto the cluster unchanged.

    from p2pcompute.mlkit.pool import Pool, Executor, ActorPool

- `Pool`: `multiprocessing.Pool` (map, imap, starmap, apply_async, initializer, maxtasksperchild, ...) whose
  processes are actors spread over the cluster.
- `Executor`: a `concurrent.futures.Executor` running each call as a task.
- `ActorPool`: Ray's `ActorPool` (map, map_unordered, submit, get_next, has_next) over actor handles.
- A joblib backend named "p2pcompute", registered on import when joblib is installed:
  `with joblib.parallel_backend("p2pcompute"): ...` makes `n_jobs=-1` run on the cluster.
"""

from __future__ import annotations

from p2pcompute.mlkit.pool.actor_pool import ActorPool
from p2pcompute.mlkit.pool.executor import Executor
from p2pcompute.mlkit.pool.joblib_backend import register_joblib
from p2pcompute.mlkit.pool.mp_pool import Pool, TimeoutError  # noqa: A004
from p2pcompute.mlkit.pool.results import ApplyResult, AsyncResult, IMapIterator, MapResult

__all__ = ["ActorPool", "ApplyResult", "AsyncResult", "Executor", "IMapIterator", "MapResult", "Pool",
           "TimeoutError", "register_joblib"]

register_joblib(quiet=True)

"""The worker actor of a training group, and how a dataset is cut into one shard per worker.

A `TrainWorker` is a threaded actor: `run` occupies one thread with the user's training loop while
`deliver` calls from the other ranks land on the spare threads and fill the mailbox the loop's collectives
read. The actor knows nothing of failures: when one rank dies the driver kills the whole group and starts a
new one, which is simpler and safer than repairing a ring whose members may be mid-collective.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Callable

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.train import session as _session
from p2pcompute.mlkit.train.collective import RING_THRESHOLD_BYTES, Communicator, Mailbox, _chunk_bounds

# Threads per worker: one runs the loop; the rest take deliveries, which never block, so a few suffice even
# when several peers send at once.
WORKER_MAX_CONCURRENCY = 16


class TrainWorker:
    """One rank of a group. Created by the trainer (with the resources of its ScalingConfig)."""

    def __init__(self) -> None:
        self._mailbox = Mailbox()
        self._communicator: Communicator | None = None

    def info(self) -> dict:
        return {"node_id": p2p.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def setup(self, rank: int, peers: list, collective_timeout_s: float | None,
              ring_threshold_bytes: int = RING_THRESHOLD_BYTES) -> None:
        self._mailbox = Mailbox()  # a new group never sees an old group's messages
        self._communicator = Communicator(rank, peers, self._mailbox, timeout_s=collective_timeout_s,
                                          ring_threshold_bytes=ring_threshold_bytes)

    def deliver(self, tag, value) -> None:
        self._mailbox.put(tag, value)

    def run(self, train_loop: Callable, config: dict | None, context, shards: dict, checkpoint, controller,
            blas_threads: int | None = None) -> Any:
        assert self._communicator is not None, "setup() runs before run()"
        session = _session.Session(context, self._communicator, controller, shards, checkpoint)
        _session._install(session)
        try:
            with _blas_limit(blas_threads):
                result = call_train_loop(train_loop, config)
            p2p.get(session.unacknowledged)
            return result
        finally:
            _session._install(None)

    def collective_stats(self):
        return self._communicator.stats if self._communicator else None


def _blas_limit(threads: int | None):
    """Limit BLAS/OpenMP threads to the worker's CPUs, as Ray Train does: N workers each running a BLAS
    thread per core on N cores oversubscribe the machine (twice as slow per step, measured). Needs
    threadpoolctl (scikit-learn's dependency); without it this does nothing."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=max(1, threads))


def call_train_loop(train_loop: Callable, config: dict | None):
    """Call the loop with `config` if it takes an argument, as Ray Train does."""
    try:
        takes_config = len(inspect.signature(train_loop).parameters) > 0
    except (TypeError, ValueError):
        takes_config = True
    return train_loop(config if config is not None else {}) if takes_config else train_loop()


RemoteTrainWorker = p2p.remote(max_concurrency=WORKER_MAX_CONCURRENCY)(TrainWorker)


def split_dataset(data, n: int) -> list:
    """`data` cut into `n` consecutive shards of near-equal row counts (rank 0 gets the first rows).

    Accepts a numpy array, a tuple/list of arrays with equal row counts (e.g. `(X, y)`), a dict of such
    arrays, a pandas DataFrame, or any object with a `split(n)` method (an mlkit dataset).
    """
    if hasattr(data, "split") and callable(data.split) and not isinstance(data, (np.ndarray, str, bytes)):
        try:
            return list(data.split(n, equal=True))
        except TypeError:
            return list(data.split(n))
    if isinstance(data, dict):
        per_key = {k: split_dataset(v, n) for k, v in data.items()}
        _check_rows({k: _rows(v) for k, v in data.items()})
        return [{k: per_key[k][i] for k in data} for i in range(n)]
    if isinstance(data, (tuple, list)) and data and all(_is_table(v) for v in data):
        _check_rows({i: _rows(v) for i, v in enumerate(data)})
        parts = [split_dataset(v, n) for v in data]
        return [type(data)(p[i] for p in parts) for i in range(n)]
    if _is_table(data):
        bounds = _chunk_bounds(_rows(data), n)
        if hasattr(data, "iloc"):
            return [data.iloc[a:b] for a, b in bounds]
        return [data[a:b] for a, b in bounds]
    raise TypeError(f"cannot split a {type(data).__name__} into worker shards: pass a numpy array, a tuple or "
                    "dict of arrays with equal row counts, a pandas DataFrame, or a dataset with split(n)")


def _is_table(value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim >= 1 or hasattr(value, "iloc")


def _rows(value) -> int:
    return len(value)


def _check_rows(rows: dict) -> None:
    if len(set(rows.values())) > 1:
        raise ValueError(f"the arrays of a dataset must have the same number of rows to be split together; got {rows}")

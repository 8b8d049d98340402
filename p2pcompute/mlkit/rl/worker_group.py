"""A group of worker actors (rollout workers, ES workers) that replaces the ones it loses.

Theory of operation. The group keeps one actor per worker index. `call(method, args_for)` calls the method
on every worker at once and gathers what comes back until every call has answered or `timeout_s` has
passed. A worker whose call fails because its process or its peer is gone (`ActorError`,
`WorkerCrashedError`, a lost object, an unreachable peer), or that has not answered by the deadline, is
dropped from this round and replaced by a fresh actor with the same index: the round completes with the
others' results and the next round uses the replacement. An exception raised by user code (an environment
that crashes) is re-raised: it is a bug a new process would hit again, not a lost machine.

Actors are created with `max_restarts=0` on purpose: the group, not the core, decides when to replace a
worker, so a replacement can be counted, logged, and reseeded so it does not repeat its predecessor's
trajectories.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import p2pcompute as p2p
from p2pcompute import errors

log = logging.getLogger(__name__)

LOST = (errors.ActorError, errors.WorkerCrashedError, errors.ObjectLostError, errors.PeerUnavailableError)


def _check_feasible(options: dict) -> None:
    """Fail now, not after a sample timeout, when no peer could ever host one worker."""
    cpus = float(options.get("num_cpus", 0) or 0)
    if cpus <= 0:
        return
    largest = max((n["Resources"].get("CPU", 0.0) for n in p2p.nodes() if n.get("Alive")), default=0.0)
    if cpus > largest:
        raise ValueError(f"each rollout worker asks for {cpus:g} CPUs but the largest peer has {largest:g}; "
                         "lower num_cpus_per_env_runner (0 is allowed) or add a bigger peer")


class WorkerGroup:
    """`num_workers` actors of `cls`; `make_args(index, generation)` gives the constructor's (args, kwargs)."""

    def __init__(self, cls: type, num_workers: int, make_args: Callable[[int, int], tuple[tuple, dict]],
                 actor_options: dict | None = None, restart: bool = True):
        self.restart = restart
        _check_feasible(actor_options or {})
        self._actor_cls = p2p.remote(cls).options(max_restarts=0, **(actor_options or {}))
        self._make_args = make_args
        self._generation: dict[int, int] = {}
        self.workers: dict[int, Any] = {}
        self.num_replaced = 0
        for index in range(1, num_workers + 1):  # index 0 is the driver's local worker, as in RLlib
            self._start(index)

    def _start(self, index: int) -> None:
        gen = self._generation.get(index, -1) + 1
        self._generation[index] = gen
        args, kwargs = self._make_args(index, gen)
        self.workers[index] = self._actor_cls.remote(*args, **kwargs)

    def replace(self, index: int, reason: str) -> None:
        """Drop worker `index` (killing it if it still runs) and start a new one in its place.

        With `restart=False` the loss is an error instead (RLlib's restart_failed_env_runners=False)."""
        if not self.restart:
            raise RuntimeError(f"rollout worker {index} was lost ({reason}) and restart_failed_env_runners "
                               "is off")
        log.warning("rollout worker %d lost (%s); starting a replacement", index, reason)
        old = self.workers.pop(index, None)
        if old is not None:
            try:
                p2p.kill(old)
            except errors.P2PError:
                pass  # already gone: nothing to stop
        self.num_replaced += 1
        self._start(index)

    def call(self, method: str, args_for: Callable[[int], tuple], timeout_s: float | None = None) -> dict[int, Any]:
        """Call `method(*args_for(index))` on every worker; {index: result} for those that answered.

        Lost workers are replaced before this returns; their index is missing from the result.
        """
        pending = {getattr(h, method).remote(*args_for(i)): i for i, h in self.workers.items()}
        results: dict[int, Any] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = p2p.wait(list(pending), num_returns=1, timeout=left)
            if not ready:
                for ref, index in pending.items():
                    self.replace(index, f"no answer within {timeout_s} s")
                break
            for ref in ready:
                index = pending.pop(ref)
                try:
                    results[index] = p2p.get(ref)
                except LOST as exc:
                    self.replace(index, f"{type(exc).__name__}: {exc}")
        return results

    def stop(self) -> None:
        for handle in self.workers.values():
            try:
                p2p.kill(handle)
            except errors.P2PError:
                pass  # already gone
        self.workers.clear()

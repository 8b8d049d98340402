"""The workload interface: hooks the simulated processes call, each a no-op here.

The base class is also the `membership` workload: no drivers, no tasks — only the membership cores (and,
with `with_leases`, idle lease cores). Subclasses override what they need; `MixedWorkload` routes each hook
to the workload that owns the driver, task or process concerned.
"""

from __future__ import annotations


class Workload:
    name = "membership"
    uses_refs = False  # do processes pass references (so that every process death matters to others)?

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.engine = cluster.engine
        self.stop_ns = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self, stop_ns: int) -> None:
        """Begin submitting; stop submitting new work at `stop_ns`."""
        self.stop_ns = stop_ns

    def stop_now(self) -> None:
        """Submit nothing more from now on."""
        self.stop_ns = self.engine.now or 1

    def on_peer_up(self, peer, restarted: bool) -> None:
        """A peer started (before its membership core starts): create its drivers, replicas, ..."""

    def on_peer_down(self, peer) -> None:
        """A peer crashed or left, with every process on it."""

    def may_take_down(self, peer) -> bool:
        """May the fault schedule crash `peer` now? (False keeps a quorum the workload needs.)"""
        return True

    def idle(self) -> bool:
        """True when nothing submitted is still in progress (the quiet period waits for it)."""
        return True

    def settled(self) -> bool:
        """True when the workload's own replicated state has converged (the table's replicas)."""
        return True

    def final_checks(self) -> None:
        """Judge the workload's own invariants at the end of the run; add to cluster.violations."""

    def metrics(self) -> dict:
        return {}

    # ---- processes ----------------------------------------------------------------------------------

    def on_process_gone(self, proc) -> None:
        """A worker or driver died (with its peer, stopped, or killed)."""

    def on_driver_saw_death(self, driver, dead: str) -> None:
        """`driver` learned that a process (or, for a prefix ending in '-', every process of a peer) died."""

    def on_peer_saw_death(self, peer, dead_id: str, is_peer: bool) -> None:
        """`peer` learned that a peer (`is_peer`) or a process died; its workers' tables should hear of it."""

    # ---- tasks (drivers run the owner core: these hooks see what it does) -------------------------------

    def on_push(self, driver, msg, to: str) -> None:
        """The driver's core sent the push `msg` to the worker at `to`."""

    def on_reply(self, driver, msg) -> None:
        """A `TaskReply` reached the driver; its core handles it right after this."""

    def on_task_ending(self, driver, task_id: str) -> None:
        """The driver's core is ending a task (a rebuild too), before it releases the task's arguments."""

    def on_task_finished(self, driver, task_id: str, error: str | None) -> None:
        """The driver's core finished a task (`error`: the name of the error it failed with, or None)."""

    def on_free(self, driver, object_id: str) -> None:
        """The driver's core is freeing `object_id` (no reference to it is left in that process)."""

    def on_driver_message(self, driver, src: str, msg) -> None:
        """A message for a driver that its owner core does not handle (a table client's)."""

    # ---- workers --------------------------------------------------------------------------------------

    def on_task_start(self, worker, msg) -> None:
        pass

    def on_task_end(self, worker, msg):
        """The task's `returns` for its TaskReply, or a `SystemFailure` (the worker could not run it)."""
        return []

    def on_worker_message(self, worker, src: str, msg) -> None:
        pass

    # ---- table replicas -----------------------------------------------------------------------------

    def on_replica_message(self, peer, src: str, msg) -> None:
        pass

    def endpoints_of(self, peer) -> list:
        return []

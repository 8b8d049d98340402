"""The `mixed` workload: tasks, DAG jobs, actors and name claims at once, on the same peers.

The load is split: half of `--load` is independent tasks, a quarter DAG jobs, a quarter actor calls; name
claims run at their usual rate. Each part picks its own submitting peers from the seed, so a peer may host
drivers of several parts (each its own process). The DAG and actor parts share one reference ground truth,
since their workers' tables see each other's refs. Hooks go to the part that owns the driver, or for a
worker, to the part named in the pushed task.
"""

from __future__ import annotations

from sims.workloads.actors import ActorsWorkload
from sims.workloads.base import Workload
from sims.workloads.core_refs import CoreRefOps
from sims.workloads.dag import DagWorkload, table_class
from sims.workloads.names import NamesWorkload
from sims.workloads.refs import REF_MESSAGES, RefTruth
from sims.workloads.tasks import TasksWorkload


class MixedWorkload(Workload):
    name = "mixed"
    uses_refs = True

    def __init__(self, cluster) -> None:
        super().__init__(cluster)
        truth = RefTruth(cluster.violations)
        ops = CoreRefOps(cluster, truth, table_class(cluster.opts))
        self.truth, self.ops = truth, ops
        self.tasks = TasksWorkload(cluster, share=0.5)
        self.dag = DagWorkload(cluster, share=0.25, truth=truth, ops=ops)
        self.actors = ActorsWorkload(cluster, share=0.25, truth=truth, ops=ops)
        self.names = NamesWorkload(cluster, share=0.5)
        self.parts = (self.tasks, self.dag, self.actors, self.names)
        self._by_name = {p.name: p for p in self.parts}

    # ---- routing ----

    @staticmethod
    def _of(driver) -> Workload:
        return driver.state["wl"]

    def _for_msg(self, msg) -> Workload:
        return self._by_name.get(msg.name, self.tasks)

    def start(self, stop_ns: int) -> None:
        super().start(stop_ns)
        for p in self.parts:
            p.start(stop_ns)

    def stop_now(self) -> None:
        super().stop_now()
        for p in self.parts:
            p.stop_now()

    def on_peer_up(self, peer, restarted: bool) -> None:
        for p in self.parts:
            p.on_peer_up(peer, restarted)

    def on_peer_down(self, peer) -> None:
        for p in self.parts:
            p.on_peer_down(peer)

    def may_take_down(self, peer) -> bool:
        return all(p.may_take_down(peer) for p in self.parts)

    def idle(self) -> bool:
        return all(p.idle() for p in self.parts)

    def settled(self) -> bool:
        return all(p.settled() for p in self.parts)

    def final_checks(self) -> None:
        for p in self.parts:
            p.final_checks()

    def metrics(self) -> dict:
        out: dict = {}
        for p in self.parts:
            out.update(p.metrics())
        out["objects_created"] = self.truth.created
        out["objects_freed"] = len(self.truth.freed)
        return out

    def on_process_gone(self, proc) -> None:
        wl = proc.state.get("wl") if hasattr(proc, "proc_id") else None
        if wl is not None:
            wl.on_process_gone(proc)
        else:
            self.ops.died(proc)

    def on_driver_saw_death(self, driver, dead: str) -> None:
        self._of(driver).on_driver_saw_death(driver, dead)

    def on_peer_saw_death(self, peer, dead_id: str, is_peer: bool) -> None:
        self.dag.on_peer_saw_death(peer, dead_id, is_peer)

    def on_push(self, driver, msg, to: str) -> None:
        self._of(driver).on_push(driver, msg, to)

    def on_reply(self, driver, msg) -> None:
        self._of(driver).on_reply(driver, msg)

    def on_task_ending(self, driver, task_id: str) -> None:
        self._of(driver).on_task_ending(driver, task_id)

    def on_task_finished(self, driver, task_id: str, error: str | None) -> None:
        self._of(driver).on_task_finished(driver, task_id, error)

    def on_free(self, driver, object_id: str) -> None:
        self._of(driver).on_free(driver, object_id)

    def on_task_start(self, worker, msg) -> None:
        self._for_msg(msg).on_task_start(worker, msg)

    def on_task_end(self, worker, msg):
        return self._for_msg(msg).on_task_end(worker, msg)

    def on_driver_message(self, driver, src: str, msg) -> None:
        self._of(driver).on_driver_message(driver, src, msg)

    def on_worker_message(self, worker, src: str, msg) -> None:
        if type(msg) in REF_MESSAGES:
            self.ops.on_message(worker, src, msg)

    def on_replica_message(self, peer, src: str, msg) -> None:
        self.names.on_replica_message(peer, src, msg)

    def endpoints_of(self, peer) -> list:
        return self.names.endpoints_of(peer)

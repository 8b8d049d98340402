"""The simulator drives the product's owner core: retries, lineage rebuilds and actor restarts are its.

`sims/owner_driver.py` hands every driver event to `p2pcompute.ownership.owner.OwnerCore`, the object the
runtime's client drives, in every workload. These tests show the simulator exercising that code — tasks
retried, lost stored results rebuilt, actors restarted, in it — and catching a bug planted in it
(more in test_sims_planted.py).
"""

from __future__ import annotations

from p2pcompute.ownership.actors import ActorCore
from p2pcompute.ownership.owner import OwnerCore
from sims_testing import failed_invariants, run_cli

ARGS = ["run", "--peers", "20", "--seconds", "8", "--seed", "4", "--workload", "tasks",
        "--faults", "kill=0.2", "--quiet", "30"]


def test_retries_after_worker_deaths_run_in_the_owner_core(monkeypatch):
    retried = []
    real_retry = OwnerCore._retry

    def counting_retry(self, rec):
        retried.append(rec.task_id)
        return real_retry(self, rec)

    monkeypatch.setattr(OwnerCore, "_retry", counting_retry)
    status, out = run_cli(ARGS)
    assert status == 0, out
    assert failed_invariants(out) == []
    assert retried, "worker kills should have made the owner core retry some tasks"


def test_a_bug_planted_in_the_owner_core_is_caught(monkeypatch):
    # Tasks lost with their worker are neither retried nor failed: they would wait for ever.
    monkeypatch.setattr(OwnerCore, "_lost_tasks", lambda self, task_ids, why: None)
    status, out = run_cli(ARGS)
    assert status != 0
    assert "tasks_finish" in failed_invariants(out), out


def test_lineage_rebuilds_run_in_the_owner_core(monkeypatch):
    rebuilt = []
    real = OwnerCore._object_lost

    def counting(self, oid, why):
        rec = self.lineage.get(oid)
        before = rec.rebuilds if rec is not None else None
        real(self, oid, why)
        if rec is not None and rec.rebuilds != before:
            rebuilt.append(oid)

    monkeypatch.setattr(OwnerCore, "_object_lost", counting)
    status, out = run_cli(["run", "--peers", "12", "--seconds", "8", "--seed", "2", "--workload", "dag",
                           "--faults", "crash=0.05,restart=0.5"])
    assert status == 0, out
    assert rebuilt, "peer crashes should have made the owner core rebuild lost stored results"


def test_actor_restarts_run_in_the_actor_core(monkeypatch):
    lost = []
    real = ActorCore._worker_lost

    def counting(self, owned, reason):
        lost.append(owned.actor_id)
        return real(self, owned, reason)

    monkeypatch.setattr(ActorCore, "_worker_lost", counting)
    status, out = run_cli(["run", "--peers", "12", "--seconds", "8", "--seed", "2", "--workload", "actors",
                           "--faults", "kill=0.05"])
    assert status == 0, out
    assert lost, "worker kills should have made the owner core restart actors"
    assert "actor_restarts 0," not in out

"""The simulator drives the product's owner core: the tasks workload's retries are `OwnerCore`'s.

`sims/owner_driver.py` hands every driver event to `p2pcompute.ownership.owner.OwnerCore`, the object the
runtime's client drives. These tests show the simulator exercising that code — retries happen in it — and
catching a bug planted in it.
"""

from __future__ import annotations

import pytest

from p2pcompute.ownership.owner import OwnerCore
from sims_testing import failed_invariants, run_cli

ARGS = ["run", "--peers", "20", "--seconds", "8", "--seed", "4", "--workload", "tasks",
        "--faults", "kill=0.05", "--quiet", "30"]


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

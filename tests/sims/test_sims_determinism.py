"""The same seed and options replay the same run: same event log hash, same report, in any process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sims.options import FaultSpec, SimOptions
from sims.run import run
from sims_testing import event_hash

FAULTS = "crash=0.02,restart=0.5,pause=0.02,pause_for=uniform:100ms:1s,loss=0.05,dup=0.02,reorder=0.1," \
         "partition=0.01,partition_for=uniform:200ms:1s,kill=0.02,skew=30ms,drift=0.001"


def _opts(seed: int) -> SimOptions:
    return SimOptions(peers=12, seconds=6, seed=seed, workload="mixed", faults=FaultSpec.parse(FAULTS))


def _comparable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "wall_s"}


def test_same_seed_same_hash_and_report():
    first, second = run(_opts(3)), run(_opts(3))
    assert first.hash == second.hash
    assert _comparable(first.report) == _comparable(second.report)
    assert first.report["events"] > 10_000  # a real run, not an empty one


@pytest.mark.parametrize("workload", ["dag", "actors"])
def test_the_owner_core_workloads_replay(workload):
    """dag and actors drive the product's owner core (retries, rebuilds, restarts): still one run per seed."""
    opts = lambda: SimOptions(peers=10, seconds=4, seed=5, workload=workload, faults=FaultSpec.parse(FAULTS))  # noqa: E731
    first, second = run(opts()), run(opts())
    assert first.hash == second.hash
    assert _comparable(first.report) == _comparable(second.report)


def test_another_seed_another_run():
    assert run(_opts(3)).hash != run(_opts(4)).hash


def test_same_hash_in_other_processes_whatever_their_string_hashing():
    """String hashing is salted per process; nothing in a run may depend on it."""
    argv = [sys.executable, "-m", "sims", "run", "--peers", "10", "--seconds", "4", "--seed", "5", "--workload",
            "mixed", "--faults", FAULTS]
    hashes = set()
    for salt in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=salt)
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert out.returncode in (0, 1), out.stderr
        hashes.add(event_hash(out.stdout))
    assert len(hashes) == 1

"""The state API on the shared cluster: exact counts of known tasks and actors, states as they change,
filters and limits, objects, nodes and jobs, and the metrics of user code.

Names of functions and classes here are unique to this module, so other tests' work on the shared cluster
never changes the counts (filters on `name` / `class_name`).
"""

from __future__ import annotations

import os

import pytest

import p2pcompute as p2p
from p2pcompute.errors import InvalidArgumentError
from p2pcompute.util import state
from itest_util import wait_until

pytestmark = pytest.mark.integration


@p2p.remote
def st_square(x):
    return x * x


@p2p.remote(max_retries=0)
def st_fail(x):
    raise ValueError(f"boom {x}")


@p2p.remote
def st_gate(path):
    import time
    while not os.path.exists(path):
        time.sleep(0.01)  # waiting for the test to open the gate
    return 1


@p2p.remote
def st_after(gate_value):
    return gate_value + 1


@p2p.remote
class StCounter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()


def _counts(name: str) -> dict:
    summary = state.summarize_tasks()["cluster"]["summary"]
    return summary.get(name, {}).get("state_counts", {})


def test_finished_and_failed_tasks_are_counted_exactly(cluster):
    assert p2p.get([st_square.remote(i) for i in range(6)]) == [i * i for i in range(6)]
    refs = [st_fail.remote(i) for i in range(2)]
    for ref in refs:
        with pytest.raises(ValueError):
            p2p.get(ref)
    # Workers report finished attempts to their peer in batches (at most ~0.25 s late).
    wait_until(lambda: _counts("st_square") == {"FINISHED": 6} and _counts("st_fail") == {"FAILED": 2}, 20,
               0.1, "6 finished st_square and 2 failed st_fail")
    failed = state.list_tasks([("name", "=", "st_fail")], detail=True)
    assert len(failed) == 2 and {r["state"] for r in failed} == {"FAILED"}
    assert all(r["error_type"] == "ValueError" and "boom" in r["error_message"] and "Traceback" in
               r["error_message"] for r in failed)
    short = state.list_tasks([("name", "=", "st_fail")])
    assert all(r["error_message"].startswith("ValueError: boom") for r in short)
    rows = state.list_tasks([("name", "=", "st_square")])
    assert len(rows) == 6 and all(r["type"] == "NORMAL_TASK" and r["node_id"] for r in rows)
    assert all(r["start_time_ms"] <= r["end_time_ms"] for r in rows)
    # filters combine; != excludes; limit cuts
    assert len(state.list_tasks([("name", "=", "st_square"), ("state", "!=", "FINISHED")])) == 0
    assert len(state.list_tasks({"name": "st_square"}, limit=4)) == 4


def test_pending_and_running_states_come_from_owner_and_worker(cluster, tmp_path):
    gate_file = str(tmp_path / "gate")
    gate = st_gate.remote(gate_file)
    after = st_after.remote(gate)
    wait_until(lambda: _counts("st_gate") == {"RUNNING": 1} and _counts("st_after") == {"PENDING_ARGS_AVAIL": 1},
               20, 0.1, "st_gate running and st_after waiting for its argument")
    running = state.list_tasks([("name", "=", "st_gate")])[0]
    assert running["worker_id"] and running["node_id"] and running["end_time_ms"] is None
    open(gate_file, "w").close()
    assert p2p.get(after) == 2
    wait_until(lambda: _counts("st_gate") == {"FINISHED": 1} and _counts("st_after") == {"FINISHED": 1},
               20, 0.1, "both finished")


def test_actors_and_their_calls(cluster):
    counters = [StCounter.remote() for _ in range(2)]
    assert p2p.get([c.add.remote(1) for c in counters for _ in range(3)]) == [1, 2, 3, 1, 2, 3]
    pids = p2p.get([c.pid.remote() for c in counters])
    wait_until(lambda: _counts("StCounter.add") == {"FINISHED": 6}, 20, 0.1, "6 finished actor calls")
    assert _counts("StCounter") == {"FINISHED": 2}  # the constructors
    rows = state.list_actors([("class_name", "=", "StCounter")])
    assert len(rows) == 2, rows
    assert {r["state"] for r in rows} == {"ALIVE"}
    assert sorted(r["pid"] for r in rows) == sorted(pids)
    assert {r["actor_id"] for r in rows} == {c._actor_id for c in counters}
    named = StCounter.options(name="st_named_counter").remote()
    assert p2p.get(named.add.remote(5)) == 5
    (row,) = state.list_actors([("name", "=", "st_named_counter")])
    assert row["actor_id"] == named._actor_id and row["state"] == "ALIVE" and row["namespace"]
    p2p.kill(named)
    p2p.kill(counters[0])
    wait_until(lambda: {r["actor_id"]: r["state"] for r in state.list_actors([("class_name", "=", "StCounter")])}
               .get(counters[0]._actor_id) == "DEAD", 20, 0.1, "the killed actor reported DEAD")
    wait_until(lambda: len(state.list_actors([("class_name", "=", "StCounter"), ("state", "=", "ALIVE")])) == 1,
               20, 0.1, "one StCounter left alive")


def test_objects_nodes_and_jobs(cluster):
    big = p2p.put(b"x" * 300_000)
    small = p2p.put(123)
    rows = {r["object_id"]: r for r in state.list_objects(limit=10_000)}
    me = p2p.get_runtime_context().get_worker_id()
    assert rows[big.id]["state"] == "stored" and rows[big.id]["size_bytes"] >= 300_000
    assert rows[big.id]["locations"] == [state.list_nodes()[0]["node_id"]]
    assert rows[small.id]["state"] == "inline" and rows[small.id]["locations"] == []
    assert rows[big.id]["owner"] == me and rows[small.id]["owner"] == me
    nodes = state.list_nodes()
    assert len(nodes) == 1 and nodes[0]["state"] == "ALIVE" and nodes[0]["resources_total"]["CPU"] == 2
    jobs = state.list_jobs()
    assert any(j["state"] == "RUNNING" and j["job_id"] == p2p.get_runtime_context().get_job_id() for j in jobs)


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidArgumentError, match="limit"):
        state.list_tasks(limit=0)
    with pytest.raises(InvalidArgumentError, match="filter"):
        state.list_tasks([("state", "~", "RUNNING")])
    with pytest.raises(InvalidArgumentError, match="filters"):
        state.list_actors("state=ALIVE")

"""Merging the peers' answers into one row per task (`util.state.merge_tasks`), stepped directly: which
answer wins, and properties over made-up reports. No cluster."""

from __future__ import annotations

from hypothesis import given, strategies as st

from p2pcompute.util.state import TASK_STATES, merge_actors, merge_tasks


def ev(task_id, state, start, end=0, name="f"):
    return {"task_id": task_id, "name": name, "kind": "task", "state": state, "start_ns": start, "end_ns": end,
            "worker_id": "w", "job_id": "j"}


def test_later_stage_wins_but_a_retry_shows_the_owner():
    peers = [{"peer": "A", "events": [ev("t1", "FINISHED", 10, 20), ev("t2", "FAILED", 10, 20)],
              "processes": {"drv": {"owned": [{"task_id": "t2", "name": "f", "kind": "task",
                                               "state": "PENDING_NODE_ASSIGNMENT"},
                                              {"task_id": "t1", "name": "f", "kind": "task",
                                               "state": "SUBMITTED_TO_WORKER"},
                                              {"task_id": "t3", "name": "f", "kind": "task",
                                               "state": "PENDING_ARGS_AVAIL"}]}}},
             {"peer": "B", "processes": {"w9": {"running": [ev("t4", "RUNNING", 30)],
                                                "queued": [{"task_id": "t5", "name": "f", "kind": "task"}]}}}]
    rows = {r["task_id"]: r for r in merge_tasks(peers)}
    assert {k: r["state"] for k, r in rows.items()} == {
        "t1": "FINISHED",                 # the reply raced the owner's report
        "t2": "PENDING_NODE_ASSIGNMENT",  # a failed attempt the owner is retrying
        "t3": "PENDING_ARGS_AVAIL", "t4": "RUNNING", "t5": "SUBMITTED_TO_WORKER"}
    assert rows["t1"]["node_id"] == "A" and rows["t4"]["node_id"] == "B" and rows["t5"]["worker_id"] == "w9"


def test_the_latest_attempt_wins_across_peers():
    peers = [{"peer": "A", "events": [ev("t", "FAILED", 10, 20)]},
             {"peer": "B", "events": [ev("t", "FINISHED", 30, 40)]}]
    for order in (peers, peers[::-1]):
        (row,) = merge_tasks(order)
        assert (row["state"], row["node_id"]) == ("FINISHED", "B")


def test_a_finished_attempt_not_yet_flushed_is_shown_by_its_worker():
    """Between a task's reply and the worker's next event batch, neither the owner (it has the result) nor
    the peer (no batch yet) knows the task: the worker's own answer must carry it."""
    from types import SimpleNamespace
    from p2pcompute.runtime.task_events import TaskEventLog
    log = TaskEventLog("w1", "B")
    call = SimpleNamespace(task_id="drv.7", name="Holder.pid", kind="actor_task", job_id="j", actor_id="a1",
                           method="pid")
    log.begin(call)
    log.end("drv.7", [])
    assert log.snapshot() == [] and [e["task_id"] for e in log.unsent()] == ["drv.7"]
    peers = [{"peer": "B", "events": [], "processes": {"w1": {"running": log.snapshot(),
                                                              "finished": log.unsent()}}}]
    (row,) = merge_tasks(peers)
    assert (row["task_id"], row["state"], row["node_id"], row["name"]) == ("drv.7", "FINISHED", "B", "Holder.pid")
    sent = []
    log.flush_if_due(sent.append, force=True)
    assert len(sent) == 1 and log.unsent() == []


def test_actors_join_owner_and_host():
    peers = [{"peer": "A", "processes": {"drv": {"owned": [
        {"actor_id": "a1", "class_name": "C", "state": "ALIVE", "restarts": 1},
        {"actor_id": "a2", "class_name": "C", "state": "DEAD"}]}}},
        {"peer": "B", "processes": {"w1": {"hosted": {"actor_id": "a1", "pid": 42, "alive": True}},
                                    "w2": {"hosted": {"actor_id": "a2", "pid": 43, "alive": False}}}}]
    rows = {r["actor_id"]: r for r in merge_actors(peers)}
    assert (rows["a1"]["node_id"], rows["a1"]["pid"], rows["a1"]["num_restarts"]) == ("B", 42, 1)
    assert rows["a2"]["node_id"] is None and rows["a2"]["pid"] is None


worker_states = st.sampled_from(["RUNNING", "FINISHED", "FAILED"])
owner_states = st.sampled_from(["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER"])
report = st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3"]), worker_states, st.integers(1, 100),
                            st.sampled_from(["A", "B"])), max_size=8)
owned = st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3", "t4"]), owner_states), max_size=4)


@given(report, owned)
def test_one_row_per_task_in_a_known_state(worker_reports, owner_reports):
    peers = {"A": {"peer": "A", "events": [], "processes": {"w": {"running": []}, "drv": {"owned": []}}},
             "B": {"peer": "B", "events": [], "processes": {"w": {"running": []}}}}
    for task_id, state, start, peer in worker_reports:
        if state == "RUNNING":
            peers[peer]["processes"]["w"]["running"].append(ev(task_id, state, start))
        else:
            peers[peer]["events"].append(ev(task_id, state, start, start + 1))
    for task_id, state in owner_reports:
        peers["A"]["processes"]["drv"]["owned"].append({"task_id": task_id, "name": "f", "kind": "task",
                                                        "state": state})
    rows = merge_tasks(list(peers.values()))
    ids = [r["task_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(ids) == {t for t, *_ in worker_reports} | {t for t, _ in owner_reports}
    assert all(r["state"] in TASK_STATES for r in rows)
    owner_of = dict(owner_reports)
    for r in rows:
        latest = max((x for x in worker_reports if x[0] == r["task_id"]), key=lambda x: x[2], default=None)
        if latest is not None and latest[1] == "FINISHED" and r["task_id"] not in owner_of:
            assert r["state"] in ("FINISHED", "RUNNING", "FAILED")
        if r["task_id"] not in {t for t, *_ in worker_reports}:
            assert r["state"] == owner_of[r["task_id"]]

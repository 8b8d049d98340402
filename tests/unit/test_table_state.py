"""The table's state machine, stepped directly: every operation's semantics, dedupe, snapshots."""

from __future__ import annotations

import pytest

from p2pcompute.table.messages import BAD_OP, STALE_REQUEST
from p2pcompute.table.state import TableState, is_read


def run(state: TableState, op: tuple, index: int = 1):
    (ok, result, error), changes = state.execute(index, op)
    assert ok, error
    return result


def test_claim_is_once_and_returns_the_holder():
    state = TableState()
    assert run(state, ("claim", "actor/x", "worker-1")) == (True, "worker-1")
    # get_if_exists semantics: a second claim gets the current holder's value and changes nothing.
    (ok, result, _), changes = state.execute(2, ("claim", "actor/x", "worker-2"))
    assert ok and result == (False, "worker-1") and changes == []
    assert state.read(("get_name", "actor/x")) == (True, "worker-1", "")
    assert state.read(("list_names", "actor/")) == (True, [("actor/x", "worker-1")], "")


def test_release_only_by_the_expected_holder():
    state = TableState()
    run(state, ("claim", "n", "a"))
    assert run(state, ("release", "n", "b")) is False
    assert run(state, ("release", "n", "a")) is True
    assert run(state, ("claim", "n", "b")) == (True, "b")
    assert run(state, ("release", "n", None)) is True  # unconditional
    assert state.read(("get_name", "n"))[1] is None


def test_kv_put_get_delete_list_with_versions():
    state = TableState()
    assert run(state, ("put", "cfg/a", 1), index=5) == 5
    run(state, ("put", "cfg/b", {"x": 2}), index=6)
    run(state, ("put", "other", 3), index=7)
    assert state.read(("get", "cfg/a")) == (True, (1, 5), "")
    assert run(state, ("list", "cfg/")) == [("cfg/a", 1, 5), ("cfg/b", {"x": 2}, 6)]
    assert run(state, ("delete", "cfg/a")) is True
    assert run(state, ("delete", "cfg/a")) is False
    assert run(state, ("get", "cfg/a")) is None


def test_cas_on_value():
    state = TableState()
    assert run(state, ("cas", "k", None, "v1"), index=1) == (True, ("v1", 1))      # create if absent
    assert run(state, ("cas", "k", None, "v2"), index=2) == (False, ("v1", 1))     # not absent any more
    assert run(state, ("cas", "k", "wrong", "v2"), index=3) == (False, ("v1", 1))
    assert run(state, ("cas", "k", "v1", "v2"), index=4) == (True, ("v2", 4))
    assert run(state, ("cas", "k", "v2", None), index=5) == (True, None)           # swap to absent
    assert run(state, ("get", "k")) is None


def test_cas_on_version():
    state = TableState()
    assert run(state, ("cas_version", "k", 0, "a"), index=3) == (True, ("a", 3))
    assert run(state, ("cas_version", "k", 0, "b"), index=4) == (False, ("a", 3))
    assert run(state, ("cas_version", "k", 3, "b"), index=5) == (True, ("b", 5))
    assert run(state, ("cas_version", "k", 3, "c"), index=6) == (False, ("b", 5))


def test_jobs_register_update_list():
    state = TableState()
    assert run(state, ("job_register", "job1", {"state": "RUNNING", "driver": "d1"})) == \
        (True, {"state": "RUNNING", "driver": "d1"})
    assert run(state, ("job_register", "job1", {"state": "OTHER"}))[0] is False
    assert run(state, ("job_update", "job1", {"state": "SUCCEEDED"})) == {"state": "SUCCEEDED", "driver": "d1"}
    assert run(state, ("job_update", "nope", {"state": "X"})) is None
    assert run(state, ("job_list",)) == [("job1", {"state": "SUCCEEDED", "driver": "d1"})]


def test_detached_actor_records():
    state = TableState()
    run(state, ("actor_put", "a1", {"addr": "tcp://w1", "restarts": 0}))
    run(state, ("actor_put", "a1", {"addr": "tcp://w2", "restarts": 1}))
    assert run(state, ("actor_get", "a1")) == {"addr": "tcp://w2", "restarts": 1}
    assert run(state, ("actor_list",)) == [("a1", {"addr": "tcp://w2", "restarts": 1})]
    assert run(state, ("actor_delete", "a1")) is True
    assert run(state, ("actor_get", "a1")) is None


@pytest.mark.parametrize("op", [
    (), ("nope",), ("put", "k"), ("put", 1, "v"), ("put", "k", None), ("claim", "n", None),
    ("cas_version", "k", "1", "v"), ("job_register", "j", "not a dict"), ["put", "k", "v"], None,
])
def test_malformed_operations_fail_cleanly(op):
    state = TableState()
    (ok, result, error), changes = state.execute(1, op)
    assert not ok and error.startswith(BAD_OP) and changes == []
    assert state.tables == TableState().tables


def test_read_refuses_a_write():
    state = TableState()
    ok, _, error = state.read(("put", "k", 1))
    assert not ok and error.startswith(BAD_OP)
    assert is_read(("get", "k")) and not is_read(("put", "k", 1)) and not is_read(("get",))


def test_retried_command_is_applied_at_most_once():
    state = TableState()
    first, changes = state.apply_command(1, "c1", 7, 7, ("cas", "k", None, "v"))
    assert first == (True, (True, ("v", 1)), "") and changes
    # The same request again (a retry that was appended twice): the first outcome, nothing applied.
    again, changes = state.apply_command(2, "c1", 7, 7, ("cas", "k", None, "v"))
    assert again == first and changes == []
    assert state.read(("get", "k"))[1] == ("v", 1)
    # Another client's identical request id is independent.
    other, _ = state.apply_command(3, "c2", 7, 7, ("cas", "k", None, "w"))
    assert other[1] == (False, ("v", 1))
    assert state.outcome_of("c1", 7) == first


def test_acknowledged_requests_are_forgotten_and_refused_if_replayed():
    state = TableState()
    state.apply_command(1, "c1", 1, 1, ("put", "k", "a"))
    state.apply_command(2, "c1", 2, 2, ("put", "k", "b"))  # acked_below=2: the reply to 1 was delivered
    assert state.outcome_of("c1", 1) is None
    (ok, _, error), changes = state.apply_command(3, "c1", 1, 1, ("put", "k", "a"))  # a very late duplicate
    assert not ok and error == STALE_REQUEST and changes == []
    assert state.read(("get", "k"))[1] == ("b", 2)


def test_sessions_are_bounded_least_recently_used_first():
    state = TableState(max_sessions=2)
    state.apply_command(1, "c1", 1, 1, ("put", "a", 1))
    state.apply_command(2, "c2", 1, 1, ("put", "b", 1))
    state.apply_command(3, "c1", 2, 1, ("put", "a", 2))  # c1 used again: c2 is now the oldest
    state.apply_command(4, "c3", 1, 1, ("put", "c", 1))
    assert list(state.sessions) == ["c1", "c3"]


def test_snapshot_round_trip_and_cache_replay():
    state = TableState()
    cache = TableState()
    ops = [("put", "k", 1), ("claim", "n", "x"), ("job_register", "j", {"s": 1}), ("actor_put", "a", {"w": 1}),
           ("cas", "k", 1, 2), ("delete", "k"), ("put", "k2", [1, 2])]
    for index, op in enumerate(ops, start=1):
        _, changes = state.apply_command(index, "c", index, index, op)
        cache.apply_changes(changes)
    assert cache.tables == state.tables  # subscribers rebuild exactly the same records from changes
    restored = TableState.restore(state.snapshot())
    assert restored.tables == state.tables and restored.sessions == state.sessions
    assert restored.snapshot() == state.snapshot()
    with pytest.raises(ValueError):
        TableState.restore({"tables": {"kv": {}}, "sessions": []})


def test_a_claim_applied_twice_still_wins_and_another_value_still_loses():
    """A client that retried a claim after a leader change may have it applied twice: it must hear that it
    won (its own value holds the name), not that it lost to itself. Found by the racing-claims test."""
    state = TableState()
    assert run(state, ("claim", "n", {"actor_id": "a1"})) == (True, {"actor_id": "a1"})
    assert run(state, ("claim", "n", {"actor_id": "a1"})) == (True, {"actor_id": "a1"})
    assert run(state, ("claim", "n", {"actor_id": "b2"})) == (False, {"actor_id": "a1"})

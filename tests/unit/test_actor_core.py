"""The actor core stepped through transcripts: events in, effects out, no processes.

Each test reads as a short story of one caller or one owner; effects are checked by kind and order.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute import serialization
from p2pcompute.errors import ActorDiedError, ActorUnavailableError, TaskCancelledError
from p2pcompute.lease.messages import ReturnLease
from p2pcompute.lease.submitter import Held
from p2pcompute.net.effects import Send
from p2pcompute.ownership import task_messages as am
from p2pcompute.ownership.actors import (ActorCore, FailTask, Pin, PushCall, PushCreate, ReleaseName, Restart,
                                         SubmitTask, Unpin)
from p2pcompute.ownership.task_record import TaskRecord

ME = "tcp://me:1"
OWNER = "tcp://owner:1"
ACTOR = "P1-d2.a1"   # an actor owned by process P1-d2


def call(i: int, actor_id: str = ACTOR, retries: int = 0) -> TaskRecord:
    return TaskRecord(f"t{i}", "actor_call", f"f{i}", "code", None, b"", None, [], [], [f"t{i}.r"], {},
                      {"max_task_retries": retries}, actor_id=actor_id, method="f")


def creation(actor_id: str = "me-d1.a1", slot_refs=()) -> TaskRecord:
    return TaskRecord("c1", "actor_create", "A", "code", None, b"", None, list(slot_refs), [], [actor_id], {},
                      {}, actor_id=actor_id)


def held(worker: str = "w1", lease: str = "L1") -> Held:
    return Held(lease, worker, f"ipc://{worker}", f"ipc://{worker}-ctl", "P2", "tcp://p2:1", ("key",), 0)


def location(state: str, incarnation: int, worker: str = "w1", error: bytes | None = None) -> am.ActorLocation:
    return am.ActorLocation(ACTOR, state, worker, f"ipc://{worker}" if worker else "",
                            f"ipc://{worker}-ctl" if worker else "", incarnation, error)


def kinds(effects) -> list[str]:
    return [type(e).__name__ for e in effects]


def pushed(effects) -> list[tuple[str, int]]:
    return [(e.rec.task_id, e.seq) for e in effects if type(e) is PushCall]


def failed(effects) -> dict[str, type]:
    return {e.rec.task_id: type(serialization.error_from_bytes(e.error)) for e in effects if type(e) is FailTask}


def finish(recs, effects) -> None:
    """What the driver does with FailTask: the record is done."""
    for e in effects:
        if type(e) is FailTask:
            e.rec.done = True


# ---- caller -------------------------------------------------------------------------------------------


def test_calls_leave_in_submission_order_whatever_order_their_arguments_resolve():
    core = ActorCore(ME)
    recs = [call(i) for i in range(3)]
    for rec in recs:
        assert core.submit_call(rec, OWNER) == []
    assert core.call_ready(recs[2]) == []           # waits for calls 0 and 1
    effects = core.call_ready(recs[0])               # goes on: the caller asks the owner where the actor is
    assert effects == [Send(OWNER, am.ResolveActor(ACTOR, ME))]
    assert core.call_ready(recs[1]) == []            # queued behind the location, with call 2 right after it
    assert pushed(core.on_location(location("alive", 1))) == [("t0", 1), ("t1", 2), ("t2", 3)]


def test_a_call_that_fails_before_it_goes_on_releases_the_calls_behind_it():
    core = ActorCore(ME)
    core.on_location(location("alive", 1))          # no caller yet: ignored
    recs = [call(i) for i in range(3)]
    for rec in recs:
        core.submit_call(rec, OWNER)
    core.on_location(location("alive", 1))
    assert core.call_ready(recs[1]) == [] and core.call_ready(recs[2]) == []
    recs[0].done = True                               # its argument failed: the owner finished it with that error
    assert pushed(core.call_finished(recs[0])) == [("t1", 1), ("t2", 2)]


def test_retried_calls_keep_their_order_ahead_of_later_calls_after_a_restart():
    core = ActorCore(ME)
    recs = [call(i, retries=-1) for i in range(5)]
    for rec in recs[:4]:
        core.submit_call(rec, OWNER)
        core.call_ready(rec)
    assert pushed(core.on_location(location("alive", 1))) == [("t0", 1), ("t1", 2), ("t2", 3), ("t3", 4)]
    core.call_finished(recs[0])                       # call 0 answered; 1-3 in flight when the worker dies
    assert core.on_location(location("restarting", 1, worker="")) == []
    core.submit_call(recs[4], OWNER)
    assert pushed(core.call_ready(recs[4])) == []     # waits for the new location (it may ask the owner)
    effects = core.on_location(location("alive", 2, worker="w2"))
    assert pushed(effects) == [("t1", 5), ("t2", 6), ("t3", 7), ("t4", 8)]
    assert all(e.addr == "ipc://w2" for e in effects if type(e) is PushCall)


def test_calls_lost_in_a_restart_fail_as_unavailable_without_retries_and_as_died_when_dead():
    core = ActorCore(ME)
    recs = [call(i) for i in range(2)]
    for rec in recs:
        core.submit_call(rec, OWNER)
        core.call_ready(rec)
    core.on_location(location("alive", 1))
    assert failed(core.on_location(location("restarting", 1))) == {"t0": ActorUnavailableError,
                                                                     "t1": ActorUnavailableError}
    late = call(9)
    core.submit_call(late, OWNER)
    core.call_ready(late)                              # queued while restarting
    dead = serialization.system_error_bytes(ActorDiedError("no restarts left"))
    assert failed(core.on_location(location("dead", 2, worker="", error=dead))) == {"t9": ActorDiedError}


def test_an_older_location_never_overrides_a_newer_one():
    core = ActorCore(ME)
    rec = call(0)
    core.submit_call(rec, OWNER)
    core.on_location(location("alive", 3, worker="w3"))
    assert core.on_location(location("alive", 2, worker="w2")) == []
    assert pushed(core.call_ready(rec)) == [("t0", 1)]
    assert core.callers[ACTOR].addr == "ipc://w3"


def test_kill_fails_queued_and_inflight_calls_and_later_calls_at_once():
    core = ActorCore(ME)
    recs = [call(i) for i in range(2)]
    for rec in recs:
        core.submit_call(rec, OWNER)
        core.call_ready(rec)
    core.on_location(location("alive", 1))
    effects = core.kill(ACTOR, no_restart=True)
    assert failed(effects) == {"t0": ActorDiedError, "t1": ActorDiedError}
    assert Send(OWNER, am.KillActor(ACTOR, True)) in effects
    later = call(5)
    core.submit_call(later, OWNER)
    assert failed(core.call_ready(later)) == {"t5": ActorDiedError}
    assert core.on_location(location("alive", 7)) == []  # news from before the kill cannot revive it


def test_the_owners_death_fails_every_call():
    core = ActorCore(ME)
    first, second = call(0), call(1)
    core.submit_call(first, OWNER)
    core.call_ready(first)
    core.on_location(location("alive", 1))
    core.submit_call(second, OWNER)
    effects = core.on_process_died("peer died", lambda proc: proc == "P1-d2")
    assert failed(effects) == {"t0": ActorDiedError}
    assert failed(core.call_ready(second)) == {"t1": ActorDiedError}


def test_cancelling_a_call_waiting_in_order_fails_it_and_lets_the_next_go():
    core = ActorCore(ME)
    recs = [call(i) for i in range(2)]
    for rec in recs:
        core.submit_call(rec, OWNER)
    core.on_location(location("alive", 1))
    core.call_ready(recs[1])
    effects = core.cancel_call(recs[0], force=False)
    assert failed(effects) == {"t0": TaskCancelledError}
    finish(recs, effects)
    assert pushed(core.call_finished(recs[0])) == [("t1", 1)]


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(8))), st.integers(min_value=0, max_value=8))
def test_calls_are_pushed_in_submission_order_for_any_readiness_order(ready_order, alive_after):
    core = ActorCore(ME)
    recs = [call(i) for i in range(8)]
    for rec in recs:
        core.submit_call(rec, OWNER)
    effects = []
    for step, i in enumerate(ready_order):
        if step == alive_after:
            effects += core.on_location(location("alive", 1))
        effects += core.call_ready(recs[i])
    if alive_after >= len(ready_order):
        effects += core.on_location(location("alive", 1))
    assert pushed(effects) == [(f"t{i}", i + 1) for i in range(8)]


# ---- owner --------------------------------------------------------------------------------------------


def test_an_owned_actor_is_placed_published_restarted_and_dies_when_out_of_restarts():
    core = ActorCore(ME)
    rec = creation(slot_refs=[("arg1", OWNER)])
    effects = core.create(rec, max_restarts=1, detached=False)
    assert kinds(effects) == ["Pin", "SubmitTask"] and effects[0] == Pin("arg1", OWNER)
    core.on_resolve(am.ResolveActor(rec.actor_id, "tcp://caller:1"))  # a caller subscribes
    effects = core.on_placed(rec, held())
    assert type(effects[0]) is PushCreate
    assert Send("tcp://caller:1", am.ActorLocation(rec.actor_id, "alive", "w1", "ipc://w1", "ipc://w1-ctl", 1,
                                                   None)) in effects
    handled, effects = core.on_lease_revoked("L1", "worker died")
    assert handled and [type(e) for e in effects if type(e) is Restart] == [Restart]
    new = creation(slot_refs=[("arg1", OWNER)])      # a restart runs the same constructor with the same args
    new.task_id = "c2"
    assert core.restarted(rec.actor_id, new) == [SubmitTask(new)]
    core.on_placed(new, held("w2", "L2"))
    assert core.owned[rec.actor_id].incarnation == 2
    handled, effects = core.on_lease_revoked("L2", "worker died")
    assert core.owned[rec.actor_id].state == "dead"
    assert Unpin("arg1") in effects
    dead = [e.msg for e in effects if type(e) is Send and type(e.msg) is am.ActorLocation]
    assert dead and dead[0].state == "dead" and "no restarts left" in str(serialization.error_from_bytes(dead[0].error))


def test_a_named_actor_frees_its_name_with_its_last_handle_unless_detached():
    core = ActorCore(ME)
    rec = creation("me-d1.a1")
    effects = core.create(rec, 0, detached=False, name_key="default/x", name_record={"actor_id": "me-d1.a1"})
    assert not any(type(e) is Pin for e in effects)   # the name does not hold it alive
    core.on_placed(rec, held())
    effects = core.on_handle_freed("me-d1.a1")
    assert ReleaseName("default/x", {"actor_id": "me-d1.a1"}) in effects
    assert Send("tcp://p2:1", ReturnLease("L1", True)) in effects    # its worker goes back to the pool

    core2 = ActorCore(ME)
    rec2 = creation("me-d1.a2")
    effects = core2.create(rec2, 0, detached=True, name_key="default/y", name_record={})
    assert Pin("me-d1.a2", ME) in effects              # a detached actor's name holds it alive
    assert core2.on_handle_freed("me-d1.a2") == []


def test_kill_of_an_owned_actor_frees_its_name_at_once_and_stops_its_worker():
    core = ActorCore(ME)
    rec = creation()
    core.create(rec, 3, detached=False, name_key="default/z", name_record={})
    core.on_placed(rec, held())
    effects = core.kill(rec.actor_id, no_restart=True)
    assert ReleaseName("default/z", {}) in effects
    assert Send("tcp://p2:1", am.ForceKillWorker("w1", "kill(actor)")) in effects
    handled, effects = core.on_lease_revoked("L1", "killed")
    assert handled and core.owned[rec.actor_id].state == "dead"
    assert not any(type(e) is Restart for e in effects)


def test_a_constructor_that_raises_kills_the_actor_for_good():
    core = ActorCore(ME)
    rec = creation()
    core.create(rec, -1, detached=False)
    core.on_placed(rec, held())
    error = serialization.system_error_bytes(ValueError("bad config"))
    effects = core.on_create_failed(rec, error)
    assert core.owned[rec.actor_id].state == "dead"
    assert Send("tcp://p2:1", ReturnLease("L1", True)) in effects


def test_resolving_an_actor_that_no_longer_exists_answers_dead():
    core = ActorCore(ME)
    (effect,) = core.on_resolve(am.ResolveActor("me-d1.gone", "tcp://caller:1"))
    assert effect.to == "tcp://caller:1" and effect.msg.state == "dead"
    with pytest.raises(ActorDiedError):
        raise serialization.error_from_bytes(effect.msg.error)

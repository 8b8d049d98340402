"""The owner core stepped through transcripts: a task's life, retries, lineage rebuilds, cancellation, deaths.

No processes and no sockets: messages go in, effects come out, and the object directory says what a `get`
would see.
"""

from __future__ import annotations

import pytest

from p2pcompute import serialization
from p2pcompute.errors import (ObjectLostError, OwnerDiedError, RemoteProtocolError, TaskCancelledError,
                               WorkerCrashedError)
from p2pcompute.lease.messages import LeaseGranted, RequestLease
from p2pcompute.net.effects import Send
from p2pcompute.ownership import messages as om
from p2pcompute.ownership import task_messages as tm
from p2pcompute.ownership.directory import ERROR, INLINE, PENDING, STORED
from p2pcompute.ownership.owner import ForgetAddress, OwnerCore
from p2pcompute.ownership.task_record import TaskRecord
from p2pcompute.ownership.wire_values import InlineResult, StoredResult, result_to_wire

ME, PEER = "tcp://me:1", "tcp://peer1:1"
NOW = 1_000_000_000


def owner() -> OwnerCore:
    core = OwnerCore("P1-d1", ME, "job", {}, PEER)
    core.node_id = "P1"
    return core


def task(core: OwnerCore, name: str, args=(), max_retries: int = 3) -> TaskRecord:
    """A task whose return the user holds a ref to (as `f.remote()` would leave it)."""
    tid = core.new_id()
    rid = f"{tid}.0"  # as remote_function names returns
    rec = TaskRecord(tid, "task", name, f"code-{name}", b"code", b"args", None, [(a, ME) for a in args], [],
                     [rid], {"CPU": 10000}, {"max_retries": max_retries}, max_retries)
    core.refs.add_local(rid, ME)
    return rec


def sent(effects, kind) -> list:
    return [e for e in effects if type(e) is Send and type(e.msg) is kind]


def grant(core: OwnerCore, effects, worker: str, peer_id: str = "P1", peer_addr: str = PEER) -> list:
    (req,) = sent(effects, RequestLease)
    return core.on_message(NOW, peer_addr, LeaseGranted(req.msg.request_id, f"L-{worker}", worker,
                                                        f"ipc://{worker}", f"ipc://{worker}-ctl", peer_id, peer_addr))


def state(core: OwnerCore, oid: str) -> int:
    v = core.objects.values.get(oid)   # an object nobody has waited on yet has no entry: pending
    return PENDING if v is None else v.state


def error_of(core: OwnerCore, oid: str) -> BaseException:
    return serialization.error_from_bytes(core.objects.values[oid].error)


def reply_inline(rec: TaskRecord, worker: str, value) -> tm.TaskReply:
    blob = serialization.serialize(value).to_blob()
    return tm.TaskReply(rec.task_id, [result_to_wire(InlineResult(blob, []))], 1000, worker, "P1", None)


def reply_stored(rec: TaskRecord, worker: str, holder: str, holder_addr: str) -> tm.TaskReply:
    return tm.TaskReply(rec.task_id, [result_to_wire(StoredResult(500_000, [], f"/dev/shm/p2p-{holder}", holder,
                                                                  holder_addr))],
                        1000, worker, holder, None)


def test_a_task_is_leased_pushed_and_its_value_resolved():
    core = owner()
    rec = task(core, "square")
    effects = core.submit(NOW, rec)
    assert len(sent(effects, RequestLease)) == 1 and not sent(effects, tm.PushTask)
    (push,) = sent(grant(core, effects, "w1"), tm.PushTask)
    assert push.to == "ipc://w1" and push.msg.task_id == rec.task_id and push.msg.code == b"code"
    assert state(core, rec.return_ids[0]) == PENDING
    core.on_message(NOW, "w1", reply_inline(rec, "w1", 49))
    assert state(core, rec.return_ids[0]) == INLINE
    assert serialization.deserialize(core.objects.values[rec.return_ids[0]].data) == 49
    assert rec.task_id not in core.tasks


@pytest.mark.parametrize("returns", [[["inline", "not bytes", []]], [["stored", -1, [], "p", "h", "a"]],
                                     [["what", 1]], [None], "not a list", [["error", b"e", [1]]]])
def test_a_malformed_reply_fails_its_task_with_a_protocol_error_and_the_core_goes_on(returns):
    core = owner()
    rec = task(core, "square")
    grant(core, core.submit(NOW, rec), "w1")
    core.on_message(NOW, "w1", tm.TaskReply(rec.task_id, returns, 1000, "w1", "P1", None))
    assert state(core, rec.return_ids[0]) == ERROR
    error = error_of(core, rec.return_ids[0])
    assert isinstance(error, RemoteProtocolError) and "malformed task result" in str(error)
    # The next task runs as usual (on the same lease).
    good = task(core, "square")
    (push,) = sent(core.submit(NOW, good), tm.PushTask)
    assert push.to == "ipc://w1"
    core.on_message(NOW, "w1", reply_inline(good, "w1", 4))
    assert state(core, good.return_ids[0]) == INLINE


def test_a_task_whose_worker_dies_is_retried_then_fails_when_out_of_retries():
    core = owner()
    rec = task(core, "flaky", max_retries=1)
    grant(core, core.submit(NOW, rec), "P1-w1")
    effects = core.on_message(NOW, PEER, tm.ProcessDied("P1-w1", "worker", "killed", "", "ipc://w1"))
    assert ForgetAddress("ipc://w1") in effects
    assert state(core, rec.return_ids[0]) == PENDING          # retried, not failed
    assert rec.max_retries == 0
    grant(core, effects, "P1-w2")
    core.on_message(NOW, PEER, tm.ProcessDied("P1-w2", "worker", "killed", "", ""))
    assert state(core, rec.return_ids[0]) == ERROR
    assert isinstance(error_of(core, rec.return_ids[0]), WorkerCrashedError)


def test_a_chain_lost_with_its_peer_is_rebuilt_from_lineage_arguments_first():
    core = owner()
    first = task(core, "load")
    grant(core, core.submit(NOW, first), "wa", "P2", "tcp://peer2:1")
    core.on_message(NOW, "wa", reply_stored(first, "wa", "P2", "tcp://peer2:1"))
    a = first.return_ids[0]
    second = task(core, "transform", args=[a])
    effects = core.submit(NOW, second)
    (req,) = sent(effects, RequestLease)
    assert req.to == "tcp://peer2:1"                          # asked first where its argument is
    (push,) = sent(grant(core, effects, "P2-w2", "P2", "tcp://peer2:1"), tm.PushTask)
    assert push.msg.slots[0][:2] == ["stored", a]             # told where to read the argument
    core.on_message(NOW, "P2-w2", reply_stored(second, "P2-w2", "P2", "tcp://peer2:1"))
    b = second.return_ids[0]
    assert state(core, a) == STORED and state(core, b) == STORED
    assert set(core.lineage) == {a, b}                        # both results can be rebuilt
    effects = core.on_message(NOW, PEER, tm.ProcessDied("P2", "peer", "peer died", "tcp://peer2:1", ""))
    # Both copies were on P2: both are being rebuilt, and `transform` waits for `load` to be rebuilt first.
    assert state(core, a) == PENDING and state(core, b) == PENDING
    assert first.task_id in core.tasks and second.task_id in core.tasks
    assert core.dep_waiters[a] == [second]
    assert first.rebuilds == 1 and second.rebuilds == 1
    assert len(sent(effects, RequestLease)) == 1
    grant(core, effects, "wb")
    core.on_message(NOW, "wb", reply_stored(first, "wb", "P1", PEER))
    assert state(core, a) == STORED and second.deps_left == 0


def test_an_object_made_by_put_and_lost_fails_with_a_clear_error():
    core = owner()
    oid = core.new_id()
    core.refs.add_local(oid, ME)
    core.objects.resolve(oid, STORED, size=10, locations=[["P2", "tcp://peer2:1", "/dev/shm/x"]])
    core.on_message(NOW, PEER, tm.ProcessDied("P2", "peer", "peer died", "tcp://peer2:1", ""))
    err = error_of(core, oid)
    assert isinstance(err, ObjectLostError) and "put()" in str(err)


def test_cancel_of_a_waiting_task_fails_it_at_once_and_of_a_running_one_asks_its_worker():
    core = owner()
    dep = task(core, "slow")
    grant(core, core.submit(NOW, dep), "w1")
    waiting = task(core, "after", args=[dep.return_ids[0]])
    core.submit(NOW, waiting)
    core.run(NOW, core.cancel, waiting.return_ids[0], False, True)
    assert isinstance(error_of(core, waiting.return_ids[0]), TaskCancelledError)
    effects = core.run(NOW, core.cancel, dep.return_ids[0], False, True)
    (cancel,) = sent(effects, tm.CancelTask)
    assert cancel.to == "ipc://w1-ctl" and cancel.msg.task_id == dep.task_id
    core.on_message(NOW, "w1", reply_inline(dep, "w1", 1))   # it finished anyway: the value stands
    assert core.run(NOW, core.cancel, dep.return_ids[0], False, True) == []


def test_objects_of_a_dead_owner_fail_with_owner_died_and_borrowers_ask_the_owner():
    core = owner()
    borrowed = "P9-d1.5"
    core.refs.add_local(borrowed, "tcp://owner9:1")
    effects = core.run(NOW, core.fetch, [borrowed])
    assert [e.msg for e in sent(effects, om.GetObject)] == [om.GetObject(borrowed, ME)]
    assert sent(core.run(NOW, core.fetch, [borrowed]), om.GetObject) == []   # asked once
    core.on_message(NOW, PEER, tm.ProcessDied("P9", "peer", "peer died", "tcp://peer9:1", ""))
    assert isinstance(error_of(core, borrowed), OwnerDiedError)


def test_a_borrower_asking_for_a_pending_object_is_answered_when_it_is_ready():
    core = owner()
    rec = task(core, "f")
    grant(core, core.submit(NOW, rec), "w1")
    rid = rec.return_ids[0]
    assert core.on_message(NOW, "P5-d1", om.GetObject(rid, "tcp://borrower:1")) == []
    effects = core.on_message(NOW, "w1", reply_inline(rec, "w1", "ready"))
    (status,) = sent(effects, om.ObjectStatus)
    assert status.to == "tcp://borrower:1" and status.msg.state == "inline"


def test_a_late_reply_of_an_earlier_attempt_frees_its_stored_copy_but_never_the_one_in_use():
    core = owner()
    rec = task(core, "f", max_retries=2)
    grant(core, core.submit(NOW, rec), "P1-w1")
    core.on_message(NOW, PEER, tm.ProcessDied("P1-w1", "worker", "lost", "", ""))
    core.on_message(NOW, "w2", reply_stored(rec, "w2", "P2", "tcp://peer2:1"))   # the retry answered first
    rid = rec.return_ids[0]
    effects = core.on_message(NOW, "w1", reply_stored(rec, "w1", "P3", "tcp://peer3:1"))
    assert [(e.to, e.msg.object_ids) for e in sent(effects, om.FreeObjects)] == [("tcp://peer3:1", [rid])]
    # A late copy on the peer that holds the copy in use is the same stored object: it stays.
    effects = core.on_message(NOW, "w1", reply_stored(rec, "w1", "P2", "tcp://peer2:1"))
    assert sent(effects, om.FreeObjects) == []


def test_when_its_own_peer_is_gone_everything_waiting_and_submitted_later_fails_with_the_reason():
    from p2pcompute.errors import PeerUnavailableError
    core = owner()
    waiting = task(core, "f")
    core.submit(NOW, waiting)
    core.on_message(NOW, PEER, tm.ProcessDied("P1", "peer", "this peer was declared dead by the cluster", PEER, ""))
    err = error_of(core, waiting.return_ids[0])
    assert isinstance(err, PeerUnavailableError) and "declared dead by the cluster" in str(err)
    later = task(core, "g")
    assert sent(core.submit(NOW, later), RequestLease) == []
    assert isinstance(error_of(core, later.return_ids[0]), PeerUnavailableError)


def test_a_push_that_could_not_be_sent_leaves_its_environment_and_code_to_the_next_one():
    # The runtime could not send the push (too big for one message): the worker never got the job's
    # environment or the function's code, so the next push to it must carry both again.
    core = owner()
    core.job_env = {"sys_path": ["/src"]}
    first = task(core, "f")
    (push,) = sent(grant(core, core.submit(NOW, first), "w1"), tm.PushTask)
    assert push.msg.job_env is not None and push.msg.code is not None
    core.push_not_sent(push.to, push.msg)
    core.on_message(NOW, "w1", reply_inline(first, "w1", 1))  # (the runtime fails it; the lease is free)
    second = task(core, "f")
    (again,) = sent(core.submit(NOW, second), tm.PushTask)
    assert again.to == push.to and again.msg.job_env == {"sys_path": ["/src"]} and again.msg.code == b"code"
    # Sent once it is sent: the push after that carries neither.
    core.on_message(NOW, "w1", reply_inline(second, "w1", 1))
    (third,) = sent(core.submit(NOW, task(core, "f")), tm.PushTask)
    assert third.msg.job_env is None and third.msg.code is None


def test_refs_inside_a_late_reply_are_taken_in_and_handed_back():
    """The worker of a late attempt sent a value holding a ref it borrows: its owner counts us as a borrower
    (the worker announced us, or we confirm). Dropping the reply without taking the ref in would leave that
    registration for good, and the object would never be freed."""
    core = owner()
    rec = task(core, "f", max_retries=2)
    grant(core, core.submit(NOW, rec), "P1-w1")
    core.on_message(NOW, PEER, tm.ProcessDied("P1-w1", "worker", "lost", "", ""))
    core.on_message(NOW, "w2", reply_inline(rec, "w2", "the retry's value"))
    inner, inner_owner = "P9-d1.5", "tcp://p9:1"
    blob = serialization.serialize("a late value").to_blob()
    late = tm.TaskReply(rec.task_id, [result_to_wire(InlineResult(blob, [[inner, inner_owner]]))], 1000, "P3-w1",
                        "P3", None)
    effects = core.on_message(NOW, "P3-w1", late)
    to_owner = [type(e.msg).__name__ for e in effects if type(e) is Send and e.to == inner_owner]
    assert to_owner == ["BorrowConfirmed", "RemoveBorrower"], to_owner
    assert inner not in core.refs


def test_a_restart_before_the_constructor_answered_leaves_no_trace_of_the_lost_attempt():
    """The actor's worker died before its constructor answered: the new creation task replaces the old one,
    which must not stay among the owner's tasks (or keep its hold on the arguments) for good."""
    core = owner()
    actor_id, arg = core.new_id(), "P1-d1.99"
    core.refs.add_local(arg, ME)
    core.refs.add_local(actor_id, ME)
    rec = TaskRecord(core.new_id(), "actor_create", "A", "code-A", b"code", b"args", None, [], [(arg, ME)],
                     [actor_id], {"CPU": 0}, {}, 0, False, actor_id=actor_id)   # a ref nested in the arguments
    effects = core.run(NOW, core.apply, core.actors.create(rec, max_restarts=2, detached=False))
    (push,) = sent(grant(core, effects, "P1-w1"), tm.PushTask)
    assert push.msg.task_id == rec.task_id
    pins_before = core.refs.counts(arg)
    core.on_message(NOW, PEER, tm.ProcessDied("P1-w1", "worker", "SIGKILL", "", ""))
    creations = [r for r in core.tasks.values() if r.kind == "actor_create"]
    assert [r.task_id for r in creations] != [rec.task_id] and len(creations) == 1 and rec.done
    assert rec.task_id not in core.tasks
    assert core.refs.counts(arg) == pins_before   # the new attempt's hold replaced the old one's

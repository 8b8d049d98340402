"""The submitter core stepped directly: queueing, lease reuse, spillback, bounded requests, fairness."""

from p2pcompute.lease.messages import (CancelLeaseRequest, LeaseGranted, LeaseRejected, LeaseRevoked,
                                       LeaseSpillback, LeaseWanted, RequestLease, ReturnLease)
from p2pcompute.lease.submitter import Push, SubmitterConfig, SubmitterCore, TaskInfo, TasksLost
from p2pcompute.net.effects import Send

MS = 1_000_000
KEY = ((("CPU", 10000),), "f")


def core(**cfg):
    return SubmitterCore("me", "addr-me", "job", "addr-peer", config=SubmitterConfig(**cfg))


def task(i, key=KEY):
    return TaskInfo(f"t{i}", key, {"CPU": 10000})


def sends(effects, kind):
    return [e for e in effects if isinstance(e, Send) and isinstance(e.msg, kind)]


def pushes(effects):
    return [e.task_id for e in effects if isinstance(e, Push)]


def grant(req_send, lease="l1", worker="w1", peer="addr-peer"):
    return LeaseGranted(req_send.msg.request_id, lease, worker, f"task-{worker}", f"ctl-{worker}", "p1", peer)


def test_tasks_wait_for_a_lease_then_are_pushed_straight_to_the_worker():
    c = core()
    effects = c.submit(0, task(1))
    reqs = sends(effects, RequestLease)
    assert len(reqs) == 1 and reqs[0].to == "addr-peer" and pushes(effects) == []
    effects = c.on_message(1, "addr-peer", grant(reqs[0]))
    assert pushes(effects) == ["t1"]


def test_a_large_backlog_asks_for_few_leases_and_stays_here():
    c = core(max_pending_requests=4)
    c.peers_that_fit = 1
    effects = []
    for i in range(10_000):
        effects += c.submit(0, task(i))
    # One peer fits: one request in flight, not one per task; the backlog stays with the submitter.
    assert len(sends(effects, RequestLease)) == 1
    assert c.queued() == 10_000


def test_lease_is_reused_for_the_same_key_and_pipelined():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    for i in range(2, 6):
        c.submit(0, task(i))
    effects = c.on_message(1, "addr-peer", grant(req))
    # Nothing is known about task length yet: one at a time, so long tasks never queue behind each other.
    assert pushes(effects) == ["t1"]
    effects = c.on_task_done(2, "t1", exec_ns=50 * MS)
    assert pushes(effects) == ["t2"]
    assert sends(effects, ReturnLease) == [] and sends(effects, RequestLease) == []


def test_short_tasks_are_pipelined_deeper():
    c = core(pipeline_target_ms=2.0)
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    for i in range(1, 100):
        c.submit(0, task(i))
    c.on_message(1, "addr-peer", grant(req))
    effects = c.on_task_done(2, "t0", exec_ns=10_000)  # 10 us tasks
    assert len(pushes(effects)) > 10


def test_idle_lease_lingers_then_returns():
    c = core(lease_linger_ms=200)
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req))
    effects = c.on_task_done(2 * MS, "t1")
    assert sends(effects, ReturnLease) == []
    # A new task during the linger reuses it without asking anyone.
    effects = c.submit(3 * MS, task(2))
    assert pushes(effects) == ["t2"] and sends(effects, RequestLease) == []
    c.on_task_done(4 * MS, "t2")
    assert sends(c.on_tick(100 * MS), ReturnLease) == []
    returned = sends(c.on_tick(300 * MS), ReturnLease)
    assert [r.msg.lease_id for r in returned] == ["l1"]


def test_lease_wanted_returns_an_idle_lease_at_once():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req))
    c.on_task_done(2, "t1")
    returned = sends(c.on_message(3, "addr-peer", LeaseWanted("l1")), ReturnLease)
    assert returned and returned[0].to == "addr-peer"


def test_spillback_is_followed_once_with_the_hop_counted():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    effects = c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2"))
    again = sends(effects, RequestLease)
    assert again[0].to == "addr-p2" and again[0].msg.spilled == 1


def test_a_spillback_to_a_peer_already_declared_dead_goes_to_the_local_peer_at_once():
    c = core(request_timeout_ms=30_000)
    c.on_peer_died(0, "p2", "addr-p2")
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    # A peer whose membership has not declared the death yet spills us there: do not wait out 30 s.
    again = sends(c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2")), RequestLease)
    assert again[0].to == "addr-peer" and again[0].msg.spilled == 0
    assert pushes(c.on_message(2, "addr-peer", grant(again[0]))) == ["t1"]


def test_a_request_outstanding_at_a_peer_that_dies_is_asked_again_at_once():
    c = core(request_timeout_ms=30_000)
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    spilled = sends(c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2")), RequestLease)[0]
    assert spilled.to == "addr-p2"
    effects = c.on_peer_died(5 * MS, "p2", "addr-p2")
    assert [r.to for r in sends(effects, RequestLease)] == ["addr-peer"]


def test_rejection_retries_at_the_local_peer_after_a_backoff():
    c = core(retry_backoff_ms=50)
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2"))
    spilled = [r for r in c._requests.values()][0]
    assert sends(c.on_message(2, "addr-peer", LeaseRejected(spilled.request_id, "gone", False)), RequestLease) == []
    assert sends(c.on_tick(10 * MS), RequestLease) == []
    retry = sends(c.on_tick(60 * MS), RequestLease)
    assert retry and retry[0].to == "addr-peer" and retry[0].msg.spilled == 0


def test_queue_emptying_cancels_outstanding_requests():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    removed, effects = c.cancel(1, "t1")
    assert removed and [e.msg.request_id for e in sends(effects, CancelLeaseRequest)] == [req.msg.request_id]
    # A grant that arrives after the cancel is handed straight back.
    assert sends(c.on_message(2, "addr-peer", grant(req)), ReturnLease)


def test_pushed_tasks_cannot_be_cancelled_here():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req))
    removed, _ = c.cancel(2, "t1")
    assert not removed


def test_revoked_lease_reports_its_lost_tasks():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.submit(0, task(2))
    c.on_message(1, "addr-peer", grant(req))
    effects = c.on_revoked(2, "l1", "its worker died (killed)")
    assert effects[-1] == TasksLost(("t1",), "its worker died (killed)")  # the last effect: after the pump's
    assert c.on_revoked(3, "l1") == []  # reported once, never twice


def test_a_dead_peer_reports_the_tasks_of_all_its_leases_as_one_loss():
    c = core()
    keys = [((("CPU", 10000),), "f"), ((("CPU", 10000),), "g")]
    for i, key in enumerate(keys, 1):
        req = sends(c.submit(0, task(i, key)), RequestLease)[0]
        granted = LeaseGranted(req.msg.request_id, f"l{i}", f"w{i}", f"task-w{i}", f"ctl-w{i}", "p2", "addr-p2")
        assert pushes(c.on_message(1, "addr-peer", granted)) == [f"t{i}"]
    effects = c.on_peer_died(2, "p2", "addr-p2")
    lost = [e for e in effects if isinstance(e, TasksLost)]
    assert len(lost) == 1 and sorted(lost[0].task_ids) == ["t1", "t2"] and lost[0].why == "its peer p2 died"
    assert effects[-1] is lost[0]
    assert c.on_peer_died(3, "p2", "addr-p2") == []


def test_bounced_tasks_go_back_to_the_front_and_the_busy_lease_is_returned():
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req))
    c.on_task_done(2, "t1", exec_ns=100_000)  # short tasks: the next ones are pipelined
    c.submit(3, task(2))
    c.submit(3, task(3))
    effects = c.bounce(4, ["t2", "t3"])
    assert list(c.keys[KEY].queue) == ["t2", "t3"]
    # Another worker is asked for (already when t3 queued behind t2), rather than wait behind the blocked one.
    assert c.keys[KEY].requests


def test_fairness_window_keeps_a_busy_lease_while_nobody_else_waits():
    c = core(lease_reuse_ms=10)
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    for i in range(1, 5):
        c.submit(0, task(i))
    c.on_message(1, "addr-peer", grant(req))
    effects = c.on_task_done(20 * MS, "t0")  # past the reuse window, but no LeaseWanted: keep going
    assert pushes(effects) == ["t1"] and not sends(effects, ReturnLease)


def test_fairness_window_drains_a_busy_lease_when_others_wait():
    c = core(lease_reuse_ms=10)
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    for i in range(1, 5):
        c.submit(0, task(i))
    c.on_message(1, "addr-peer", grant(req))
    assert c.on_message(2, "addr-peer", LeaseWanted("l1")) == []  # busy: noted, returned when its window is over
    effects = c.on_task_done(20 * MS, "t0")  # past the reuse window with work still queued
    assert pushes(effects) == [] and sends(effects, ReturnLease)
    # The queued tasks still have a request in line at the peer, behind whoever was waiting.
    assert c.keys[KEY].requests and c.queued() == 4


def test_an_idle_lease_gets_work_before_a_busy_one_gets_more():
    c = core(max_pending_requests=2)
    c.peers_that_fit = 2
    reqs = sends(c.submit(0, task(0)) + c.submit(0, task(1)), RequestLease)
    assert len(reqs) == 2
    c.on_message(1, "addr-peer", grant(reqs[0], lease="l1", worker="w1"))
    c.on_message(1, "addr-peer", grant(reqs[1], lease="l2", worker="w2"))
    c.on_task_done(2, "t0", exec_ns=100_000)  # short tasks: deep pipelines allowed from now on
    c.on_task_done(2, "t1", exec_ns=100_000)
    c.submit(5, task(2))
    c.submit(5, task(3))
    held = {h.lease_id: list(h.inflight) for h in c.held_leases()}
    assert sorted(map(len, held.values())) == [1, 1], held


def test_an_idle_lease_steals_tasks_queued_behind_a_running_one():
    from p2pcompute.lease.submitter import Steal
    c = core()
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req, lease="l1", worker="w1"))
    c.on_task_done(2, "t0", exec_ns=100_000)
    c.submit(3, task(1))
    c.submit(3, task(2))  # both pipelined on w1 (one lease only)
    pending = list(c.keys[KEY].requests.values())[0]
    grant2 = LeaseGranted(pending.request_id, "l2", "w2", "task-w2", "ctl-w2", "p1", "addr-peer")
    effects = c.on_message(5, "addr-peer", grant2)
    steals = [e for e in effects if isinstance(e, Steal)]
    assert steals and steals[0].task_ids == ("t2",) and steals[0].lease.worker_id == "w1"
    # The worker hands it back; it runs on the idle lease.
    assert pushes(c.bounce(6, ["t2"])) == ["t2"]


def test_a_grant_of_a_worker_already_reported_dead_is_void():
    """Found by sims (seed 55 of a partition sweep): the grant and the worker's death come by different routes,
    and the death can arrive first. Pushing to the dead worker would leave the task waiting for ever."""
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_worker_died(1, "w1")
    effects = c.on_message(2, "addr-peer", grant(req, worker="w1"))
    assert pushes(effects) == []
    assert [e.msg.kill for e in sends(effects, ReturnLease)] == [True]
    again = sends(effects, RequestLease)
    assert len(again) == 1  # the task asks for another worker at once
    assert pushes(c.on_message(3, "addr-peer", grant(again[0], lease="l2", worker="w2"))) == ["t1"]


def test_a_late_reply_from_an_earlier_attempt_keeps_the_new_attempts_lease_busy():
    """Found by sims: a task was retried after its worker was written off; that worker answered after all
    while the new attempt ran elsewhere. The late answer completes the task, but returning the new attempt's
    lease then would hand its worker to someone else mid-task."""
    c = core()
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    assert pushes(c.on_message(1, "addr-peer", grant(req, lease="l2", worker="w2"))) == ["t1"]  # the retry, on w2
    effects = c.on_task_done(2, "t1", 5, worker_id="w1")  # the first attempt's worker answers
    assert sends(effects, ReturnLease) == []
    assert [(h.lease_id, list(h.inflight)) for h in c.held_leases()] == [("l2", ["t1"])]  # still running there
    c.on_task_done(3, "t1", 0, worker_id="w2")  # now the retry answers: its worker is free
    assert [(h.lease_id, list(h.inflight)) for h in c.held_leases()] in ([], [("l2", [])])
    assert c.on_task_done(4, "t1", 0, worker_id="w2") == []  # a third reply changes nothing


KEY_B = ((("CPU", 10000),), "g")


def _idle_lease_of_key_a(c):
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req, lease="lA", worker="wA"))
    assert sends(c.on_task_done(2 * MS, "t1"), ReturnLease) == []  # lingers, in case more of f come


def test_our_idle_lease_of_another_key_is_given_back_when_our_request_waits_on_its_peer():
    c = core(lease_linger_ms=200, idle_yield_after_ms=20)
    _idle_lease_of_key_a(c)
    effects = c.submit(3 * MS, task(2, KEY_B))
    assert len(sends(effects, RequestLease)) == 1
    # Not at once: a grant may be on its way (then both keys keep a lease each).
    assert sends(c.on_tick(10 * MS), ReturnLease) == []
    returned = sends(c.on_tick(24 * MS), ReturnLease)
    assert [s.msg.lease_id for s in returned] == ["lA"]
    assert sends(c.on_tick(400 * MS), ReturnLease) == []  # returned once


def test_a_request_granted_at_once_keeps_the_other_keys_idle_lease():
    c = core(lease_linger_ms=200, idle_yield_after_ms=20)
    _idle_lease_of_key_a(c)
    req = sends(c.submit(3 * MS, task(2, KEY_B)), RequestLease)[0]
    assert pushes(c.on_message(5 * MS, "addr-peer", grant(req, lease="lB", worker="wB"))) == ["t2"]
    assert sends(c.on_tick(30 * MS), ReturnLease) == []
    # f comes again within the linger: its lease is still there.
    assert pushes(c.submit(40 * MS, task(3))) == ["t3"]


def test_an_idle_lease_on_another_peer_is_not_given_back_for_our_request():
    c = core(lease_linger_ms=200, idle_yield_after_ms=20)
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    c.on_message(1, "addr-peer", grant(req, lease="lA", worker="wA", peer="addr-elsewhere"))
    c.on_task_done(2 * MS, "t1")
    c.submit(3 * MS, task(2, KEY_B))
    assert sends(c.on_tick(30 * MS), ReturnLease) == []


def test_a_stale_bounce_from_a_worker_the_task_has_left_is_ignored():
    # A worker hands a task back twice (a steal, then again when it blocks): the second report must not take
    # the task off the lease it was pushed to since, or that lease waits for ever for an answer it expects.
    c = core(pipeline_target_ms=2.0)
    effects = c.submit(0, task(0))
    for i in range(1, 4):
        effects += c.submit(0, task(i))
    first, *others = sends(effects, RequestLease)
    effects = c.on_message(1, "addr-peer", grant(first, lease="lA", worker="wA"))
    effects += c.on_task_done(2, "t0", exec_ns=10_000, worker_id="wA")  # short: t1-t3 pipelined on wA
    effects += c.bounce(3, ["t2"], from_worker="wA")                     # wA gives t2 back
    spare = others + sends(effects, RequestLease)
    assert spare, "t2 waits for a lease of its own"
    assert "t2" in pushes(c.on_message(4, "addr-peer", grant(spare[0], lease="lB", worker="wB")))
    # wA reports t2 once more: stale, ignored.
    assert pushes(c.bounce(5, ["t2"], from_worker="wA")) == []
    held_b = c._leases["lB"]
    assert "t2" in held_b.inflight and not held_b.draining
    c.on_task_done(6, "t2", exec_ns=10_000, worker_id="wB")
    assert "t2" not in held_b.inflight


def test_a_spillback_naming_several_peers_asks_them_all_and_the_first_grant_cancels_the_rest():
    c = core()
    c.peers_that_fit = 4
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    effects = c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2", (("p3", "addr-p3"),)))
    asked = sends(effects, RequestLease)
    assert [(r.to, r.msg.spilled) for r in asked] == [("addr-p2", 1), ("addr-p3", 1)]
    # Both wait for the same lease: a second task does not make them count as two.
    assert sends(c.submit(2, task(2)), RequestLease)[0].to == "addr-peer"
    effects = c.on_message(3, "addr-p3", grant(asked[1], peer="addr-p3"))
    assert pushes(effects) == ["t1"]
    assert [(e.to, e.msg.request_id) for e in sends(effects, CancelLeaseRequest)] == [
        ("addr-p2", asked[0].msg.request_id)]
    # p2 granted before our cancel arrived: that lease goes straight back.
    late = c.on_message(4, "addr-p2", grant(asked[0], lease="l2", worker="w2", peer="addr-p2"))
    assert [(e.to, e.msg.lease_id) for e in sends(late, ReturnLease)] == [("addr-p2", "l2")]
    assert pushes(late) == []


def test_a_rejected_sibling_does_not_back_off_while_another_still_waits():
    c = core(retry_backoff_ms=50)
    req = sends(c.submit(0, task(1)), RequestLease)[0]
    asked = sends(c.on_message(1, "addr-peer", LeaseSpillback(req.msg.request_id, "p2", "addr-p2",
                                                               (("p3", "addr-p3"),))), RequestLease)
    assert c.on_message(2, "addr-p2", LeaseRejected(asked[0].msg.request_id, "full", False)) == []
    assert pushes(c.on_message(3, "addr-p3", grant(asked[1], peer="addr-p3"))) == ["t1"]


def test_tasks_of_ten_ms_or_more_are_not_pipelined_behind_each_other():
    # Behind a task of exponential length a queued one waits a whole task on average; a round trip is less
    # than a millisecond.
    c = core()
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    for i in range(1, 5):
        c.submit(0, task(i))
    c.on_message(1, "addr-peer", grant(req))
    assert pushes(c.on_task_done(2, "t0", exec_ns=20 * MS)) == ["t1"]
    c = core()
    req = sends(c.submit(0, task(0)), RequestLease)[0]
    for i in range(1, 5):
        c.submit(0, task(i))
    c.on_message(1, "addr-peer", grant(req))
    assert pushes(c.on_task_done(2, "t0", exec_ns=5 * MS)) == ["t1", "t2"]

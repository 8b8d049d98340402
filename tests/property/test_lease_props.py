"""The lease core under random sequences of requests, returns, deaths and ticks (hypothesis).

An independent model follows the grants the core sends and checks, at every grant, that the resources
leased never exceed what the peer has, that no worker is leased twice, and that a spilled request is never
spilled again. A planted bug (`sims.broken.LeaseCoreIgnoringCapacity`) must be caught by the same checks.
"""

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pcompute.lease import resources
from p2pcompute.lease.core import LeaseConfig, LeaseCore, StartWorker, StopWorker
from p2pcompute.lease.messages import (LeaseGranted, LeaseRevoked, LeaseSpillback, RequestLease, WorkerBlocked,
                                       WorkerUnblocked)
from p2pcompute.lease.policy import PeerView
from p2pcompute.net.effects import Send
from sims.broken import LeaseCoreIgnoringCapacity

U = resources.UNIT
TOTAL = {resources.CPU: 2 * U, "gpu": 1 * U}
SHAPES = [{resources.CPU: U}, {resources.CPU: U // 2}, {resources.CPU: 2 * U}, {"gpu": U},
          {resources.CPU: U, "gpu": U}, {resources.CPU: 4 * U}]


class LeaseMachine(RuleBasedStateMachine):
    broken = False

    @initialize(with_peer=st.booleans())
    def setup(self, with_peer):
        core_class = LeaseCoreIgnoringCapacity if self.broken else LeaseCore
        self.core = core_class("p1", "addr-p1", TOTAL, config=LeaseConfig(max_workers_extra=4))
        if with_peer:
            self.core.set_views([PeerView("p2", "addr-p2", {resources.CPU: 8 * U}, {resources.CPU: 8 * U})])
        self.now = 0
        self.seq = 0
        self.leases = {}      # lease_id -> (holder, worker, shape)
        self.blocked = set()  # worker ids
        self.starting = []
        self.spilled_requests = set()
        self.violations = []
        self.apply(self.core.prestart(0, 1))

    def apply(self, effects):
        for eff in effects:
            if isinstance(eff, StartWorker):
                self.starting.append(eff.worker_id)
            elif isinstance(eff, StopWorker):
                pass
            elif isinstance(eff, Send) and isinstance(eff.msg, LeaseGranted):
                self.on_grant(eff.msg)
            elif isinstance(eff, Send) and isinstance(eff.msg, LeaseSpillback):
                if eff.msg.request_id in self.spilled_requests:
                    self.violations.append(f"spilled request {eff.msg.request_id} was spilled again")
            elif isinstance(eff, Send) and isinstance(eff.msg, LeaseRevoked):
                self.drop_lease(eff.msg.lease_id)

    def on_grant(self, g):
        req = self.core.leases[g.lease_id].request
        if any(w == g.worker_id for _, w, _ in self.leases.values()):
            self.violations.append(f"worker {g.worker_id} leased twice")
        self.leases[g.lease_id] = (req.holder_id, g.worker_id, dict(req.shape))
        used = {}
        for lid, (_, worker, shape) in self.leases.items():
            for name, units in shape.items():
                if name == resources.CPU and worker in self.blocked:
                    continue
                used[name] = used.get(name, 0) + units
        for name in req.shape:
            if used.get(name, 0) > TOTAL.get(name, 0):
                self.violations.append(f"granted {g.lease_id}: {used[name]} units of {name} leased of "
                                       f"{TOTAL.get(name, 0)}")

    def drop_lease(self, lease_id):
        entry = self.leases.pop(lease_id, None)
        if entry is not None:
            self.blocked.discard(entry[1])

    def tick(self, ms=5):
        self.now += ms * 1_000_000

    @rule(shape=st.sampled_from(SHAPES), holder=st.sampled_from(["a", "b", "c"]), spilled=st.booleans())
    def request(self, shape, holder, spilled):
        self.tick()
        self.seq += 1
        rid = f"r{self.seq}"
        if spilled:
            self.spilled_requests.add(rid)
        req = RequestLease(rid, holder, f"addr-{holder}", "job", dict(shape), int(spilled), "DEFAULT", None, True,
                           False, {})
        self.apply(self.core.on_request_lease(self.now, req))

    @precondition(lambda self: self.starting)
    @rule(data=st.data())
    def register_worker(self, data):
        self.tick()
        wid = self.starting.pop(data.draw(st.integers(0, len(self.starting) - 1)))
        self.apply(self.core.on_worker_registered(self.now, wid, f"t-{wid}", f"c-{wid}"))

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), kill=st.booleans())
    def return_lease(self, data, kill):
        self.tick()
        lease_id = data.draw(st.sampled_from(sorted(self.leases)))
        self.drop_lease(lease_id)
        self.apply(self.core.on_return_lease(self.now, lease_id, kill))

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def worker_dies(self, data):
        self.tick()
        lease_id = data.draw(st.sampled_from(sorted(self.leases)))
        worker = self.leases[lease_id][1]
        self.apply(self.core.on_worker_died(self.now, worker, "crash"))

    @rule(holder=st.sampled_from(["a", "b", "c"]))
    def holder_dies(self, holder):
        self.tick()
        for lid in [l for l, (h, _, _) in self.leases.items() if h == holder]:
            self.drop_lease(lid)
        self.apply(self.core.on_process_died(self.now, holder))

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def block_or_unblock(self, data):
        self.tick()
        _, worker, _ = self.leases[data.draw(st.sampled_from(sorted(self.leases)))]
        if worker in self.blocked:
            self.blocked.discard(worker)
            self.apply(self.core.on_message(self.now, worker, WorkerUnblocked(worker)))
        else:
            self.blocked.add(worker)
            self.apply(self.core.on_message(self.now, worker, WorkerBlocked(worker)))

    @rule(ms=st.integers(1, 500))
    def time_passes(self, ms):
        self.tick(ms)
        self.apply(self.core.on_tick(self.now))

    @invariant()
    def no_violation(self):
        assert not self.violations, self.violations
        if not self.broken:
            assert self.core.check_invariants() == []

    def teardown(self):
        # Liveness: with every lease returned and every worker booted, each queued request that fits
        # this peer is granted.
        if self.broken or not hasattr(self, "core"):
            return
        for lid in list(self.leases):
            self.drop_lease(lid)
            self.apply(self.core.on_return_lease(self.now, lid, False))
        for _ in range(len(self.core.waiting) + 20):  # each round frees the whole peer, so this suffices
            while self.starting:
                wid = self.starting.pop()
                self.apply(self.core.on_worker_registered(self.now, wid, f"t-{wid}", f"c-{wid}"))
            if not any(not w.infeasible for w in self.core.waiting):
                break
            for lid in list(self.leases):
                self.drop_lease(lid)
                self.apply(self.core.on_return_lease(self.now, lid, False))
        stuck = [w.request.request_id for w in self.core.waiting if not w.infeasible]
        assert not stuck, f"requests that fit never granted: {stuck}"


TestLeaseCore = LeaseMachine.TestCase
TestLeaseCore.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


class BrokenLeaseMachine(LeaseMachine):
    broken = True


def test_the_checks_catch_a_core_that_ignores_capacity():
    test = BrokenLeaseMachine.TestCase
    test.settings = settings(max_examples=100, stateful_step_count=40, deadline=None, database=None,
                             phases=[Phase.generate], suppress_health_check=[HealthCheck.too_slow])
    with pytest.raises(AssertionError, match="leased"):
        test().runTest()

"""Hypothesis drives the simulator as a state machine: it decides which events run, which messages are lost
or duplicated, and when peers crash, pause, restart, or are cut off. Every invariant holds after every step,
and after a quiet period at the end.

Individual messages are dropped or duplicated only for the protocols built for a lossy network (membership,
the table): the others ride TCP in the runtime, which neither loses nor duplicates (network.py). Pauses and
partitions stay shorter than the suspicion timeout; longer ones make false death declarations, which trip
the known reference-counting bug (test_sims_known_bugs.py) — should a false death happen anyway (enough
dropped probes), its `refs_safe` violations are attributed to that bug and noted, not failed.

A failure prints the hypothesis seed; replay with `SIMS_MACHINE_SEED=<n> pytest tests/sims/test_sims_machine.py`.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from sims import run as sim_run
from sims.cluster import Cluster
from sims.options import Dist, SimOptions
from sims.workloads import make_workload

MS = 1_000_000
S = 1_000_000_000
FAR = 1 << 60


class SimMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cluster: Cluster | None = None

    @initialize(seed=st.integers(0, 10**6), peers=st.integers(3, 6),
                workload=st.sampled_from(("tasks", "dag", "actors", "names", "mixed")))
    def setup(self, seed, peers, workload):
        opts = SimOptions(peers=peers, seconds=3600, seed=seed, workload=workload, submitters=0.5, load=0.6,
                          service=Dist.parse("exp:50ms"))
        c = Cluster(opts)
        c.workload = make_workload(c, opts)
        c.build()
        c.workload.start(3600 * S)
        c.engine.run_until(200 * MS)
        self.cluster = c

    # ---- helpers ----

    def _datagrams(self) -> list[tuple]:
        """Scheduled deliveries of membership and table messages, in the order they will run."""
        net = self.cluster.net
        return [e for e in self.cluster.engine.pending()
                if getattr(e[2], "__func__", None) is type(net)._deliver and _lossy(e[4][1].TYPE)]

    def _up(self, running: bool = True) -> list:
        return [p for p in self.cluster.up.values() if not p.leaving and not (running and p.paused)]

    # ---- rules ----

    @rule(n=st.integers(1, 60))
    def deliver(self, n):
        """Run the next n events (deliveries and timers), in their order."""
        self.cluster.engine.run_until(FAR, max_events=n)

    @rule(ms=st.integers(1, 1500))
    def advance(self, ms):
        self.cluster.engine.run_until(self.cluster.engine.now + ms * MS)

    @precondition(lambda self: self._datagrams())
    @rule(data=st.data())
    def drop(self, data):
        msgs = self._datagrams()
        e = msgs[data.draw(st.integers(0, len(msgs) - 1), label="message")]
        note(f"drop {type(e[4][1]).__name__} to {e[3].addr}")
        self.cluster.engine.cancel(e[1])

    @precondition(lambda self: self._datagrams())
    @rule(data=st.data(), later_ms=st.integers(0, 300))
    def duplicate(self, data, later_ms):
        msgs = self._datagrams()
        at, _, fn, dst, pkt = msgs[data.draw(st.integers(0, len(msgs) - 1), label="message")]
        self.cluster.engine.at(at + later_ms * MS, fn, dst, pkt)

    @precondition(lambda self: len(self._up()) >= 2)
    @rule(data=st.data(), mode=st.sampled_from(("both", "in", "out")), ms=st.integers(50, 1500))
    def partition(self, data, mode, ms):
        up = [p.peer_id for p in self._up()]
        group = data.draw(st.lists(st.sampled_from(up), min_size=1, max_size=len(up) - 1, unique=True), label="group")
        self.cluster.partition([self.cluster.up[pid] for pid in group], mode, ms * MS)

    @rule()
    def heal(self):
        self.cluster.heal_all()

    @precondition(lambda self: len(self._up()) > 2)
    @rule(data=st.data())
    def crash(self, data):
        peer = self.cluster.up[data.draw(st.sampled_from([p.peer_id for p in self._up(running=False)]), label="peer")]
        if self.cluster.workload.may_take_down(peer) and not self.cluster.strands_a_joiner(peer):
            self.cluster.crash(peer)

    @precondition(lambda self: any(p is None for p in self.cluster.slots)
                  and all(p.membership.joined for p in self.cluster.up.values()))
    @rule(data=st.data())
    def restart(self, data):
        """(Never while another peer is still joining: a peer joining through a joiner trips the known
        membership bug, test_sims_known_bugs.py.)"""
        slots = [s for s, p in enumerate(self.cluster.slots) if p is None and self.cluster.gens[s] < 1 << 20]
        if slots:
            self.cluster.restart(data.draw(st.sampled_from(slots), label="slot"))

    @precondition(lambda self: self._up())
    @rule(data=st.data(), ms=st.integers(10, 1500))
    def pause(self, data, ms):
        peer = self.cluster.up[data.draw(st.sampled_from([p.peer_id for p in self._up()]), label="peer")]
        self.cluster.pause(peer, ms * MS)

    # ---- checks ----

    def _problems(self) -> list[str]:
        """Violations, less those of the known bugs (test_sims_known_bugs.py), which are noted instead."""
        c = self.cluster
        lease_bug = any("whose death it had already handled" in v.message for v in c.violations.items)
        out = []
        for v in c.violations.items:
            if v.invariant == "refs_safe" and c.false_dead:
                note(f"known bug (false death declarations are final for references): {v.message}")
            elif v.invariant == "leases_die_with_holder" and lease_bug:
                note(f"known bug (a lease granted to a holder whose death was handled): {v.message}")
            else:
                out.append(f"{v.invariant} at {v.at_ns / S:.3f}s: {v.message}")
        return out

    @invariant()
    def invariants_hold(self):
        if self.cluster is not None:
            assert not self._problems(), self._problems()

    def teardown(self):
        c = self.cluster
        if c is None:
            return
        c.workload.stop_now()
        c.heal_all()
        c.resume_all()
        _, converged = sim_run._quiet(c, 40 * S, lambda text: None)
        sim_run._final_checks(c, converged)
        assert not self._problems(), self._problems()


def _lossy(code: int) -> bool:
    return code < 100 or 300 <= code < 400


# No example database: a failure is replayed from the seed it prints. The suite runs a fixed seed, so CI is
# deterministic; SIMS_MACHINE_SEED=random explores a new one (and prints it), any number replays that one.
_SEED_ENV = os.environ.get("SIMS_MACHINE_SEED", "")
SEED = random.SystemRandom().randrange(2**32) if _SEED_ENV == "random" else int(_SEED_ENV or 20261206)
# Open (docs/simulations.md): with some hypothesis versions, seed 3794244137 finds a restart sequence that
# leaves the table with no leader.


def test_the_simulator_as_a_state_machine():
    _run_machine(SEED)


def _run_machine(seed: int) -> None:
    opts = settings(max_examples=int(os.environ.get("SIMS_MACHINE_EXAMPLES", "20")), stateful_step_count=25,
                    deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    try:
        run_state_machine_as_test(hypothesis_seed(seed)(lambda: SimMachine()), settings=opts)
    except BaseException as exc:
        msg = f"hypothesis seed={seed}: replay with SIMS_MACHINE_SEED={seed}"
        print(msg)
        if hasattr(exc, "add_note"):
            exc.add_note(msg)
        raise

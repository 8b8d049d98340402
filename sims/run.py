"""One simulation run, from options to report: build, load phase with faults, quiet period, final checks.

Phases:
1. Build: every peer starts (pre-joined, or joining for real with `--join-mode join`).
2. Load, `--seconds` long: the workload submits work and the fault schedule injects faults.
3. Quiet: no new faults or work; every partition heals and every paused peer resumes. The run goes on until
   all submitted work has ended, membership agrees with the truth on every live peer, and the workload's
   replicated state has converged — or until `--quiet` seconds (default: automatic, from the detection
   bound) pass, and whatever has not converged by then is a violation.
4. Final checks: every invariant in `invariants.INVARIANTS` that applies to the workload.

Every second (less in short runs) a sample records agreement (32 random observers), peers up, messages
and tasks so far — the series behind the report's plot.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass

from p2pcompute.net.membership_config import likely_detection_bound_ms
from sims.cluster import Cluster
from sims.faults import FaultScheduler
from sims.invariants import Violation
from sims.options import SimOptions
from sims.report import build_report
from sims.workloads import make_workload

S = 1_000_000_000
MS = 1_000_000


@dataclass
class RunResult:
    options: SimOptions
    report: dict
    violations: list[Violation]
    hash: str

    @property
    def ok(self) -> bool:
        return not self.violations


def quiet_limit_ns(opts: SimOptions, cluster: Cluster) -> int:
    if opts.quiet:
        return int(opts.quiet * S)
    bound_ms = likely_detection_bound_ms(cluster.membership_config, max(2, len(cluster.slots)))
    return max(15 * S, 2 * bound_ms * MS + 10 * S)


class Sampler:
    def __init__(self, cluster: Cluster, every_ns: int) -> None:
        self.cluster = cluster
        self.every_ns = every_ns
        self.rows: list[tuple] = []  # (t_ns, agreement, up, messages, finished, pending, accuracy)
        cluster.engine.at(0, self._sample)

    def _sample(self, _a=None, _b=None) -> None:
        c = self.cluster
        agreement, accuracy = c.agreement_sample()
        self.rows.append((c.engine.now, agreement, len(c.up), c.net.messages_sent(), c.ledger.finished,
                          len(c.ledger.pending), accuracy))
        c.engine.at(c.engine.now + self.every_ns, self._sample)


def run(opts: SimOptions, progress=None) -> RunResult:
    """Run one simulation. `progress(text)`, when given, hears about each phase."""
    opts.validate()
    with _quiet_gc():
        return _run(opts, progress)


@contextlib.contextmanager
def _quiet_gc():
    """The cores hold millions of long-lived objects (every peer's view of every member): a full collection
    walks them all, and the default thresholds run one every few seconds. Build with the collector off,
    then freeze what was built (never scanned again) and collect young garbage less often."""
    was_enabled, thresholds = gc.isenabled(), gc.get_threshold()
    gc.disable()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _run(opts: SimOptions, progress) -> RunResult:
    say = progress or (lambda text: None)
    wall0 = time.perf_counter()
    cluster = Cluster(opts)
    cluster.workload = make_workload(cluster, opts)
    cluster.build()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    gc.enable()
    wall_build = time.perf_counter() - wall0
    say(f"built {opts.peers} peers in {wall_build:.1f}s")
    engine = cluster.engine
    load_ns = int(opts.seconds * S)
    sample_ns = S if opts.seconds >= 20 else max(50 * MS, load_ns // 20)
    sampler = Sampler(cluster, sample_ns)
    scheduler = FaultScheduler(cluster, opts.faults, 0, load_ns) if opts.faults.any_faults() else None
    cluster.workload.start(load_ns)
    step = max(S, load_ns // 10)
    while engine.now < load_ns:
        engine.run_until(min(load_ns, engine.now + step))
        say(f"t={engine.now / S:.0f}s up={len(cluster.up)} events={engine.events_run} "
            f"wall={time.perf_counter() - wall0:.1f}s")
    if scheduler is None:
        cluster.heal_all()
    quiet_ns, converged = _quiet(cluster, quiet_limit_ns(opts, cluster), say)
    wall_run = time.perf_counter() - wall0 - wall_build
    _final_checks(cluster, converged)
    cluster.tracker.finish()
    report = build_report(cluster, opts, sampler.rows, scheduler, quiet_ns=quiet_ns,
                          wall_build_s=wall_build, wall_run_s=wall_run)
    return RunResult(opts, report, list(cluster.violations.items), report["event_log_hash"])


def _quiet(cluster: Cluster, limit_ns: int, say) -> tuple[int, dict]:
    """Run until everything has converged or `limit_ns` passed; returns (time taken, what converged)."""
    engine = cluster.engine
    start = engine.now
    check_ns = S
    state = {"membership": False, "work": False, "settled": False}
    while True:
        state["work"] = cluster.workload.idle()
        state["settled"] = cluster.workload.settled()
        # O(N²) at worst: only worth asking once the rest is done (or at the last check).
        last = engine.now - start + check_ns > limit_ns
        state["membership"] = (state["work"] and state["settled"] or last) and _membership_converged(cluster)
        if all(state.values()) or engine.now - start >= limit_ns:
            break
        engine.run_until(engine.now + check_ns)
    say(f"quiet period: {(engine.now - start) / S:.1f}s, converged: {state}")
    return engine.now - start, state


def _membership_converged(cluster: Cluster) -> bool:
    want = sum(1 for p in cluster.up.values() if not p.leaving)
    for p in cluster.up.values():  # cheap first pass: the right number of live members everywhere
        if not p.leaving and p.membership.alive_count() != want:
            return False
    return cluster.agreement()[0] == 1.0


def _final_checks(cluster: Cluster, converged: dict) -> None:
    v = cluster.violations
    if not converged["membership"]:
        share, problems = cluster.agreement()
        v.add("membership_agreement", f"after the quiet period only {share:.1%} of live peers agree on "
                                      f"membership: " + "; ".join(problems))
    if cluster.with_leases:
        # The most CPU any live peer could free for a task while the actors keep their leases.
        free_cpu = max((p.lease.total.get("CPU", 0) - sum(l.shape.get("CPU", 0) for l in p.lease.leases.values()
                                                          if l.request.actor)
                        for p in cluster.up.values() if p.lease is not None), default=0)
        cluster.ledger.check(v, cluster.live_process, starved=lambda rec: rec.cpu > free_cpu)
        for peer in cluster.up.values():
            for problem in peer.lease.check_invariants():
                v.add("lease_accounting", problem)
            for lease in peer.lease.leases.values():
                holder = lease.request.holder_id
                if not cluster.live_process(holder):
                    v.add("leases_die_with_holder", f"peer {peer.peer_id} still leases worker {lease.worker_id} "
                                                    f"to {holder}, which is dead")
    cluster.workload.final_checks()

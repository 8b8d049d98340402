"""The fault schedule: independent Poisson processes, one per kind of fault, drawn from the run's seed.

Rates are per up peer per simulated second (`crash=0.01` with 1,000 peers up is about 10 crashes a second);
each process has its own generator, so turning one kind of fault on or off leaves the others' schedule
alone. After each event the next is drawn at the current cluster-wide rate (rate x peers up).

- crash: a random up peer crashes. With `restart > 0` it restarts after an exponential downtime of mean
  1/restart seconds (a new peer id, or the same with `--restart-id same`), and joins through a live seed.
  A peer fenced by membership (it learned the cluster declared it dead) goes down the same way, and
  restarts by the same policy.
- pause: a random up peer is paused for a `pause_for` draw, then resumes.
- leave: a random up peer leaves gracefully, for good.
- join: a brand-new peer joins through a random live seed.
- kill: a random worker process of a random up peer dies.
- partition: 70% of partitions isolate one peer, 30% a random group of 2 to N/2 peers; 60% cut both ways,
  20% only traffic into the group, 20% only traffic out of it; each lasts a `partition_for` draw.

No fault takes down (crash or leave) a peer when fewer than half of the initial peers would stay up, nor
one the workload needs to keep a quorum (the table's replicas: any minority may fail, never a majority),
nor the last live seed of a peer still joining.
Faults run from `start_ns` to `end_ns`; then every partition heals and every paused peer resumes, and the
quiet period begins.
"""

from __future__ import annotations

from sims.options import FaultSpec

S = 1_000_000_000


class FaultScheduler:
    def __init__(self, cluster, spec: FaultSpec, start_ns: int, end_ns: int) -> None:
        self.cluster = cluster
        self.engine = cluster.engine
        self.spec = spec
        self.end_ns = end_ns
        self.min_up = max(1, cluster.opts.peers // 2)
        master = cluster.rng_faults
        self._rngs = {}
        self._rates = {"crash": spec.crash, "pause": spec.pause, "leave": spec.leave, "join": spec.join,
                       "kill": spec.kill, "partition": spec.partition}
        for kind in ("crash", "restart", "pause", "leave", "join", "kill", "partition"):
            # Always drawn, in this order, so that each kind's schedule depends only on the seed.
            self._rngs[kind] = _derive(master)
        self._pause_for = spec.pause_for.sampler(self._rngs["pause"])
        self._partition_for = spec.partition_for.sampler(self._rngs["partition"])
        self.counts = dict.fromkeys(("crash", "restart", "pause", "leave", "join", "kill", "partition"), 0)
        cluster.fault_scheduler = self  # a fenced peer restarts by this schedule's policy
        for kind, rate in self._rates.items():
            if rate > 0:
                self.engine.at(start_ns, self._schedule, kind)
        self.engine.at(end_ns, self._end)

    def _schedule(self, kind: str, _=None) -> None:
        n_up = len(self.cluster.up)
        if n_up == 0:
            return
        delay = self._rngs[kind].expovariate(self._rates[kind] * n_up)
        at = self.engine.now + int(delay * S)
        if at < self.end_ns:
            self.engine.at(at, self._fire, kind)

    def _candidates(self, need_running: bool = True) -> list:
        return [p for p in self.cluster.up.values() if not p.leaving and not (need_running and p.paused)]

    def _may_take_down(self, peer) -> bool:
        return (len(self.cluster.up) - 1 >= self.min_up and self.cluster.workload.may_take_down(peer)
                and not self.cluster.strands_a_joiner(peer))

    def _fire(self, kind: str, _=None) -> None:
        cluster, rng = self.cluster, self._rngs[kind]
        if kind == "join":
            if cluster.join_new() is not None:
                self.counts["join"] += 1
        else:
            candidates = self._candidates(need_running=kind != "crash")
            if candidates:
                peer = rng.choice(candidates)
                if kind == "crash" and self._may_take_down(peer):
                    cluster.crash(peer)
                    self.counts["crash"] += 1
                    self.restart_later(peer.slot)
                elif kind == "pause":
                    cluster.pause(peer, self._pause_for())
                    self.counts["pause"] += 1
                elif kind == "leave" and self._may_take_down(peer):
                    cluster.leave(peer)
                    self.counts["leave"] += 1
                elif kind == "kill":
                    cluster.kill_worker(peer)
                    self.counts["kill"] += 1
                elif kind == "partition":
                    self._partition(candidates, rng)
        self._schedule(kind)

    def _partition(self, candidates: list, rng) -> None:
        if len(candidates) < 2:
            return
        if rng.random() < 0.7:
            group = [rng.choice(candidates)]
        else:
            group = rng.sample(candidates, rng.randint(2, max(2, len(candidates) // 2)))
        roll = rng.random()
        mode = "both" if roll < 0.6 else "in" if roll < 0.8 else "out"
        self.cluster.partition(group, mode, max(1, self._partition_for()))
        self.counts["partition"] += 1

    def restart_later(self, slot: int) -> None:
        """A peer on `slot` went down (crashed or fenced): bring it back later, if the policy says so."""
        if self.spec.restart > 0:
            at = self.engine.now + int(self._rngs["restart"].expovariate(self.spec.restart) * S)
            if at < self.end_ns:
                self.engine.at(at, self._restart, slot)

    def _restart(self, slot: int, _=None) -> None:
        if self.cluster.restart(slot) is not None:
            self.counts["restart"] += 1

    def _end(self, _a=None, _b=None) -> None:
        self.cluster.heal_all()
        self.cluster.resume_all()


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

"""The `tasks` workload: a Poisson stream of independent tasks of several shapes and durations.

A fraction `--submitters` of the peers (chosen from the seed) each run one driver; together they offer
`--load` times the cluster's CPU capacity: arrival rate = load x (peers x cpus) / (mean CPUs per task x
mean service time), split evenly between the drivers. So most peers receive work only through spillback,
which is what exercises the lease protocol and the power-of-d choice.

Each task picks a shape (70% 1 CPU, 20% 0.5 CPU, 10% 2 CPUs; the last only when peers have 2 CPUs or
more) and one of three functions whose durations are 0.5x, 1x and 1.5x a `--service` draw (so the mean is
the `--service` mean). Shape and function make its scheduling key, so each driver keeps several keys.
A driver that restarts with its peer starts a new driver (a new process id); the old one's tasks ended
with `OwnerDiedError`.
"""

from __future__ import annotations

from sims.owner_driver import OwnerDriver, SimTask
from sims.workloads.base import Workload

S = 1_000_000_000
UNIT = 10_000
_SHAPES = ((UNIT, 0.7), (UNIT // 2, 0.2), (2 * UNIT, 0.1))
_FUNCTIONS = (("f0", 0.5), ("f1", 1.0), ("f2", 1.5))


class TasksWorkload(Workload):
    name = "tasks"

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 1) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = _derive(cluster.rng_work)
        self.driver_index = driver_index
        shapes = [(cpu, p) for cpu, p in _SHAPES if cpu <= opts.cpus * UNIT]
        total_p = sum(p for _, p in shapes)
        self.shapes = []
        acc = 0.0
        for cpu, p in shapes:
            acc += p / total_p
            self.shapes.append((acc, {"CPU": cpu}, (("CPU", cpu),)))
        mean_cpu = sum(cpu * p for cpu, p in shapes) / total_p / UNIT
        self.mean_service_ns = opts.service.mean_ns()
        capacity_cpu = opts.peers * opts.cpus
        self.rate = opts.load * share * capacity_cpu / (mean_cpu * self.mean_service_ns / S)
        n_sub = max(1, round(opts.submitters * opts.peers))
        self.submitter_slots = set(self.rng.sample(range(opts.peers), n_sub))
        self.rate_each = self.rate / n_sub
        self._service = opts.service.sampler(self.rng)
        self.drivers: list[OwnerDriver] = []

    def on_peer_up(self, peer, restarted: bool) -> None:
        if peer.slot in self.submitter_slots and peer.lease is not None:
            d = OwnerDriver(peer, self.driver_index)  # the product's owner core
            d.state["wl"] = self
            self.drivers.append(d)
            if self.engine.now < self.stop_ns or not self.stop_ns:
                self._arm(d)

    def start(self, stop_ns: int) -> None:
        super().start(stop_ns)

    def _arm(self, d: OwnerDriver) -> None:
        if self.rate_each > 0:
            d.peer.later(int(self.rng.expovariate(self.rate_each) * S), self._arrive, d)

    def _arrive(self, d: OwnerDriver) -> None:
        if not d.alive or self.engine.now >= self.stop_ns:
            return
        self.submit_one(d)
        self._arm(d)

    def submit_one(self, d: OwnerDriver) -> SimTask:
        rng = self.rng
        roll = rng.random()
        for acc, shape, shape_key in self.shapes:
            if roll <= acc:
                break
        fn, mult = _FUNCTIONS[int(rng.random() * 3)]
        service = int(mult * self._service())
        task_id = d.new_id()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, "task", self.engine.now, service)
        record.cpu = shape["CPU"]
        task = SimTask(task_id, (shape_key, fn), shape, service, record)
        d.submit_task(task)
        return task

    def idle(self) -> bool:
        live = self.cluster.live_process
        return not any(live(rec.owner) for rec in self.cluster.ledger.pending.values())


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

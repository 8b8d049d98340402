"""The `dag` workload: jobs whose tasks pass objects, with every reference counted by the real core.

A job, run by a driver that owns everything it creates:
1. puts two input objects, `a` and `b`;
2. submits 2-5 *map* tasks, each borrowing `a`, `b` or both (refs nested in its arguments; the driver pins
   them while the task runs and registers the worker as a borrower when it pushes); each map task returns an
   object whose value, half the time, contains one of the refs it borrowed (the worker forwards it back to
   the owner) — and a fifth of the time the worker also keeps a borrowed ref for a while after the task
   (a cache), dropping it later;
3. when every map output is there, submits a *reduce* task whose arguments are the map outputs (resolved by
   the owner, so their contained refs travel to the reduce worker as borrowed refs);
4. reads the reduce's result, then drops its own refs one by one over the next two seconds.

The user drops `a` and `b` right after the maps are submitted half the time (the tasks' pins keep them),
so frees race with borrowers. A map task that fails for good fails its job (`WorkerCrashedError`, and the
reduce with it); a driver that dies takes its jobs with it (`OwnerDiedError`).

Checks (see refs.py for the ground truth): `refs_safe` on every Free; `refs_not_lost` when the owner needs
a value — the reduce's inputs, and the result it reads — and finds it freed. Objects of live owners never
freed by the end are reported (`objects_not_freed`): a leak, not a safety violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pcompute.ownership.wire_values import InlineResult, contained_of, result_from_wire, result_to_wire
from sims.driver import Driver, SimTask
from sims.workloads.base import Workload
from sims.workloads.refs import REF_MESSAGES, RefOps, RefTruth

S = 1_000_000_000
UNIT = 10_000
SHAPE = {"CPU": UNIT}
SHAPE_KEY = (("CPU", UNIT),)


@dataclass
class Job:
    job_id: str
    driver: Driver
    start_ns: int
    inputs: list
    maps: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)  # map output id -> contained refs
    maps_left: int = 0
    held: list = field(default_factory=list)  # object ids the user holds a local ref to
    error: str | None = None
    done: bool = False
    finish_ns: int | None = None


class DagWorkload(Workload):
    name = "dag"
    uses_refs = True

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 2, truth: RefTruth | None = None,
                 ops: RefOps | None = None) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = _derive(cluster.rng_work)
        self.truth = truth or RefTruth(cluster.violations)
        self.ops = ops or RefOps(cluster, self.truth, table_class(opts))
        self.driver_index = driver_index
        self.mean_service_ns = opts.service.mean_ns()
        self._service = opts.service.sampler(self.rng)
        # A job is about 4.5 tasks of one CPU each: 3.5 maps on average and a reduce.
        job_cpu_s = 4.5 * self.mean_service_ns / S
        self.rate = opts.load * share * opts.peers * opts.cpus / job_cpu_s
        n_sub = max(1, round(opts.submitters * opts.peers))
        self.submitter_slots = set(self.rng.sample(range(opts.peers), n_sub))
        self.rate_each = self.rate / n_sub
        self.jobs: dict[str, Job] = {}
        self.open_jobs = 0
        self.drivers: list[Driver] = []
        self.job_latency_ns: list[int] = []
        self.jobs_failed = 0

    # ---- drivers and arrivals ----

    def on_peer_up(self, peer, restarted: bool) -> None:
        if peer.slot in self.submitter_slots and peer.lease is not None:
            d = Driver(peer, self.driver_index)
            d.state["wl"] = self
            d.state["drops"] = 0
            self.drivers.append(d)
            self._arm(d)

    def _arm(self, d: Driver) -> None:
        if self.rate_each > 0:
            d.peer.later(int(self.rng.expovariate(self.rate_each) * S), self._arrive, d)

    def _arrive(self, d: Driver) -> None:
        if not d.alive or (self.stop_ns and self.engine.now >= self.stop_ns):
            return
        self.start_job(d)
        self._arm(d)

    def _new_object(self, d: Driver) -> str:
        return d.new_id("o")

    def start_job(self, d: Driver) -> Job:
        rng, ops = self.rng, self.ops
        job = Job(d.new_id("j"), d, self.engine.now, [])
        self.jobs[job.job_id] = job
        self.open_jobs += 1
        for _ in range(2):
            oid = self._new_object(d)
            ops.create(d, oid)
            job.inputs.append(oid)
            job.held.append(oid)
        k = rng.randint(2, 5)
        job.maps_left = k
        for _ in range(k):
            args = rng.sample(job.inputs, rng.randint(1, 2))
            refs = [[oid, d.addr] for oid in args]
            out = self._new_object(d)
            ops.add_local(d, out, d.addr)
            job.held.append(out)
            for oid in args:
                ops.pin(d, oid, d.addr)
            task = self._task(d, "map", refs, [out], job)
            job.maps.append(task)
            d.submit(task)
        if rng.random() < 0.5:  # the user lets go of the inputs at once: only the tasks' pins keep them
            for oid in job.inputs:
                job.held.remove(oid)
                ops.drop_local(d, oid)
        return job

    def _task(self, d: Driver, kind: str, refs: list, returns: list, job: Job) -> SimTask:
        task_id = d.new_id()
        service = self._service()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, kind, self.engine.now, service)
        return SimTask(task_id, (SHAPE_KEY, kind), SHAPE, service, record, refs=refs, return_ids=returns,
                       payload=(kind, job.job_id))

    # ---- the owner's side ----

    def before_push(self, driver, task, worker_addr: str) -> None:
        if task.refs:
            self.ops.send(driver, worker_addr, task.refs)

    def on_task_done(self, driver, task, msg) -> None:
        kind, job_id = task.payload[:2]
        job = self.jobs.get(job_id)
        contained = contained_of(result_from_wire(msg.returns[0])) if msg.returns else []
        out = task.return_ids[0]
        self.ops.adopt(driver, out, contained)
        self._release_args(driver, task)
        if job is None or job.done:
            return
        if kind == "map":
            job.outputs[out] = contained
            job.maps_left -= 1
            if job.maps_left == 0:
                self._reduce(driver, job)
        else:
            if out not in driver.refs:
                self.cluster.violations.add("refs_not_lost", f"job {job_id}: the result {out} of its reduce "
                                                             f"was freed before its owner could read it")
            self._finish(job, None)

    def _release_args(self, driver, task) -> None:
        kind = task.payload[0]
        if kind == "map":
            for oid, _ in task.refs:
                self.ops.unpin(driver, oid)
        else:
            for oid in task.payload[2]:
                self.ops.unpin(driver, oid)

    def _reduce(self, d: Driver, job: Job) -> None:
        table = d.refs
        for oid in job.outputs:
            if oid not in table:
                self.cluster.violations.add("refs_not_lost", f"job {job.job_id}: map output {oid}, still held by "
                                                             f"its live owner, was freed before the reduce read it")
                self._finish(job, "ObjectLostError")
                return
        deps = list(job.outputs)
        for oid in deps:
            self.ops.pin(d, oid, d.addr)
        # The reduce gets the map outputs by value; the refs inside those values travel with them.
        refs = [list(r) for oid in deps for r in job.outputs[oid]]
        for oid, owner_addr in refs:
            self.ops.pin(d, oid, owner_addr)
        out = self._new_object(d)
        self.ops.add_local(d, out, d.addr)
        job.held.append(out)
        task = self._task(d, "reduce", refs, [out], job)
        task.payload = ("reduce", job.job_id, deps + [oid for oid, _ in refs])
        d.submit(task)

    def on_task_failed(self, driver, task, error: str) -> None:
        kind, job_id = task.payload[:2]
        job = self.jobs.get(job_id)
        if driver.alive:
            self._release_args(driver, task)
        if job is None or job.done:
            return
        if kind == "map" and driver.alive:
            # The reduce can never run: it fails with the same error without running (as in the client).
            record = self.cluster.ledger.submitted(driver.new_id(), driver.proc_id, "reduce", self.engine.now, 0)
            self.cluster.ledger.fail(record, error, self.engine.now)
        self._finish(job, error)

    def _finish(self, job: Job, error: str | None) -> None:
        job.done = True
        job.error = error
        job.finish_ns = self.engine.now
        self.open_jobs -= 1
        if error is None:
            self.job_latency_ns.append(self.engine.now - job.start_ns)
        else:
            self.jobs_failed += 1
        d = job.driver
        if not d.alive:
            return
        held, job.held = job.held, []
        d.state["drops"] += len(held)
        for oid in held:
            d.peer.later(int(self.rng.random() * 2 * S), self._drop, (d, oid))

    def _drop(self, arg) -> None:
        d, oid = arg
        if d.alive:
            d.state["drops"] -= 1
            self.ops.drop_local(d, oid)

    def on_stale_reply(self, driver, msg) -> None:
        contained = contained_of(result_from_wire(msg.returns[0])) if msg.returns else []
        if contained:
            self.ops.discard(driver, contained)

    def on_driver_message(self, driver, src: str, msg) -> None:
        if type(msg) in REF_MESSAGES:
            self.ops.on_message(driver, src, msg)

    # ---- the worker's side ----

    def on_task_start(self, worker, msg) -> None:
        if msg.refs:
            self.ops.receive(worker, msg.refs)

    def on_task_end(self, worker, msg) -> list:
        refs = msg.refs
        contained: list = []
        if msg.kind == "map" and refs:
            rng = self.rng
            if rng.random() < 0.5:
                contained = [list(rng.choice(refs))]
                self.ops.send(worker, msg.owner_addr, contained)
            if rng.random() < 0.2:
                oid, owner_addr = rng.choice(refs)
                self.ops.add_local(worker, oid, owner_addr)
                worker.peer.later(int(rng.expovariate(1.0) * S), self._worker_drop, (worker, oid))
        if refs:
            self.ops.consume(worker, refs)
        return [result_to_wire(InlineResult(b"", contained))]

    def _worker_drop(self, arg) -> None:
        worker, oid = arg
        if worker.alive:
            self.ops.drop_local(worker, oid)

    def on_worker_message(self, worker, src: str, msg) -> None:
        if type(msg) in REF_MESSAGES:
            self.ops.on_message(worker, src, msg)

    # ---- deaths ----

    def on_process_gone(self, proc) -> None:
        self.ops.died(proc)
        if isinstance(proc, Driver):
            for job in self.jobs.values():
                if job.driver is proc and not job.done:
                    job.done = True
                    self.open_jobs -= 1
                    self.jobs_failed += 1

    def on_peer_saw_death(self, peer, dead_id: str, is_peer: bool) -> None:
        for w in list(peer.workers.values()):
            if w.refs is not None and w.alive:
                effects = w.refs.on_peer_died(dead_id) if is_peer else w.refs.on_process_died(dead_id)
                self.ops.run(w, effects)

    # ---- the end ----

    def idle(self) -> bool:
        return self.open_jobs == 0 and not any(d.alive and d.state["drops"] for d in self.drivers)

    def final_checks(self) -> None:
        pass

    def metrics(self) -> dict:
        lat = sorted(self.job_latency_ns)
        out = {"dag_jobs": len(self.jobs), "dag_jobs_failed": self.jobs_failed,
               "objects_created": self.truth.created, "objects_freed": len(self.truth.freed)}
        if lat:
            out["dag_job_latency_p50_s"] = round(lat[(len(lat) - 1) // 2] / S, 3)
        live_owner = self.cluster.live_process
        out["objects_not_freed"] = sum(1 for job in self.jobs.values() if live_owner(job.driver.proc_id)
                                       for oid in self._objects_of(job) if oid not in self.truth.freed)
        return out

    @staticmethod
    def _objects_of(job: Job) -> list:
        return list(job.inputs) + [t.return_ids[0] for t in job.maps]


def table_class(opts):
    if "refcount" in opts.breaks:
        from sims.broken import OwnerIgnoresAddBorrower
        return OwnerIgnoresAddBorrower
    from p2pcompute.ownership.refcount import ReferenceTable
    return ReferenceTable


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

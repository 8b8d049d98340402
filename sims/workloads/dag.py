"""The `dag` workload: jobs whose tasks pass objects, run by the product's owner core.

A job, run by a driver (`OwnerDriver`, the real `OwnerCore`) that owns everything it creates:
1. `put`s two input objects, `a` and `b`;
2. submits 2-5 *map* tasks, each with `a`, `b` or both nested in its arguments (the core pins them while the
   task runs and registers the worker as a borrower when it pushes); a map task's value, half the time,
   contains one of the refs it borrowed (the worker forwards it back to the owner), and a third of the map
   outputs are large: stored in the worker's peer's store, so the owner keeps their lineage and, should that
   peer die, rebuilds them by running the map again. A fifth of the time the worker also keeps a borrowed ref
   for a while after the task (a cache), dropping it later;
3. when every map has finished, reads the map outputs (the refs inside them become the user's) and submits a
   *reduce* whose arguments are the map outputs themselves (the core resolves them: inline values, or the
   stored copies' locations — a reduce that finds no copy readable gets them rebuilt) and the refs read out
   of them;
4. reads the reduce's result, then drops its refs one by one over the next two seconds.

The user drops `a` and `b` right after the maps are submitted half the time (the tasks' pins keep them),
so frees race with borrowers. A map task that fails for good fails its job; a driver that dies takes its jobs
with it (`OwnerDiedError`). Retries, rebuilds and frees are all the core's; a map's value is a function of
its task id, as lineage reconstruction assumes.

Checks (see refs.py for the ground truth): `refs_safe` on every free; `refs_not_lost` when the owner needs a
value it holds — the map outputs it reads, the reduce's result — and its core no longer has it. Objects of
live owners never freed by the end are reported (`objects_not_freed`): a leak, not a safety violation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from p2pcompute.ownership.task_record import TaskRecord
from p2pcompute.ownership.wire_values import InlineResult, StoredResult, result_to_wire
from sims.owner_driver import MAX_RETRIES, OwnerDriver
from sims.worker import argument_lost, unreadable_argument
from sims.workloads.base import Workload
from sims.workloads.core_refs import CoreRefHooks, CoreRefOps
from sims.workloads.refs import REF_MESSAGES, RefTruth

S = 1_000_000_000
UNIT = 10_000
SHAPE = {"CPU": UNIT}
STORED_BYTES = 1 << 20


@dataclass
class Job:
    job_id: str
    driver: OwnerDriver
    start_ns: int
    inputs: list
    maps: dict = field(default_factory=dict)  # map task id -> its output id
    outputs: list = field(default_factory=list)  # map outputs, in submission order
    maps_left: int = 0
    reduce_id: str = ""
    held: list = field(default_factory=list)  # object ids the user holds a local ref to
    error: str | None = None
    done: bool = False


class DagWorkload(CoreRefHooks, Workload):
    name = "dag"
    uses_refs = True

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 2, truth: RefTruth | None = None,
                 ops: CoreRefOps | None = None) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = _derive(cluster.rng_work)
        self.truth = truth or RefTruth(cluster.violations)
        self.ops = ops or CoreRefOps(cluster, self.truth, table_class(opts))
        self.core_class, self.core_table = core_classes(opts)
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
        self.job_of_task: dict[str, Job] = {}
        self.args_of: dict[str, list] = {}  # task id -> its ref arguments, held (in the truth) until it ends
        self.open_jobs = 0
        self.drivers: list[OwnerDriver] = []
        self.job_latency_ns: list[int] = []
        self.jobs_failed = 0
        self.rebuilds = 0

    # ---- drivers and arrivals ----

    def on_peer_up(self, peer, restarted: bool) -> None:
        if peer.slot in self.submitter_slots and peer.lease is not None:
            d = OwnerDriver(peer, self.driver_index, self.core_class, self.core_table)
            d.state["wl"] = self
            d.state["drops"] = 0
            self.ops.table(d)
            self.drivers.append(d)
            self._arm(d)

    def _arm(self, d: OwnerDriver) -> None:
        if self.rate_each > 0:
            d.peer.later(int(self.rng.expovariate(self.rate_each) * S), self._arrive, d)

    def _arrive(self, d: OwnerDriver) -> None:
        if not d.alive or (self.stop_ns and self.engine.now >= self.stop_ns):
            return
        self.start_job(d)
        self._arm(d)

    def start_job(self, d: OwnerDriver) -> Job:
        rng, ops = self.rng, self.ops
        job = Job(d.new_id(), d, self.engine.now, [])
        self.jobs[job.job_id] = job
        self.open_jobs += 1
        for _ in range(2):
            oid = d.new_id()
            ops.create(d, oid)
            d.put(oid)
            job.inputs.append(oid)
            job.held.append(oid)
        k = rng.randint(2, 5)
        job.maps_left = k
        for _ in range(k):
            args = rng.sample(job.inputs, rng.randint(1, 2))
            task_id = d.new_id()
            out = f"{task_id}.0"
            ops.add_local(d, out, d.addr)
            job.held.append(out)
            job.maps[task_id] = out
            job.outputs.append(out)
            self._submit(d, job, task_id, "map", [], [(oid, d.addr) for oid in args], out)
        if rng.random() < 0.5:  # the user lets go of the inputs at once: only the tasks' pins keep them
            for oid in job.inputs:
                job.held.remove(oid)
                ops.drop_local(d, oid)
        return job

    def _submit(self, d: OwnerDriver, job: Job, task_id: str, step: str, slot_refs: list, nested: list,
                out: str) -> None:
        service = self._service()
        record = self.cluster.ledger.submitted(task_id, d.proc_id, step, self.engine.now, service)
        record.cpu = UNIT
        rec = TaskRecord(task_id, "task", self.name, f"sim-{step}", None, None, None, slot_refs, nested, [out],
                         dict(SHAPE), {"max_retries": MAX_RETRIES, "wire": {"service_ns": service, "step": step}},
                         MAX_RETRIES)
        self.job_of_task[task_id] = job
        args = self.args_of[task_id] = [oid for oid, _ in slot_refs] + [oid for oid, _ in nested]
        self.ops.task_submitted(d, args)
        d.submit(rec, record)

    # ---- the owner's side ----

    def on_task_ending(self, driver, task_id: str) -> None:
        args = self.args_of.pop(task_id, None)
        if args is None:
            self.rebuilds += 1  # a rebuild (lineage) ended: its task had ended once before
        else:
            self.ops.task_ended(driver, args)

    def on_task_finished(self, driver, task_id: str, error: str | None) -> None:
        job = self.job_of_task.pop(task_id, None)
        if job is None or job.done:
            return
        if error is not None:
            self._finish(job, error)
        elif task_id in job.maps:
            job.maps_left -= 1
            if job.maps_left == 0:
                self._reduce(driver, job)
        else:
            out = f"{task_id}.0"
            if out not in driver.core.objects.values:
                self.cluster.violations.add("refs_not_lost", f"job {job.job_id}: the result {out} of its reduce "
                                                             f"was freed before its owner could read it")
            self._finish(job, None)

    def _reduce(self, d: OwnerDriver, job: Job) -> None:
        values = d.core.objects.values
        inner: list = []
        for oid in job.outputs:
            v = values.get(oid)
            if v is None or oid not in d.core.refs:
                self.cluster.violations.add("refs_not_lost", f"job {job.job_id}: map output {oid}, still held by "
                                                             f"its live owner, was freed before the reduce read it")
                self._finish(job, "ObjectLostError")
                return
            inner += [tuple(r) for r in v.contained]
        # The user reads the map outputs (a rebuilt one has the same value): the refs inside become its own.
        for oid, owner_addr in inner:
            self.ops.add_local(d, oid, owner_addr)
            job.held.append(oid)
        task_id = d.new_id()
        out = f"{task_id}.0"
        self.ops.add_local(d, out, d.addr)
        job.held.append(out)
        job.reduce_id = task_id
        self._submit(d, job, task_id, "reduce", [(oid, d.addr) for oid in job.outputs], inner, out)

    def _finish(self, job: Job, error: str | None) -> None:
        job.done = True
        job.error = error
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

    # ---- the worker's side ----

    def on_task_start(self, worker, msg) -> None:
        if msg.refs:
            self.ops.receive(worker, msg.refs)

    def on_task_end(self, worker, msg):
        refs = msg.refs
        lost = unreadable_argument(worker, msg)
        if lost is not None:
            if refs:
                self.ops.consume(worker, refs)
            return argument_lost(lost)
        # The value is a function of the task (a retry or a rebuild computes the same one); what the worker
        # keeps afterwards is not.
        value = _value_rng(msg.task_id)
        contained: list = []
        if msg.options.get("step") == "map" and refs:
            if value.random() < 0.5:
                contained = [list(value.choice(refs))]
                self.ops.send(worker, msg.owner_addr, contained)
            rng = self.rng
            if rng.random() < 0.2:
                oid, owner_addr = rng.choice(refs)
                self.ops.add_local(worker, oid, owner_addr)
                worker.peer.later(int(rng.expovariate(1.0) * S), self._worker_drop, (worker, oid))
        if refs:
            self.ops.consume(worker, refs)
        if msg.options.get("step") == "map" and value.random() < 1 / 3:
            peer = worker.peer
            return [result_to_wire(StoredResult(STORED_BYTES, contained, f"/sim/{peer.peer_id}", peer.peer_id,
                                                peer.addr))]
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
        if isinstance(proc, OwnerDriver):
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
        return self.open_jobs == 0 and not any(d.alive and (d.state["drops"] or d.core.tasks) for d in self.drivers)

    def metrics(self) -> dict:
        lat = sorted(self.job_latency_ns)
        out = {"dag_jobs": len(self.jobs), "dag_jobs_failed": self.jobs_failed, "dag_rebuilds": self.rebuilds,
               "objects_created": self.truth.created, "objects_freed": len(self.truth.freed)}
        if lat:
            out["dag_job_latency_p50_s"] = round(lat[(len(lat) - 1) // 2] / S, 3)
        live_owner = self.cluster.live_process
        out["objects_not_freed"] = sum(1 for job in self.jobs.values() if live_owner(job.driver.proc_id)
                                       for oid in job.inputs + job.outputs if oid not in self.truth.freed)
        return out


def table_class(opts):
    if "refcount" in opts.breaks:
        from sims.broken import OwnerIgnoresAddBorrower
        return OwnerIgnoresAddBorrower
    from p2pcompute.ownership.refcount import ReferenceTable
    return ReferenceTable


def core_classes(opts) -> tuple[type, type | None]:
    """The owner core drivers run (a planted-bug subclass from `sims/broken_owner.py` with `--break lineage` or
    `--break actor-calls`), and
    the reference table class they use instead of the core's own (`--break refcount`)."""
    from p2pcompute.ownership.owner import OwnerCore
    core = OwnerCore
    if "lineage" in opts.breaks:
        from sims.broken_owner import OwnerRebuildingWithoutArguments
        core = OwnerRebuildingWithoutArguments
    elif "actor-calls" in opts.breaks:
        from sims.broken_owner import OwnerDroppingLostActorCalls
        core = OwnerDroppingLostActorCalls
    return core, (table_class(opts) if "refcount" in opts.breaks else None)


def _value_rng(task_id: str):
    import random
    return random.Random(zlib.crc32(task_id.encode()))


def _derive(master):
    import random
    return random.Random(master.getrandbits(64))

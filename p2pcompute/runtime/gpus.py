"""GPUs on a peer: which GPU ids each GPU lease's worker gets, and `CUDA_VISIBLE_DEVICES` set before user code.

Theory of operation. The lease core counts GPUs as amounts, like CPUs; this module gives the amounts
identities. Three rules make a GPU task run in a worker of its own, as Ray's default (`max_calls=1` for GPU
tasks) does:

- A lease request that asks for GPUs is tagged, on arrival at the peer, with a job id of its own
  (`<job>/gpu=<units>/<request id>`). The core reuses an idle worker only for the same job id, so no worker
  that ran anything else is ever granted to it: the core starts a worker for it (or takes a pool worker that
  has never run anything).
- A worker started for a tagged request gets its GPU ids at start (`--gpu-ids`, which the worker turns into
  `CUDA_VISIBLE_DEVICES` before importing anything of the user's). A never-used pool worker granted to such a
  request gets them through a file in the session directory, written before the grant is sent, so it exists
  before the worker's first task arrives; the worker reads it before running that task.
- When the lease ends, the worker is stopped and its ids are free again: GPU memory is released with the
  process, and the next GPU lease starts clean.

Whole GPUs go to one worker each; fractional requests (`num_gpus=0.5`) share GPUs, best fit first. Ids are the peer's own `CUDA_VISIBLE_DEVICES` list when it has one (so a peer given GPUs 2,3 hands out
2 and 3), else 0..n-1. The core's accounting is what keeps GPUs from being oversubscribed; these ids follow it.
"""

from __future__ import annotations

import dataclasses
import math
import os

from p2pcompute.lease import resources

TAG = "/gpu="
FILE_SUFFIX = ".gpus"


def tag_request(msg):
    """A RequestLease that asks for GPUs, with a job id no other request shares (idempotent when spilled)."""
    units = msg.shape.get(resources.GPU, 0) if isinstance(msg.shape, dict) else 0
    if not isinstance(units, int) or units <= 0 or not isinstance(msg.job_id, str) or TAG in msg.job_id:
        return msg
    return dataclasses.replace(msg, job_id=f"{msg.job_id}{TAG}{units}/{msg.request_id}")


def units_of(job_id: str) -> int:
    """GPU units of a tagged job id (0 for any other)."""
    if not isinstance(job_id, str) or TAG not in job_id:
        return 0
    try:
        return int(job_id.split(TAG, 1)[1].split("/", 1)[0])
    except ValueError:
        return 0


def gpu_file(session_dir: str, worker_id: str) -> str:
    return os.path.join(session_dir, f"{worker_id}{FILE_SUFFIX}")


class GpuAssigner:
    """The peer's GPU ids and which worker holds which (with how many units of each)."""

    def __init__(self, total_units: int, session_dir: str, visible: str | None = None):
        count = total_units // resources.UNIT + (1 if total_units % resources.UNIT else 0)
        listed = [v.strip() for v in (visible or "").split(",") if v.strip()]
        self.ids = listed[:count] if len(listed) >= count else [str(i) for i in range(count)]
        self.session_dir = session_dir
        self.used = {gpu: 0 for gpu in self.ids}              # units of each GPU held by live workers
        self.by_worker: dict[str, list[tuple[str, int]]] = {}
        self.gpu_leases: dict[str, str] = {}                   # lease id -> its GPU worker, stopped at return

    # ---- choosing ids -------------------------------------------------------------------------------

    def _take(self, worker_id: str, units: int) -> list[str]:
        held = self.by_worker.get(worker_id)
        if held is not None:
            return [gpu for gpu, _ in held]
        taken: list[tuple[str, int]] = []
        if units < resources.UNIT:
            # A fraction: best fit (the fullest GPU it still fits on), so fractions pack onto few GPUs and
            # whole GPUs stay free; if it fits nowhere, the least used one.
            fits = [g for g in self.ids if self.used[g] + units <= resources.UNIT]
            gpu = max(fits, key=lambda g: self.used[g]) if fits else min(self.ids, key=lambda g: self.used[g])
            taken.append((gpu, units))
        else:
            whole = math.ceil(units / resources.UNIT)
            free = [g for g in self.ids if self.used[g] == 0]
            rest = sorted((g for g in self.ids if g not in free), key=lambda g: self.used[g])
            taken = [(g, resources.UNIT) for g in (free + rest)[:whole]]
        for gpu, amount in taken:
            self.used[gpu] += amount
        self.by_worker[worker_id] = taken
        return [gpu for gpu, _ in taken]

    def _release(self, worker_id: str) -> None:
        for gpu, amount in self.by_worker.pop(worker_id, []):
            self.used[gpu] = max(0, self.used[gpu] - amount)

    # ---- events from the peer -----------------------------------------------------------------------

    def on_start_worker(self, worker_id: str, job_id: str) -> list[str]:
        """A worker is starting for a tagged request: the ids it starts with (none for other workers)."""
        units = units_of(job_id)
        return self._take(worker_id, units) if units and self.ids else []

    def on_granted(self, lease_id: str, worker_id: str, shape: dict) -> None:
        """Before the grant is sent: a GPU lease's worker has ids (a pool worker gets them by file now)."""
        units = shape.get(resources.GPU, 0)
        if not units or not self.ids:
            return
        self.gpu_leases[lease_id] = worker_id
        if worker_id in self.by_worker:
            return  # started for this request, with its ids
        ids = self._take(worker_id, units)
        path = gpu_file(self.session_dir, worker_id)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(",".join(ids))
        os.replace(tmp, path)

    def on_lease_returned(self, lease_id: str) -> str | None:
        """The worker to stop now that its GPU lease is over (None if the lease had no GPU). Its ids are free
        from now on, as its units are in the core: it runs nothing more, and placing the next lease as if it
        still held them (while it exits) put two halves that should share a GPU on different ones."""
        worker_id = self.gpu_leases.pop(lease_id, None)
        if worker_id is not None:
            self._release(worker_id)
        return worker_id

    def on_worker_exit(self, worker_id: str) -> None:
        self._release(worker_id)
        for lease_id in [l for l, w in self.gpu_leases.items() if w == worker_id]:
            del self.gpu_leases[lease_id]
        try:
            os.unlink(gpu_file(self.session_dir, worker_id))
        except OSError:
            pass


# ---- inside a worker ------------------------------------------------------------------------------------

_assigned: list[str] = []


def set_visible(ids: list[str]) -> None:
    """Worker: make `ids` this process's GPUs, before any user code imports a CUDA library."""
    _assigned[:] = ids
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)


def read_assignment(session_dir: str, worker_id: str) -> None:
    """Worker, before its first task: pick up ids the peer assigned by file (a pool worker's first lease)."""
    if _assigned:
        return
    try:
        with open(gpu_file(session_dir, worker_id)) as f:
            ids = [v for v in f.read().strip().split(",") if v]
    except OSError:
        return
    if ids:
        set_visible(ids)


def get_gpu_ids() -> list:
    """The GPU ids assigned to the calling task or actor (ints when they are numbers); [] elsewhere."""
    return [int(g) if g.isdigit() else g for g in _assigned]

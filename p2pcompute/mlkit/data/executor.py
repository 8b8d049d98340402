"""The streaming executor: a pipeline of stages that run as tasks, with bounded blocks in flight.

Theory of operation. A dataset's plan becomes a `Pipeline` of stages (`planner.py`). Every stage has the
same small interface - `launch()` starts what it may, `pending()` lists the refs it waits for,
`on_ready(refs)` takes finished ones, and its `outputs` deque holds finished blocks, in order, for the
stage after it. The driver loop (`execute`) repeats: launch everywhere, hand the last stage's outputs to the
consumer, wait for any pending ref. Backpressure is one rule: a stage launches a task only while its
running tasks plus its finished-but-unconsumed blocks are under `max_blocks_buffered`, and while the bytes
all stages hold (finished blocks, plus running tasks at their stage's average block size) leave room for
one more block within `max_bytes_buffered` (a quarter of the cluster's store capacity). A stage holding
nothing may always start one task, so a pipeline never stalls on its budget. When the consumer stops
pulling, the last stage fills up and stops, then the one before it, and so on: blocks alive at once are
bounded by the caps, whatever the dataset's size. Blocks are never fetched by the driver to
plan: each task returns its block and a small `BlockMeta` as two objects, and the driver waits on the meta.
Lost blocks are rebuilt by the core from lineage (the driver owns every task), so the executor itself has
no recovery code beyond re-sending a bundle whose actor died.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Iterator

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data.ops import map_task

_map_task = p2p.remote(map_task).options(num_returns=2, max_retries=3)


@dataclass
class ExecOptions:
    """Bounds of one execution. Defaults scale with the cluster's CPUs."""
    max_tasks_in_flight: int = 4      # running tasks per stage
    max_blocks_buffered: int = 8      # running + finished-but-unconsumed blocks per stage
    preserve_order: bool = True       # blocks leave each stage in input order
    max_bytes_buffered: int | None = None  # all stages together; None: no byte bound

    @classmethod
    def for_cluster(cls) -> "ExecOptions":
        nodes = [n for n in p2p.nodes() if n.get("Alive", True)]
        cpus = max(1, int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)))
        capacity = sum(int(n.get("StoreCapacity") or 0) for n in nodes)
        # A quarter of the stores: room for the consumer's blocks, lineage pins and everyone else's objects.
        return cls(max_tasks_in_flight=2 * cpus, max_blocks_buffered=2 * cpus + 4,
                   max_bytes_buffered=capacity // 4 if capacity else None)


@dataclass
class StageStats:
    """What a stage did in one execution, for progress bars and `Dataset.stats()`."""
    name: str
    tasks_launched: int = 0
    tasks_done: int = 0
    blocks_out: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    op_time_s: dict = field(default_factory=dict)   # operator name -> seconds summed over blocks
    op_rows: dict = field(default_factory=dict)     # operator name -> rows out
    total_hint: int | None = None                  # expected number of tasks, when known

    def record(self, meta: B.BlockMeta) -> None:
        self.tasks_done += 1
        self.blocks_out += 1
        self.rows_out += meta.num_rows
        self.bytes_out += meta.size_bytes
        for s in meta.op_stats:
            self.op_time_s[s.name] = self.op_time_s.get(s.name, 0.0) + s.wall_s
            self.op_rows[s.name] = self.op_rows.get(s.name, 0) + s.rows_out
        self.finished_at = time.monotonic()


class Stage:
    """Base: an upstream, an ordered outputs deque, and the bookkeeping every stage shares."""

    def __init__(self, name: str, opts: ExecOptions, upstream: "Stage | None" = None):
        self.name = name
        self.opts = opts
        self.upstream = upstream
        self.outputs: collections.deque = collections.deque()   # (block_ref, BlockMeta), in order
        self.stats = StageStats(name)
        self.stopped = False
        self.pipeline: "Pipeline | None" = None  # set by the pipeline: the shared byte budget lives there

    def held_bytes(self) -> int:
        """Bytes of blocks this stage holds or is making (running tasks at the stage's average size)."""
        return sum(m.size_bytes + m.pinned_bytes for _, m in self.outputs)

    def average_block_bytes(self) -> int:
        st = self.stats
        return st.bytes_out // st.blocks_out if st.blocks_out else 0

    def budget_allows(self, holding: int) -> bool:
        """May this stage start one more block? Always when it holds nothing (progress)."""
        limit = self.opts.max_bytes_buffered
        if limit is None or holding == 0 or self.pipeline is None:
            return True
        return self.pipeline.held_bytes() + self.average_block_bytes() <= limit

    # -- the interface the loop uses --
    def launch(self) -> None:
        pass

    def pending(self) -> list:
        return []

    def on_ready(self, ready: set) -> None:
        pass

    def finished(self) -> bool:
        """No more outputs will ever be added."""
        raise NotImplementedError

    def exhausted(self) -> bool:
        return self.finished() and not self.outputs

    def stop(self) -> None:
        """Stop starting work (a downstream `limit` has all it needs)."""
        self.stopped = True
        if self.upstream is not None:
            self.upstream.stop()

    def shutdown(self) -> None:
        pass

    def stages(self) -> list:
        return ([] if self.upstream is None else self.upstream.stages()) + [self]

    # -- helpers --
    def _upstream_done(self) -> bool:
        return self.upstream is None or self.upstream.exhausted()


class InputStage(Stage):
    """Blocks that already exist (from_numpy, from_items, materialized datasets): handed on as they are."""

    def __init__(self, name: str, opts: ExecOptions, blocks: list):
        super().__init__(name, opts)
        self.outputs.extend(blocks)
        self.stats.tasks_launched = self.stats.tasks_done = len(blocks)
        self.stats.blocks_out = len(blocks)
        self.stats.rows_out = sum(m.num_rows for _, m in blocks)

    def finished(self) -> bool:
        return True


class _OrderedTasks:
    """Tasks in flight whose results leave in launch order (or completion order)."""

    def __init__(self, preserve_order: bool):
        self.preserve_order = preserve_order
        self.running: dict = {}      # meta_ref -> (seq, block_ref, context)
        self.done: dict = {}         # seq -> (block_ref, meta)
        self.next_seq = 0
        self.next_emit = 0

    def add(self, block_ref, meta_ref, context=None) -> None:
        self.running[meta_ref] = (self.next_seq, block_ref, context)
        self.next_seq += 1

    def take_ready(self, ready: set) -> list:
        """Pop the running entries in `ready`: [(meta_ref, seq, block_ref, context)]."""
        hits = [r for r in self.running if r in ready]
        return [(r, *self.running.pop(r)) for r in hits]

    def complete(self, seq: int, block_ref, meta) -> None:
        self.done[seq] = (block_ref, meta)

    def skip(self, seq: int) -> None:
        self.done[seq] = None

    def emit(self, outputs: collections.deque) -> list:
        emitted = []
        if self.preserve_order:
            while self.next_emit in self.done:
                item = self.done.pop(self.next_emit)
                self.next_emit += 1
                if item is not None:
                    outputs.append(item)
                    emitted.append(item)
        else:
            for seq in sorted(self.done):
                item = self.done.pop(seq)
                if item is not None:
                    outputs.append(item)
                    emitted.append(item)
        return emitted

    def buffered(self) -> int:
        return len(self.running) + len(self.done)

    def held_bytes(self, per_running: int) -> int:
        """Running tasks count `per_running` plus their inputs (the context, in bytes, for map stages)."""
        running = sum(per_running + (c if isinstance(c, int) else 0) for _, _, c in self.running.values())
        return running + sum(x[1].size_bytes + x[1].pinned_bytes for x in self.done.values() if x)


class TaskMapStage(Stage):
    """Reads and/or fused per-block operators, one task per input bundle (or per read)."""

    def __init__(self, name: str, opts: ExecOptions, ops: list, *, reads: list | None = None,
                 upstream: Stage | None = None, bundle_rows: int | None = None, remote_args: dict | None = None):
        super().__init__(name, opts, upstream)
        self.ops = list(ops)
        self._reads = collections.deque(reads or [])
        self._from_reads = reads is not None
        self.bundle_rows = bundle_rows
        self._bundle: list = []
        self._bundle_rows = 0
        self._bundle_bytes = 0
        self._tasks = _OrderedTasks(opts.preserve_order)
        self._task = _map_task.options(**remote_args) if remote_args else _map_task
        self._ops_ref = None
        self._input_index = 0
        if reads is not None:
            self.stats.total_hint = len(reads)

    def _next_input(self):
        if self._from_reads:
            return ("read", self._reads.popleft()) if self._reads else None
        up = self.upstream
        while up.outputs:
            ref, meta = up.outputs.popleft()
            self._bundle.append(ref)
            self._bundle_rows += meta.num_rows
            self._bundle_bytes += meta.size_bytes
            if not self.bundle_rows or self._bundle_rows >= self.bundle_rows:
                break
        ready = self._bundle and (not self.bundle_rows or self._bundle_rows >= self.bundle_rows or up.exhausted())
        if not ready:
            return None
        bundle, self._bundle, self._bundle_rows = self._bundle, [], 0
        size, self._bundle_bytes = self._bundle_bytes, 0
        return ("blocks", bundle, size)

    def launch(self) -> None:
        opts = self.opts
        while (not self.stopped and len(self._tasks.running) < opts.max_tasks_in_flight
               and self._tasks.buffered() + len(self.outputs) < opts.max_blocks_buffered
               and self.budget_allows(self._tasks.buffered() + len(self.outputs))):
            item = self._next_input()
            if item is None:
                return
            if self._ops_ref is None:
                # The chain (user functions, maybe a captured model) is stored once and read by every task.
                self._ops_ref = p2p.put(self.ops)
            where = f"{self.name}, block {self._input_index}"
            self._input_index += 1
            if item[0] == "read":
                block_ref, meta_ref = self._task.remote(self._ops_ref, item[1], where)
                self._tasks.add(block_ref, meta_ref, 0)
            else:
                block_ref, meta_ref = self._task.remote(self._ops_ref, None, where, *item[1])
                self._tasks.add(block_ref, meta_ref, item[2])
            if not self.stats.started_at:
                self.stats.started_at = time.monotonic()
            self.stats.tasks_launched += 1

    def pending(self) -> list:
        return list(self._tasks.running)

    def held_bytes(self) -> int:
        return super().held_bytes() + self._tasks.held_bytes(self.average_block_bytes())

    def on_ready(self, ready: set) -> None:
        hits = self._tasks.take_ready(ready)
        if not hits:
            return
        metas = p2p.get([h[0] for h in hits])
        for (meta_ref, seq, block_ref, input_bytes), meta in zip(hits, metas):
            meta.pinned_bytes = input_bytes
            self._tasks.complete(seq, block_ref, meta)
            self.stats.record(meta)
        self._tasks.emit(self.outputs)

    def finished(self) -> bool:
        if self._tasks.buffered():
            return False
        if self.stopped:
            return True
        if self._from_reads:
            return not self._reads
        return self.upstream.exhausted() and not self._bundle


class Pipeline:
    """The chain of stages ending at `last`; the loop's view of a whole plan."""

    def __init__(self, last: Stage):
        self.last = last
        self.all = last.stages()
        for s in self.all:
            s.pipeline = self

    def held_bytes(self) -> int:
        return sum(s.held_bytes() for s in self.all)

    def launch(self) -> None:
        # Downstream first: when the byte budget is tight, finishing blocks beats starting new ones.
        for s in reversed(self.all):
            s.launch()

    def pending(self) -> list:
        return [r for s in self.all for r in s.pending()]

    def on_ready(self, ready: set) -> None:
        for s in self.all:
            s.on_ready(ready)

    def shutdown(self) -> None:
        for s in self.all:
            s.shutdown()


def execute(pipeline: Pipeline, progress=None) -> Iterator[tuple]:
    """Run the pipeline, yielding (block_ref, BlockMeta) in order as the last stage produces them."""
    last = pipeline.last
    try:
        while True:
            pipeline.launch()
            if last.outputs:
                yield last.outputs.popleft()
                continue
            if last.finished():
                return
            refs = pipeline.pending()
            if not refs:
                raise RuntimeError(f"dataset execution stalled at {last.name}: nothing running and nothing to "
                                   f"start (a bug in the executor)")
            ready, _ = p2p.wait(refs, num_returns=1, timeout=0.25 if progress else None)
            if ready:
                ready, _ = p2p.wait(refs, num_returns=len(refs), timeout=0)
                pipeline.on_ready(set(ready))
            if progress is not None:
                progress.update()
    finally:
        pipeline.shutdown()
        if progress is not None:
            progress.close()

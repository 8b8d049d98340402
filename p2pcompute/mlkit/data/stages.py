"""The stages beyond plain task maps: `limit`, barriers (shuffles, sorts, ...), `union`, and actor pools.

All follow `executor.Stage`'s interface, so the driver loop treats them alike. An actor-pool stage keeps
between `min` and `max` actors (each built once, so a model loads once per actor), at most two bundles
queued per actor, adds an actor while work waits and every actor is busy, and re-sends a bundle whose
actor died to a fresh actor.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import p2pcompute as p2p
from p2pcompute import errors
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data.executor import ExecOptions, Pipeline, Stage, _OrderedTasks
from p2pcompute.mlkit.data.ops import run_chain
from p2pcompute.mlkit.data.shuffle import Gather, combine




class LimitStage(Stage):
    """Passes blocks until `n` rows; slices the last one; then stops everything upstream."""

    def __init__(self, name: str, opts: ExecOptions, upstream: Stage, n: int):
        super().__init__(name, opts, upstream)
        self.remaining = n
        self._slicing = None  # (block_ref, meta_ref) of the last, partial block

    def launch(self) -> None:
        up = self.upstream
        while self.remaining > 0 and up.outputs and self._slicing is None:
            ref, meta = up.outputs.popleft()
            if meta.num_rows <= self.remaining:
                self.remaining -= meta.num_rows
                self.outputs.append((ref, meta))
                self.stats.record(meta)
            else:
                self._slicing = combine(Gather([(0, self.remaining)]), [ref])
                self.remaining = 0
        if self.remaining == 0 and not up.stopped:
            up.stop()

    def pending(self) -> list:
        return [self._slicing[1]] if self._slicing else []

    def on_ready(self, ready: set) -> None:
        if self._slicing and self._slicing[1] in ready:
            meta = p2p.get(self._slicing[1])
            self.outputs.append((self._slicing[0], meta))
            self.stats.record(meta)
            self._slicing = None

    def finished(self) -> bool:
        if self._slicing is not None:
            return False
        return self.remaining == 0 or self.upstream.exhausted()


class AllToAllStage(Stage):
    """A barrier: gathers every upstream block, then `fn(blocks) -> [(block_ref, meta_ref)]` launches the
    tasks that make the outputs (a shuffle, a sort, ...); outputs leave in order as they finish."""

    def __init__(self, name: str, opts: ExecOptions, upstream: Stage, fn: Callable):
        super().__init__(name, opts, upstream)
        self.fn = fn
        self._inputs: list = []
        self._started = False
        self._tasks = _OrderedTasks(True)

    def launch(self) -> None:
        up = self.upstream
        while up.outputs:
            self._inputs.append(up.outputs.popleft())
        if not self._started and up.exhausted():
            self._started = True
            self.stats.started_at = time.monotonic()
            for block_ref, meta_ref in self.fn(self._inputs):
                self._tasks.add(block_ref, meta_ref)
                self.stats.tasks_launched += 1
            self._inputs = []

    def pending(self) -> list:
        return list(self._tasks.running)

    def on_ready(self, ready: set) -> None:
        hits = self._tasks.take_ready(ready)
        if hits:
            for (meta_ref, seq, block_ref, _), meta in zip(hits, p2p.get([h[0] for h in hits])):
                self._tasks.complete(seq, block_ref, meta)
                self.stats.record(meta)
            self._tasks.emit(self.outputs)

    def finished(self) -> bool:
        return self._started and not self._tasks.buffered()


class UnionStage(Stage):
    """The outputs of several pipelines, one after the other; all of them run at once (each bounded)."""

    def __init__(self, name: str, opts: ExecOptions, children: list):
        super().__init__(name, opts)
        self.children: list[Pipeline] = children
        self._current = 0

    def stages(self) -> list:
        return [s for c in self.children for s in c.all] + [self]

    def launch(self) -> None:
        while self._current < len(self.children):
            last = self.children[self._current].last
            while last.outputs and len(self.outputs) < self.opts.max_blocks_buffered:
                item = last.outputs.popleft()
                self.outputs.append(item)
                self.stats.record(item[1])
            if last.exhausted():
                self._current += 1
            else:
                return

    def stop(self) -> None:
        self.stopped = True
        for c in self.children:
            c.last.stop()

    def finished(self) -> bool:
        return self._current >= len(self.children)


class _MapActor:
    """One actor of an actor-pool stage: builds the user's class once, then maps bundles of blocks."""

    def __init__(self, op, ctor_args, ctor_kwargs, more_ops):
        op.fn = op.fn(*ctor_args, **ctor_kwargs)
        self.chain = [op, *more_ops]

    def process(self, where, *blocks):
        t0 = time.perf_counter()
        block = B.concat(blocks)
        block, stats = run_chain(self.chain, block, where)
        del t0
        return block, B.meta_of(block, stats, p2p.get_runtime_context().get_node_id())

    def ready(self):
        return True


_INFLIGHT_PER_ACTOR = 2
_BUNDLE_RETRIES = 3


class ActorMapStage(Stage):
    """`map_batches` with a class: a pool of actors between `min_size` and `max_size`."""

    def __init__(self, name: str, opts: ExecOptions, upstream: Stage, op, ctor_args: tuple, ctor_kwargs: dict,
                 more_ops: list, min_size: int, max_size: int, bundle_rows: int | None, remote_args: dict):
        super().__init__(name, opts, upstream)
        self._args = (op, ctor_args, ctor_kwargs, more_ops)
        self.min_size, self.max_size = min_size, max_size
        self.bundle_rows = bundle_rows
        args = {"max_restarts": 0, **remote_args}
        self._cls = p2p.remote(_MapActor).options(**args)
        self._actors: dict = {}            # handle -> number of bundles in flight
        self._queue: collections.deque = collections.deque()   # (seq, where, bundle, attempts)
        self._bundle: list = []
        self._bundle_rows = 0
        self._tasks = _OrderedTasks(opts.preserve_order)
        self._seq_for_input = 0

    def _add_actor(self) -> None:
        self._actors[self._cls.remote(*self._args)] = 0

    def _pull_inputs(self) -> None:
        up = self.upstream
        while up.outputs:
            ref, meta = up.outputs.popleft()
            self._bundle.append(ref)
            self._bundle_rows += meta.num_rows
            if not self.bundle_rows or self._bundle_rows >= self.bundle_rows:
                self._enqueue()
        if self._bundle and up.exhausted():
            self._enqueue()

    def _enqueue(self) -> None:
        where = f"{self.name}, block {self._seq_for_input}"
        self._seq_for_input += 1
        self._queue.append([None, where, self._bundle, 0])
        self._bundle, self._bundle_rows = [], 0

    def launch(self) -> None:
        if self.stopped:
            return
        if len(self._actors) < self.min_size:
            for _ in range(self.min_size - len(self._actors)):
                self._add_actor()
            self.stats.started_at = time.monotonic()
        cap = self.opts.max_blocks_buffered
        while (self._tasks.buffered() + len(self.outputs) < cap
               and self.budget_allows(self._tasks.buffered() + len(self.outputs))):
            if not self._queue:
                if len(self._tasks.running) + len(self.outputs) + len(self._tasks.done) >= cap:
                    return
                self._pull_inputs()
                if not self._queue:
                    return
            free = [a for a, n in self._actors.items() if n < _INFLIGHT_PER_ACTOR]
            idle = [a for a in free if self._actors[a] == 0]
            if not idle and len(self._actors) < self.max_size:
                self._add_actor()
                continue
            if not free:
                return
            actor = min(free, key=self._actors.get)
            item = self._queue.popleft()
            block_ref, meta_ref = actor.process.options(num_returns=2).remote(item[1], *item[2])
            if item[0] is None:
                item[0] = self._tasks.next_seq
                self._tasks.add(block_ref, meta_ref, (actor, item))
            else:  # a re-sent bundle keeps its place in the order
                self._tasks.running[meta_ref] = (item[0], block_ref, (actor, item))
            self._actors[actor] += 1
            self.stats.tasks_launched += 1

    def pending(self) -> list:
        return list(self._tasks.running)

    def held_bytes(self) -> int:
        return super().held_bytes() + self._tasks.held_bytes(self.average_block_bytes())

    def on_ready(self, ready: set) -> None:
        for meta_ref, seq, block_ref, (actor, item) in self._tasks.take_ready(ready):
            if actor in self._actors:
                self._actors[actor] -= 1
            try:
                meta = p2p.get(meta_ref)
            except (errors.ActorDiedError, errors.ActorUnavailableError, errors.WorkerCrashedError):
                if item[3] >= _BUNDLE_RETRIES:
                    raise
                item[3] += 1
                self._queue.appendleft(item)
                if actor in self._actors:
                    del self._actors[actor]
                    _kill(actor)
                continue
            self._tasks.complete(seq, block_ref, meta)
            self.stats.record(meta)
        self._tasks.emit(self.outputs)

    def finished(self) -> bool:
        if self._tasks.buffered() or self._queue:
            return False
        return self.stopped or (self.upstream.exhausted() and not self._bundle)

    def shutdown(self) -> None:
        for actor in list(self._actors):
            _kill(actor)
        self._actors.clear()


def _kill(actor) -> None:
    try:
        p2p.kill(actor)
    except Exception:  # noqa: BLE001 - already gone
        pass

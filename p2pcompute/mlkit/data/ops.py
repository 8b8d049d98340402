"""Per-block transforms and the task that runs a chain of them.

Each operator a user adds with `map`, `map_batches`, `filter` or `flat_map` becomes one of the classes here:
a picklable object whose `apply(block, where)` returns the transformed block. Consecutive operators are
*fused*: one task reads (or receives) a block and runs the whole chain on it, so intermediate results never
touch the store. The task returns the block and its `BlockMeta` (row count, bytes, time spent per operator)
as two objects: the driver plans from the small one and leaves the big one where it was made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from p2pcompute.mlkit.data import block as B


def fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


@dataclass
class MapRows:
    fn: Callable

    @property
    def name(self) -> str:
        return f"Map({fn_name(self.fn)})"

    def apply(self, block: B.Block, where: str) -> B.Block:
        out = []
        for i, row in enumerate(B.iter_rows(block)):
            value = self.fn(row)
            if not isinstance(value, dict):
                raise TypeError(f"{where}, row {i}: map({fn_name(self.fn)}) returned a {type(value).__name__}; "
                                f"a row function must return a dict (column -> value)")
            out.append(value)
        return B.from_rows(out)


@dataclass
class Filter:
    fn: Callable

    @property
    def name(self) -> str:
        return f"Filter({fn_name(self.fn)})"

    def apply(self, block: B.Block, where: str) -> B.Block:
        keep = np.fromiter((bool(self.fn(row)) for row in B.iter_rows(block)), dtype=bool,
                           count=B.num_rows(block))
        return B.take_rows(block, np.nonzero(keep)[0])


@dataclass
class FlatMap:
    fn: Callable

    @property
    def name(self) -> str:
        return f"FlatMap({fn_name(self.fn)})"

    def apply(self, block: B.Block, where: str) -> B.Block:
        out = []
        for i, row in enumerate(B.iter_rows(block)):
            values = self.fn(row)
            try:
                values = list(values)
            except TypeError:
                raise TypeError(f"{where}, row {i}: flat_map({fn_name(self.fn)}) returned a "
                                f"{type(values).__name__}; it must return a list of dicts") from None
            for v in values:
                if not isinstance(v, dict):
                    raise TypeError(f"{where}, row {i}: flat_map({fn_name(self.fn)}) returned a list holding a "
                                    f"{type(v).__name__}; it must return a list of dicts")
            out.extend(values)
        return B.from_rows(out)


@dataclass
class MapBatches:
    fn: Any  # a callable, or an object made from a class in an actor
    batch_size: int | None = None
    batch_format: str = "numpy"
    fn_args: tuple = ()
    fn_kwargs: dict = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return f"MapBatches({self.label or fn_name(self.fn)})"

    def apply(self, block: B.Block, where: str) -> B.Block:
        n = B.num_rows(block)
        size = self.batch_size or max(n, 1)
        outs = []
        for start in range(0, max(n, 1), size):
            end = min(start + size, n)
            batch = B.to_batch(B.slice_block(block, start, end), self.batch_format)
            try:
                value = self.fn(batch, *self.fn_args, **self.fn_kwargs)
            except Exception as exc:
                exc.add_note(f"in {self.name} on {where}, rows {start}-{end}")
                raise
            outs.append(B.from_batch(value, f"{self.name} on {where}, rows {start}-{end}"))
            if n == 0:
                break
        return B.concat(outs)


@dataclass
class RangeRead:
    """Rows `start..end` of `range(n)`: column "id"."""
    start: int
    end: int
    name: str = "ReadRange"

    def __call__(self) -> B.Block:
        return {"id": np.arange(self.start, self.end, dtype=np.int64)}


@dataclass
class Partial:
    """The partial states of aggregations over one block, as a one-row block (column "state")."""
    aggs: list
    name: str = "Aggregate"

    def apply(self, block: B.Block, where: str) -> B.Block:
        col = np.empty(1, dtype=object)
        # A block with no columns (every row filtered out) has nothing to add: None is skipped.
        col[0] = [a.partial(block) for a in self.aggs] if block else None
        return {"state": col}


@dataclass
class Write:
    """Writes the block to a file; the output is one row naming the file."""
    kind: str
    path: str
    options: dict
    name: str = "Write"

    def apply(self, block: B.Block, where: str) -> B.Block:
        from p2pcompute.mlkit.data.io import write_block
        index = int(where.rsplit("block ", 1)[1])
        return {"path": np.array([write_block(self.kind, self.path, index, self.options, block)], dtype=object)}


def run_chain(ops: list, block: B.Block, where: str) -> tuple[B.Block, list]:
    stats = []
    for op in ops:
        t0 = time.perf_counter()
        block = op.apply(block, where)
        stats.append(B.OpStat(op.name, time.perf_counter() - t0, B.num_rows(block)))
    return block, stats


def map_task(ops: list, read: Any, where: str, *blocks):
    """Make a block - `read()` for a source, `read(*blocks)` for a combiner (a shuffle's reducer, a slice),
    else the blocks concatenated - then run the fused chain on it; return (block, meta).

    Every kind of per-block work goes through this one function on purpose: tasks of one function share
    leases, so a pipeline's stages never wait for leases held by each other's idle workers. For the same
    reason a shuffle's map side comes here too: with `ops == "split"`, `read(block)` returns the parts
    (or a sample), one object each, and nothing else."""
    if isinstance(ops, str):
        return read(*blocks)
    stats = []
    if read is not None:
        t0 = time.perf_counter()
        block = read(*blocks)
        stats.append(B.OpStat(getattr(read, "name", "Read"), time.perf_counter() - t0, B.num_rows(block)))
    else:
        block = B.concat(blocks)
    block, more = run_chain(ops, block, where)
    return block, B.meta_of(block, stats + more, _node_id())


def _node_id() -> str:
    try:
        import p2pcompute as p2p
        return p2p.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - only informational
        return ""

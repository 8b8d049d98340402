"""Barrier operators: repartition, random_shuffle, sort, groupby-aggregate, zip.

Each returns the function an `AllToAllStage` calls with every upstream block: it launches map tasks that cut
each block into one part per output (`num_returns` = outputs, so parts stay in the stores where they were
cut) and reduce tasks that take part j of every block as top-level arguments. The driver only ever sees
row counts and, for `sort`/`groupby`, a small sample of keys to choose range boundaries: output j holds keys
between boundaries j-1 and j, so concatenated outputs are globally sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data.executor import _map_task

_SAMPLES_PER_BLOCK = 64


def _parts_out(n: int, parts: list):
    return parts[0] if n == 1 else tuple(parts)


# ---- repartition (exact row ranges, no shuffle) and zip ----

@dataclass
class Gather:
    """Combiner: the given span of each input block, concatenated."""
    spans: list
    name: str = "Gather"

    def __call__(self, *blocks):
        return B.concat([B.slice_block(b, s, e) for (s, e), b in zip(self.spans, blocks)])


def combine(combiner, blocks: list):
    """(block_ref, meta_ref) of `combiner(*blocks)`, run by the executor's one task function."""
    return _map_task.remote([], combiner, combiner.name, *blocks)


def _row_ranges(total: int, n: int) -> list:
    edges = [total * i // n for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _spans_for(inputs: list, start: int, end: int) -> tuple[list, list]:
    """The input blocks overlapping rows [start, end) and the span of each to keep."""
    refs, spans, offset = [], [], 0
    for ref, meta in inputs:
        lo, hi = offset, offset + meta.num_rows
        if hi > start and lo < end:
            refs.append(ref)
            spans.append((max(start, lo) - lo, min(end, hi) - lo))
        offset = hi
    return refs, spans


def repartition_fn(num_blocks: int):
    def run(inputs: list) -> list:
        total = sum(m.num_rows for _, m in inputs)
        out = []
        for start, end in _row_ranges(total, num_blocks):
            refs, spans = _spans_for(inputs, start, end)
            out.append(combine(Gather(spans), refs))
        return out
    return run


def split_at_rows(inputs: list, ranges: list) -> list:
    """Blocks holding exactly rows [a, b) for each range (a task per range)."""
    out = []
    for start, end in ranges:
        refs, spans = _spans_for(inputs, start, end)
        out.append(combine(Gather(spans), refs))
    return out


@dataclass
class Zip:
    """Combiner: the first block's rows side by side with the given spans of the other blocks."""
    right_spans: list
    name: str = "Zip"

    def __call__(self, left, *right_blocks):
        right = B.concat([B.slice_block(b, s, e) for (s, e), b in zip(self.right_spans, right_blocks)])
        out = dict(left)
        for k, v in right.items():
            name = k
            while name in out:
                name = name + "_1"  # Ray's rule for a column name both sides have
            out[name] = v
        return out


def zip_fn(other_blocks_fn):
    def run(inputs: list) -> list:
        right = other_blocks_fn()
        n_left = sum(m.num_rows for _, m in inputs)
        n_right = sum(m.num_rows for _, m in right)
        if n_left != n_right:
            raise ValueError(f"zip() needs datasets with the same number of rows: {n_left} and {n_right}")
        out, offset = [], 0
        for ref, meta in inputs:
            r_refs, r_spans = _spans_for(right, offset, offset + meta.num_rows)
            out.append(combine(Zip(r_spans), [ref, *r_refs]))
            offset += meta.num_rows
        return out
    return run


# ---- random shuffle ----

@dataclass
class ShuffleMap:
    """Splitter: each row of the block goes to a random one of `n_out` parts."""
    seed: int
    index: int
    n_out: int

    def __call__(self, block):
        rng = np.random.default_rng([self.seed, self.index])
        dest = rng.integers(0, self.n_out, size=B.num_rows(block))
        return _parts_out(self.n_out, [B.take_rows(block, np.nonzero(dest == j)[0]) for j in range(self.n_out)])


def split(splitter, block_ref, n_out: int):
    """The refs of `splitter(block)`'s parts, made by the executor's one task function."""
    return _map_task.options(num_returns=n_out).remote("split", splitter, "", block_ref)


@dataclass
class ShuffleReduce:
    seed: int
    index: int
    name: str = "RandomShuffle"

    def __call__(self, *parts):
        block = B.concat(parts)
        rng = np.random.default_rng([self.seed, 1_000_003 + self.index])
        return B.take_rows(block, rng.permutation(B.num_rows(block))) if block else block




def shuffle_fn(seed: int | None, num_blocks: int | None):
    seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if seed is None else seed

    def run(inputs: list) -> list:
        n_out = num_blocks or max(1, len(inputs))
        parts = [_as_list(split(ShuffleMap(seed, i, n_out), ref, n_out), n_out) for i, (ref, _) in enumerate(inputs)]
        return [combine(ShuffleReduce(seed, j), [p[j] for p in parts]) for j in range(n_out)]
    return run


def _as_list(refs, n: int) -> list:
    return [refs] if n == 1 else list(refs)


# ---- sort and groupby: range partitions on sampled boundaries ----

@dataclass
class Sample:
    """Splitter with one output: up to `_SAMPLES_PER_BLOCK` evenly spaced keys of the block."""
    key: str

    def __call__(self, block):
        if not block:
            return np.array([])
        if self.key not in block:
            raise KeyError(f"no column {self.key!r} to sort or group by; the dataset has {sorted(block)}")
        col = block[self.key]
        if len(col) <= _SAMPLES_PER_BLOCK:
            return np.array(col)
        idx = np.linspace(0, len(col) - 1, _SAMPLES_PER_BLOCK).astype(np.int64)
        return np.array(col[idx])


@dataclass
class RangeMap:
    """Splitter: rows to part j when their key lies between boundaries j-1 and j."""
    key: str
    bounds: np.ndarray
    n_out: int

    def __call__(self, block):
        n_out = self.n_out
        if not block:
            return _parts_out(n_out, [{} for _ in range(n_out)])
        dest = (np.searchsorted(self.bounds, block[self.key], side="right") if len(self.bounds)
                else np.zeros(B.num_rows(block), int))
        return _parts_out(n_out, [B.take_rows(block, np.nonzero(dest == j)[0]) for j in range(n_out)])


@dataclass
class SortReduce:
    key: str
    descending: bool
    name: str = "Sort"

    def __call__(self, *parts):
        block = B.concat(parts)
        if block:
            order = np.argsort(block[self.key], kind="stable")
            if self.descending:
                order = order[::-1]
            block = B.take_rows(block, order)
        return block


@dataclass
class GroupReduce:
    key: str
    aggs: list
    name: str = "GroupBy"

    def __call__(self, *parts):
        return group_reduce(self.key, self.aggs, *parts)[0]


def group_reduce(key: str, aggs: list, *parts):
    block = B.concat(parts)
    if not block:
        return {}, B.meta_of({})
    order = np.argsort(block[key], kind="stable")
    block = B.take_rows(block, order)
    keys = block[key]
    change = np.ones(len(keys), dtype=bool)
    change[1:] = keys[1:] != keys[:-1]
    starts = np.nonzero(change)[0]
    counts = np.diff(np.append(starts, len(keys)))
    out = {key: keys[starts]}
    for a in aggs:
        out[a.name] = np.asarray(a.grouped(block, starts, counts))
    return out, B.meta_of(out)




def _range_partition(key: str, inputs: list, make_reducer, descending: bool = False) -> list:
    n_out = max(1, len(inputs))
    samples = [s for s in p2p.get([split(Sample(key), ref, 1) for ref, _ in inputs]) if len(s)]
    if not samples:
        return [combine(make_reducer(), [])]
    allk = np.sort(np.concatenate(samples))
    qs = np.linspace(0, len(allk) - 1, n_out + 1)[1:-1].astype(np.int64)
    bounds = np.unique(allk[qs]) if len(qs) else allk[:0]
    n_out = len(bounds) + 1
    parts = [_as_list(split(RangeMap(key, bounds, n_out), ref, n_out), n_out) for ref, _ in inputs]
    order = range(n_out - 1, -1, -1) if descending else range(n_out)
    return [combine(make_reducer(), [p[j] for p in parts]) for j in order]


def sort_fn(key: str, descending: bool):
    def run(inputs: list) -> list:
        if not inputs:
            return []
        return _range_partition(key, inputs, lambda: SortReduce(key, descending), descending)
    return run


def groupby_fn(key: str, aggs: list):
    def run(inputs: list) -> list:
        if not inputs:
            return []
        return _range_partition(key, inputs, lambda: GroupReduce(key, aggs))
    return run

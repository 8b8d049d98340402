"""Barrier operators: repartition, random_shuffle, sort, groupby-aggregate, zip.

Each returns the function an `AllToAllStage` calls with every upstream block: it launches map tasks that cut
each block into one part per output (`num_returns` = outputs, so parts stay in the stores where they were
cut) and reduce tasks that take part j of every block as top-level arguments. The driver only ever sees
row counts and, for `sort`/`groupby`, a small sample of keys to choose range boundaries: output j holds keys
between boundaries j-1 and j, so concatenated outputs are globally sorted.
"""

from __future__ import annotations

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as B

_SAMPLES_PER_BLOCK = 64


def _parts_out(n: int, parts: list):
    return parts[0] if n == 1 else tuple(parts)


# ---- repartition (exact row ranges, no shuffle) and zip ----

def gather_task(spans: list, *blocks):
    out = B.concat([B.slice_block(b, s, e) for (s, e), b in zip(spans, blocks)])
    return out, B.meta_of(out)


_gather = p2p.remote(gather_task).options(num_returns=2)


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
            out.append(_gather.remote(spans, *refs))
        return out
    return run


def split_at_rows(inputs: list, ranges: list) -> list:
    """Blocks holding exactly rows [a, b) for each range (a task per range)."""
    out = []
    for start, end in ranges:
        refs, spans = _spans_for(inputs, start, end)
        out.append(_gather.remote(spans, *refs))
    return out


def zip_task(n_left: int, left_spans: list, right_spans: list, *blocks):
    left = B.concat([B.slice_block(b, s, e) for (s, e), b in zip(left_spans, blocks[:n_left])])
    right = B.concat([B.slice_block(b, s, e) for (s, e), b in zip(right_spans, blocks[n_left:])])
    out = dict(left)
    for k, v in right.items():
        name = k
        while name in out:
            name = name + "_1"  # Ray's rule for a column name both sides have
        out[name] = v
    return out, B.meta_of(out)


_zip = p2p.remote(zip_task).options(num_returns=2)


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
            out.append(_zip.remote(1, [(0, meta.num_rows)], r_spans, ref, *r_refs))
            offset += meta.num_rows
        return out
    return run


# ---- random shuffle ----

def shuffle_map(seed: int, index: int, n_out: int, block):
    rng = np.random.default_rng([seed, index])
    dest = rng.integers(0, n_out, size=B.num_rows(block))
    return _parts_out(n_out, [B.take_rows(block, np.nonzero(dest == j)[0]) for j in range(n_out)])


def shuffle_reduce(seed: int, index: int, *parts):
    block = B.concat(parts)
    rng = np.random.default_rng([seed, 1_000_003 + index])
    block = B.take_rows(block, rng.permutation(B.num_rows(block))) if block else block
    return block, B.meta_of(block)


def shuffle_fn(seed: int | None, num_blocks: int | None):
    seed = int(np.random.SeedSequence().entropy % (2 ** 31)) if seed is None else seed
    reduce = p2p.remote(shuffle_reduce).options(num_returns=2)

    def run(inputs: list) -> list:
        n_out = num_blocks or max(1, len(inputs))
        mapper = p2p.remote(shuffle_map).options(num_returns=n_out)
        parts = [_as_list(mapper.remote(seed, i, n_out, ref), n_out) for i, (ref, _) in enumerate(inputs)]
        return [reduce.remote(seed, j, *[p[j] for p in parts]) for j in range(n_out)]
    return run


def _as_list(refs, n: int) -> list:
    return [refs] if n == 1 else list(refs)


# ---- sort and groupby: range partitions on sampled boundaries ----

def sample_task(key: str, block):
    if key not in block:
        raise KeyError(f"no column {key!r} to sort or group by; the dataset has {sorted(block)}")
    col = block[key]
    if len(col) <= _SAMPLES_PER_BLOCK:
        return np.array(col)
    idx = np.linspace(0, len(col) - 1, _SAMPLES_PER_BLOCK).astype(np.int64)
    return np.array(col[idx])


def range_map(key: str, bounds, n_out: int, block):
    if not block:
        return _parts_out(n_out, [{} for _ in range(n_out)])
    dest = np.searchsorted(bounds, block[key], side="right") if len(bounds) else np.zeros(B.num_rows(block), int)
    return _parts_out(n_out, [B.take_rows(block, np.nonzero(dest == j)[0]) for j in range(n_out)])


def sort_reduce(key: str, descending: bool, *parts):
    block = B.concat(parts)
    if block:
        order = np.argsort(block[key], kind="stable")
        if descending:
            order = order[::-1]
        block = B.take_rows(block, order)
    return block, B.meta_of(block)


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


def _range_partition(key: str, inputs: list, reduce, reduce_args: tuple, descending: bool = False) -> list:
    n_out = max(1, len(inputs))
    samples = [s for s in p2p.get([p2p.remote(sample_task).remote(key, ref) for ref, _ in inputs]) if len(s)]
    if not samples:
        return [reduce.remote(*reduce_args)]
    allk = np.sort(np.concatenate(samples))
    qs = np.linspace(0, len(allk) - 1, n_out + 1)[1:-1].astype(np.int64)
    bounds = np.unique(allk[qs]) if len(qs) else allk[:0]
    n_out = len(bounds) + 1
    mapper = p2p.remote(range_map).options(num_returns=n_out)
    parts = [_as_list(mapper.remote(key, bounds, n_out, ref), n_out) for ref, _ in inputs]
    order = range(n_out - 1, -1, -1) if descending else range(n_out)
    return [reduce.remote(*reduce_args, *[p[j] for p in parts]) for j in order]


def sort_fn(key: str, descending: bool):
    reduce = p2p.remote(sort_reduce).options(num_returns=2)

    def run(inputs: list) -> list:
        if not inputs:
            return []
        return _range_partition(key, inputs, reduce, (key, descending), descending)
    return run


def groupby_fn(key: str, aggs: list):
    reduce = p2p.remote(group_reduce).options(num_returns=2)

    def run(inputs: list) -> list:
        if not inputs:
            return []
        return _range_partition(key, inputs, reduce, (key, aggs))
    return run

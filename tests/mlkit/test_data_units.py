"""Pure pieces of mlkit.data, without a cluster: blocks, re-batching, aggregations, row ranges, ordering."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.mlkit.data import aggregate as agg
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data.iteration import rebatch
from p2pcompute.mlkit.data.executor import _OrderedTasks
from p2pcompute.mlkit.data.shuffle import _row_ranges, _spans_for

pytestmark = pytest.mark.mlkit

sizes = st.lists(st.integers(0, 40), min_size=0, max_size=8)


def _blocks(sizes_):
    out, start = [], 0
    for n in sizes_:
        out.append({"x": np.arange(start, start + n), "y": np.arange(start, start + n) * 2.0})
        start += n
    return out


@given(sizes, st.integers(1, 50), st.booleans())
def test_rebatch_keeps_rows_in_order_with_exact_sizes(sizes_, batch_size, drop_last):
    total = sum(sizes_)
    batches = list(rebatch(iter(_blocks(sizes_)), batch_size, "numpy", drop_last))
    got = np.concatenate([b["x"] for b in batches]) if batches else np.array([], int)
    expect_n = total - (total % batch_size if drop_last else 0)
    assert np.array_equal(got, np.arange(expect_n))
    assert all(len(b["x"]) == batch_size for b in batches[:-1])
    if batches:
        assert 0 < len(batches[-1]["x"]) <= batch_size
        if drop_last:
            assert len(batches[-1]["x"]) == batch_size


@given(sizes, st.integers(1, 30), st.integers(1, 60), st.integers(0, 5))
def test_local_shuffle_is_a_permutation(sizes_, batch_size, buffer, seed):
    total = sum(sizes_)
    batches = list(rebatch(iter(_blocks(sizes_)), batch_size, "numpy", False, buffer, seed))
    got = np.concatenate([b["x"] for b in batches]) if batches else np.array([], int)
    assert sorted(got.tolist()) == list(range(total))


@given(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=20), min_size=1, max_size=6))
@settings(max_examples=60)
def test_partial_aggregates_merge_to_numpy(chunks):
    aggs = [agg.Count(), agg.Sum("v"), agg.Min("v"), agg.Max("v"), agg.Mean("v"), agg.Std("v")]
    partials = [agg.partial_task(aggs, {"v": np.array(c, dtype=float)}) for c in chunks]
    count, total, lo, hi, mean, std = agg.combine(aggs, partials)
    allv = np.array([x for c in chunks for x in c], dtype=float)
    assert count == len(allv)
    if len(allv):
        assert np.isclose(total, allv.sum(), rtol=1e-9, atol=1e-3)
        assert lo == allv.min() and hi == allv.max()
        assert np.isclose(mean, allv.mean(), rtol=1e-9, atol=1e-6)
    if len(allv) > 1:
        assert np.isclose(std, allv.std(ddof=1), rtol=1e-6, atol=1e-4)


@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-100, 100)), min_size=1, max_size=60))
def test_grouped_aggregates_match_a_dict(rows):
    from p2pcompute.mlkit.data.shuffle import group_reduce
    block = {"k": np.array([r[0] for r in rows]), "v": np.array([r[1] for r in rows])}
    aggs = [agg.Count(), agg.Sum("v"), agg.Max("v"), agg.Mean("v")]
    out, meta = group_reduce("k", aggs, block)
    groups = collections.defaultdict(list)
    for k, v in rows:
        groups[k].append(v)
    assert out["k"].tolist() == sorted(groups)
    for i, k in enumerate(out["k"]):
        vs = np.array(groups[k])
        assert out["count()"][i] == len(vs)
        assert np.isclose(out["sum(v)"][i], vs.sum(), atol=1e-9)
        assert out["max(v)"][i] == vs.max()
        assert np.isclose(out["mean(v)"][i], vs.mean(), atol=1e-9)
    assert meta.num_rows == len(groups)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.integers(1, 10))
def test_row_ranges_and_spans_cover_each_row_once(sizes_, n):
    metas = [(f"ref{i}", B.meta_of({"x": np.zeros(k)})) for i, k in enumerate(sizes_)]
    total = sum(sizes_)
    ranges = _row_ranges(total, n)
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    covered = 0
    for start, end in ranges:
        refs, spans = _spans_for(metas, start, end)
        assert sum(e - s for s, e in spans) == end - start
        covered += end - start
    assert covered == total


@given(st.permutations(list(range(8))), st.booleans())
def test_ordered_tasks_emit_in_launch_order(finish_order, preserve):
    t = _OrderedTasks(preserve)
    for i in range(8):
        t.add(f"b{i}", f"m{i}")
    out = collections.deque()
    for i in finish_order:
        for meta_ref, seq, block_ref, _ in t.take_ready({f"m{i}"}):
            t.complete(seq, block_ref, meta_ref)
        t.emit(out)
    assert len(out) == 8
    if preserve:
        assert [b for b, _ in out] == [f"b{i}" for i in range(8)]


def test_from_batch_rejects_wrong_types_naming_where():
    with pytest.raises(TypeError, match="block 3.*returned a list"):
        B.from_batch([1, 2, 3], "MapBatches(f) on X, block 3, rows 0-3")
    with pytest.raises(TypeError, match="scalar"):
        B.from_batch({"a": 5}, "here")
    with pytest.raises(ValueError, match="different lengths"):
        B.from_batch({"a": np.zeros(2), "b": np.zeros(3)}, "here")
    assert list(B.from_batch(np.zeros((4, 2)), "here")) == ["data"]


def test_from_rows_needs_the_same_columns():
    with pytest.raises(ValueError, match="row 1"):
        B.from_rows([{"a": 1}, {"b": 2}])
    assert B.from_rows([1, 2, 3])["item"].tolist() == [1, 2, 3]


def _plan(source, ops):
    from p2pcompute.mlkit.data.executor import ExecOptions
    from p2pcompute.mlkit.data.planner import build
    return build(source, ops, ExecOptions(max_tasks_in_flight=2, max_blocks_buffered=4))


def test_planner_fuses_maps_into_the_read_and_splits_at_barriers():
    from p2pcompute.mlkit.data.ops import Filter, MapBatches, MapRows, RangeRead
    from p2pcompute.mlkit.data.stages import AllToAllStage, LimitStage

    def f(b):
        return b

    reads = [RangeRead(0, 5), RangeRead(5, 10)]
    pipeline = _plan(("reads", "ReadRange", reads),
                     [("map", MapBatches(f, 4), {}), ("map", Filter(f), {}),
                      ("all_to_all", "Sort[id]", lambda inputs: []),
                      ("map", MapRows(f), {}), ("map", MapBatches(f, 8), {"num_cpus": 2}), ("limit", 3)])
    names = [s.name for s in pipeline.all]
    assert names == ["ReadRange->MapBatches(f)->Filter(f)", "Sort[id]", "Map(f)", "MapBatches(f)", "Limit[3]"]
    kinds = [type(s) for s in pipeline.all]
    assert kinds[1] is AllToAllStage and kinds[-1] is LimitStage
    # A stage fed by another whose first operator is map_batches(batch_size=b) bundles b rows per task.
    assert pipeline.all[3].bundle_rows == 8 and pipeline.all[2].bundle_rows is None


def test_planner_actor_pool_stage_and_existing_blocks():
    from p2pcompute.mlkit.data.ops import MapBatches
    from p2pcompute.mlkit.data.stages import ActorMapStage
    from p2pcompute.mlkit.data.executor import InputStage

    class Model:
        def __call__(self, b):
            return b

    metas = [("ref0", B.meta_of({"x": np.zeros(3)}))]
    pipeline = _plan(("blocks", "FromNumpy", metas),
                     [("actor_map", MapBatches(Model, 16, label="Model"), (), {}, (1, 3), {})])
    first, second = pipeline.all
    assert isinstance(first, InputStage) and first.finished() and len(first.outputs) == 1
    assert isinstance(second, ActorMapStage) and (second.min_size, second.max_size) == (1, 3)
    assert second.bundle_rows == 16

"""Dataset transforms agree with the same computation in plain numpy, for random inputs (hypothesis), run
on the shared embedded peer: map_batches, filter, random_shuffle (a permutation), sort, groupby."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pcompute.mlkit import data

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

# Each example runs real tasks: few examples, no per-example deadline (a loaded machine).
CLUSTER = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

values = hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(-1000, 1000))
blocks = st.integers(1, 6)


def affine(batch):
    return {"x": batch["x"] * 3 - 7, "sq": batch["x"] ** 2}


@CLUSTER
@given(values, blocks, st.sampled_from([None, 1, 7, 64]))
def test_map_batches_matches_numpy(ml_cluster, arr, nblocks, batch_size):
    ds = data.from_numpy({"x": arr}, override_num_blocks=nblocks).map_batches(affine, batch_size=batch_size)
    out = ds.to_numpy() if len(arr) else {"x": np.array([], np.int64), "sq": np.array([], np.int64)}
    assert np.array_equal(out["x"], arr * 3 - 7)
    assert np.array_equal(out["sq"], arr ** 2)


@CLUSTER
@given(values, blocks, st.integers(2, 5))
def test_filter_matches_numpy(ml_cluster, arr, nblocks, mod):
    ds = data.from_numpy({"x": arr}, override_num_blocks=nblocks).filter(lambda r: r["x"] % mod == 0)
    got = np.array([r["x"] for r in ds.take_all()], dtype=np.int64)
    assert np.array_equal(got, arr[arr % mod == 0])
    assert ds.count() == int((arr % mod == 0).sum())


@CLUSTER
@given(values, blocks, st.integers(0, 2**31 - 1))
def test_random_shuffle_is_a_seeded_permutation(ml_cluster, arr, nblocks, seed):
    base = data.from_numpy({"x": arr}, override_num_blocks=nblocks)
    first = base.random_shuffle(seed=seed).take_all()
    again = base.random_shuffle(seed=seed).take_all()
    got = [r["x"] for r in first]
    assert sorted(got) == sorted(arr.tolist())
    assert got == [r["x"] for r in again]  # the same seed gives the same order


@CLUSTER
@given(values, blocks, st.booleans())
def test_sort_matches_numpy(ml_cluster, arr, nblocks, descending):
    ds = data.from_numpy({"x": arr, "i": np.arange(len(arr))}, override_num_blocks=nblocks)
    got = [int(r["x"]) for r in ds.sort("x", descending=descending).take_all()]
    expect = sorted(arr.tolist(), reverse=descending)
    assert got == expect


@CLUSTER
@given(hnp.arrays(np.int64, st.integers(1, 200), elements=st.integers(0, 9)), blocks)
def test_groupby_matches_numpy(ml_cluster, keys, nblocks):
    vals = (keys * 1.5 + np.arange(len(keys)) % 4).astype(np.float64)
    ds = data.from_numpy({"k": keys, "v": vals}, override_num_blocks=nblocks)
    rows = ds.groupby("k").aggregate(data.Count(), data.Sum("v"), data.Min("v"), data.Mean("v")).take_all()
    groups = collections.defaultdict(list)
    for k, v in zip(keys.tolist(), vals.tolist()):
        groups[k].append(v)
    assert [int(r["k"]) for r in rows] == sorted(groups)
    for r in rows:
        vs = np.array(groups[int(r["k"])])
        assert r["count()"] == len(vs)
        assert np.isclose(r["sum(v)"], vs.sum())
        assert r["min(v)"] == vs.min()
        assert np.isclose(r["mean(v)"], vs.mean())

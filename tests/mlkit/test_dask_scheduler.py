"""The Dask scheduler: arrays, dataframes and delayed graphs computed as p2pcompute tasks (skipped without dask)."""

from __future__ import annotations

import numpy as np
import pytest

import p2pcompute as p2p

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

from p2pcompute.mlkit import dask as p2p_dask  # noqa: E402


def test_array_reductions_match_numpy(ml_cluster):
    rng = np.random.default_rng(0)
    a = rng.random((300, 200))
    x = da.from_array(a, chunks=(100, 100))
    got_sum, got_mean, got_mat = dask.compute(x.sum(), x.mean(axis=0), (x @ x.T)[:10, :10],
                                              scheduler=p2p_dask.get)
    assert np.isclose(got_sum, a.sum())
    assert np.allclose(got_mean, a.mean(axis=0))
    assert np.allclose(got_mat, (a @ a.T)[:10, :10])


def test_delayed_nested_keys_and_config_helper(ml_cluster):
    @dask.delayed
    def inc(v):
        return v + 1

    @dask.delayed
    def add(a, b):
        return a + b

    total = add(inc(1), inc(2))
    assert dask.compute(total, [inc(10), (inc(20),)], scheduler=p2p_dask.get) == (5, [11, (21,)])
    with p2p_dask.enable_dask_on_p2p():
        assert total.compute() == 5
        assert dask.config.get("scheduler") is p2p_dask.get


def test_errors_keep_their_type(ml_cluster):
    @dask.delayed
    def boom(v):
        raise KeyError(f"missing {v}")

    with pytest.raises(KeyError, match="missing 3"):
        boom(3).compute(scheduler=p2p_dask.get)


def test_only_wanted_keys_come_back_to_the_driver(ml_cluster, monkeypatch):
    # Intermediate chunks stay in the stores: the driver fetches exactly the final result, once.
    fetched = []
    real_get = p2p.get

    def spy(refs, **kw):
        fetched.append(len(refs) if isinstance(refs, list) else 1)
        return real_get(refs, **kw)

    monkeypatch.setattr(p2p_dask.p2p, "get", spy)
    x = da.ones((40_000,), chunks=1_000)  # 40 chunks, a tree of partial sums
    assert (x * 2).sum().compute(scheduler=p2p_dask.get) == 80_000
    assert fetched == [1]


def test_dataframe_groupby(ml_cluster):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"k": np.arange(200) % 7, "v": np.arange(200.0)})
    got = dd.from_pandas(df, npartitions=5).groupby("k").v.sum().compute(scheduler=p2p_dask.get)
    pd.testing.assert_series_equal(got.sort_index(), df.groupby("k").v.sum(), check_names=False)

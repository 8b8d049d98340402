"""Collectives of mlkit.train: exact results for any shape, dtype, op and group size (1-4 workers), the ring's
traffic, and bad input.

The groups are real worker actors (the trainer's own `TrainWorker`) on the shared embedded peer; with
num_cpus=0 four of them fit a 2-CPU peer. One pool of four actors is set up again as a group of the size each
example asks for, so a hypothesis example costs a few actor calls, not a new group.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import p2pcompute as p2p
from p2pcompute.mlkit.train import session
from p2pcompute.mlkit.train.collective import _chunk_bounds
from p2pcompute.mlkit.train.session import TrainContext
from p2pcompute.mlkit.train.worker import RemoteTrainWorker, split_dataset

pytestmark = [pytest.mark.mlkit]

_POOL: list = []


@pytest.fixture(scope="module", autouse=True)
def _stop_pool():
    """The pool's actors go away with this module, so later test modules get the peer to themselves."""
    yield
    for worker in _POOL:
        p2p.kill(worker)
    _POOL.clear()


def _group(n: int, ring_threshold_bytes: int = 256 * 1024) -> list:
    if not _POOL:
        _POOL.extend(RemoteTrainWorker.options(num_cpus=0).remote() for _ in range(4))
    peers = _POOL[:n]
    p2p.get([w.setup.remote(r, peers, 60.0, ring_threshold_bytes) for r, w in enumerate(peers)], timeout=60)
    return peers


def _run(peers, fn, config=None):
    """Run `fn(config)` as a training loop on every rank of `peers`; return each rank's result."""
    n = len(peers)
    refs = [w.run.remote(fn, config or {}, TrainContext(r, n, r, n, 0, "t", None, 0), {}, None, None)
            for r, w in enumerate(peers)]
    return p2p.get(refs, timeout=120)


def _rank() -> int:
    return session.get_context().get_world_rank()


DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex64"]


def _reference(arrays, op):
    arrays = [a.astype(np.float64) if op == "mean" and not np.issubdtype(a.dtype, np.inexact) else a
              for a in arrays]
    ufunc = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}[op]
    out = functools.reduce(lambda a, b: ufunc(a, b), arrays)
    return out / len(arrays) if op == "mean" else out


@st.composite
def allreduce_cases(draw):
    n = draw(st.integers(1, 4))
    op = draw(st.sampled_from(["sum", "mean", "max", "min", "prod"]))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9))
    # Small integers stored in the dtype: every sum or product of four of them is exact, so any order of
    # reduction gives the same bits and the reference is unambiguous.
    hi = 3 if op == "prod" else 100
    lo = 0 if dtype.kind in "ub" else -hi
    hi = 1 if dtype.kind == "b" else hi
    arrays = [draw(hnp.arrays(np.int64, shape, elements=st.integers(lo, hi))).astype(dtype) for _ in range(n)]
    ring = draw(st.booleans())
    return n, op, arrays, ring


def _allreduce_loop(config):
    return session.allreduce(config["arrays"][_rank()], op=config["op"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=allreduce_cases())
def test_allreduce_is_exact_for_any_shape_dtype_op_and_group_size(ml_cluster, case):
    n, op, arrays, ring = case
    peers = _group(n, ring_threshold_bytes=0 if ring else 1 << 30)
    results = _run(peers, _allreduce_loop, {"arrays": arrays, "op": op})
    expected = _reference(arrays, op)
    for rank, got in enumerate(results):
        assert got.shape == expected.shape and got.dtype == expected.dtype, (rank, got.dtype, expected.dtype)
        assert np.array_equal(got, expected), (rank, op, got, expected)


def _random_floats_loop(config):
    rng = np.random.default_rng(_rank())
    mine = rng.standard_normal(config["size"]).astype(np.float32)
    before = dict(session.collective_stats().bytes_sent)
    total = session.allreduce(mine, op="sum")
    sent = session.collective_stats().bytes_sent.get("allreduce", 0) - before.get("allreduce", 0)
    return total, mine, sent


def test_ring_allreduce_of_a_large_array_sends_2_n_minus_1_over_n_of_it(ml_cluster):
    size = 300_001  # 1.2 MB of float32, not divisible by 3: uneven chunks
    peers = _group(3)
    results = _run(peers, _random_floats_loop, {"size": size})
    totals = [r[0] for r in results]
    expected = sum(r[1].astype(np.float64) for r in results)
    for total in totals:  # bit-identical on every rank, and the right sum up to float32 rounding
        assert np.array_equal(total, totals[0])
    np.testing.assert_allclose(totals[0], expected, rtol=1e-5, atol=1e-5)
    nbytes = size * 4
    for _total, _mine, sent in results:
        assert sent == pytest.approx(2 * (3 - 1) / 3 * nbytes, rel=1e-3), sent


def _bcast_gather_loop(config):
    r = _rank()
    b = session.broadcast(config["arrays"][r] if r == config["src"] else None, src_rank=config["src"])
    g = session.allgather(config["arrays"][r])
    objs = session.allgather_object({"rank": r})
    return b, g, objs


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_broadcast_and_allgather_carry_any_shape_and_dtype(ml_cluster, data):
    n = data.draw(st.integers(1, 4))
    dtype = data.draw(st.sampled_from(DTYPES + ["<U3"]))
    arrays = [data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=2, max_side=6))) for _ in range(n)]
    src = data.draw(st.integers(0, n - 1))
    results = _run(_group(n), _bcast_gather_loop, {"arrays": arrays, "src": src})
    for b, g, objs in results:
        np.testing.assert_array_equal(b, arrays[src])
        assert b.dtype == arrays[src].dtype and b.shape == arrays[src].shape
        assert len(g) == n
        for got, want in zip(g, arrays):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
        assert objs == [{"rank": i} for i in range(n)]


def _large_broadcast_loop(config):
    r = _rank()
    sums = []
    for i in range(config["rounds"]):  # back to back: the root moves on before the others have read
        big = np.arange(config["size"], dtype=np.float64) + i if r == 1 else None
        out = session.broadcast(big, src_rank=1)
        out[0] = -1  # the result is the caller's to modify
        gathered = session.allgather(np.full(config["size"], float(r + i)))
        sums.append((float(out[1:].sum()), [float(g[-1]) for g in gathered]))
    return sums


def test_large_broadcasts_and_allgathers_reach_every_rank(ml_cluster):
    size, rounds = 200_000, 5  # 1.6 MB each: through the object store
    results = _run(_group(3), _large_broadcast_loop, {"size": size, "rounds": rounds})
    expected = [(float((np.arange(1, size) + i).sum()), [float(r + i) for r in range(3)]) for i in range(rounds)]
    assert results == [expected] * 3


def _barrier_loop(config):
    r = _rank()
    with open(os.path.join(config["dir"], f"rank{r}"), "w") as f:
        f.write("here")
    session.barrier()
    return sorted(os.listdir(config["dir"]))


def test_barrier_returns_only_after_every_rank_arrived(ml_cluster, tmp_path):
    results = _run(_group(4), _barrier_loop, {"dir": str(tmp_path)})
    assert results == [[f"rank{i}" for i in range(4)]] * 4


def _bad_input_loop(config):
    errors = []
    for call in (lambda: session.allreduce(np.zeros(3), op="median"),
                 lambda: session.allreduce(np.array([object()]), op="sum"),
                 lambda: session.broadcast(np.zeros(2), src_rank=7)):
        try:
            call()
        except (ValueError, TypeError) as exc:
            errors.append(type(exc).__name__ + ": " + str(exc))
    return errors


def test_bad_collective_arguments_raise_clear_errors(ml_cluster):
    (errors,) = _run(_group(1), _bad_input_loop)
    assert len(errors) == 3
    assert "median" in errors[0] and "object" in errors[1] and "src_rank" in errors[2]


def test_collectives_outside_a_training_loop_say_where_they_work():
    with pytest.raises(RuntimeError, match="train_loop_per_worker"):
        session.allreduce(np.zeros(2))


@given(n=st.integers(0, 10_000), parts=st.integers(1, 16))
def test_chunk_bounds_tile_the_array_evenly(n, parts):
    bounds = _chunk_bounds(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@given(rows=st.integers(0, 50), parts=st.integers(1, 6))
def test_dataset_shards_are_consecutive_and_cover_every_row(rows, parts):
    X = np.arange(rows * 2).reshape(rows, 2)
    y = np.arange(rows)
    shards = split_dataset((X, y), parts)
    assert len(shards) == parts
    np.testing.assert_array_equal(np.concatenate([s[0] for s in shards]), X)
    np.testing.assert_array_equal(np.concatenate([s[1] for s in shards]), y)
    as_dict = split_dataset({"x": X, "y": y}, parts)
    np.testing.assert_array_equal(np.concatenate([s["y"] for s in as_dict]), y)


def test_split_dataset_rejects_what_it_cannot_split():
    with pytest.raises(ValueError, match="same number of rows"):
        split_dataset((np.zeros(3), np.zeros(4)), 2)
    with pytest.raises(TypeError, match="cannot split"):
        split_dataset(42, 2)

"""mlkit.data end to end on the shared embedded peer: sources, file reads and writes, actor pools, limits,
splits, consumption, stats and progress, and the errors bad input gets."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

import p2pcompute as p2p
from p2pcompute.mlkit import data

pytestmark = [pytest.mark.mlkit, pytest.mark.integration]


def test_sources_and_consumers(ml_cluster):
    ds = data.range(100, override_num_blocks=4)
    assert ds.count() == 100 and ds.num_blocks() == 4
    assert [r["id"] for r in ds.take(3)] == [0, 1, 2]
    assert ds.sum("id") == 4950 and ds.min("id") == 0 and ds.max("id") == 99
    assert ds.mean("id") == pytest.approx(49.5)
    assert ds.std("id") == pytest.approx(np.std(np.arange(100), ddof=1))
    assert ds.schema() == {"id": np.dtype(np.int64)}
    items = data.from_items([{"a": i, "b": str(i)} for i in range(10)])
    assert [r["b"] for r in items.take_all()] == [str(i) for i in range(10)]
    assert data.from_items([1, 2, 3]).to_numpy().tolist() == [1, 2, 3]
    arr = np.arange(24.0).reshape(12, 2)
    assert np.array_equal(data.from_numpy(arr).to_numpy(), arr)
    assert data.range(0).count() == 0 and data.range(0).take() == []


def test_map_flat_map_columns(ml_cluster):
    ds = data.range(20, override_num_blocks=3)
    doubled = ds.map(lambda r: {"id": r["id"], "d": r["id"] * 2})
    assert doubled.sum("d") == 2 * 190
    flat = ds.flat_map(lambda r: [{"v": r["id"]}] * 2)
    assert flat.count() == 40
    extra = ds.add_column("neg", lambda b: -b["id"]).select_columns(["neg"])
    assert extra.columns() == ["neg"] and extra.sum("neg") == -190
    assert ds.add_column("z", lambda b: b["id"] * 0).drop_columns(["id"]).columns() == ["z"]


def test_limit_stops_reading_early(ml_cluster):
    ds = data.range(10_000, override_num_blocks=100).map_batches(lambda b: b)
    assert [r["id"] for r in ds.limit(15).take_all()] == list(range(15))
    stages = ds.limit(15)
    stages.take_all()
    read = stages._last_stats[0]
    assert read.tasks_launched < 100  # only the first few of the 100 blocks were read


def test_union_zip_repartition_split(ml_cluster):
    a, b = data.range(10, override_num_blocks=2), data.range(5, override_num_blocks=3)
    assert [r["id"] for r in a.union(b).take_all()] == list(range(10)) + list(range(5))
    z = a.zip(a.map_batches(lambda x: {"sq": x["id"] ** 2}).repartition(3))
    assert [(r["id"], r["sq"]) for r in z.take_all()] == [(i, i * i) for i in range(10)]
    with pytest.raises(ValueError, match="same number of rows"):
        a.zip(b).take_all()
    parts = data.range(103, override_num_blocks=7).split(3, equal=True)
    assert [p.count() for p in parts] == [34, 34, 34]
    shares = data.range(100, override_num_blocks=10).split(3)
    assert sum(s.count() for s in shares) == 100 and all(s.count() >= 30 for s in shares)
    assert data.range(30, override_num_blocks=3).repartition(5).num_blocks() == 5


def test_iter_batches_prefetch_and_formats(ml_cluster):
    ds = data.range(1000, override_num_blocks=7)
    for prefetch in (0, 1, 4):
        sizes = [len(b["id"]) for b in ds.iter_batches(batch_size=128, prefetch_batches=prefetch)]
        assert sizes == [128] * 7 + [104]
    assert sum(len(b["id"]) for b in ds.iter_batches(batch_size=128, drop_last=True)) == 896
    shuffled = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=100, local_shuffle_buffer_size=300,
                                                                local_shuffle_seed=0)])
    assert sorted(shuffled.tolist()) == list(range(1000)) and shuffled.tolist() != list(range(1000))
    # An abandoned iterator stops the execution cleanly.
    it = ds.iter_batches(batch_size=10, prefetch_batches=2)
    assert len(next(it)["id"]) == 10
    it.close()


def test_pandas_batches(ml_cluster):
    pd = pytest.importorskip("pandas")
    ds = data.range(50, override_num_blocks=2).map_batches(lambda df: df.assign(t=df["id"] * 10),
                                                           batch_format="pandas", batch_size=20)
    assert ds.sum("t") == 12250
    frame = ds.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["id", "t"]


def test_materialize_runs_once(ml_cluster, tmp_path):
    marker = tmp_path / "calls"

    def count_calls(batch):
        with open(marker, "a") as f:
            f.write("x")
        return batch

    m = data.range(40, override_num_blocks=4).map_batches(count_calls).materialize()
    assert m.count() == 40 and m.sum("id") == 780 and m.num_blocks() == 4
    assert len(marker.read_text()) == 4


class AddModel:
    """A 'model' loaded once per actor: its construction is counted in a file."""

    def __init__(self, offset, log_path):
        self.offset = offset
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")

    def __call__(self, batch):
        return {"id": batch["id"], "y": batch["id"] + self.offset, "pid": np.full(len(batch["id"]), os.getpid())}


def test_actor_pool_map_batches_loads_once_per_actor(ml_cluster, tmp_path):
    log = tmp_path / "ctor"
    ds = data.range(2000, override_num_blocks=20).map_batches(
        AddModel, fn_constructor_args=(5, str(log)), concurrency=(1, 2), batch_size=100)
    rows = ds.take_all()
    assert [r["y"] for r in rows] == [i + 5 for i in range(2000)]
    ctor_pids = log.read_text().split()
    used = {int(r["pid"]) for r in rows}
    assert len(ctor_pids) == len(set(ctor_pids)) <= 2  # each actor built the model once
    assert used <= {int(p) for p in ctor_pids}
    with pytest.raises(ValueError, match="concurrency"):
        data.range(3).map_batches(AddModel, concurrency=(3, 1))


def test_files_round_trip(ml_cluster, tmp_path):
    ds = data.from_numpy({"a": np.arange(30), "b": np.arange(30) * 0.5}, override_num_blocks=3)
    written = ds.write_csv(tmp_path / "csv")
    assert len(written) == 3
    back = data.read_csv(str(tmp_path / "csv"))
    assert back.num_blocks() == 3
    assert [(r["a"], r["b"]) for r in back.take_all()] == [(i, i * 0.5) for i in range(30)]
    ds.write_json(tmp_path / "json")
    assert data.read_json(str(tmp_path / "json" / "*.json")).sum("a") == 435
    ds.select_columns(["b"]).write_npy(tmp_path / "npy")
    assert data.read_npy(tmp_path / "npy").sum("data") == pytest.approx(217.5)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.bin").write_bytes(b"hello")
    row = data.read_binary_files(tmp_path / "bin", include_paths=True).take_all()[0]
    assert row["bytes"] == b"hello" and row["path"].endswith("x.bin")


def test_parquet_round_trip(ml_cluster, tmp_path):
    pytest.importorskip("pyarrow")
    ds = data.from_numpy({"a": np.arange(10), "b": np.arange(10) * 2.0}, override_num_blocks=2)
    ds.write_parquet(tmp_path / "pq")
    back = data.read_parquet(tmp_path / "pq")
    assert back.sum("b") == 90.0 and back.count() == 10


def test_bad_input_is_named(ml_cluster, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.read_csv(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        data.read_csv(str(tmp_path / "*.csv"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (bad / "b.csv").write_text("x,y\n1,2\n3,4,5\n")
    with pytest.raises(ValueError, match=r"b\.csv \(block 1\), line 3: expected 2 fields"):
        data.read_csv(bad).take_all()
    (tmp_path / "j.json").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"j\.json \(block 0\), line 2: not valid JSON"):
        data.read_json(tmp_path / "j.json").count()
    with pytest.raises(TypeError, match=r"block \d+, rows 0-10: returned a list"):
        data.range(30, override_num_blocks=3).map_batches(lambda b: [1, 2], batch_size=10).take_all()
    with pytest.raises(TypeError, match="row 0: map.*returned a int"):
        data.range(3).map(lambda r: 1).take_all()
    with pytest.raises(ZeroDivisionError):
        data.range(3).map_batches(lambda b: {"x": b["id"] // 0 + 1 / 0}).take_all()
    with pytest.raises(ValueError, match="batch_format"):
        data.range(3).map_batches(lambda b: b, batch_format="arrow")
    with pytest.raises(ValueError, match="batch_size"):
        data.range(3).iter_batches(batch_size=0)
    with pytest.raises(TypeError, match="needs a function"):
        data.range(3).map(5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        data.range(3).map(lambda r: r, num_cpu=1)


def test_streaming_split_shares_one_pass(ml_cluster):
    its = data.range(500, override_num_blocks=10).streaming_split(2)

    @p2p.remote
    def consume(it):
        return [int(x) for b in it.iter_batches(batch_size=50) for x in b["id"]]

    a, b = p2p.get([consume.remote(its[0]), consume.remote(its[1])])
    assert sorted(a + b) == list(range(500))
    # A second epoch gives every row again.
    a2, b2 = p2p.get([consume.remote(its[0]), consume.remote(its[1])])
    assert sorted(a2 + b2) == list(range(500))


def test_stats_and_progress_bars(ml_cluster):
    ds = data.range(300, override_num_blocks=3).map_batches(lambda b: b, batch_size=50).filter(lambda r: True)
    assert "not been executed" in ds.stats()
    ds.take_all()
    text = ds.stats()
    assert "ReadRange->MapBatches(<lambda>)->Filter(<lambda>)" in text and "300 rows" in text
    from p2pcompute.mlkit.data.progress import ProgressBars
    from p2pcompute.mlkit.data.executor import ExecOptions, execute
    from p2pcompute.mlkit.data.planner import build
    pipeline = build(ds._source, ds._ops, ExecOptions.for_cluster())
    out = io.StringIO()
    assert sum(m.num_rows for _, m in execute(pipeline, ProgressBars(pipeline.all, out))) == 300
    drawn = out.getvalue()
    assert "3/3 blocks, 300 rows" in drawn  # the final redraw shows the finished stage


def test_written_json_is_plain(ml_cluster, tmp_path):
    data.from_items([{"a": 1, "s": "x"}]).write_json(tmp_path)
    (f,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    assert json.loads((tmp_path / f).read_text()) == {"a": 1, "s": "x"}

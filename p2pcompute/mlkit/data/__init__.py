"""p2pcompute.mlkit.data: streaming datasets of numpy blocks, for batch inference and preprocessing.

    from p2pcompute.mlkit import data
    ds = data.read_npy("features/").map_batches(Model, concurrency=(1, 4), batch_size=10_000)
    for batch in ds.iter_batches(batch_size=4096):
        ...

A dataset is a lazy plan; consuming it runs a pipeline of tasks with a bounded number of blocks alive, so
data much larger than the object stores streams through. Blocks are dicts of numpy arrays, made and kept
where the task that made them ran. See docs/mlkit/data.md.
"""

from __future__ import annotations

import math

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.data import block as _B
from p2pcompute.mlkit.data import io as _io
from p2pcompute.mlkit.data.aggregate import AggregateFn, Count, Max, Mean, Min, Std, Sum
from p2pcompute.mlkit.data.dataset import Dataset, GroupedData, MaterializedDataset
from p2pcompute.mlkit.data.ops import RangeRead
from p2pcompute.mlkit.data.split import DataIterator

__all__ = ["AggregateFn", "Count", "DataIterator", "Dataset", "GroupedData", "MaterializedDataset", "Max", "Mean",
           "Min", "Std", "Sum", "from_items", "from_numpy", "from_pandas", "range", "read_binary_files",
           "read_csv", "read_json", "read_npy", "read_numpy", "read_parquet"]

_builtin_range = range


def _ensure_init() -> None:
    if not p2p.is_initialized():
        p2p.init()


def _num_blocks(n: int, override: int | None) -> int:
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override <= 0:
            raise ValueError(f"override_num_blocks must be a positive int, not {override!r}")
        return min(override, max(n, 1))
    # Enough blocks to keep every CPU busy with a few in flight; big enough that per-task cost is small.
    cpus = max(1, int(p2p.cluster_resources().get("CPU", 1)))
    return max(1, min(n, max(4 * cpus, math.ceil(n / 100_000)), 200))


def range(n: int, *, override_num_blocks: int | None = None) -> Dataset:  # noqa: A001 - Ray's name
    """Rows 0..n-1 in column "id", made in the read tasks (nothing goes through the driver)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"range() needs an int >= 0, not {n!r}")
    _ensure_init()
    k = _num_blocks(n, override_num_blocks)
    edges = [n * i // k for i in _builtin_range(k + 1)]
    return Dataset(("reads", "ReadRange", [RangeRead(a, b) for a, b in zip(edges[:-1], edges[1:])]))


def _from_block(block: dict, name: str, override: int | None) -> Dataset:
    n = _B.num_rows(block)
    k = _num_blocks(n, override)
    edges = [n * i // k for i in _builtin_range(k + 1)]
    blocks = []
    for a, b in zip(edges[:-1], edges[1:]):
        part = {c: np.ascontiguousarray(v[a:b]) for c, v in block.items()}
        blocks.append((p2p.put(part), _B.meta_of(part)))
    return Dataset(("blocks", name, blocks))


def from_items(items: list, *, override_num_blocks: int | None = None) -> Dataset:
    """Rows from a list of dicts (or of plain values, which become column "item")."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"from_items() takes a list, not {type(items).__name__}")
    _ensure_init()
    return _from_block(_B.from_rows(list(items)), "FromItems", override_num_blocks)


def from_numpy(arrays, *, override_num_blocks: int | None = None) -> Dataset:
    """An array (column "data", one row per first-axis entry) or a dict of equal-length arrays."""
    _ensure_init()
    if isinstance(arrays, np.ndarray):
        block = {"data": arrays}
    elif isinstance(arrays, dict):
        block = _B.from_batch(arrays, "from_numpy()")
    else:
        raise TypeError(f"from_numpy() takes a numpy array or a dict of them, not {type(arrays).__name__}")
    return _from_block(block, "FromNumpy", override_num_blocks)


def from_pandas(df, *, override_num_blocks: int | None = None) -> Dataset:
    _ensure_init()
    return _from_block(_B.from_batch(df, "from_pandas()"), "FromPandas", override_num_blocks)


def _read(kind: str, paths, extensions: tuple, reader: str, options: dict | None = None) -> Dataset:
    _ensure_init()
    files = _io.expand_paths(paths, extensions, reader)
    reads = [_io.FileRead(kind, f, i, dict(options or {})) for i, f in enumerate(files)]
    return Dataset(("reads", reads[0].name, reads))


def read_csv(paths, *, delimiter: str = ",") -> Dataset:
    """CSV files with a header line: one block per file; int, float or str columns inferred per file."""
    return _read("csv", paths, (".csv",), "read_csv", {"delimiter": delimiter})


def read_json(paths) -> Dataset:
    """JSON lines files (one object per line)."""
    return _read("json", paths, (".json", ".jsonl"), "read_json")


def read_npy(paths, *, column: str = "data") -> Dataset:
    """.npy files: each file's array is one block of column `column` (rows = first axis)."""
    return _read("npy", paths, (".npy",), "read_npy", {"column": column})


read_numpy = read_npy


def read_parquet(paths, *, columns: list | None = None) -> Dataset:
    """Parquet files (needs pyarrow)."""
    _io._pyarrow_parquet()
    return _read("parquet", paths, (".parquet",), "read_parquet", {"columns": columns})


def read_binary_files(paths, *, include_paths: bool = False) -> Dataset:
    """One row per file: column "bytes" (and "path" with include_paths)."""
    return _read("binary", paths, (), "read_binary_files", {"include_paths": include_paths})

"""`Dataset`: a lazy plan of per-block operators over numpy blocks, executed as a bounded stream of tasks.

Transforms (`map`, `map_batches`, `filter`, `sort`, ...) only return a new `Dataset` with one more
operator. Consuming it (`iter_batches`, `take`, `count`, `write_*`, `materialize`) builds a pipeline
(`planner.build`) and runs it with the streaming executor; blocks flow through as tasks finish, at most a
bounded number alive at once. A dataset can be consumed many times: each consumption runs the plan again,
unless it was `materialize`d (its blocks are then kept in the object stores).
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, Iterator

import numpy as np

import p2pcompute as p2p
from p2pcompute.mlkit.data import aggregate as agg
from p2pcompute.mlkit.data import block as B
from p2pcompute.mlkit.data import io as dio
from p2pcompute.mlkit.data import progress as prog
from p2pcompute.mlkit.data import shuffle as sh
from p2pcompute.mlkit.data.executor import ExecOptions, execute
from p2pcompute.mlkit.data.iteration import fetch_blocks, rebatch
from p2pcompute.mlkit.data.ops import Filter, FlatMap, MapBatches, MapRows, Partial, Write
from p2pcompute.mlkit.data.planner import build

_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "max_retries", "scheduling_strategy")


def _check_fn(fn, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} needs a function, not {type(fn).__name__}")


def _check_positive(value, what: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int{' or None' if allow_none else ''}, not {value!r}")


class Dataset:
    """A distributed dataset of numpy blocks (columns -> arrays). Build with `p2pcompute.mlkit.data.range`,
    `from_numpy`, `read_csv`, ...; transforms are lazy; consumers execute the plan."""

    def __init__(self, source: tuple, ops: list | None = None):
        self._source = source
        self._ops = list(ops or [])
        self._last_stats: list = []
        self._last_wall_s = 0.0

    def _with(self, op: tuple) -> "Dataset":
        return Dataset(self._source, self._ops + [op])

    def __repr__(self) -> str:
        names = [self._source[1] if self._source[0] != "union" else "Union"]
        names += [op[1].name if op[0] in ("map", "actor_map") else
                  (f"Limit[{op[1]}]" if op[0] == "limit" else op[1]) for op in self._ops]
        return f"Dataset({' -> '.join(names)})"

    # ---- transforms ----
    def map(self, fn: Callable, **remote_args) -> "Dataset":
        _check_fn(fn, "map()")
        return self._with(("map", MapRows(fn), _remote_args(remote_args, "map")))

    def filter(self, fn: Callable, **remote_args) -> "Dataset":
        _check_fn(fn, "filter()")
        return self._with(("map", Filter(fn), _remote_args(remote_args, "filter")))

    def flat_map(self, fn: Callable, **remote_args) -> "Dataset":
        _check_fn(fn, "flat_map()")
        return self._with(("map", FlatMap(fn), _remote_args(remote_args, "flat_map")))

    def map_batches(self, fn, *, batch_size: int | None = 1024, batch_format: str = "numpy",
                    fn_args: tuple = (), fn_kwargs: dict | None = None, fn_constructor_args: tuple = (),
                    fn_constructor_kwargs: dict | None = None, concurrency=None, compute=None,
                    **remote_args) -> "Dataset":
        """Apply `fn` to batches of `batch_size` rows (None: whole blocks). `fn` gets and returns a dict of
        arrays ("numpy"/"dict") or a DataFrame ("pandas"). A class is built once per actor of a pool of
        `concurrency=(min, max)` actors (or `n`) and called on batches: load models in `__init__`."""
        _check_positive(batch_size, "batch_size")
        if batch_format not in B.BATCH_FORMATS:
            raise ValueError(f"batch_format must be one of {B.BATCH_FORMATS}, not {batch_format!r}")
        rargs = _remote_args(remote_args, "map_batches")
        op = MapBatches(fn, batch_size, batch_format, tuple(fn_args), dict(fn_kwargs or {}))
        if inspect.isclass(fn):
            lo, hi = _pool_size(concurrency if concurrency is not None else compute)
            op.label = fn.__name__
            return self._with(("actor_map", op, tuple(fn_constructor_args), dict(fn_constructor_kwargs or {}),
                               (lo, hi), rargs))
        _check_fn(fn, "map_batches()")
        if fn_constructor_args or fn_constructor_kwargs:
            raise ValueError("fn_constructor_args only apply when map_batches gets a class")
        return self._with(("map", op, rargs))

    def select_columns(self, cols: list) -> "Dataset":
        return self.map_batches(_Select(list(cols)), batch_size=None)

    def drop_columns(self, cols: list) -> "Dataset":
        return self.map_batches(_Drop(list(cols)), batch_size=None)

    def add_column(self, name: str, fn: Callable) -> "Dataset":
        return self.map_batches(_AddColumn(name, fn), batch_size=None)

    def limit(self, n: int) -> "Dataset":
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"limit() needs an int >= 0, not {n!r}")
        return self._with(("limit", n))

    def repartition(self, num_blocks: int) -> "Dataset":
        _check_positive(num_blocks, "num_blocks", allow_none=False)
        return self._with(("all_to_all", f"Repartition[{num_blocks}]", sh.repartition_fn(num_blocks)))

    def random_shuffle(self, *, seed: int | None = None, num_blocks: int | None = None) -> "Dataset":
        _check_positive(num_blocks, "num_blocks")
        return self._with(("all_to_all", "RandomShuffle", sh.shuffle_fn(seed, num_blocks)))

    def sort(self, key: str, descending: bool = False) -> "Dataset":
        if not isinstance(key, str):
            raise TypeError(f"sort() takes a column name, not {type(key).__name__}")
        return self._with(("all_to_all", f"Sort[{key}]", sh.sort_fn(key, bool(descending))))

    def groupby(self, key: str) -> "GroupedData":
        if not isinstance(key, str):
            raise TypeError(f"groupby() takes a column name, not {type(key).__name__}")
        return GroupedData(self, key)

    def union(self, *others: "Dataset") -> "Dataset":
        for o in others:
            if not isinstance(o, Dataset):
                raise TypeError(f"union() takes datasets, not {type(o).__name__}")
        return Dataset(("union", [self, *others]))

    def zip(self, other: "Dataset") -> "Dataset":
        if not isinstance(other, Dataset):
            raise TypeError(f"zip() takes a dataset, not {type(other).__name__}")
        return self._with(("all_to_all", "Zip", sh.zip_fn(lambda: list(other._iter_refs()))))

    # ---- execution ----
    def _iter_refs(self, progress: bool | None = None) -> Iterator[tuple]:
        opts = ExecOptions.for_cluster()
        pipeline = build(self._source, self._ops, opts)
        bars = prog.ProgressBars(pipeline.all) if (prog.wanted() if progress is None else progress) else None
        start = time.monotonic()
        try:
            yield from execute(pipeline, bars)
        finally:
            self._last_stats = [s.stats for s in pipeline.all]
            self._last_wall_s = time.monotonic() - start

    def materialize(self) -> "MaterializedDataset":
        blocks = list(self._iter_refs())
        out = MaterializedDataset(blocks)
        out._last_stats, out._last_wall_s = self._last_stats, self._last_wall_s
        return out

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy",
                     prefetch_batches: int = 1, drop_last: bool = False,
                     local_shuffle_buffer_size: int | None = None, local_shuffle_seed: int | None = None):
        """Batches of `batch_size` rows (the last one may be smaller unless `drop_last`); `prefetch_batches`
        blocks are fetched ahead on a background thread while the caller works on the current batch."""
        _check_positive(batch_size, "batch_size")
        if batch_format not in B.BATCH_FORMATS:
            raise ValueError(f"batch_format must be one of {B.BATCH_FORMATS}, not {batch_format!r}")
        if isinstance(prefetch_batches, bool) or not isinstance(prefetch_batches, int) or prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be an int >= 0, not {prefetch_batches!r}")
        blocks = fetch_blocks(self._iter_refs(), prefetch_batches)
        return rebatch(blocks, batch_size, batch_format, drop_last, local_shuffle_buffer_size, local_shuffle_seed)

    def iter_rows(self) -> Iterator[dict]:
        for block in fetch_blocks(self._iter_refs(), 1):
            yield from B.iter_rows(block)

    def __iter__(self):
        return self.iter_rows()

    def take(self, limit: int = 20) -> list:
        limited = self.limit(limit)
        out = list(limited.iter_rows())
        self._adopt_stats(limited)
        return out

    def take_all(self, limit: int | None = None) -> list:
        rows = list(self.iter_rows())
        if limit is not None and len(rows) > limit:
            raise ValueError(f"the dataset has more than {limit} rows")
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "numpy"):
        for batch in self.limit(batch_size).iter_batches(batch_size=batch_size, batch_format=batch_format):
            return batch
        return B.to_batch({}, batch_format)

    def show(self, limit: int = 20) -> None:
        for row in self.take(limit):
            print(row)

    def count(self) -> int:
        return sum(meta.num_rows for _, meta in self._iter_refs())

    def schema(self) -> dict:
        """Column name -> dtype, from the first non-empty block."""
        for block in fetch_blocks(self.limit(1)._iter_refs(), 0):
            if block:
                return {k: v.dtype for k, v in block.items()}
        return {}

    def columns(self) -> list:
        return list(self.schema())

    def num_blocks(self) -> int:
        return sum(1 for _ in self._iter_refs())

    def to_numpy(self, column: str | None = None):
        """The whole dataset in the driver: one array (`column`, or the only column), else a dict of arrays."""
        block = B.concat(fetch_blocks(self._iter_refs(), 1))
        if column is not None:
            if column not in block:
                raise KeyError(f"no column {column!r}; the dataset has {sorted(block)}")
            return block[column]
        return next(iter(block.values())) if len(block) == 1 else block

    def to_pandas(self):
        return B.to_batch(B.concat(fetch_blocks(self._iter_refs(), 1)), "pandas")

    def aggregate(self, *aggs: agg.AggregateFn) -> dict:
        # The partial states are computed by one more fused operator, in the tasks that make the blocks.
        derived = self._with(("map", Partial(list(aggs)), {}))
        states = [b["state"][0] for b in fetch_blocks(derived._iter_refs(), 0)
                  if b and b["state"][0] is not None]
        self._adopt_stats(derived)
        results = agg.combine(list(aggs), states)
        return {a.name: r for a, r in zip(aggs, results)}

    def _one(self, cls, on, **kw):
        a = cls(on, **kw)
        return self.aggregate(a)[a.name]

    def sum(self, on: str):
        return self._one(agg.Sum, on)

    def min(self, on: str):
        return self._one(agg.Min, on)

    def max(self, on: str):
        return self._one(agg.Max, on)

    def mean(self, on: str):
        return self._one(agg.Mean, on)

    def std(self, on: str, ddof: int = 1):
        return self._one(agg.Std, on, ddof=ddof)

    def split(self, n: int, *, equal: bool = False) -> list:
        """`n` materialized datasets. `equal=True`: exactly equal row counts (extra rows dropped, as Ray
        does); otherwise whole blocks, balanced by rows."""
        _check_positive(n, "n", allow_none=False)
        blocks = list(self._iter_refs())
        if equal:
            total = sum(m.num_rows for _, m in blocks)
            per = total // n
            made = sh.split_at_rows(blocks, [(i * per, (i + 1) * per) for i in range(n)])
            metas = p2p.get([m for _, m in made])
            return [MaterializedDataset([(b, meta)]) for (b, _), meta in zip(made, metas)]
        shares: list = [[] for _ in range(n)]
        rows = [0] * n
        for ref, meta in sorted(blocks, key=lambda x: -x[1].num_rows):
            i = rows.index(min(rows))
            shares[i].append((ref, meta))
            rows[i] += meta.num_rows
        return [MaterializedDataset(s) for s in shares]

    def streaming_split(self, n: int, *, equal: bool = False) -> list:
        """`n` iterators that share one streaming execution: each block goes to whichever consumer asks
        next. The iterators can be sent to other processes (trainer workers)."""
        from p2pcompute.mlkit.data.split import streaming_split
        _check_positive(n, "n", allow_none=False)
        return streaming_split(self, n, equal)

    def iterator(self):
        from p2pcompute.mlkit.data.split import LocalIterator
        return LocalIterator(self)

    # ---- writes ----
    def _write(self, kind: str, path: str, options: dict) -> list:
        written = self._with(("map", Write(kind, str(path), options), {}))
        paths = [str(b["path"][0]) for b in fetch_blocks(written._iter_refs(), 0) if b]
        self._adopt_stats(written)
        return paths

    def write_csv(self, path: str) -> list:
        return self._write("csv", path, {})

    def write_json(self, path: str) -> list:
        return self._write("json", path, {})

    def write_npy(self, path: str, *, column: str | None = None) -> list:
        return self._write("npy", path, {"column": column})

    write_numpy = write_npy

    def write_parquet(self, path: str) -> list:
        dio._pyarrow_parquet()
        return self._write("parquet", path, {})

    # ---- introspection ----
    def _adopt_stats(self, other: "Dataset") -> None:
        """A consumer that ran a derived plan (aggregates, writes) reports its stats as this dataset's."""
        self._last_stats, self._last_wall_s = other._last_stats, other._last_wall_s

    def stats(self) -> str:
        return prog.format_stats(self._last_stats, self._last_wall_s)


class MaterializedDataset(Dataset):
    """A dataset whose blocks exist (in the object stores); consuming it again costs no recomputation."""

    def __init__(self, blocks: list):
        super().__init__(("blocks", "Materialized", list(blocks)))

    def num_blocks(self) -> int:
        return len(self._source[2])

    def count(self) -> int:
        return sum(m.num_rows for _, m in self._source[2])


class GroupedData:
    def __init__(self, ds: Dataset, key: str):
        self._ds = ds
        self._key = key

    def aggregate(self, *aggs: agg.AggregateFn) -> Dataset:
        if not aggs:
            raise ValueError("aggregate() needs at least one aggregation (Count(), Sum('x'), ...)")
        for a in aggs:
            if not isinstance(a, agg.AggregateFn):
                raise TypeError(f"aggregate() takes Count/Sum/Min/Max/Mean/Std objects, not {type(a).__name__}")
        name = f"GroupBy[{self._key}]({', '.join(a.name for a in aggs)})"
        return self._ds._with(("all_to_all", name, sh.groupby_fn(self._key, list(aggs))))

    def count(self) -> Dataset:
        return self.aggregate(agg.Count())

    def sum(self, on: str) -> Dataset:
        return self.aggregate(agg.Sum(on))

    def min(self, on: str) -> Dataset:
        return self.aggregate(agg.Min(on))

    def max(self, on: str) -> Dataset:
        return self.aggregate(agg.Max(on))

    def mean(self, on: str) -> Dataset:
        return self.aggregate(agg.Mean(on))

    def std(self, on: str, ddof: int = 1) -> Dataset:
        return self.aggregate(agg.Std(on, ddof=ddof))


# ---- helpers ----

class _Select:
    def __init__(self, cols):
        self.cols = cols
        self.__name__ = f"select_columns{cols}"

    def __call__(self, batch):
        missing = [c for c in self.cols if c not in batch]
        if missing:
            raise KeyError(f"no columns {missing}; the dataset has {sorted(batch)}")
        return {c: batch[c] for c in self.cols}


class _Drop:
    def __init__(self, cols):
        self.cols = cols
        self.__name__ = f"drop_columns{cols}"

    def __call__(self, batch):
        return {k: v for k, v in batch.items() if k not in self.cols}


class _AddColumn:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn
        self.__name__ = f"add_column[{name}]"

    def __call__(self, batch):
        out = dict(batch)
        out[self.name] = np.asarray(self.fn(batch))
        return out


def _remote_args(kwargs: dict, what: str) -> dict:
    for k in kwargs:
        if k not in _RESOURCE_KEYS:
            raise TypeError(f"{what}() got an unexpected keyword argument {k!r}")
    return dict(kwargs)


def _pool_size(concurrency) -> tuple:
    if concurrency is None:
        return 1, max(1, int(p2p.cluster_resources().get("CPU", 1)))
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency > 0:
        return concurrency, concurrency
    if (isinstance(concurrency, tuple) and len(concurrency) == 2 and all(isinstance(x, int) for x in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return concurrency
    raise ValueError(f"concurrency must be a positive int or a (min, max) tuple with 1 <= min <= max, "
                     f"not {concurrency!r}")

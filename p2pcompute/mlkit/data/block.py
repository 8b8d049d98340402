"""Blocks: the unit a dataset is made of, stored and moved as one object.

A block is a `dict` of column name -> 1-d (or n-d, first axis = rows) numpy array, all with the same number
of rows. Columns pickle as protocol-5 buffers, so a block in the shared-memory store is read without a copy.
This module converts blocks to and from what user functions see (batches in "numpy"/"dict" or "pandas"
format, rows as dicts) and checks what user functions return, with errors that name the block and rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

Block = dict  # column name -> np.ndarray, equal lengths

BATCH_FORMATS = ("numpy", "dict", "pandas", "default")


@dataclass
class OpStat:
    """What one operator did to one block: for `Dataset.stats()`."""
    name: str
    wall_s: float
    rows_out: int


@dataclass
class BlockMeta:
    """Small facts about a block, returned beside it so the driver never fetches blocks to plan."""
    num_rows: int
    size_bytes: int
    columns: list = field(default_factory=list)
    op_stats: list = field(default_factory=list)  # list[OpStat]
    node_id: str = ""
    # Set by the driver: bytes of the input blocks this block's lineage keeps alive while it lives (the
    # core pins a task's arguments as long as its result exists, to rebuild it if lost).
    pinned_bytes: int = 0


def num_rows(block: Block) -> int:
    for col in block.values():
        return len(col)
    return 0


def size_bytes(block: Block) -> int:
    return int(sum(getattr(c, "nbytes", 0) for c in block.values()))


def meta_of(block: Block, op_stats: list | None = None, node_id: str = "") -> BlockMeta:
    return BlockMeta(num_rows(block), size_bytes(block), list(block), list(op_stats or []), node_id)


def empty_block() -> Block:
    return {}


def slice_block(block: Block, start: int, end: int) -> Block:
    return {k: v[start:end] for k, v in block.items()}


def take_rows(block: Block, indices: np.ndarray) -> Block:
    return {k: v[indices] for k, v in block.items()}


def concat(blocks: Iterable[Block]) -> Block:
    blocks = [b for b in blocks if b and num_rows(b) > 0]
    if not blocks:
        return {}
    if len(blocks) == 1:
        return blocks[0]
    names = list(blocks[0])
    for b in blocks[1:]:
        if list(b) != names and set(b) != set(names):
            raise ValueError(f"cannot combine blocks with different columns: {names} and {list(b)}")
    return {k: np.concatenate([b[k] for b in blocks]) for k in names}


def _as_column(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr  # a scalar: the caller says what is wrong
    if arr.dtype == object:
        out = np.empty(len(value), dtype=object)
        out[:] = list(value)
        return out
    return arr


def from_rows(rows: list) -> Block:
    """Rows (dicts, or plain values which become column "item") -> a block."""
    if not rows:
        return {}
    if not isinstance(rows[0], dict):
        return {"item": _as_column(rows)}
    names = list(rows[0])
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != set(names):
            raise ValueError(f"row {i} has columns {sorted(r) if isinstance(r, dict) else type(r).__name__}, "
                             f"expected {sorted(names)}: every row must have the same columns")
    return {k: _as_column([r[k] for r in rows]) for k in names}


def iter_rows(block: Block):
    names = list(block)
    cols = [block[k] for k in names]
    for i in range(num_rows(block)):
        yield {k: c[i] for k, c in zip(names, cols)}


def to_batch(block: Block, batch_format: str):
    """A block as a user function sees it."""
    if batch_format in ("numpy", "dict", "default"):
        return dict(block)
    if batch_format == "pandas":
        pd = _pandas()
        return pd.DataFrame({k: (list(v) if v.ndim > 1 else v) for k, v in block.items()})
    raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, not {batch_format!r}")


def from_batch(value: Any, where: str) -> Block:
    """What a user function returned -> a block; a TypeError naming `where` for anything else."""
    if isinstance(value, dict):
        out = {}
        length = None
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: column names must be str, got {k!r}")
            col = _as_column(v) if not isinstance(v, np.ndarray) else v
            if col.ndim == 0:
                raise TypeError(f"{where}: column {k!r} is a scalar ({v!r}); a batch maps column names to arrays "
                                f"with one entry per row")
            if length is not None and len(col) != length:
                raise ValueError(f"{where}: columns have different lengths ({k!r} has {len(col)}, others {length})")
            length = len(col)
            out[k] = col
        return out
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            raise TypeError(f"{where}: returned a 0-d array; return one entry per row")
        return {"data": value}
    if type(value).__name__ == "DataFrame" and hasattr(value, "to_dict"):
        return {str(k): _frame_column(value[k]) for k in value.columns}
    raise TypeError(f"{where}: returned a {type(value).__name__}; a batch function must return a dict of numpy "
                    f"arrays (column -> array), a numpy array, or a pandas DataFrame")


def _frame_column(series) -> np.ndarray:
    arr = series.to_numpy()
    if arr.dtype == object and len(arr) and isinstance(arr[0], np.ndarray):
        try:
            return np.stack(arr)
        except ValueError:
            pass
    return arr


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError('batch_format="pandas" needs pandas: pip install "p2pcompute[data]"') from None
    return pd

"""File sources and sinks: one read task per file, one written file per block.

Paths may be files, directories (their files, sorted, filtered by extension) or globs, or lists of these;
a path that matches nothing fails at once in the driver, naming it. Reading happens in the tasks, where
the blocks are made (and stay). A malformed CSV or JSON line fails the read task with an error naming the
file, its block number and the line. Writers put one file per block into a directory, named by block
index so that reading the directory back gives the same order.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np

from p2pcompute.mlkit.data import block as B


def expand_paths(paths, extensions: tuple, reader: str) -> list:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not paths:
        raise TypeError(f"{reader}: paths must be a path, a glob or a list of them, not {paths!r}")
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if os.path.isfile(os.path.join(p, f)) and not f.startswith((".", "_"))
                           and (not extensions or f.endswith(extensions)))
            if not found:
                raise FileNotFoundError(f"{reader}: directory {p!r} has no {'/'.join(extensions) or ''} files")
            out.extend(found)
        elif any(c in p for c in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"{reader}: no file matches {p!r}")
            out.extend(found)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"{reader}: no such file or directory: {p!r}")
    return out


@dataclass
class FileRead:
    """Reads one file into one block (a picklable read task)."""
    kind: str
    path: str
    index: int
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return {"csv": "ReadCSV", "json": "ReadJSON", "npy": "ReadNumpy", "parquet": "ReadParquet",
                "binary": "ReadBinary"}[self.kind]

    def where(self) -> str:
        return f"{self.path} (block {self.index})"

    def __call__(self) -> B.Block:
        return getattr(self, "_read_" + self.kind)()

    def _read_csv(self) -> B.Block:
        delimiter = self.options.get("delimiter", ",")
        with open(self.path, newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = next(reader)
            except StopIteration:
                return {}
            rows = []
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise ValueError(f"read_csv: {self.where()}, line {reader.line_num}: expected "
                                     f"{len(header)} fields ({', '.join(header)}), got {len(row)}: "
                                     f"{delimiter.join(row)!r}")
                rows.append(row)
        cols = list(zip(*rows)) if rows else [()] * len(header)
        return {name.strip(): _infer(col) for name, col in zip(header, cols)}

    def _read_json(self) -> B.Block:
        rows = []
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"read_json: {self.where()}, line {lineno}: not valid JSON ({exc.msg}): "
                                     f"{line.strip()[:80]!r}") from None
                if not isinstance(value, dict):
                    raise ValueError(f"read_json: {self.where()}, line {lineno}: expected a JSON object per "
                                     f"line, got {type(value).__name__}")
                rows.append(value)
        try:
            return B.from_rows(rows)
        except ValueError as exc:
            raise ValueError(f"read_json: {self.where()}: {exc}") from None

    def _read_npy(self) -> B.Block:
        return {self.options.get("column", "data"): np.load(self.path, allow_pickle=False)}

    def _read_parquet(self) -> B.Block:
        pq = _pyarrow_parquet()
        table = pq.read_table(self.path, columns=self.options.get("columns"))
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}

    def _read_binary(self) -> B.Block:
        with open(self.path, "rb") as f:
            data = f.read()
        col = np.empty(1, dtype=object)
        col[0] = data
        out = {"bytes": col}
        if self.options.get("include_paths"):
            out["path"] = np.array([self.path], dtype=object)
        return out


def _infer(values: tuple) -> np.ndarray:
    """A CSV column as int64, else float64 (empty -> NaN), else str objects."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) if v.strip() else np.nan for v in values], dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError('parquet files need pyarrow: pip install "p2pcompute[data]"') from None
    return pq


# ---- writers (run in tasks) ----

def write_block(kind: str, path: str, index: int, options: dict, block) -> str:
    os.makedirs(path, exist_ok=True)
    ext = {"csv": "csv", "json": "json", "npy": "npy", "parquet": "parquet"}[kind]
    target = os.path.join(path, f"{options.get('prefix', 'block')}_{index:06d}.{ext}")
    tmp = target + ".tmp"
    if kind == "csv":
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            names = list(block)
            w.writerow(names)
            cols = [block[k] for k in names]
            for i in range(B.num_rows(block)):
                w.writerow([_plain(c[i]) for c in cols])
    elif kind == "json":
        with open(tmp, "w") as f:
            for row in B.iter_rows(block):
                f.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")
    elif kind == "npy":
        column = options.get("column") or (next(iter(block)) if len(block) == 1 else None)
        if column is None or column not in block:
            raise ValueError(f"write_npy: say which column to write (column=...), the dataset has {sorted(block)}")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(block[column]))
    elif kind == "parquet":
        import pyarrow as pa
        pq = _pyarrow_parquet()
        pq.write_table(pa.table({k: list(v) if v.ndim > 1 else v for k, v in block.items()}), tmp)
    os.replace(tmp, target)
    return target


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


"""Experiment and trial records, and how they are laid out on disk.

Layout under `<storage_path>/<name>/` (all readable without p2pcompute):

    experiment_state.json     every trial: id, status, config, failures, latest checkpoint, last result
    experiment_state.pkl      the same plus the searcher and scheduler, for `Tuner.restore`
    tuner.pkl                 the trainable, param space and configs (cloudpickle), for `Tuner.restore`
    <trial_id>/params.json    the trial's config (params.pkl too, for values JSON cannot hold)
    <trial_id>/progress.csv   one row per report
    <trial_id>/result.json    one JSON object per report (JSON lines)
    <trial_id>/checkpoint_<iteration:06d>/   the checkpoints (a dict checkpoint is checkpoint.pkl)
    <trial_id>/error.txt      tracebacks of the trial's failures
    <trial_id>/pbt_policy.jsonl  exploits applied to the trial (PBT)

State files are replaced atomically (write, then rename), so a driver killed at any moment leaves the
previous complete state behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pickle
import shutil
from typing import Any

import cloudpickle

from ..common import Checkpoint

__all__ = ["Trial", "ExperimentStorage", "PENDING", "RUNNING", "TERMINATED", "ERROR"]

PENDING, RUNNING, TERMINATED, ERROR = "PENDING", "RUNNING", "TERMINATED", "ERROR"


@dataclasses.dataclass
class Trial:
    trial_id: str
    config: dict
    status: str = PENDING
    num_failures: int = 0
    # Reports received so far (counting those from before a restart), so a restart resumes the count.
    iteration: int = 0
    last_result: dict | None = None
    best_score: float | None = None   # higher is better (already oriented by mode)
    checkpoint_path: str | None = None
    checkpoint_iteration: int = 0
    error: str | None = None
    # Bumped at every (re)start; reports of an older generation are stale and dropped.
    generation: int = 0
    runtime_s: float = 0.0
    # The driver's view of the run in flight: not saved.
    started_at: float | None = dataclasses.field(default=None, repr=False)

    def to_state(self) -> dict:
        # Shallow: configs and results are replaced, never mutated, once recorded (asdict's deep copy of
        # every trial made each save cost O(trials x result size) in copying alone).
        return {f: getattr(self, f) for f in _STATE_FIELDS}

    @classmethod
    def from_state(cls, d: dict) -> "Trial":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


_STATE_FIELDS = [f.name for f in dataclasses.fields(Trial) if f.name != "started_at"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:  # numpy scalars
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class ExperimentStorage:
    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(self.path, exist_ok=True)
        self._csv_columns: dict[str, list[str]] = {}

    def trial_dir(self, trial_id: str) -> str:
        d = os.path.join(self.path, trial_id)
        os.makedirs(d, exist_ok=True)
        return d

    def write_params(self, trial: Trial) -> None:
        d = self.trial_dir(trial.trial_id)
        _atomic_write(os.path.join(d, "params.json"),
                      json.dumps(_jsonable(trial.config), indent=2, sort_keys=True).encode())
        try:
            _atomic_write(os.path.join(d, "params.pkl"), pickle.dumps(trial.config))
        except Exception:  # a config holding something plain pickle cannot take: JSON is the record
            pass

    def append_results(self, trial_id: str, results: list[dict]) -> None:
        if not results:
            return
        d = self.trial_dir(trial_id)
        with open(os.path.join(d, "result.json"), "a") as f:
            for r in results:
                f.write(json.dumps(_jsonable(r)) + "\n")
        rows = [flatten(_jsonable(r)) for r in results]
        csv_path = os.path.join(d, "progress.csv")
        columns = self._csv_columns.get(trial_id)
        if columns is None and os.path.exists(csv_path):
            with open(csv_path, newline="") as f:
                columns = next(csv.reader(f), None)
        new_keys = [k for r in rows for k in r if columns is None or k not in columns]
        if columns is None or new_keys:
            # First report, or new metrics appeared: (re)write the whole file with the wider header.
            columns = list(dict.fromkeys((columns or []) + new_keys))
            rows = [flatten(r) for r in self.read_results(trial_id)]
            mode = "w"
        else:
            mode = "a"
        self._csv_columns[trial_id] = columns
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        if mode == "w":
            w.writeheader()
        w.writerows(rows)
        with open(csv_path, mode, newline="") as f:
            f.write(buf.getvalue())

    def read_results(self, trial_id: str) -> list[dict]:
        path = os.path.join(self.path, trial_id, "result.json")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def write_checkpoint(self, trial_id: str, checkpoint: Checkpoint, iteration: int) -> str:
        path = os.path.join(self.trial_dir(trial_id), f"checkpoint_{iteration:06d}")
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint.to_directory(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return path

    def copy_checkpoint(self, source: str, trial_id: str, iteration: int) -> str:
        path = os.path.join(self.trial_dir(trial_id), f"checkpoint_{iteration:06d}")
        if os.path.abspath(source) != path:
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(source, path)
        return path

    def prune_checkpoints(self, trial_id: str, keep: int, current: str | None) -> None:
        d = self.trial_dir(trial_id)
        ckpts = sorted(n for n in os.listdir(d) if n.startswith("checkpoint_") and not n.endswith(".tmp"))
        for name in ckpts[:-keep] if keep else []:
            full = os.path.join(d, name)
            if full != current:
                shutil.rmtree(full, ignore_errors=True)

    def append_line(self, trial_id: str, filename: str, record: dict) -> None:
        with open(os.path.join(self.trial_dir(trial_id), filename), "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def write_error(self, trial_id: str, text: str) -> None:
        with open(os.path.join(self.trial_dir(trial_id), "error.txt"), "a") as f:
            f.write(text.rstrip() + "\n\n")

    # ------------------------------------------------------------------ experiment state
    def save_tuner(self, blob: dict) -> None:
        _atomic_write(os.path.join(self.path, "tuner.pkl"), cloudpickle.dumps(blob))

    def load_tuner(self) -> dict:
        with open(os.path.join(self.path, "tuner.pkl"), "rb") as f:
            return pickle.load(f)

    def save_state(self, trials: list[Trial], extra: dict) -> None:
        states = [t.to_state() for t in trials]
        _atomic_write(os.path.join(self.path, "experiment_state.pkl"),
                      cloudpickle.dumps({"trials": states, **extra}))
        # One line per trial: readable, and cheap to write often.
        lines = ",\n".join(json.dumps(_jsonable(s)) for s in states)
        _atomic_write(os.path.join(self.path, "experiment_state.json"), f'{{"trials": [\n{lines}\n]}}\n'.encode())

    def load_state(self) -> dict:
        with open(os.path.join(self.path, "experiment_state.pkl"), "rb") as f:
            return pickle.load(f)

    @staticmethod
    def exists(path: str) -> bool:
        path = os.path.abspath(os.path.expanduser(path))
        return os.path.exists(os.path.join(path, "tuner.pkl")) and \
            os.path.exists(os.path.join(path, "experiment_state.pkl"))

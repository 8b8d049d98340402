"""Records shared by tune, train and rl: `Checkpoint`, `RunConfig`, `FailureConfig`, `CheckpointConfig`,
`ScalingConfig`.

They mean the same thing in every library (as in Ray), so a training function written for `train` reports
checkpoints the way a `tune` trainable does, and a `RunConfig` moves from one to the other unchanged.

Theory of operation of `Checkpoint`: a checkpoint is a directory of files. It may start life as a dict
(`from_dict`, kept in memory until someone asks for a directory) or as an existing directory
(`from_directory`, referenced, not copied). Checkpoints travel between processes and machines by value:
pickling one packs its files into the pickle, so the process that receives it need not share a filesystem
with the one that made it. A dict checkpoint written to disk is one file, `checkpoint.pkl`, a plain pickle
that `pickle.load` reads without p2pcompute installed (as long as the dict holds only importable types).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping

import cloudpickle

__all__ = ["Checkpoint", "CheckpointConfig", "FailureConfig", "RunConfig", "ScalingConfig"]

# The one file a dict checkpoint becomes on disk.
DICT_FILENAME = "checkpoint.pkl"


class Checkpoint:
    """A directory of files holding a model's state; see the module docstring.

    Build one with `Checkpoint.from_dict(d)` or `Checkpoint.from_directory(path)`; read it back with
    `to_dict()`, `to_directory(path=None)` or `with ckpt.as_directory() as d:`.
    """

    __slots__ = ("_dict", "_files", "_path")

    def __init__(self, path: str | os.PathLike | None = None):
        # Exactly one of the three holds the contents:
        #   _dict  - made by from_dict and not yet written anywhere;
        #   _path  - a directory on this machine, referenced (not owned, never deleted by us);
        #   _files - relative path -> bytes, what a directory checkpoint becomes after a trip through pickle.
        self._dict: dict | None = None
        self._files: dict[str, bytes] | None = None
        self._path: str | None = None
        if path is not None:
            path = os.path.abspath(os.path.expanduser(os.fspath(path)))
            if not os.path.isdir(path):
                raise ValueError(f"Checkpoint directory {path!r} does not exist or is not a directory")
            self._path = path

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Checkpoint":
        """A checkpoint holding `data` (a dict of picklable values; numpy arrays are fine)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"Checkpoint.from_dict needs a dict, got {type(data).__name__}")
        ckpt = cls()
        ckpt._dict = dict(data)
        return ckpt

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> "Checkpoint":
        """A checkpoint referring to the files under `path` (read when needed, never modified or deleted)."""
        return cls(path)

    # ------------------------------------------------------------------ readers
    @property
    def path(self) -> str | None:
        """The directory on this machine holding the files, or None while the contents live only in memory."""
        return self._path

    def to_dict(self) -> dict:
        """The dict this checkpoint was made from (a copy of the top level).

        A checkpoint that is a directory of arbitrary files (not written from a dict) has no dict form:
        that raises `ValueError`; use `to_directory()` or `as_directory()` instead.
        """
        if self._dict is not None:
            return dict(self._dict)
        if self._files is not None:
            blob = self._files.get(DICT_FILENAME)
            if blob is None:
                raise ValueError(self._not_a_dict_message(sorted(self._files)))
            return pickle.loads(blob)
        assert self._path is not None
        file = os.path.join(self._path, DICT_FILENAME)
        if not os.path.isfile(file):
            raise ValueError(self._not_a_dict_message(sorted(os.listdir(self._path))))
        with open(file, "rb") as f:
            return pickle.load(f)

    def to_directory(self, path: str | os.PathLike | None = None) -> str:
        """Write the files into `path` (a new temporary directory when None) and return that path."""
        if path is None:
            path = tempfile.mkdtemp(prefix="p2p_checkpoint_")
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        os.makedirs(path, exist_ok=True)
        if self._dict is not None:
            _atomic_write(os.path.join(path, DICT_FILENAME), cloudpickle.dumps(self._dict))
        elif self._files is not None:
            for rel, blob in self._files.items():
                _atomic_write(os.path.join(path, rel), blob)
        elif os.path.abspath(self._path) != path:
            shutil.copytree(self._path, path, dirs_exist_ok=True)
        return path

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A directory holding the files for the duration of the `with` block (the checkpoint's own directory
        when it has one, else a temporary one removed afterwards). Treat it as read-only."""
        if self._path is not None:
            yield self._path
            return
        tmp = self.to_directory()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ transport
    def __reduce__(self):
        # Pack by value: the receiving process may run on another machine.
        if self._dict is not None:
            return (_rebuild, ("dict", self._dict))
        if self._files is not None:
            return (_rebuild, ("files", self._files))
        return (_rebuild, ("files", _read_tree(self._path)))

    def __repr__(self) -> str:
        if self._dict is not None:
            return f"Checkpoint(dict with keys {sorted(map(str, self._dict))[:8]})"
        if self._path is not None:
            return f"Checkpoint(path={self._path!r})"
        return f"Checkpoint({len(self._files or {})} files in memory)"

    @staticmethod
    def _not_a_dict_message(names: list[str]) -> str:
        return (f"this checkpoint is a directory of files {names[:8]}, not one written from a dict; "
                f"read it with to_directory() or as_directory()")


def _rebuild(kind: str, payload: Any) -> Checkpoint:
    ckpt = Checkpoint()
    if kind == "dict":
        ckpt._dict = payload
    else:
        ckpt._files = payload
    return ckpt


def _read_tree(root: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                files[os.path.relpath(full, root)] = f.read()
    return files


def _atomic_write(path: str, blob: bytes) -> None:
    # A reader (or a restore after a crash) never sees half a file.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with io.open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- configs
@dataclasses.dataclass
class FailureConfig:
    """How many times a failed trial (or training run) is restarted from its last checkpoint.

    `max_failures`: 0 means never retry, -1 means retry forever. A failure is the user's code raising or the
    process (or machine) running it dying.
    """

    max_failures: int = 0

    def __post_init__(self):
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < -1:
            raise ValueError(f"FailureConfig.max_failures must be an int >= -1 (-1 = forever), "
                             f"got {self.max_failures!r}")

    def allows(self, failures_so_far: int) -> bool:
        """Whether a run that has failed `failures_so_far` times (counting this one) may be retried."""
        return self.max_failures == -1 or failures_so_far <= self.max_failures


@dataclasses.dataclass
class CheckpointConfig:
    """Which checkpoints to keep on disk.

    `num_to_keep`: None keeps all; otherwise the latest `num_to_keep` (by default), or the best ones by
    `checkpoint_score_attribute` in `checkpoint_score_order` ("max" or "min"). The latest checkpoint is
    always kept, since restarts resume from it.
    """

    num_to_keep: int | None = None
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: str = "max"

    def __post_init__(self):
        if self.num_to_keep is not None and (not isinstance(self.num_to_keep, int) or self.num_to_keep < 1):
            raise ValueError(f"CheckpointConfig.num_to_keep must be None or an int >= 1, got {self.num_to_keep!r}")
        if self.checkpoint_score_order not in ("max", "min"):
            raise ValueError(f"CheckpointConfig.checkpoint_score_order must be 'max' or 'min', "
                             f"got {self.checkpoint_score_order!r}")


@dataclasses.dataclass
class RunConfig:
    """Where and how long a run goes.

    `name`: the experiment's directory name under `storage_path` (generated from the time when None).
    `storage_path`: root of results on the driver's machine (`~` expanded).
    `stop`: a dict of `{metric: threshold}` (stop once `result[metric] >= threshold`; `training_iteration`
    counts reports) or a callable `(trial_id, result) -> bool`.
    `failure_config`: retries after failures. `checkpoint_config`: which checkpoints to keep.
    `verbose`: 0 silent, 1 progress table and summary, 2 also a line per report.
    """

    name: str | None = None
    storage_path: str = "~/p2p_results"
    stop: Mapping[str, float] | Callable[[str, dict], bool] | None = None
    failure_config: FailureConfig = dataclasses.field(default_factory=FailureConfig)
    verbose: int = 1
    checkpoint_config: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def __post_init__(self):
        if self.name is not None and (not isinstance(self.name, str) or not self.name
                                      or os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"RunConfig.name must be a non-empty directory name without {os.sep!r}, "
                             f"got {self.name!r}")
        if not isinstance(self.storage_path, (str, os.PathLike)):
            raise TypeError(f"RunConfig.storage_path must be a path, got {type(self.storage_path).__name__}")
        if self.stop is not None and not (isinstance(self.stop, Mapping) or callable(self.stop)):
            raise TypeError("RunConfig.stop must be a dict {metric: threshold}, a callable "
                            f"(trial_id, result) -> bool, or None; got {type(self.stop).__name__}")
        if not isinstance(self.failure_config, FailureConfig):
            raise TypeError("RunConfig.failure_config must be a FailureConfig")
        if not isinstance(self.checkpoint_config, CheckpointConfig):
            raise TypeError("RunConfig.checkpoint_config must be a CheckpointConfig")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"RunConfig.verbose must be 0, 1 or 2, got {self.verbose!r}")

    def should_stop(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Whether `stop` says this result ends its run."""
        if self.stop is None:
            return False
        if callable(self.stop):
            return bool(self.stop(trial_id, dict(result)))
        for key, threshold in self.stop.items():
            value = result.get(key)
            if isinstance(value, (int, float)) and value >= threshold:
                return True
        return False


@dataclasses.dataclass
class ScalingConfig:
    """How many workers a distributed run uses and what each one asks of the cluster.

    `num_workers`: worker actors. `resources_per_worker`: p2pcompute resource amounts per worker
    (`{"CPU": 1}` by default; `"CPU"`/`"GPU"` or `num_cpus`/`num_gpus` spellings both work, other keys are
    custom resources). `placement_strategy`: "PACK" (fill peers in turn), "SPREAD" (one per peer where
    possible), "STRICT_PACK" or "STRICT_SPREAD" (as in Ray; p2pcompute has no placement groups, so the strict
    forms are best effort and the library says so where it matters).
    """

    num_workers: int = 1
    resources_per_worker: Mapping[str, float] | None = None
    placement_strategy: str = "PACK"
    use_gpu: bool = False

    def __post_init__(self):
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"ScalingConfig.num_workers must be an int >= 1, got {self.num_workers!r}")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError("ScalingConfig.placement_strategy must be one of PACK, SPREAD, STRICT_PACK, "
                             f"STRICT_SPREAD; got {self.placement_strategy!r}")
        self.worker_options()  # validates resources_per_worker early

    def worker_options(self) -> dict:
        """`.options(...)` keywords for one worker actor: num_cpus, num_gpus and custom resources."""
        return resources_to_options(self.resources_per_worker or {"CPU": 1},
                                    default_gpus=1 if self.use_gpu else 0)


def resources_to_options(resources: Mapping[str, float], default_gpus: float = 0) -> dict:
    """Map a resource dict (`{"CPU": 2, "GPU": 1, "tpu": 1}` or `{"num_cpus": 2}`) to actor options."""
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict like {{'CPU': 1}}, got {type(resources).__name__}")
    options: dict = {"num_cpus": 1, "num_gpus": default_gpus}
    custom: dict = {}
    for key, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"resource {key!r} must be a non-negative number, got {amount!r}")
        if key in ("CPU", "cpu", "num_cpus"):
            options["num_cpus"] = amount
        elif key in ("GPU", "gpu", "num_gpus"):
            options["num_gpus"] = amount
        elif key == "memory":
            options["memory"] = amount
        else:
            custom[key] = amount
    if custom:
        options["resources"] = custom
    if not options["num_gpus"]:
        del options["num_gpus"]
    return options

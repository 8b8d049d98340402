"""Trainables: plain functions `fn(config)` that call `tune.report`, and classes derived from `Trainable`
(`setup/step/save_checkpoint/load_checkpoint`), which are run through the same function path. Also
`with_resources`, which attaches a trial's resource request.
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from typing import Any, Callable, Mapping

from ..common import Checkpoint, resources_to_options
from . import session

__all__ = ["Trainable", "with_resources", "as_function", "trial_options"]


class Trainable:
    """Subclass and implement `setup(config)`, `step() -> dict` and, to be resumable, `save_checkpoint(dir)`
    (write files into `dir` or return a dict) and `load_checkpoint(checkpoint)` (gets that dict, or the
    directory path). A result with `done: True` ends the trial. `checkpoint_frequency`: checkpoint every that
    many steps (0 = never; the last step is always checkpointed when `save_checkpoint` is implemented)."""

    checkpoint_frequency: int = 1

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})
        self.iteration = 0
        self.setup(self.config)

    def setup(self, config: dict) -> None:
        pass

    def step(self) -> dict:
        raise NotImplementedError("a Trainable must implement step() -> dict of metrics")

    def save_checkpoint(self, checkpoint_dir: str) -> dict | None:
        return None

    def load_checkpoint(self, checkpoint: dict | str) -> None:
        pass

    def cleanup(self) -> None:
        pass

    @classmethod
    def _saves(cls) -> bool:
        return cls.save_checkpoint is not Trainable.save_checkpoint


def _run_class(cls: type, config: dict) -> None:
    trainable = cls(config)
    try:
        ckpt = session.get_checkpoint()
        if ckpt is not None:
            try:
                state = ckpt.to_dict()
                trainable.iteration = int(state.pop("__trainable_iteration__", 0))
                trainable.load_checkpoint(state.get("__trainable_dict__", state))
            except ValueError:  # a directory checkpoint
                with ckpt.as_directory() as d:
                    trainable.load_checkpoint(d)
        freq = cls.checkpoint_frequency
        while True:
            result = trainable.step()
            if not isinstance(result, Mapping):
                raise TypeError(f"{cls.__name__}.step() must return a dict of metrics, got {type(result).__name__}")
            trainable.iteration += 1
            done = bool(result.get("done"))
            checkpoint = None
            if cls._saves() and (done or (freq and trainable.iteration % freq == 0)):
                checkpoint = _save(trainable)
            session.report(result, checkpoint=checkpoint)
            if done:
                return
    finally:
        trainable.cleanup()


def _save(trainable: Trainable) -> Checkpoint:
    with tempfile.TemporaryDirectory(prefix="p2p_trainable_") as d:
        out = trainable.save_checkpoint(d)
        if isinstance(out, Mapping):
            return Checkpoint.from_dict({"__trainable_dict__": dict(out),
                                         "__trainable_iteration__": trainable.iteration})
        if os.listdir(d):
            # Read the files into memory before the temporary directory goes (pickling packs them).
            import pickle
            return pickle.loads(pickle.dumps(Checkpoint.from_directory(d)))
        return None


def as_function(trainable: Any) -> Callable[[dict], None]:
    """The function a trial thread runs for this trainable."""
    if inspect.isclass(trainable) and issubclass(trainable, Trainable):
        return functools.partial(_run_class, trainable)
    if callable(trainable) and not inspect.isclass(trainable):
        return trainable
    raise TypeError(f"a trainable must be a function fn(config) or a tune.Trainable subclass, "
                    f"got {trainable!r}")


def with_resources(trainable: Any, resources: Mapping[str, float]):
    """The trainable, asking for `resources` per trial (`{"num_cpus": 2}`, `{"CPU": 1, "GPU": 1}`, custom keys)."""
    resources_to_options(resources)  # validate now, not when the first trial starts
    as_function(trainable)
    if inspect.isclass(trainable):
        return type(trainable.__name__, (trainable,), {"_tune_resources": dict(resources),
                                                       "__module__": trainable.__module__})

    @functools.wraps(trainable)
    def wrapped(config):
        return trainable(config)

    wrapped._tune_resources = dict(resources)
    return wrapped


def trial_options(trainable: Any) -> dict:
    """Actor options for one trial of this trainable (1 CPU unless `with_resources` said otherwise)."""
    return resources_to_options(getattr(trainable, "_tune_resources", None) or {"CPU": 1})

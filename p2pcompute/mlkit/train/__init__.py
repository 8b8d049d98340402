"""p2pcompute.mlkit.train: data-parallel training with a ring allreduce, parameter servers, numpy models.

    from p2pcompute.mlkit import train

    def loop(config):
        X, y = train.get_dataset_shard("train")
        grad = ...                                   # this worker's gradient
        grad = train.allreduce(grad, op="mean")      # ring allreduce, worker to worker
        train.report({"loss": loss}, checkpoint=train.Checkpoint.from_dict({"w": w}))

    result = train.DataParallelTrainer(
        loop, scaling_config=train.ScalingConfig(num_workers=2),
        run_config=train.RunConfig(storage_path="/tmp/runs", failure_config=train.FailureConfig(max_failures=2)),
        datasets={"train": (X, y)}).fit()

Modules: `collective` (the ring and the mailbox), `session` (what the loop calls), `worker` (the worker
actor, dataset shards), `controller` (reports and checkpoints on disk), `trainer` (the group, failures,
resume), `parameter_server` (sync and async SGD), `models` (numpy models), `torch` (TorchTrainer, when torch
is installed). `Checkpoint`, `RunConfig`, `FailureConfig`, `CheckpointConfig` and `ScalingConfig` are the
shared records of `p2pcompute.mlkit.common`, re-exported here.
"""

from __future__ import annotations

import importlib

from p2pcompute.mlkit.common import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from p2pcompute.mlkit.train.collective import CollectiveTimeoutError, Communicator
from p2pcompute.mlkit.train.parameter_server import ParameterServer, PSStats
from p2pcompute.mlkit.train.session import (TrainContext, allgather, allgather_object, allreduce, barrier,
                                            broadcast, collective_stats, get_checkpoint, get_context,
                                            get_dataset_shard, in_session, report)
from p2pcompute.mlkit.train.trainer import DataParallelTrainer, Result, TrainingFailedError

__all__ = ["Checkpoint", "CheckpointConfig", "CollectiveTimeoutError", "Communicator", "DataParallelTrainer",
           "FailureConfig", "PSStats", "ParameterServer", "Result", "RunConfig", "ScalingConfig", "TrainContext",
           "TrainingFailedError", "allgather", "allgather_object", "allreduce", "barrier", "broadcast",
           "collective_stats", "get_checkpoint", "get_context", "get_dataset_shard", "in_session", "models",
           "report", "torch"]


def __getattr__(name: str):
    # `models` is light but `torch` imports torch: both load on first use.
    if name in ("models", "torch"):
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

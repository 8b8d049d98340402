"""p2pcompute.mlkit.tune: hyperparameter tuning across the cluster.

    from p2pcompute.mlkit import tune

    def trainable(config):
        for step in range(100):
            tune.report({"loss": ...}, checkpoint=tune.Checkpoint.from_dict({...}))

    results = tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-4, 1e-1)},
                         tune_config=tune.TuneConfig(metric="loss", mode="min", num_samples=20)).fit()

Search algorithms (`tune.search`) and trial schedulers (`tune.schedulers`) are pure decision objects; the
`Tuner` runs trials as actors and keeps everything needed to resume on disk. See docs/mlkit/tune.md.
"""

from ..common import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from . import schedulers, search
from .progress import plot_learning_curves
from .result_grid import Result, ResultGrid
from .session import get_checkpoint, get_context, get_trial_id, report
from .spaces import (choice, grid_search, lograndint, loguniform, qlograndint, qloguniform, qrandint, qrandn,
                     quniform, randint, randn, sample_from, uniform)
from .trainable import Trainable, with_resources
from .tuner import TuneConfig, Tuner

__all__ = [
    "Tuner", "TuneConfig", "RunConfig", "FailureConfig", "CheckpointConfig", "ScalingConfig", "Checkpoint",
    "report", "get_checkpoint", "get_trial_id", "get_context", "with_resources", "Trainable",
    "Result", "ResultGrid", "plot_learning_curves", "search", "schedulers",
    "choice", "grid_search", "lograndint", "loguniform", "qlograndint", "qloguniform", "qrandint", "qrandn",
    "quniform", "randint", "randn", "sample_from", "uniform",
]

"""Using an algorithm as a Tune trainable.

`trainable(base_config, num_iterations=...)` returns a *function trainable*: `fn(config)` builds the
algorithm from `base_config` updated with the trial's `config` (any setting name: "lr", "clip_param",
"num_env_runners", ...), restores the trial's checkpoint if Tune hands one back (a restarted or PBT-exploited
trial), then calls `train()` and reports each result with `tune.report(metrics, checkpoint=...)`.

    from p2pcompute.mlkit import rl, tune
    base = rl.PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=1)
    tuner = tune.Tuner(rl.trainable(base, num_iterations=20),
                       param_space={"lr": tune.grid_search([1e-4, 3e-4, 1e-3])})

Tune and its `Checkpoint` (in `p2pcompute.mlkit.common`) are imported when the trainable runs, so this
module works without them; outside Tune (no `report` to call) the function simply trains and returns the
last result.
"""

from __future__ import annotations

import importlib
import tempfile

from p2pcompute.mlkit.rl.algorithm import AlgorithmConfig


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def trainable(base_config: AlgorithmConfig, *, num_iterations: int = 10, checkpoint_every: int = 1):
    """A function trainable for mlkit.tune that trains `base_config`'s algorithm for `num_iterations`."""
    if not isinstance(base_config, AlgorithmConfig):
        raise TypeError(f"trainable() needs an algorithm config (PPOConfig(), ESConfig()), "
                        f"not {type(base_config).__name__}")
    if num_iterations < 1 or checkpoint_every < 1:
        raise ValueError("num_iterations and checkpoint_every must be >= 1")

    def train_rl(config: dict | None = None):
        tune = _optional("p2pcompute.mlkit.tune")
        common = _optional("p2pcompute.mlkit.common")
        report = getattr(tune, "report", None)
        get_checkpoint = getattr(tune, "get_checkpoint", None)
        checkpoint_cls = getattr(common, "Checkpoint", None)
        algo = base_config.copy().update_from_dict(dict(config or {})).build()
        try:
            start = get_checkpoint() if get_checkpoint else None
            if start is not None:
                algo.restore(start)
            result = {}
            while algo.iteration < num_iterations:
                result = algo.train()
                metrics = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
                metrics.update({f"{group}/{k}": v for group in ("env_runners", "learners")
                                for k, v in result.get(group, {}).items() if isinstance(v, (int, float))})
                if report is None:
                    continue
                checkpoint = None
                if checkpoint_cls is not None and (algo.iteration % checkpoint_every == 0
                                                   or algo.iteration == num_iterations):
                    path = algo.save(tempfile.mkdtemp(prefix="rl-trial-"))
                    checkpoint = (checkpoint_cls.from_directory(path) if hasattr(checkpoint_cls, "from_directory")
                                  else checkpoint_cls(path))
                report(metrics, checkpoint=checkpoint)
            return result
        finally:
            algo.stop()

    train_rl.__name__ = f"train_{type(base_config).__name__.replace('Config', '').lower()}"
    return train_rl

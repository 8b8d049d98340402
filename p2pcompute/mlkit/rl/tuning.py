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

import pickle
import tempfile

from p2pcompute.mlkit.rl.algorithm import AlgorithmConfig


def _trial_session():
    """(tune module, Checkpoint class, the trial's starting checkpoint) inside a Tune trial, else None."""
    try:
        from p2pcompute.mlkit import tune
        from p2pcompute.mlkit.common import Checkpoint
    except ImportError:
        return None
    try:
        start = tune.get_checkpoint()
    except RuntimeError:  # this thread is not running a trial
        return None
    return tune, Checkpoint, start


def _to_checkpoint(algo, checkpoint_cls):
    """The algorithm's state as a Checkpoint that holds its files in memory, so no directory is left behind."""
    with tempfile.TemporaryDirectory(prefix="rl-trial-") as d:
        algo.save(d)
        return pickle.loads(pickle.dumps(checkpoint_cls.from_directory(d)))  # pickling packs the files


def flatten_result(result: dict) -> dict:
    """Scalars of a train() result, nested groups as "env_runners/episode_return_mean" (Tune's metric names)."""
    out = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    for group, values in result.items():
        if isinstance(values, dict):
            out.update({f"{group}/{k}": v for k, v in values.items() if isinstance(v, (int, float))})
    return out


def trainable(base_config: AlgorithmConfig, *, num_iterations: int = 10, checkpoint_every: int = 1):
    """A function trainable for mlkit.tune that trains `base_config`'s algorithm for `num_iterations`."""
    if not isinstance(base_config, AlgorithmConfig):
        raise TypeError(f"trainable() needs an algorithm config (PPOConfig(), ESConfig()), "
                        f"not {type(base_config).__name__}")
    if num_iterations < 1 or checkpoint_every < 1:
        raise ValueError("num_iterations and checkpoint_every must be >= 1")

    def train_rl(config: dict | None = None):
        trial = _trial_session()
        algo = base_config.copy().update_from_dict(dict(config or {})).build()
        try:
            if trial is not None and trial[2] is not None:
                with trial[2].as_directory() as d:
                    algo.restore(d)
            result = {}
            while algo.iteration < num_iterations:
                result = algo.train()
                if trial is None:
                    continue
                tune, checkpoint_cls, _ = trial
                last = algo.iteration == num_iterations
                checkpoint = (_to_checkpoint(algo, checkpoint_cls)
                              if last or algo.iteration % checkpoint_every == 0 else None)
                tune.report(flatten_result(result), checkpoint=checkpoint)
            return result
        finally:
            algo.stop()

    train_rl.__name__ = f"train_{type(base_config).__name__.replace('Config', '').lower()}"
    return train_rl

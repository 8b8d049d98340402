"""Making environments: a Gymnasium env id or an env-creator function, as Ray accepts both.

A creator is called with an `EnvContext` — the user's `env_config` dict plus which worker and which slot of
that worker's vector the env is for — so a creator can give each copy its own seed, file or port.
"""

from __future__ import annotations

from typing import Any, Callable


class EnvContext(dict):
    """`env_config` as a dict, with `worker_index` (0 = the driver's local worker) and `vector_index`."""

    def __init__(self, env_config: dict | None, worker_index: int = 0, vector_index: int = 0):
        super().__init__(env_config or {})
        self.worker_index = worker_index
        self.vector_index = vector_index


def _gymnasium():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("p2pcompute.mlkit.rl needs Gymnasium: pip install 'p2pcompute[rl]'") from None
    return gymnasium


def make_env(env: str | Callable[[EnvContext], Any], env_config: dict | None = None, worker_index: int = 0,
             vector_index: int = 0):
    """One environment instance from an id (`gymnasium.make(id, **env_config)`) or a creator."""
    if isinstance(env, str):
        gym = _gymnasium()
        try:
            return gym.make(env, **(env_config or {}))
        except gym.error.Error as exc:
            raise ValueError(f"cannot make environment {env!r}: {exc}. Pass a registered Gymnasium id "
                             "(e.g. 'CartPole-v1') or a function env_config -> env") from None
    if callable(env):
        made = env(EnvContext(env_config, worker_index, vector_index))
        if not (hasattr(made, "reset") and hasattr(made, "step") and hasattr(made, "action_space")):
            raise TypeError(f"the env creator returned {type(made).__name__}, not an environment with reset(), "
                            "step(), observation_space and action_space")
        return made
    raise TypeError(f"env must be a Gymnasium id (str) or a function env_config -> env, not {type(env).__name__}")

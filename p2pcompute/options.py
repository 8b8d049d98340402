"""Validation of the options of `remote`, `.options()` and actor methods.

Bad options fail at the call site with a message naming the option and what is allowed, never later in a
worker. Names and defaults follow Ray, so code written for Ray keeps its meaning; so do the error types: a
value of the wrong type (`max_retries=0.5`, `num_returns="x"`) is a `TypeError`, a value out of range a
`ValueError` (both are also `InvalidArgumentError`).
"""

from __future__ import annotations

import difflib
from typing import Any

import math
from collections.abc import Mapping

from p2pcompute.errors import InvalidArgumentError, InvalidArgumentTypeError
from p2pcompute.lease import resources
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

_COMMON = {"num_cpus", "num_gpus", "memory", "resources", "name", "scheduling_strategy", "runtime_env",
           "accelerator_type", "label_selector"}
TASK_OPTIONS = _COMMON | {"max_retries", "retry_exceptions", "num_returns", "max_calls"}
ACTOR_OPTIONS = _COMMON | {"max_restarts", "max_task_retries", "max_concurrency", "namespace", "lifetime",
                           "get_if_exists", "max_pending_calls", "concurrency_groups"}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group"}

TASK_DEFAULTS = {"num_cpus": 1, "max_retries": 3, "retry_exceptions": False, "num_returns": 1}
ACTOR_DEFAULTS = {"max_restarts": 0, "max_task_retries": 0}


def check(options: dict, allowed: set[str], what: str) -> dict:
    for name in options:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgumentError(f"unknown option {name!r} for {what}{hint} "
                                       f"(allowed: {', '.join(sorted(allowed))})")
    out = dict(options)
    for key in ("num_cpus", "num_gpus", "memory"):
        if out.get(key) is not None:
            _number(out[key], key)
            resources.to_units(out[key], key)
    if out.get("resources") is not None:
        if not isinstance(out["resources"], Mapping):
            raise InvalidArgumentTypeError(f"resources must be a dict of name -> amount, not "
                                           f"{type(out['resources']).__name__}")
        for rname, amount in out["resources"].items():
            if not isinstance(rname, str):
                raise InvalidArgumentTypeError(f"resource names must be non-empty strings, not {rname!r}")
            _number(amount, f"resources[{rname!r}]")
        resources.make_shape(resources=out["resources"])
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        if key in out:
            _int_at_least(out[key], key, -1)
    if "num_returns" in out:
        _int_at_least(out["num_returns"], "num_returns", 0)
    if out.get("max_concurrency") is not None:
        _int_at_least(out["max_concurrency"], "max_concurrency", 1)
    if "retry_exceptions" in out:
        re = out["retry_exceptions"]
        if not isinstance(re, bool) and not (isinstance(re, (list, tuple)) and
                                             all(isinstance(t, type) and issubclass(t, BaseException) for t in re)):
            raise InvalidArgumentTypeError("retry_exceptions must be True, False, or a list of exception classes")
    for key in ("name", "namespace"):
        if out.get(key) is not None and not isinstance(out[key], str):
            raise InvalidArgumentTypeError(f"{key} must be a string, not {type(out[key]).__name__}")
    for key in ("get_if_exists",):
        if key in out and not isinstance(out[key], bool):
            raise InvalidArgumentTypeError(f"{key} must be True or False, not {out[key]!r}")
    if out.get("lifetime") not in (None, "detached", "non_detached"):
        cls = InvalidArgumentError if isinstance(out["lifetime"], str) else InvalidArgumentTypeError
        raise cls(f"lifetime must be None or 'detached', not {out['lifetime']!r}")
    if "scheduling_strategy" in out:
        wire_strategy(out["scheduling_strategy"])
    if out.get("runtime_env"):
        from p2pcompute import runtime_env
        out["runtime_env"] = runtime_env.validate(out["runtime_env"])  # a clear error at the call site
    return out


def _int_at_least(value: Any, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"{name} must be an integer >= {low}, not {type(value).__name__} "
                                       f"({value!r})")
    if value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, not {value!r}")


def _number(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentTypeError(f"{name} must be a number, not {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, not {value!r}")


def wire_strategy(strategy: Any):
    """The scheduling strategy as plain data: "DEFAULT", "SPREAD" or ("NODE_AFFINITY", node_id, soft)."""
    if strategy is None or strategy == "DEFAULT":
        return "DEFAULT"
    if strategy == "SPREAD":
        return "SPREAD"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return ("NODE_AFFINITY", strategy.node_id, strategy.soft)
    cls = InvalidArgumentError if isinstance(strategy, str) else InvalidArgumentTypeError
    raise cls(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a NodeAffinitySchedulingStrategy, "
              f"not {strategy!r}")


def shape_of(opts: dict, default_cpus: float) -> dict:
    cpus = opts.get("num_cpus")
    return resources.make_shape(default_cpus if cpus is None else cpus, opts.get("num_gpus"), opts.get("memory"),
                                opts.get("resources"))

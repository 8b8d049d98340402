"""Resource shapes and their arithmetic.

Amounts are kept as integers in units of 1/10,000 so that fractional requests (`num_cpus=0.25`) add and
subtract exactly: four quarter-CPU leases must free exactly one CPU, which floats do not promise. A shape is
a plain dict `{name: units}` so it can cross the wire as is; zero entries are dropped.
"""

from __future__ import annotations

import math
from typing import Mapping

from p2pcompute.errors import InvalidArgumentError

UNIT = 10_000
CPU = "CPU"
GPU = "GPU"
MEMORY = "memory"

Shape = dict[str, int]


def to_units(amount: float, name: str = "resource") -> int:
    """Convert a user-facing amount to fixed-point units, rejecting nonsense with a clear error."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number, not {type(amount).__name__} ({amount!r})")
    if not math.isfinite(amount) or amount < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, not {amount!r}")
    units = round(amount * UNIT)
    if amount > 0 and units == 0:
        raise InvalidArgumentError(f"{name}={amount!r} is below the smallest amount, {1 / UNIT}")
    return units


def from_units(units: int) -> float:
    value = units / UNIT
    return int(value) if value == int(value) else value


def make_shape(num_cpus: float | None = None, num_gpus: float | None = None, memory: float | None = None,
               resources: Mapping[str, float] | None = None) -> Shape:
    shape: Shape = {}
    if resources:
        if not isinstance(resources, Mapping):
            raise InvalidArgumentError(f"resources must be a dict of name -> amount, not {type(resources).__name__}")
        for name, amount in resources.items():
            if not isinstance(name, str) or not name:
                raise InvalidArgumentError(f"resource names must be non-empty strings, not {name!r}")
            if name in (CPU, GPU, MEMORY):
                raise InvalidArgumentError(
                    f"use num_cpus / num_gpus / memory instead of resources={{{name!r}: ...}}")
            shape[name] = to_units(amount, f"resources[{name!r}]")
    for name, amount, label in ((CPU, num_cpus, "num_cpus"), (GPU, num_gpus, "num_gpus"),
                                (MEMORY, memory, "memory")):
        if amount is not None:
            shape[name] = to_units(amount, label)
    return {k: v for k, v in shape.items() if v}


def fits(shape: Mapping[str, int], available: Mapping[str, int]) -> bool:
    for name, units in shape.items():
        if available.get(name, 0) < units:
            return False
    return True


def subtract(pool: dict[str, int], shape: Mapping[str, int]) -> None:
    for name, units in shape.items():
        pool[name] = pool.get(name, 0) - units


def add(pool: dict[str, int], shape: Mapping[str, int]) -> None:
    for name, units in shape.items():
        pool[name] = pool.get(name, 0) + units


def to_user(shape: Mapping[str, int]) -> dict[str, float]:
    """Units -> the user-facing dict Ray's API returns (`{"CPU": 2.0, ...}`)."""
    return {name: float(from_units(units)) for name, units in sorted(shape.items())}


def describe(shape: Mapping[str, int]) -> str:
    if not shape:
        return "{}"
    return "{" + ", ".join(f"{name}: {from_units(units)}" for name, units in sorted(shape.items())) + "}"


def shape_key(shape: Mapping[str, int]) -> tuple:
    return tuple(sorted(shape.items()))

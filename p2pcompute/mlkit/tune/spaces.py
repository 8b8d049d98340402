"""Search spaces: the values a parameter may take, and how a trial's config is drawn from a `param_space`.

A `param_space` is a (possibly nested) dict whose leaves are constants, `Domain`s (`uniform`, `loguniform`,
`choice`, ...), `grid_search([...])` markers or `sample_from(fn)`. `flatten_space` turns it into paths
(tuples of keys) to leaves; a search algorithm is given the `Domain` leaves, the Tuner expands the grid
leaves itself (every grid point x `num_samples`), and `resolve` builds the final nested config, calling
`sample_from` functions last with the rest of the config already filled in (`spec.config.lr`).

Every domain samples with an explicit `numpy.random.Generator`, so a seeded search is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["Domain", "Float", "Integer", "Categorical", "Normal", "Function", "GridSearch",
           "uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn", "randint", "qrandint",
           "lograndint", "qlograndint", "choice", "grid_search", "sample_from",
           "flatten_space", "resolve", "count_grid"]

Path = tuple


class Domain:
    """A set of values with a sampling distribution."""

    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _quantize(value: float, q: float | None) -> float:
    if q is None:
        return value
    return round(value / q) * q


@dataclasses.dataclass(frozen=True)
class Float(Domain):
    """A float in [lower, upper): uniform, or log-uniform (`log=True`), optionally rounded to a multiple of q."""

    lower: float
    upper: float
    log: bool = False
    q: float | None = None

    def __post_init__(self):
        _number("lower", self.lower)
        _number("upper", self.upper)
        if not self.lower < self.upper:
            raise ValueError(f"the lower bound must be below the upper bound, got [{self.lower}, {self.upper})")
        if self.log and self.lower <= 0:
            raise ValueError(f"a log-scaled range needs a positive lower bound, got {self.lower}")
        if self.q is not None and not (_number("q", self.q) > 0):
            raise ValueError(f"q must be positive, got {self.q}")

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))
        else:
            value = rng.uniform(self.lower, self.upper)
        value = min(max(_quantize(value, self.q), self.lower), self.upper)
        return float(value)

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.lower <= value <= self.upper


@dataclasses.dataclass(frozen=True)
class Integer(Domain):
    """An int in [lower, upper) (upper excluded, as in Ray), uniform or log-uniform, optionally a multiple of q."""

    lower: int
    upper: int
    log: bool = False
    q: int | None = None

    def __post_init__(self):
        for name in ("lower", "upper"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if not self.lower < self.upper:
            raise ValueError(f"randint needs lower < upper (upper is excluded), got [{self.lower}, {self.upper})")
        if self.log and self.lower <= 0:
            raise ValueError(f"a log-scaled integer range needs a positive lower bound, got {self.lower}")
        if self.q is not None and (not isinstance(self.q, int) or self.q < 1):
            raise ValueError(f"q must be a positive int, got {self.q!r}")

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            value = int(math.floor(math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))))
        else:
            value = int(rng.integers(self.lower, self.upper))
        if self.q is not None:
            value = int(round(value / self.q) * self.q)
        return int(min(max(value, self.lower), self.upper - 1))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.lower <= value < self.upper


@dataclasses.dataclass(frozen=True)
class Categorical(Domain):
    """One of a list of values, each equally likely."""

    categories: tuple

    def __post_init__(self):
        if len(self.categories) == 0:
            raise ValueError("choice needs at least one category")

    def sample(self, rng: np.random.Generator) -> Any:
        return self.categories[int(rng.integers(len(self.categories)))]

    def contains(self, value: Any) -> bool:
        return any(value is c or value == c for c in self.categories)


@dataclasses.dataclass(frozen=True)
class Normal(Domain):
    """A float from a normal distribution, optionally rounded to a multiple of q."""

    mean: float = 0.0
    sd: float = 1.0
    q: float | None = None

    def __post_init__(self):
        _number("mean", self.mean)
        if not _number("sd", self.sd) > 0:
            raise ValueError(f"randn needs sd > 0, got {self.sd}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(_quantize(rng.normal(self.mean, self.sd), self.q))

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Function(Domain):
    """A value computed by `fn(spec)` once the other values are known (`spec.config` is the config so far)."""

    fn: Callable

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"sample_from needs a callable, got {self.fn!r}")

    def sample(self, rng):  # resolved by `resolve`, which passes the spec
        raise TypeError("sample_from values are computed from the rest of the config; use resolve()")

    def contains(self, value: Any) -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class GridSearch:
    """Every value in `values` is tried (times `num_samples`)."""

    values: tuple

    def __post_init__(self):
        if len(self.values) == 0:
            raise ValueError("grid_search needs at least one value")


def uniform(lower: float, upper: float) -> Float:
    return Float(lower, upper)


def quniform(lower: float, upper: float, q: float) -> Float:
    return Float(lower, upper, q=q)


def loguniform(lower: float, upper: float) -> Float:
    return Float(lower, upper, log=True)


def qloguniform(lower: float, upper: float, q: float) -> Float:
    return Float(lower, upper, log=True, q=q)


def randn(mean: float = 0.0, sd: float = 1.0) -> Normal:
    return Normal(mean, sd)


def qrandn(mean: float, sd: float, q: float) -> Normal:
    return Normal(mean, sd, q)


def randint(lower: int, upper: int) -> Integer:
    return Integer(lower, upper)


def qrandint(lower: int, upper: int, q: int = 1) -> Integer:
    return Integer(lower, upper, q=q)


def lograndint(lower: int, upper: int) -> Integer:
    return Integer(lower, upper, log=True)


def qlograndint(lower: int, upper: int, q: int) -> Integer:
    return Integer(lower, upper, log=True, q=q)


def choice(categories: Sequence) -> Categorical:
    if isinstance(categories, (str, bytes)) or not isinstance(categories, Sequence):
        raise TypeError(f"choice needs a list of values, got {categories!r}")
    return Categorical(tuple(categories))


def grid_search(values: Sequence) -> GridSearch:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"grid_search needs a list of values, got {values!r}")
    return GridSearch(tuple(values))


def sample_from(fn: Callable) -> Function:
    return Function(fn)


# ---------------------------------------------------------------------- whole spaces
def flatten_space(space: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    """Leaves of a nested param space, keyed by their path. Ray's `{"grid_search": [...]}` dicts count as
    grid markers too."""
    if not isinstance(space, Mapping):
        raise TypeError(f"param_space must be a dict, got {type(space).__name__}")
    out: dict[Path, Any] = {}
    for key, value in space.items():
        path = prefix + (key,)
        if isinstance(value, Mapping) and set(value) == {"grid_search"}:
            out[path] = grid_search(value["grid_search"])
        elif isinstance(value, Mapping) and value:
            out.update(flatten_space(value, path))
        else:
            out[path] = value
    return out


def count_grid(space: Mapping) -> int:
    """How many grid points the space has (1 without grid markers)."""
    n = 1
    for leaf in flatten_space(space).values():
        if isinstance(leaf, GridSearch):
            n *= len(leaf.values)
    return n


class _Spec:
    """What a `sample_from` function receives: `spec.config` with attribute access to nested keys."""

    def __init__(self, config: dict):
        self.config = _AttrDict(config)


class _AttrDict(dict):
    def __getattr__(self, name):
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _AttrDict(value) if isinstance(value, dict) and not isinstance(value, _AttrDict) else value


def _set(config: dict, path: Path, value: Any) -> None:
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def resolve(space: Mapping, values: Mapping[Path, Any], rng: np.random.Generator) -> dict:
    """The nested config: constants from `space`, `values` for the paths given (search and grid picks),
    fresh samples for other domains, then `sample_from` functions in the order they appear."""
    config: dict = {}
    functions = []
    for path, leaf in flatten_space(space).items():
        if path in values:
            _set(config, path, values[path])
        elif isinstance(leaf, Function):
            functions.append((path, leaf))
        elif isinstance(leaf, Domain):
            _set(config, path, leaf.sample(rng))
        elif isinstance(leaf, GridSearch):
            raise ValueError(f"no grid value chosen for {'/'.join(map(str, path))}")
        else:
            _set(config, path, leaf)
    for path, leaf in functions:
        _set(config, path, leaf.fn(_Spec(config)))
    return config


def path_name(path: Path) -> str:
    """`("model", "lr")` -> `"model/lr"`, the column name used in tables and dataframes."""
    return "/".join(map(str, path))

"""User metrics under Ray's names: `Counter`, `Gauge`, `Histogram` (as `ray.util.metrics`).

Theory of operation. A metric lives in the process that updates it (a driver, a task's worker, an actor):
updates are a dict write under a lock, nothing is sent. When a peer's `/metrics` endpoint is scraped, the
peer asks each of its local processes for a snapshot (`ProcStateRequest("metrics")`) and adds the values of
processes with the same metric name and tags, so a counter incremented by tasks on four workers shows one
total per peer. A metric dies with its process, as in Ray (a counter of a finished job stops being
reported); Prometheus' `rate()` and `increase()` tolerate that.
"""

from __future__ import annotations

import re
import threading

from p2pcompute.errors import InvalidArgumentError

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LOCK = threading.Lock()
_REGISTRY: dict[str, "Metric"] = {}
DEFAULT_BOUNDARIES = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metric:
    kind = "untyped"

    def __init__(self, name: str, description: str = "", tag_keys: tuple | list | None = None):
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgumentError(f"metric name {name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]* (Prometheus' rule)")
        tag_keys = tuple(tag_keys or ())
        if not all(isinstance(k, str) and _NAME.match(k) for k in tag_keys):
            raise InvalidArgumentError(f"tag_keys must be a tuple of identifiers, not {tag_keys!r}")
        self.name = name
        self.description = description
        self.tag_keys = tag_keys
        self._default_tags: dict = {}
        self._values: dict[tuple, object] = {}
        with _LOCK:
            old = _REGISTRY.get(name)
            if old is not None and (old.kind != self.kind or old.tag_keys != tag_keys):
                raise InvalidArgumentError(f"metric {name!r} already exists as a {old.kind} with tags "
                                           f"{old.tag_keys}")
            if old is not None:
                self._values = old._values  # the same metric defined again (e.g. in each task): one series
            _REGISTRY[name] = self

    def set_default_tags(self, tags: dict) -> "Metric":
        self._check_tags(tags, partial=True)
        self._default_tags = dict(tags)
        return self

    def _check_tags(self, tags: dict | None, partial: bool = False) -> tuple:
        merged = dict(self._default_tags, **(tags or {}))
        unknown = set(merged) - set(self.tag_keys)
        if unknown:
            raise InvalidArgumentError(f"metric {self.name!r} has no tag(s) {sorted(unknown)}; "
                                       f"declared: {self.tag_keys}")
        if not partial:
            missing = [k for k in self.tag_keys if k not in merged]
            if missing:
                raise InvalidArgumentError(f"metric {self.name!r} needs a value for tag(s) {missing}")
        return tuple(str(merged.get(k, "")) for k in self.tag_keys)

    def _snapshot(self) -> dict:
        with _LOCK:
            return {"kind": self.kind, "description": self.description, "tag_keys": list(self.tag_keys),
                    "values": [[list(k), v if not isinstance(v, list) else list(v)]
                               for k, v in self._values.items()], **self._extra()}

    def _extra(self) -> dict:
        return {}


class Counter(Metric):
    """A value that only goes up (`inc`)."""

    kind = "counter"

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InvalidArgumentError(f"a counter only goes up: inc() needs a number >= 0, not {value!r}")
        key = self._check_tags(tags)
        with _LOCK:
            self._values[key] = self._values.get(key, 0.0) + value


class Gauge(Metric):
    """A value that is set (`set`)."""

    kind = "gauge"

    def set(self, value: float, tags: dict | None = None) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(f"set() needs a number, not {value!r}")
        key = self._check_tags(tags)
        with _LOCK:
            self._values[key] = float(value)


class Histogram(Metric):
    """Observations counted into buckets (`observe`); `boundaries` are the buckets' upper bounds."""

    kind = "histogram"

    def __init__(self, name: str, description: str = "", boundaries: list | tuple | None = None,
                 tag_keys: tuple | list | None = None):
        bounds = tuple(boundaries) if boundaries is not None else DEFAULT_BOUNDARIES
        if not bounds or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in bounds) or \
                list(bounds) != sorted(set(bounds)):
            raise InvalidArgumentError(f"boundaries must be increasing numbers, not {boundaries!r}")
        self.boundaries = bounds
        super().__init__(name, description, tag_keys)

    def observe(self, value: float, tags: dict | None = None) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(f"observe() needs a number, not {value!r}")
        key = self._check_tags(tags)
        with _LOCK:
            # [count per bucket..., +Inf bucket, sum]
            v = self._values.get(key)
            if v is None:
                v = self._values[key] = [0] * (len(self.boundaries) + 1) + [0.0]
            i = next((i for i, b in enumerate(self.boundaries) if value <= b), len(self.boundaries))
            v[i] += 1
            v[-1] += value

    def _extra(self) -> dict:
        return {"boundaries": list(self.boundaries)}


def snapshot() -> dict:
    """Every metric this process defined, as plain data (what a peer's scrape collects)."""
    with _LOCK:
        metrics = list(_REGISTRY.values())
    return {m.name: m._snapshot() for m in metrics}


__all__ = ["Counter", "Gauge", "Histogram"]

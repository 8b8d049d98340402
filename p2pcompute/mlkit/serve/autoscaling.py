"""Autoscaling: observed ongoing requests -> how many replicas a deployment should have.

Theory of operation. Every replica counts the requests it is running or holding. The agent that drives an
application sums them per deployment a few times a second and feeds the total to `AutoscalingPolicy`. The
desired count is `ceil(total / target_ongoing_requests)` within `[min_replicas, max_replicas]`. A change is
made only after the desire has pointed the same way for `upscale_delay_s` (or `downscale_delay_s`), so a
burst or a lull shorter than that moves nothing; then it jumps to the desired count at once (scaled by the
up/down smoothing factors, as in Ray). Pure: the clock is an argument.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class AutoscalingConfig:
    """Ray Serve's autoscaling options (those that apply here)."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0
    metrics_interval_s: float = 0.5

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"autoscaling_config: {what}")
        for f in ("min_replicas", "max_replicas"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{f} must be an integer >= 1, not {v!r} (scaling to zero is not supported)")
        need(self.min_replicas <= self.max_replicas,
             f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None:
            need(isinstance(self.initial_replicas, int)
                 and self.min_replicas <= self.initial_replicas <= self.max_replicas,
                 f"initial_replicas must be an integer within [min_replicas, max_replicas], "
                 f"not {self.initial_replicas!r}")
        for f in ("target_ongoing_requests", "upscaling_factor", "downscaling_factor", "metrics_interval_s"):
            v = getattr(self, f)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, f"{f} must be > 0, not {v!r}")
        for f in ("upscale_delay_s", "downscale_delay_s"):
            v = getattr(self, f)
            need(isinstance(v, (int, float)) and v >= 0, f"{f} must be >= 0 seconds, not {v!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "AutoscalingConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"autoscaling_config: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def start_replicas(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas


class AutoscalingPolicy:
    """Feed `decide(now_s, current, total_ongoing)` periodically; it answers the replica count to run."""

    def __init__(self, config: AutoscalingConfig):
        self.config = config
        self._up_since_s: float | None = None
        self._down_since_s: float | None = None

    def desired(self, current: int, total_ongoing: float) -> int:
        c = self.config
        raw = math.ceil(max(0.0, total_ongoing) / c.target_ongoing_requests - 1e-9)
        if raw > current:
            raw = current + math.ceil((raw - current) * c.upscaling_factor)
        elif raw < current:
            raw = current - max(1, math.floor((current - raw) * c.downscaling_factor))
        return max(c.min_replicas, min(c.max_replicas, raw))

    def decide(self, now_s: float, current: int, total_ongoing: float) -> int:
        want = self.desired(current, total_ongoing)
        if want > current:
            self._down_since_s = None
            if self._up_since_s is None:
                self._up_since_s = now_s
            if now_s - self._up_since_s >= self.config.upscale_delay_s:
                self._up_since_s = None
                return want
        elif want < current:
            self._up_since_s = None
            if self._down_since_s is None:
                self._down_since_s = now_s
            if now_s - self._down_since_s >= self.config.downscale_delay_s:
                self._down_since_s = None
                return want
        else:
            self._up_since_s = self._down_since_s = None
        # Outside the bounds (the config changed): come back inside at once.
        return max(self.config.min_replicas, min(self.config.max_replicas, current))

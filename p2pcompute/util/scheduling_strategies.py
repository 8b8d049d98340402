"""Scheduling strategies, under Ray's names (`ray.util.scheduling_strategies`)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute.errors import InvalidArgumentError


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the peer `node_id`. With `soft=True`, run elsewhere if that peer is gone or cannot fit it."""

    node_id: str
    soft: bool = False

    def __post_init__(self):
        if not isinstance(self.node_id, str) or not self.node_id:
            raise InvalidArgumentError(f"NodeAffinitySchedulingStrategy needs a node id string, not {self.node_id!r}")


__all__ = ["NodeAffinitySchedulingStrategy"]

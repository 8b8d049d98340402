"""Effects: what a pure protocol core asks its driver to do.

A core never touches a socket or a clock. It returns a list of effects, and whoever drives it — the ZeroMQ
runtime or the simulator — carries them out. Cores may define effects of their own (for example the lease
core's `StartWorker`); these two are common to all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver `msg` to the process at address `to`. Delivery is best effort: cores must tolerate loss."""

    to: str
    msg: Any


@dataclass(frozen=True, slots=True)
class Timer:
    """Call the core's `on_tick` at or after `at_ns`. Extra or early ticks are harmless."""

    at_ns: int


Effect = Any  # Send | Timer | a core's own effect types

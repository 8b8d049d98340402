"""Effects: what a pure protocol core asks its driver to do.

A core never touches a socket or a clock. It returns a list of effects, and whoever drives it — the ZeroMQ
runtime or the simulator — carries them out. Cores may define effects of their own (for example the lease
core's `StartWorker`); these two are common to all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


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


class EffectRunner:
    """Carries out effects for one driver: `Send` and `Timer` the same way in every process, and a core's own
    effect types by the handler registered for each. The client, the peer and the table service each hold one
    (the simulator has its own, on simulated time and a simulated network).

    `send(to, msg)` delivers a message; `wake_at(at_ns)` asks for a tick at or after `at_ns`. An effect with no
    handler goes to `otherwise` (the client hands its owner core's inner effects back to the core), or, with
    none, is a bug in the driver: a core asked for something nobody does, so it raises rather than drop it.
    """

    __slots__ = ("send", "wake_at", "handlers", "otherwise")

    def __init__(self, send: Callable[[str, Any], None], wake_at: Callable[[int], None],
                 handlers: dict[type, Callable[[Any], None]] | None = None,
                 otherwise: Callable[[list], None] | None = None):
        self.send = send
        self.wake_at = wake_at
        self.handlers = dict(handlers or {})
        self.otherwise = otherwise

    def run(self, effects: list) -> None:
        send, handlers = self.send, self.handlers
        rest = None
        for eff in effects:
            t = type(eff)
            if t is Send:
                send(eff.to, eff.msg)
            elif t is Timer:
                self.wake_at(eff.at_ns)
            else:
                handler = handlers.get(t)
                if handler is not None:
                    handler(eff)
                elif self.otherwise is not None:
                    if rest is None:
                        rest = []
                    rest.append(eff)
                else:
                    raise TypeError(f"no handler for the effect {t.__name__}: {eff!r}")
        if rest:
            self.otherwise(rest)

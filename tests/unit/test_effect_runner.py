"""The one effect interpreter the client, the peer and the table service share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from p2pcompute.net.effects import EffectRunner, Send, Timer


@dataclass(frozen=True)
class Own:
    n: int


@dataclass(frozen=True)
class Inner:
    n: int


def test_sends_ticks_and_a_cores_own_effects_each_go_to_their_place_in_order():
    log = []
    runner = EffectRunner(lambda to, msg: log.append(("send", to, msg)), lambda at: log.append(("wake", at)),
                          {Own: lambda eff: log.append(("own", eff.n))},
                          otherwise=lambda rest: log.append(("rest", [e.n for e in rest])))
    runner.run([Send("a", 1), Own(2), Timer(30), Inner(4), Send("b", 5), Inner(6)])
    # The unhandled ones go back together, after the rest, in their order.
    assert log == [("send", "a", 1), ("own", 2), ("wake", 30), ("send", "b", 5), ("rest", [4, 6])]


def test_an_effect_nobody_handles_is_a_bug_not_a_silent_drop():
    runner = EffectRunner(lambda to, msg: None, lambda at: None, {Own: lambda eff: None})
    with pytest.raises(TypeError, match="no handler for the effect Inner"):
        runner.run([Own(1), Inner(2)])

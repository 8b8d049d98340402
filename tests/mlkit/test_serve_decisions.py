"""The serve decision objects, fed loads and states without a cluster: router choice, admission, batching
policy, autoscaling policy and the reconciliation planner (rolling updates, replacement, downscaling)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.mlkit.serve import planner as pl
from p2pcompute.mlkit.serve.autoscaling import AutoscalingConfig, AutoscalingPolicy
from p2pcompute.mlkit.serve.batching import BatchPolicy, batch
from p2pcompute.mlkit.serve.routing import Admission, ReplicaChooser, admit

pytestmark = pytest.mark.mlkit

loads_st = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 20), max_size=12)


# ---- routing ----------------------------------------------------------------------------------------------


@given(loads_st, st.integers(1, 20), st.integers(0, 2**32))
@settings(max_examples=60)
def test_chooser_respects_capacity_and_finds_room(loads, capacity, seed):
    choice = ReplicaChooser(random.Random(seed)).choose(loads, capacity)
    with_room = [r for r, n in loads.items() if n < capacity]
    if with_room:
        assert choice in with_room
    else:
        assert choice is None


@given(loads_st, st.integers(1, 20), st.integers(0, 2**32))
@settings(max_examples=60)
def test_chooser_never_takes_the_most_loaded_of_two_or_more(loads, capacity, seed):
    room = {r: n for r, n in loads.items() if n < capacity}
    choice = ReplicaChooser(random.Random(seed)).choose(loads, capacity)
    if len(room) >= 2 and len(set(room.values())) > 1:
        # Power of two choices: the pick is never strictly worse than every other candidate.
        assert room[choice] <= sorted(room.values())[-2]


def test_chooser_balances_and_prefers_idle_replicas():
    chooser = ReplicaChooser(random.Random(7))
    inflight = {f"r{i}": 0 for i in range(4)}
    for _ in range(400):   # requests that never finish: placement alone must balance them
        inflight[chooser.choose(inflight, 1000)] += 1
    assert max(inflight.values()) - min(inflight.values()) <= 2
    picks = [chooser.choose({"busy": 5, "idle": 0}, 10) for _ in range(50)]
    assert picks == ["idle"] * 50
    assert chooser.choose({"a": 3, "b": 9}, 10, exclude=["a"]) == "b"
    with pytest.raises(ValueError):
        chooser.choose({"a": 0}, 0)


def test_admission():
    assert admit(True, 0, 5) is Admission.ASSIGN
    assert admit(True, 2, 5) is Admission.QUEUE       # queued requests go first: no overtaking
    assert admit(False, 4, 5) is Admission.QUEUE
    assert admit(False, 5, 5) is Admission.REJECT
    assert admit(False, 0, 0) is Admission.REJECT
    assert admit(False, 10_000, -1) is Admission.QUEUE


# ---- batching -----------------------------------------------------------------------------------------------


@given(st.integers(1, 64), st.floats(0, 1), st.integers(0, 200), st.floats(0, 2))
def test_batch_policy(max_size, timeout_s, queued, waited_s):
    p = BatchPolicy(max_size, timeout_s)
    wait = p.wait_s(queued, waited_s)
    if queued == 0:
        assert wait is None
        return
    assert 0 <= wait <= timeout_s
    if queued >= max_size or waited_s >= timeout_s:
        assert wait == 0
    assert 1 <= p.take(queued) <= max_size


def test_batch_policy_rejects_bad_options():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(0, 0.1)
    with pytest.raises(ValueError, match="batch_wait_timeout_s"):
        BatchPolicy(4, -1)
    with pytest.raises(TypeError, match="async"):
        batch(lambda xs: xs)


def test_batch_decorator_groups_concurrent_calls():
    sizes = []

    class Model:
        @batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def double(self, xs):
            sizes.append(len(xs))
            return [2 * x for x in xs]

    async def main():
        m = Model()
        return await asyncio.gather(*(m.double(i) for i in range(20)))

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) <= 4


def test_batch_errors_reach_every_caller():
    @batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def bad(xs):
        return xs[:-1]   # one result short

    async def main():
        return await asyncio.gather(*(bad(i) for i in range(3)), return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, TypeError) and "one result per input" in str(e) for e in errors)


# ---- autoscaling ------------------------------------------------------------------------------------------


def test_autoscaler_waits_out_its_delays():
    cfg = AutoscalingConfig(min_replicas=1, max_replicas=6, target_ongoing_requests=4, upscale_delay_s=2,
                            downscale_delay_s=5)
    p = AutoscalingPolicy(cfg)
    assert p.decide(0.0, 1, 20) == 1            # wants 5, but only just
    assert p.decide(1.0, 1, 20) == 1
    assert p.decide(2.0, 1, 20) == 5            # wanted it for 2 s
    assert p.decide(3.0, 5, 2) == 5             # load fell: wait 5 s
    assert p.decide(6.0, 5, 30) == 5            # a burst resets the downscale timer...
    assert p.decide(7.0, 5, 2) == 5
    assert p.decide(11.0, 5, 2) == 5
    assert p.decide(12.0, 5, 2) == 1            # ... so 5 s from 7 s
    assert p.decide(13.0, 1, 1000) == 1
    assert p.decide(15.0, 1, 1000) == 6         # capped at max_replicas


@given(st.integers(1, 5), st.integers(0, 10), st.integers(1, 12),
       st.lists(st.tuples(st.floats(0, 3), st.floats(0, 200)), max_size=40))
@settings(max_examples=60, deadline=None)
def test_autoscaler_stays_in_bounds_and_never_acts_early(lo, extra, start, feed):
    cfg = AutoscalingConfig(min_replicas=lo, max_replicas=lo + extra, target_ongoing_requests=3,
                            upscale_delay_s=1.5, downscale_delay_s=4)
    p = AutoscalingPolicy(cfg)
    now, current = 0.0, max(lo, min(lo + extra, start))
    last_change = 0.0
    for dt, load in feed:
        now += dt
        new = p.decide(now, current, load)
        assert cfg.min_replicas <= new <= cfg.max_replicas
        if new > current:
            assert now - last_change >= cfg.upscale_delay_s - 1e-9
        if new < current:
            assert now - last_change >= cfg.downscale_delay_s - 1e-9
        if new != current:
            last_change = now
        current = new


def test_autoscaling_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="unknown option"):
        AutoscalingConfig.from_dict({"min_replica": 1})
    with pytest.raises(ValueError, match="target_ongoing_requests"):
        AutoscalingConfig(target_ongoing_requests=0)


# ---- planner ----------------------------------------------------------------------------------------------


def _apply(slots: dict, actions: list, complete) -> None:
    """Carry out a plan in a toy world: starts begin STARTING, stops begin DRAINING; `complete` chooses which
    pending transitions finish now."""
    for a in actions:
        if isinstance(a, pl.Start):
            slots[(a.version, a.index)] = pl.Slot(a.version, a.index, pl.STARTING, a.node)
        elif isinstance(a, pl.Replace):
            slots[(a.slot.version, a.slot.index)] = pl.Slot(a.slot.version, a.slot.index, pl.STARTING, a.node)
        elif isinstance(a, pl.Stop):
            s = slots[(a.slot.version, a.slot.index)]
            if s.state == pl.READY:
                slots[(s.version, s.index)] = pl.Slot(s.version, s.index, pl.DRAINING, s.node, s.config)
            else:
                del slots[(s.version, s.index)]
        elif isinstance(a, pl.Remove):
            slots.pop((a.slot.version, a.slot.index), None)
    for key, s in list(slots.items()):
        if complete():
            if s.state == pl.STARTING:
                slots[key] = pl.Slot(s.version, s.index, pl.READY, s.node, "c")
            elif s.state == pl.DRAINING:
                del slots[key]


@given(st.integers(1, 6), st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_rolling_update_keeps_target_replicas_serving(n, seed):
    rng = random.Random(seed)
    nodes = ["n1", "n2", "n3"]
    slots = {("v1", i): pl.Slot("v1", i, pl.READY, nodes[i % 3], "c") for i in range(n)}
    for _ in range(200):
        serving = sum(1 for s in slots.values() if s.state == pl.READY)
        assert serving >= n, f"only {serving} serving during the update: {slots}"
        running = sum(1 for s in slots.values() if s.state != pl.DRAINING)
        assert running <= n + pl.surge_of(n)
        plan = pl.plan("v2", n, "c", list(slots.values()), nodes)
        _apply(slots, plan.actions, lambda: rng.random() < 0.3)
        if sorted(slots) == [("v2", i) for i in range(n)] and all(s.state == pl.READY for s in slots.values()):
            break
    else:
        pytest.fail(f"did not converge: {slots}")


def test_plan_starts_spreads_replaces_and_scales_down():
    p = pl.plan("v", 3, "c", [], ["a", "b"])
    starts = p.of(pl.Start)
    assert [s.index for s in starts] == [0, 1, 2]
    assert sorted(s.node for s in starts) == ["a", "a", "b"]      # spread over the live peers
    slots = [pl.Slot("v", 0, pl.READY, "a", "c"), pl.Slot("v", 1, pl.READY, "dead", "c"),
             pl.Slot("v", 2, pl.READY, "b", "c")]
    p = pl.plan("v", 3, "c", slots, ["a", "b"])
    assert [(r.slot.index, r.node) for r in p.of(pl.Replace)] == [(1, "a")]
    assert not p.of(pl.Start) and not p.of(pl.Stop)
    p = pl.plan("v", 1, "c", slots[:1] + slots[2:], ["a", "b"])   # downscale 2 -> 1
    assert [s.slot.index for s in p.of(pl.Stop)] == [2]
    p = pl.plan("v", 1, "new", slots[:1], ["a", "b"])             # user_config changed: reconfigure in place
    assert [r.slot.index for r in p.of(pl.Reconfigure)] == [0] and not p.of(pl.Stop)


def test_plan_for_deleted_app_stops_everything_and_failed_version_keeps_old():
    slots = [pl.Slot("v", i, pl.READY, "a", "c") for i in range(2)] + [pl.Slot("v", 2, pl.STARTING, "a")]
    p = pl.plan(None, 0, "", slots, ["a"])
    assert sorted(s.slot.index for s in p.of(pl.Stop)) == [0, 1, 2]
    old = [pl.Slot("v1", i, pl.READY, "a", "c") for i in range(2)]
    p = pl.plan("v2", 2, "c", old + [pl.Slot("v2", 0, pl.FAILED, "a")], ["a"])
    assert not p.of(pl.Stop) and not p.of(pl.Start)   # the new code fails: the old replicas keep serving
    # A dead replica of an old version is only forgotten.
    p = pl.plan("v2", 1, "c", [pl.Slot("v1", 0, pl.READY, "gone", "c")], ["a"])
    assert [type(a).__name__ for a in p.actions] == ["Remove", "Start"]


# ---- HTTP exposure --------------------------------------------------------------------------------------


def test_binding_beyond_loopback_requires_a_token():
    from p2pcompute.mlkit.serve.api import _check_http
    assert "auth_token" not in _check_http(None, "EveryNode")            # 127.0.0.1:8000, no token needed
    opened = _check_http({"host": "0.0.0.0", "port": 0}, "EveryNode")
    assert len(opened["auth_token"]) >= 24                               # made up when not given
    assert _check_http({"host": "0.0.0.0", "auth_token": "t"}, "HeadOnly")["auth_token"] == "t"
    with pytest.raises(ValueError, match="unknown option"):
        _check_http({"hots": "x"}, "EveryNode")
    with pytest.raises(ValueError, match="proxy_location"):
        _check_http(None, "Everywhere")
    with pytest.raises(ValueError, match="port"):
        _check_http({"port": 70000}, "EveryNode")


@pytest.mark.parametrize("client,auth,expected", [
    (("10.1.2.3", 5000), None, 401),
    (("10.1.2.3", 5000), b"Bearer wrong", 401),
    (("10.1.2.3", 5000), b"Bearer s3cret", 200),
    (("127.0.0.1", 5000), None, 200),
])
def test_proxy_asks_non_loopback_clients_for_the_token(client, auth, expected):
    from p2pcompute.mlkit.serve.proxy import Proxy
    proxy = Proxy(auth_token="s3cret")
    proxy.routes_at = float("inf")        # no table here: keep the (empty) route table as it is
    sent = []
    headers = [(b"authorization", auth)] if auth else []
    scope = {"type": "http", "path": "/-/healthz", "method": "GET", "headers": headers, "client": client}

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(proxy(scope, receive, send))
    assert sent[0]["status"] == expected

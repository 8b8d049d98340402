"""The simulator's parts on their own: options, the engine, the network, the lease audit, the views copy."""

from __future__ import annotations

import random

import pytest

from sims.cluster import Cluster
from sims.engine import Engine
from sims.invariants import LeaseAudit, Violations
from sims.network import Network, Partition
from sims.options import Dist, FaultSpec, OptionError, SimOptions, parse_duration_ns
from sims.workloads import make_workload
from sims_testing import run_cli

MS = 1_000_000
S = 1_000_000_000


# ---- options ---------------------------------------------------------------------------------------------

def test_durations_and_distributions():
    assert parse_duration_ns("250us") == 250_000
    assert parse_duration_ns("1.5s") == 1_500_000_000
    assert Dist.parse("exp:100ms").mean_ns() == 100 * MS
    assert Dist.parse("uniform:50ms:150ms").mean_ns() == 100 * MS
    rng = random.Random(1)
    draws = [Dist.parse("lognorm:100ms:0.5").sampler(rng)() for _ in range(20_000)]
    assert 95 * MS < sum(draws) / len(draws) < 105 * MS
    draws = [Dist.parse("pareto:100ms:2.5").sampler(rng)() for _ in range(50_000)]
    assert 90 * MS < sum(draws) / len(draws) < 110 * MS


@pytest.mark.parametrize("bad", ["100", "exp", "exp:-1ms", "uniform:2s:1s", "pareto:1s:1", "lognorm:1s:x"])
def test_bad_distributions_are_refused_clearly(bad):
    with pytest.raises(OptionError):
        Dist.parse(bad)


@pytest.mark.parametrize("bad", ["crash", "crush=0.1", "loss=2", "crash=-1", "pause_for=soon", "skew=5"])
def test_bad_fault_specs_are_refused_clearly(bad):
    with pytest.raises(OptionError):
        FaultSpec.parse(bad)


def test_the_cli_says_what_is_wrong(capsys):
    status, _ = run_cli(["run", "--faults", "crash=lots"])
    assert status == 2
    assert "crash=lots" in capsys.readouterr().err


def test_argv_rebuilds_the_options():
    from sims.cli import _options, parser
    opts = SimOptions(peers=7, seconds=3.5, seed=9, workload="dag", load=0.4, service=Dist.parse("const:20ms"),
                      faults=FaultSpec.parse("crash=0.1,restart=1,skew=5ms"), restart_id="same", codec=True,
                      breaks=("capacity",))
    again = _options(parser().parse_args(["run", *opts.argv()]), SimOptions())
    assert again.argv() == opts.argv()


# ---- engine ----------------------------------------------------------------------------------------------

def test_events_at_the_same_time_run_in_the_order_scheduled_and_cancel_works():
    engine, seen = Engine(1), []
    for i in range(5):
        engine.at(10, lambda a, b: seen.append(a), i)
    seq = engine.at(5, lambda a, b: seen.append("cancelled"))
    engine.cancel(seq)
    engine.run_until(100)
    assert seen == [0, 1, 2, 3, 4]
    assert engine.now == 100


# ---- network ---------------------------------------------------------------------------------------------

class _Node:
    def __init__(self, slot):
        self.slot, self.paused, self.backlog = slot, False, []


def _net(**faults) -> tuple[Engine, Network, list]:
    engine = Engine(3)
    args = dict(latency=Dist.parse("exp:1ms"), zones=1, zone_latency_ns=0, loss=0.0, dup=0.0, reorder=0.0,
                reorder_by_ns=20 * MS, rto_ns=200 * MS, use_codec=False, unreliable_streams=False,
                on_violation=lambda *a: None)
    args.update(faults)
    net = Network(engine, **args)
    got: list = []
    return engine, net, got


def test_stream_messages_stay_in_order_and_datagrams_may_not():
    from p2pcompute.lease.messages import ReturnLease
    from p2pcompute.net.membership_messages import Gossip
    engine, net, got = _net()
    a = net.register("sim://a", _Node(0), lambda src, m: None)
    net.register("sim://b", _Node(1), lambda src, m: got.append(m))
    for i in range(200):
        net.send(a, "sim://b", ReturnLease(f"l{i}", False))
    engine.run_until(S)
    assert [m.lease_id for m in got] == [f"l{i}" for i in range(200)]
    got.clear()
    for i in range(200):
        net.send(a, "sim://b", Gossip(str(i), (), ()))
    engine.run_until(2 * S)
    assert sorted(int(m.src_id) for m in got) == list(range(200))
    assert [int(m.src_id) for m in got] != list(range(200))  # independent latencies reorder datagrams


def test_a_partition_drops_datagrams_and_holds_streams_until_it_heals():
    from p2pcompute.lease.messages import ReturnLease
    from p2pcompute.net.membership_messages import Gossip
    engine, net, got = _net()
    a = net.register("sim://a", _Node(0), lambda src, m: None)
    net.register("sim://b", _Node(1), lambda src, m: got.append((engine.now, m)))
    net.add_partition(Partition(frozenset({1}), "in", 0, S))
    net.send(a, "sim://b", Gossip("x", (), ()))
    net.send(a, "sim://b", ReturnLease("l", False))
    engine.run_until(3 * S)
    assert [type(m).__name__ for _, m in got] == ["ReturnLease"]
    assert got[0][0] > S
    assert net.dropped["partition"] == 1


def test_loss_drops_about_that_share_of_datagrams():
    from p2pcompute.net.membership_messages import Gossip
    engine, net, got = _net(loss=0.2)
    a = net.register("sim://a", _Node(0), lambda src, m: None)
    net.register("sim://b", _Node(1), lambda src, m: got.append(m))
    for i in range(5000):
        net.send(a, "sim://b", Gossip("x", (), ()))
    engine.run_until(S)
    assert 3800 < len(got) < 4200


# ---- checks ----------------------------------------------------------------------------------------------

def test_the_audit_flags_a_grant_beyond_capacity_and_a_worker_leased_twice():
    engine = Engine(1)
    v = Violations(engine)
    audit = LeaseAudit(v)
    audit.peer_started(1, "p", {"CPU": 20_000})
    for i in range(3):
        audit.on_request(1, f"r{i}", {"CPU": 10_000}, "h-d1")
    audit.on_grant(1, "r0", "l0", "w0")
    audit.on_grant(1, "r1", "l1", "w0")
    audit.on_grant(1, "r2", "l2", "w2")
    messages = [x.message for x in v.of("lease_capacity")]
    assert any("leased twice" in m for m in messages) and any("capacity" in m for m in messages)
    audit.on_return(1, "l0")
    audit.on_holders_dead(1, "h-")
    assert audit.holder_of(1, "w2") is None


def test_the_incremental_views_equal_a_full_rebuild():
    opts = SimOptions(peers=12, seconds=5, seed=4, workload="tasks",
                      faults=FaultSpec.parse("crash=0.05,restart=1,loss=0.05"))
    c = Cluster(opts)
    c.workload = make_workload(c, opts)
    c.build()
    c.workload.start(5 * S)
    for _ in range(5):
        c.engine.run_until(c.engine.now + S)
        for peer in c.up.values():
            peer._views_ns = -(1 << 62)  # due now
            peer._refresh_views()
            full_views = {v.peer_id: v for v in peer.full_views()}
            full = {pid: (v.addr, v.total, v.queued) for pid, v in full_views.items()}
            mine = {pid: (v.addr, v.total, v.queued) for pid, v in peer.lease.views.items()}
            assert mine == full, peer.peer_id
            assert sorted(peer.lease._view_ids) == sorted(full), peer.peer_id  # the sampling list too
            for pid, v in peer.lease.views.items():
                # Free resources are the gossiped ones, less what this peer spilled there since (its estimate).
                assert all(v.available.get(k, 0) <= n for k, n in full_views[pid].available.items()), pid

"""The replica-set policy: sizes 1/3/5, spreading over machines, shrinking after two deaths; it always settles."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pcompute.table.replicaset import machine_of, next_replicas


def addr(peer: str, machine: str) -> str:
    return f"tcp://10.0.0.{abs(hash(machine)) % 250}:{7000 + int(peer[1:])} ipc:///tmp/{peer} machine={machine}"


def settle(replicas: dict, alive: dict, leader: str, target: int = 5, steps: int = 50) -> tuple[dict, int]:
    """Apply the policy until it asks for nothing; every step changes exactly one member."""
    for n in range(steps):
        new = next_replicas(replicas, alive, leader, target)
        if new is None:
            return replicas, n
        assert leader in new, "the leader never removes itself"
        changed = (set(new) ^ set(replicas)) | {p for p in set(new) & set(replicas) if new[p] != replicas[p]}
        assert len(changed) == 1, (replicas, new)
        replicas = new
    raise AssertionError(f"no fixed point after {steps} steps: {replicas}")


def test_machine_of_reads_the_machine_part_else_the_host():
    assert machine_of("tcp://h:1 ipc:///x machine=abc") == "abc"
    assert machine_of("tcp://10.1.2.3:7700") == "10.1.2.3"
    assert machine_of("sim-peer-3") == "sim-peer-3"


def test_sizes_are_one_three_five_as_peers_arrive():
    alive = {}
    replicas = {"p0": addr("p0", "m0")}
    sizes = []
    for i in range(7):
        alive[f"p{i}"] = addr(f"p{i}", f"m{i}")
        replicas, _ = settle(replicas, alive, "p0")
        sizes.append(len(replicas))
    assert sizes == [1, 1, 3, 3, 5, 5, 5]


def test_spares_come_from_machines_without_a_replica():
    alive = {"p0": addr("p0", "A"), "p1": addr("p1", "A"), "p2": addr("p2", "A"), "p3": addr("p3", "B"),
             "p4": addr("p4", "C")}
    replicas, _ = settle({"p0": alive["p0"]}, {k: alive[k] for k in ("p0", "p1", "p3", "p4")}, "p0")
    # p1 sorts first, but it shares the leader's machine: B and C are taken first.
    assert set(replicas) == {"p0", "p3", "p4"}


def test_a_crowded_machine_gives_a_replica_to_a_new_machine():
    alive = {f"p{i}": addr(f"p{i}", "A" if i < 3 else f"M{i}") for i in range(5)}
    replicas = dict(alive)  # A holds three of the five
    alive["p9"] = addr("p9", "Z")
    replicas, steps = settle(replicas, alive, "p0")
    assert steps == 2 and "p9" in replicas and len(replicas) == 5
    assert sorted(machine_of(a) for a in replicas.values()).count("A") == 2


def test_two_dead_of_five_with_no_spare_shrink_to_the_three_survivors():
    alive = {f"p{i}": addr(f"p{i}", f"m{i}") for i in range(5)}
    replicas = dict(alive)
    survivors = {k: v for k, v in alive.items() if k not in ("p1", "p2")}
    replicas, steps = settle(replicas, survivors, "p0")
    assert replicas == survivors and steps == 2


def test_one_dead_of_five_with_no_spare_stays():
    alive = {f"p{i}": addr(f"p{i}", f"m{i}") for i in range(5)}
    survivors = {k: v for k, v in alive.items() if k != "p4"}
    assert next_replicas(dict(alive), survivors, "p0", 5) is None


def test_dead_replicas_are_replaced_by_spares():
    alive = {f"p{i}": addr(f"p{i}", f"m{i}") for i in range(7)}
    replicas = {k: alive[k] for k in ("p0", "p1", "p2", "p3", "p4")}
    survivors = {k: v for k, v in alive.items() if k not in ("p1", "p2")}
    replicas, _ = settle(replicas, survivors, "p0")
    assert set(replicas) == {"p0", "p3", "p4", "p5", "p6"}


@settings(max_examples=200, deadline=None)
@given(peers=st.integers(1, 9), machines=st.integers(1, 6), start=st.integers(1, 7),
       dead=st.sets(st.integers(1, 8), max_size=3), target=st.sampled_from([3, 5]))
def test_the_policy_always_settles_on_an_odd_live_spread_set(peers, machines, start, dead, target):
    every = {f"p{i}": addr(f"p{i}", f"m{i % machines}") for i in range(max(peers, start))}
    replicas = {f"p{i}": every[f"p{i}"] for i in range(start)}
    alive = {p: a for p, a in every.items() if int(p[1:]) not in dead and int(p[1:]) < peers or p == "p0"}
    final, _ = settle(replicas, alive, "p0", target)
    live = [p for p in final if p in alive]
    spares = [p for p in alive if p not in final]
    if not spares:
        return  # nothing to add: dead members may stay (see the module docstring)
    assert all(p in alive for p in final), "a dead member stays only when no spare can replace it"
    assert len(final) == target or (len(final) % 2 == 1 and len(spares) == 1), "grows to the target, odd"
    if len(final) == target:
        used = {machine_of(every[p]) for p in final}
        assert len(used) == min(target, len({machine_of(a) for a in alive.values()})), \
            "replicas spread over as many machines as there are"

"""After a majority of the replicas died for good: the recovery core picks the most advanced survivor, and the
forced leader re-forms a table that keeps everything a survivor held. Also the name move of a restart."""

from __future__ import annotations

from p2pcompute.net.effects import Send
from p2pcompute.table import messages as m
from p2pcompute.table.client import ClientConfig
from p2pcompute.table.recovery import MS, Recovery
from p2pcompute.table.state import TableState
from tests.table_harness import Cluster, addr_of

FIVE = ["r0", "r1", "r2", "r3", "r4"]


def elect(cluster: Cluster):
    assert cluster.run_until(lambda: cluster.leader() is not None and cluster.converged(), 5000)
    return cluster.leader()


def call(cluster: Cluster, client: str, op: tuple, timeout_ms: float = 5000):
    if client not in cluster.clients:
        cluster.add_client(client)
    request_id = cluster.submit(client, op)
    cluster.run_until(lambda: cluster.reply(client, request_id) is not None, timeout_ms)
    return cluster.reply(client, request_id)


def state_of(cluster: Cluster, node_id: str, recovery_id: str) -> m.RecoverState:
    term, last_index, last_term, commit = cluster.nodes[node_id].recovery_state()
    return m.RecoverState(recovery_id, node_id, term, last_index, last_term, commit)


def recover(cluster: Cluster, survivors: list[str]) -> dict:
    """What a peer's table service does for `p2p table recover`, with the harness as the network."""
    alive = {s: addr_of(s) for s in survivors}  # membership has declared the others dead by now
    for node_id in survivors:
        cluster._replica_effects(node_id, cluster.nodes[node_id].on_members(cluster.now_ns, alive))
    rec, sends = Recovery.start("rec1", "tcp://operator", FIVE, {s: addr_of(s) for s in survivors},
                                cluster.now_ns)
    assert sorted(s.to for s in sends) == sorted(addr_of(s) for s in survivors)
    assert all(isinstance(s.msg, m.RecoverQuery) for s in sends)
    orders = []
    for node_id in survivors:
        orders += rec.on_state(cluster.now_ns, state_of(cluster, node_id, "rec1"))
    assert rec.done and rec.error is None and len(orders) == 1
    order = orders[0]
    assert isinstance(order, Send) and isinstance(order.msg, m.RecoverLead)
    leader = order.to.removeprefix("tcp://")
    cluster._replica_effects(leader, cluster.nodes[leader].force_lead(cluster.now_ns, order.msg.replicas,
                                                                       order.msg.term))
    return rec.outcome


def test_the_most_advanced_survivor_leads_and_nothing_it_held_is_lost():
    cluster = Cluster(21, FIVE, client_config=ClientConfig(give_up_after_ms=2000))
    leader = elect(cluster)
    assert call(cluster, "c", ("put", "early", 1)).ok
    survivors = [n for n in FIVE if n != leader.node_id][-2:]
    behind, ahead = survivors
    cluster.partition([behind])  # `behind` misses the next write, which the other four commit
    assert call(cluster, "c", ("put", "late", 2)).ok
    for node_id in FIVE:
        if node_id not in survivors:
            cluster.crash(node_id)
    cluster.heal()
    assert not call(cluster, "c", ("put", "stuck", 3), timeout_ms=3000).ok, "two of five cannot commit"

    outcome = recover(cluster, survivors)
    assert outcome["leader"] == ahead
    assert outcome["replicas"] == sorted(survivors) and len(outcome["lost"]) == 3
    assert "May be lost" in outcome["note"]
    assert cluster.run_until(lambda: cluster.leader() is not None and cluster.converged(), 3000)
    assert set(cluster.leader().replicas()) == set(survivors)
    assert call(cluster, "c2", ("put", "after", 4)).ok
    for key, value in (("early", 1), ("late", 2), ("after", 4)):
        reply = call(cluster, "c2", ("get", key))
        assert reply.ok and reply.result[0] == value, key
    assert cluster.violations == []


def test_a_lone_survivor_recovers_alone():
    cluster = Cluster(22, FIVE)
    leader = elect(cluster)
    assert call(cluster, "c", ("claim", "name", {"actor_id": "a1"})).ok
    last = [n for n in FIVE if n != leader.node_id][0]
    for node_id in FIVE:
        if node_id != last:
            cluster.crash(node_id)
    outcome = recover(cluster, [last])
    assert outcome["leader"] == last and outcome["replicas"] == [last]
    reply = call(cluster, "c2", ("get_name", "name"))
    assert reply.ok and reply.result == {"actor_id": "a1"}


def test_recovery_goes_on_with_the_survivors_that_answered_and_fails_with_none():
    rec, _ = Recovery.start("r", "tcp://me", FIVE, {"r3": "tcp://r3", "r4": "tcp://r4"}, 0, answer_timeout_ms=100)
    assert rec.on_state(0, m.RecoverState("r", "r3", 4, 10, 4, 9)) == []
    assert rec.on_state(0, m.RecoverState("other", "r4", 9, 99, 9, 99)) == []  # another recovery's answer
    assert rec.on_tick(50 * MS) == []
    orders = rec.on_tick(100 * MS)
    assert [o.to for o in orders] == ["tcp://r3"] and orders[0].msg.replicas == {"r3": "tcp://r3"}
    assert rec.outcome["silent"] == ["r4"] and rec.outcome["lost"] == ["r0", "r1", "r2", "r4"]

    silent, _ = Recovery.start("s", "tcp://me", FIVE, {"r4": "tcp://r4"}, 0, answer_timeout_ms=100)
    assert silent.on_tick(200 * MS) == [] and "answered" in silent.error
    none, sends = Recovery.start("n", "tcp://me", FIVE, {}, 0)
    assert sends == [] and none.done and "nothing to recover from" in none.error


def test_replace_name_moves_a_name_only_from_the_record_it_expects():
    state = TableState()
    old, new, other = {"actor_id": "p2-k1.1"}, {"actor_id": "p3-k1.1"}, {"actor_id": "p4-k1.1"}
    assert state.execute(1, ("claim", "ns/a", old))[0] == (True, (True, old), "")
    assert state.execute(2, ("replace_name", "ns/a", other, new))[0] == (True, (False, old), "")
    (ok, (moved, holder), _), changes = state.execute(3, ("replace_name", "ns/a", old, new))
    assert moved and holder == new and changes == [("names", "ns/a", new)]
    assert state.execute(4, ("replace_name", "ns/a", old, new))[0][1] == (True, new)  # a retry of the same move
    assert state.execute(5, ("replace_name", "ns/a", old, other))[0][1] == (False, new)  # a racing restart
    assert state.execute(6, ("replace_name", "ns/missing", old, new))[0][1] == (False, None)

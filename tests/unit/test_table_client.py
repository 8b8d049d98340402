"""The table's client core: routing, retries, give-up, and the subscription-fed read cache."""

from __future__ import annotations

import random

import pytest

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.net.effects import Send
from p2pcompute.table import messages as m
from p2pcompute.table.client import ClientConfig, TableClient
from p2pcompute.table.effects import Reply, TableEvent
from p2pcompute.table.raft import MS
from tests.table_harness import Cluster

REPLICAS = {"a": "tcp://a", "b": "tcp://b", "c": "tcp://c"}
EMPTY = {"names": {}, "kv": {}, "jobs": {}, "actors": {}}


def sends(effects):
    return [e for e in effects if isinstance(e, Send)]


def make(config: ClientConfig | None = None) -> TableClient:
    return TableClient("cl", "tcp://cl", rng=random.Random(3), now_ns=0, replicas=REPLICAS, config=config)


def reply(rid, *, ok=True, result=None, error="", index=1, leader=("a", "tcp://a"), replicas=REPLICAS):
    return m.ClientReply("cl", rid, ok, result, error, index, leader[0] if leader else None,
                         leader[1] if leader else None, replicas)


def test_follows_the_not_leader_hint_with_the_same_request_id():
    client = make()
    rid, out = client.submit(0, ("put", "k", 1))
    first = sends(out)[0]
    assert isinstance(first.msg, m.ClientRequest) and first.msg.request_id == rid
    hint = "tcp://b" if first.to != "tcp://b" else "tcp://c"
    out = client.on_message(1, first.to, reply(rid, ok=False, error=m.NOT_LEADER, leader=("x", hint)))
    assert [(s.to, s.msg.request_id) for s in sends(out)] == [(hint, rid)]
    out = client.on_message(2, hint, reply(rid, result=5, index=7, leader=("x", hint)))
    assert Reply(rid, True, 5, "") in out and client.session_index == 7
    # The next request goes straight to the leader it learned.
    _, out = client.submit(3, ("put", "k", 2))
    assert sends(out)[0].to == hint


def test_without_a_hint_it_backs_off_then_asks_another_replica():
    client = make(ClientConfig(retry_backoff_ms=50))
    rid, out = client.submit(0, ("put", "k", 1))
    first = sends(out)[0].to
    out = client.on_message(1, first, reply(rid, ok=False, error=m.NOT_LEADER, leader=None))
    assert sends(out) == []
    out = client.on_tick(60 * MS)
    assert len(sends(out)) == 1 and sends(out)[0].msg.request_id == rid


def test_timeout_resends_elsewhere_then_gives_up():
    client = make(ClientConfig(request_timeout_ms=100, give_up_after_ms=1000))
    rid, out = client.submit(0, ("put", "k", 1))
    targets = [sends(out)[0].to]
    now = 0
    while now < 900 * MS:
        now += 100 * MS
        targets += [s.to for s in sends(client.on_tick(now))]
    assert all(a != b for a, b in zip(targets, targets[1:]))  # never the same replica twice in a row
    assert Reply(rid, False, None, m.TIMEOUT) in client.on_tick(1000 * MS)
    assert client.pending() == []


def test_stale_and_foreign_replies_are_ignored_and_acked_below_advances():
    client = make()
    r1, _ = client.submit(0, ("put", "k", 1))
    r2, out = client.submit(0, ("put", "k", 2))
    assert sends(out)[0].msg.acked_below == r1
    assert client.on_message(1, "tcp://a", m.ClientReply("other", r1, True, 1, "", 1, None, None, {})) == []
    assert Reply(r1, True, 1, "") in client.on_message(1, "tcp://a", reply(r1, result=1))
    assert client.on_message(1, "tcp://a", reply(r1, result=1)) == []  # a duplicate
    assert client.stats["ignored_stale_reply"] == 2
    r3, out = client.submit(2, ("put", "k", 3))
    assert sends(out)[0].msg.acked_below == r2


def test_cache_serves_fresh_reads_and_never_goes_back_in_time():
    client = make(ClientConfig(cache_fresh_ms=1000))
    out = client.subscribe(0)
    sub = sends(out)[0]
    assert isinstance(sub.msg, m.Subscribe) and sub.msg.from_index == 1
    records = {**EMPTY, "kv": {"k": ("v", 4)}}
    snap = m.TableSnapshot("a", 5, records, REPLICAS, "a", "tcp://a", True)
    assert TableEvent(5, None) in client.on_message(1, sub.to, snap)
    rid, out = client.submit(2, ("get", "k"))
    assert out == [Reply(rid, True, ("v", 4), "")]  # answered locally, nothing sent
    _, out = client.submit(2, ("get", "k"), linearizable=True)
    assert len(sends(out)) == 1  # a linearizable read always asks the leader
    # An update without a gap is applied and reported.
    update = m.TableUpdate("a", 6, 7, [(7, [("kv", "k", ("w", 7))])], REPLICAS, "a", "tcp://a", True)
    assert TableEvent(7, [("kv", "k", ("w", 7))]) in client.on_message(3, sub.to, update)
    assert client.cache_index == 7
    # An older snapshot from a lagging replica is ignored.
    client.on_message(4, "tcp://b", m.TableSnapshot("b", 3, EMPTY, REPLICAS, "a", "tcp://a", True))
    assert client.submit(5, ("get", "k"))[1] == [Reply(3, True, ("w", 7), "")]
    # Stale: no fresh word for cache_fresh_ms, so reads go to the leader.
    assert len(sends(client.submit(2000 * MS, ("get", "k"))[1])) == 1


def test_cache_waits_for_the_clients_own_writes():
    client = make()
    sub = sends(client.subscribe(0))[0]
    client.on_message(1, sub.to, m.TableSnapshot("a", 5, EMPTY, REPLICAS, "a", "tcp://a", True))
    rid, _ = client.submit(2, ("put", "k", "mine"))
    client.on_message(3, "tcp://a", reply(rid, result=9, index=9))
    assert client.session_index == 9
    _, out = client.submit(4, ("get", "k"))
    assert len(sends(out)) == 1  # the cache (index 5) has not seen index 9 yet: read at the leader


def test_a_gap_resubscribes_from_the_cache_index():
    client = make()
    sub = sends(client.subscribe(0))[0]
    client.on_message(1, sub.to, m.TableSnapshot("a", 5, EMPTY, REPLICAS, "a", "tcp://a", True))
    out = client.on_message(2, sub.to, m.TableUpdate("a", 9, 10, [], REPLICAS, "a", "tcp://a", True))
    assert [s.msg for s in sends(out)] == [m.Subscribe("cl", "tcp://cl", 6)]
    assert client.cache_index == 5 and client.stats["subscription_gaps"] == 1


def test_malformed_pushes_are_ignored():
    client = make()
    sub = sends(client.subscribe(0))[0]
    bad = m.TableUpdate("a", 1, 2, [("x", "y")], REPLICAS, "a", "tcp://a", True)
    assert sends(client.on_message(1, sub.to, bad)) == [] and client.stats["ignored_malformed"] == 1
    client.on_message(1, sub.to, m.TableSnapshot("a", 5, {"kv": 3}, REPLICAS, "a", "tcp://a", True))
    assert client.cache_index == 0 and client.stats["ignored_malformed"] == 2


def test_subscribed_cache_follows_other_clients_writes_through_faults():
    cluster = Cluster(21, ["r1", "r2", "r3"], loss=0.1, duplicate=0.1, delay_ms=(1, 20))
    assert cluster.run_until(lambda: cluster.leader() is not None, 5000)
    watcher = cluster.add_client("watcher", subscribe=True)
    cluster.add_client("writer")
    for i in range(30):
        rid = cluster.submit("writer", ("put", f"k{i % 5}", i))
        assert cluster.run_until(lambda: cluster.reply("writer", rid) is not None, 10_000)
        if i == 15:
            cluster.crash(cluster.leader().node_id)  # the subscription must move or survive
    leader = cluster.leader()
    assert leader is not None
    assert cluster.run_until(lambda: watcher.cache.tables == leader.state.tables, 10_000)
    assert watcher.cache_usable(cluster.now_ns)
    rid = cluster.submit("watcher", ("get", "k4"), linearizable=False)
    assert cluster.reply("watcher", rid).result[0] == 29  # answered from the cache
    assert watcher.stats["cache_reads"] == 1
    events = [e for name, e in cluster.client_effects if name == "watcher" and isinstance(e, TableEvent)]
    assert events


def test_requests_wait_until_a_replica_is_known():
    client = TableClient("cl", "tcp://cl", rng=random.Random(3), now_ns=0, replicas={},
                         config=ClientConfig(retry_backoff_ms=50))
    rid, out = client.submit(0, ("put", "k", 1))
    assert sends(out) == [] and client.pending() == [rid]
    client.update_replicas(10 * MS, {"a": "tcp://a"})
    out = client.on_tick(60 * MS)
    assert [(s.to, s.msg.request_id) for s in sends(out)] == [("tcp://a", rid)]


def test_subscription_moves_away_from_a_replica_that_is_not_current():
    client = make(ClientConfig(cache_fresh_ms=1000, subscription_renew_ms=3000))
    first = sends(client.subscribe(0))[0].to
    # The replica keeps answering, but it has lost touch with the leader (fresh=False).
    for t_ms in range(100, 3000, 250):
        client.on_message(t_ms * MS, first, m.TableUpdate("x", 1, 0, [], REPLICAS, None, None, False))
    assert not client.cache_usable(3000 * MS)
    renew = sends(client.on_tick(3000 * MS))
    assert len(renew) == 1 and isinstance(renew[0].msg, m.Subscribe) and renew[0].to != first


@pytest.mark.parametrize("op", [("nope",), ("put", "k"), ["put", "k", 1], ()])
def test_a_malformed_operation_is_the_callers_error(op):
    with pytest.raises(InvalidArgumentError):
        make().submit(0, op)

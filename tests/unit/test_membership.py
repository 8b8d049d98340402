"""The membership core, stepped directly: a handful of cores wired by a tiny in-test network.

No sockets and no sleeps: `Net` keeps virtual time, delivers every message after `latency_ms` (through the
real codec, so only plain data can cross), and ticks each core at its `next_deadline_ns`. Faults are
switches on the network: a crashed address, a slow sender, a blocked pair of addresses.
"""

from __future__ import annotations

import heapq
from random import Random

import pytest

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.net import codec
from p2pcompute.net.effects import Send, Timer
from p2pcompute.net.membership import (
    Fenced, MemberChanged, Membership, MembershipConfig, SharedStart, detection_bound_ms, id_hash,
    likely_detection_bound_ms, suspicion_timeout_ms,
)
from p2pcompute.net.membership_messages import (
    ALIVE, DEAD, LEFT, SUSPECT, Ack, Gossip, Join, Ping, PingReq, Snapshot,
)
from p2pcompute.net.messages import REGISTRY
from sims.broken import MembershipSkippingRefutation

MS = 1_000_000
CFG = MembershipConfig()


class Net:
    """A deterministic network of membership cores: virtual time, no sockets."""

    def __init__(self, seed: int = 0, latency_ms: int = 1, config: MembershipConfig = CFG):
        self.seed = seed
        self.config = config
        self.now = 0
        self.latency_ns = latency_ms * MS
        self.cores: dict[str, Membership] = {}
        self.inflight: list = []  # heap of (deliver_at_ns, n, dst, src, frame)
        self.sent = 0
        self.down: set[str] = set()  # crashed: nothing to or from them, in flight included
        self.slow_ns: dict[str, int] = {}  # sender address -> extra delay on all it sends
        self.blocked: set[tuple[str, str]] = set()  # (src, dst) pairs whose messages are lost
        self.events: list[tuple[int, str, MemberChanged]] = []  # (time, observer addr, event)
        self.sent_types: dict[str, int] = {}
        self.fenced: list[tuple[int, str, Fenced]] = []  # (time, fenced peer's addr, effect)

    def start(self, peer_id: str, seeds=(), *, addr: str | None = None, incarnation: int = 0,
              meta: dict | None = None) -> Membership:
        addr = addr or f"tcp://{peer_id}:1"
        core = Membership(peer_id, addr, config=self.config, rng=Random(f"{self.seed}/{peer_id}/{self.now}"),
                          now_ns=self.now, incarnation=incarnation, meta=meta or {"host": peer_id})
        self.cores[addr] = core
        self.down.discard(addr)
        self._carry_out(addr, core.start(self.now, list(seeds)))
        return core

    def cluster(self, n: int, settle_ms: int = 3000) -> list[Membership]:
        """n peers, each joining through the one started before it; then let things settle."""
        cores = [self.start("p0")]
        for i in range(1, n):
            self.run_for(50)
            cores.append(self.start(f"p{i}", [cores[-1].self_addr]))
        self.run_for(settle_ms)
        return cores

    def _carry_out(self, src: str, effects: list) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.sent += 1
                self.sent_types[type(e.msg).__name__] = self.sent_types.get(type(e.msg).__name__, 0) + 1
                at = self.now + self.latency_ns + self.slow_ns.get(src, 0)
                heapq.heappush(self.inflight, (at, self.sent, e.to, src, codec.encode(e.msg)))
            elif isinstance(e, MemberChanged):
                self.events.append((self.now, src, e))
            elif isinstance(e, Fenced):
                # As the runtime does: the fenced peer's processes end; nothing more from or to it.
                self.fenced.append((self.now, src, e))
                self.down.add(src)
            else:
                assert isinstance(e, Timer), e

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms * MS)

    def run_until(self, t_ns: int) -> None:
        while True:
            msg_at = self.inflight[0][0] if self.inflight else t_ns + 1
            tick_at, addr = min(((c.next_deadline_ns(), a) for a, c in self.cores.items() if a not in self.down),
                                default=(t_ns + 1, None))
            if min(msg_at, tick_at) > t_ns:
                break
            if msg_at <= tick_at:
                self.now, _, dst, src, frame = heapq.heappop(self.inflight)
                if dst in self.down or src in self.down or (src, dst) in self.blocked or dst not in self.cores:
                    continue
                self._carry_out(dst, self.cores[dst].on_message(self.now, src, codec.decode(frame)))
            else:
                self.now = tick_at
                self._carry_out(addr, self.cores[addr].on_tick(self.now))
        self.now = t_ns

    def live(self) -> list[Membership]:
        return [c for a, c in self.cores.items() if a not in self.down]

    def state_of(self, observer: Membership, peer_id: str) -> str | None:
        m = observer.members().get(peer_id)
        return m.state if m else None

    def event_times(self, peer_id: str, state: str, observer: Membership) -> list[int]:
        return [t for t, obs, e in self.events
                if obs == observer.self_addr and e.peer_id == peer_id and e.state == state]


def alive_ids(core: Membership) -> set[str]:
    return {m.peer_id for m in core.alive()}


# ---- wire format --------------------------------------------------------------------------------------------


def _one_of_each() -> list:
    rec = ("p1", "tcp://h:1", SUSPECT, 3, {"host": "h", "ports": [1, 2]})
    view = ("p1", 3, 7, {"CPU": 40000, "queue": 2, "store_bytes": 1 << 33})
    return [
        Ping(1, "p0", "p1", (rec,), (view,), id_hash("p0")),
        Ack(2, "p1", (), (view,), (1 << 63) - 1),
        PingReq(3, "p0", "p2", "tcp://p2:1", (rec,), ()),
        Join("p9", "tcp://p9:1", 4, {"host": "h9"}, {"CPU": 1}, 2),
        Snapshot("p0", (rec, ("p0", "tcp://p0:1", ALIVE, 0, {})), (view,), True),
        Gossip("p0", (rec,), (view,)),
    ]


def test_every_message_type_round_trips_through_the_codec():
    msgs = _one_of_each()
    membership_codes = {code for code in REGISTRY if 1 <= code <= 99}
    assert {type(m).TYPE for m in msgs} == membership_codes, "a membership message has no round-trip case"
    for msg in msgs:
        assert codec.decode(codec.encode(msg)) == msg


# ---- joining and views --------------------------------------------------------------------------------------


def test_first_peer_is_joined_alone_and_keeps_a_timer():
    core = Membership("solo", "tcp://solo:1", config=CFG, rng=Random(1), now_ns=0)
    effects = core.start(0, [])
    assert core.joined and alive_ids(core) == {"solo"}
    assert [type(e) for e in effects] == [Timer]
    effects = core.on_tick(core.next_deadline_ns())
    assert not any(isinstance(e, Send) for e in effects) and isinstance(effects[-1], Timer)


@pytest.mark.parametrize("seed", range(3))
def test_join_through_any_member_converges(seed):
    net = Net(seed)
    rng = Random(seed)
    cores = [net.start("p0")]
    for i in range(1, 5):  # each newcomer joins through a random member, not necessarily the first peer
        net.run_for(30)
        cores.append(net.start(f"p{i}", [rng.choice(cores).self_addr]))
    net.run_for(1500)
    everyone = {f"p{i}" for i in range(5)}
    for core in cores:
        assert core.joined
        assert alive_ids(core) == everyone, core.self_id
        assert all(m.state == "alive" for m in core.members().values())
    # Each peer announced each other peer exactly once, as first learned.
    for core in cores:
        learned = [e.peer_id for t, obs, e in net.events if obs == core.self_addr]
        assert sorted(learned) == sorted(everyone - {core.self_id})


def test_views_spread_and_the_latest_version_wins():
    net = Net(1)
    cores = net.cluster(4)
    for round_ in range(3):
        for i, core in enumerate(cores):
            core.set_view({"CPU": 10_000 * i, "round": round_})
        net.run_for(200)
    net.run_for(3 * 2 * CFG.probe_interval_ms)  # two probe cycles: every pair has swapped views directly
    for observer in cores:
        for owner in cores:
            m = observer.members()[owner.self_id]
            assert (m.view_version, m.view) == (3, {"CPU": 10_000 * cores.index(owner), "round": 2})


def test_view_only_gossip_rounds_wait_for_the_view_interval():
    view_rounds: list[tuple[int, str]] = []  # (time, sender) of each Gossip that carries only views

    class Recording(Net):
        def _carry_out(self, src, effects):
            for e in effects:
                if isinstance(e, Send) and isinstance(e.msg, Gossip) and not e.msg.updates:
                    view_rounds.append((self.now, src))
            super()._carry_out(src, effects)

    net = Recording(2, config=MembershipConfig(view_gossip_interval_ms=300))
    cores = net.cluster(4)
    view_rounds.clear()
    for step in range(60):  # 3 s of views that change every 50 ms
        for core in cores:
            core.set_view({"CPU": step})
        net.run_for(50)
    for core in cores:
        times = [t for t, src in view_rounds if src == core.self_addr]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 3_000 // 300 - 2, times
        assert min(gaps) >= 300 * MS, gaps
    net.run_for(3 * 2 * CFG.probe_interval_ms)  # two probe cycles: the last views reach everyone, by probes at least
    assert all(m.view == {"CPU": 59} for core in cores for m in core.members().values())


def _shared_cluster(n: int) -> tuple[SharedStart, list[tuple]]:
    records = [(f"p{i}", f"tcp://p{i}:1", ALIVE, 0, {"gen": 0}) for i in range(n)]
    views = [(f"p{i}", 0, 1, {"CPU": i}) for i in range(n)]
    return SharedStart(tuple(records), tuple(views)), records


def test_a_shared_start_is_the_same_as_merging_the_snapshot():
    shared, records = _shared_cluster(6)
    views = tuple(m.view_rec for m in shared.members.values())
    a = Membership("p2", "tcp://p2:1", config=CFG, rng=Random(1), now_ns=0, meta={"gen": 0})
    a.start_shared(0, shared)
    b = Membership("p2", "tcp://p2:1", config=CFG, rng=Random(1), now_ns=0, meta={"gen": 0})
    b.start(0, ["tcp://seed:1"])
    b.on_message(0, "tcp://seed:1", Snapshot("seed", tuple(records), views, False))
    assert a.joined and b.joined
    assert a._digest == b._digest
    def seen(core):
        return {pid: (m.state, m.incarnation, m.addr, m.meta, m.view_version, m.view) if pid != "p2" else m.state
                for pid, m in core.members().items()}
    assert seen(a) == seen(b)
    assert sorted(m.peer_id for m in a.alive()) == sorted(m.peer_id for m in b.alive())


def test_cores_from_one_shared_start_change_only_their_own_copies():
    shared, _ = _shared_cluster(5)
    first, second = (Membership(pid, f"tcp://{pid}:1", config=CFG, rng=Random(pid), now_ns=0, meta={"gen": 0})
                     for pid in ("p0", "p1"))
    for core in (first, second):
        core.start_shared(0, shared)
    first.on_message(1, "tcp://p3:1", Gossip("p3", (("p4", "tcp://p4:1", SUSPECT, 0, {"gen": 0}),),
                                                 (("p3", 0, 7, {"CPU": 99}),)))
    assert first.member("p4").state == "suspect" and first.member("p3").view == {"CPU": 99}
    assert first.suspect_ids() == ["p4"] and second.suspect_ids() == []
    assert first.alive_ids() == [m.peer_id for m in first.alive()] and len(first.alive_ids()) == 5
    assert second.member("p4").state == "alive" and second.member("p3").view == {"CPU": 3}
    assert shared.members["p4"].state == "alive" and shared.members["p3"].view_version == 1
    with pytest.raises(AttributeError):
        shared.members["p4"].told_ns = 5  # a shared record cannot be changed by mistake
    # A member forgotten after its death stays forgotten: the shared record does not show through.
    now = 1
    while first.member("p4") is not None and now < 400_000 * MS:
        now = max(now + 1, first.next_deadline_ns())
        first.on_tick(now)
    assert first.member("p4") is None and "p4" not in first.members()
    assert second.member("p4").state == "alive"


def _gossip_view(core: Membership, peer_id: str, incarnation: int, version: int, view: dict) -> None:
    core.on_message(1, "tcp://x:1", Gossip("x", (), ((peer_id, incarnation, version, view),)))


def test_an_older_view_never_overwrites_a_newer_one():
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0)
    core.start(0, [])
    core.on_message(1, "tcp://x:1", Gossip("x", (("x", "tcp://x:1", ALIVE, 2, {}),), ()))
    _gossip_view(core, "x", 2, 5, {"v": 5})
    for incarnation, version in [(2, 3), (2, 5), (1, 9)]:  # older version, same version, older incarnation
        _gossip_view(core, "x", incarnation, version, {"stale": True})
        assert core.members()["x"].view == {"v": 5}
    _gossip_view(core, "x", 3, 1, {"v": "restarted"})  # a newer incarnation starts its versions again
    m = core.members()["x"]
    assert (m.view_incarnation, m.view_version, m.view) == (3, 1, {"v": "restarted"})


def test_a_view_of_ours_from_a_previous_life_is_outbid():
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0)
    core.start(0, [])
    core.set_view({"v": 1})
    _gossip_view(core, "me", 0, 40, {"old": True})
    assert core.members()["me"].view == {"v": 1} and core.members()["me"].view_version == 41
    core.set_view({"v": 2})
    assert core.members()["me"].view_version == 42


# ---- failure detection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_a_crashed_peer_is_suspected_then_dead_everywhere_within_the_bound(seed):
    net = Net(seed)
    cores = net.cluster(4)
    victim = cores[seed % 4]
    crash_ns = net.now
    net.down.add(victim.self_addr)
    bound_ns = detection_bound_ms(CFG, 4) * MS
    net.run_until(crash_ns + bound_ns)
    for observer in net.live():
        dead_at = net.event_times(victim.self_id, "dead", observer)
        suspect_at = net.event_times(victim.self_id, "suspect", observer)
        assert dead_at, f"seed {seed}: {observer.self_id} never marked {victim.self_id} dead"
        assert suspect_at and suspect_at[0] < dead_at[0], f"seed {seed}: dead without suspicion first"
        assert dead_at[0] - crash_ns <= bound_ns
    assert all(victim.self_id not in alive_ids(c) for c in net.live())


def test_an_unreachable_path_alone_does_not_make_a_peer_suspect():
    net = Net(2)
    a, b, c, d = net.cluster(4)
    net.blocked |= {(a.self_addr, b.self_addr), (b.self_addr, a.self_addr)}
    net.run_for(20_000)  # a probes b many times; the indirect probes through c and d get through
    assert net.sent_types.get("PingReq", 0) >= 5
    assert not [e for t, obs, e in net.events if e.state in ("suspect", "dead")]


def _slow_peer_run(seed: int, skip_refutation: bool) -> tuple[Net, Membership]:
    net = Net(seed)
    cores = net.cluster(4)
    slow = cores[1]
    if skip_refutation:
        slow.__class__ = MembershipSkippingRefutation  # the planted bug (sims/broken.py), on a built core
    # Everything the slow peer sends, its acks included, arrives 700 ms late: after the probe period ends.
    net.slow_ns[slow.self_addr] = 700 * MS
    net.run_for(6000)
    del net.slow_ns[slow.self_addr]
    net.run_for(3000)
    return net, slow


@pytest.mark.parametrize("seed", range(3))
def test_a_slow_peer_is_suspected_but_refutes_and_is_never_declared_dead(seed):
    net, slow = _slow_peer_run(seed, skip_refutation=False)
    states = [e.state for t, obs, e in net.events if e.peer_id == slow.self_id and t > 0]
    assert "suspect" in states, "the test did not make the slow peer suspect; it tests nothing"
    assert "dead" not in states
    assert slow.counters["refutations"] > 0
    assert all(net.state_of(c, slow.self_id) == "alive" for c in net.live())


def test_without_refutation_the_slow_peer_would_be_declared_dead():
    # The same run with refutation switched off: the checks above must then fail, or they prove nothing.
    net, slow = _slow_peer_run(0, skip_refutation=True)
    assert any(e.peer_id == slow.self_id and e.state == "dead" for t, obs, e in net.events)
    # ...and once told, it is fenced rather than refuting its death.
    assert [addr for t, addr, e in net.fenced] == [slow.self_addr] and slow.fenced


# ---- leaving and coming back --------------------------------------------------------------------------------


def test_a_graceful_leave_is_seen_at_once_and_never_becomes_a_failure():
    net = Net(3)
    cores = net.cluster(5)
    leaver = cores[2]
    left_ns = net.now
    net._carry_out(leaver.self_addr, leaver.leave(net.now))
    net.run_for(20)
    for observer in cores:
        if observer is not leaver:
            assert net.state_of(observer, leaver.self_id) == "left"
            assert net.event_times(leaver.self_id, "left", observer)[0] - left_ns <= 2 * MS
    net.run_for(10_000)  # it stops answering; nobody turns 'left' into suspect or dead
    assert not [e for t, obs, e in net.events if e.peer_id == leaver.self_id and e.state in ("suspect", "dead")]
    assert all(leaver.self_id not in alive_ids(c) for c in cores if c is not leaver)
    assert leaver.next_deadline_ns() > net.now + 10**15  # done gossiping: no more ticks wanted


@pytest.mark.parametrize("incarnation", [0, 9])
def test_a_restarted_peer_with_the_same_id_rejoins(incarnation):
    # incarnation 0 is lower than the one it died with: it must learn that and outbid it.
    net = Net(4)
    cores = net.cluster(4)
    victim = cores[3]
    net.down.add(victim.self_addr)
    net.run_for(detection_bound_ms(CFG, 4))
    assert all(net.state_of(c, victim.self_id) == "dead" for c in net.live())
    back = net.start(victim.self_id, [cores[0].self_addr], addr=victim.self_addr, incarnation=incarnation,
                     meta={"host": victim.self_id, "boot": 2})
    net.run_for(2000)
    for observer in net.live():
        m = observer.members()[victim.self_id]
        assert (m.state, m.incarnation, m.meta["boot"]) == ("alive", back.incarnation, 2)
        assert alive_ids(observer) == {c.self_id for c in cores}
    assert back.incarnation > 0


def test_a_restarted_peer_with_a_new_id_at_the_same_address_rejoins():
    net = Net(5)
    cores = net.cluster(4)
    old = cores[3]
    crash_ns = net.now
    net.down.add(old.self_addr)
    # Back at once under a new id, before anyone noticed: pings for the old id now reach the new process.
    new = net.start("p3-reborn", [cores[1].self_addr], addr=old.self_addr)
    net.run_until(crash_ns + detection_bound_ms(CFG, 5) * MS)
    for observer in net.live():
        assert net.state_of(observer, "p3") == "dead"
        assert alive_ids(observer) == {"p0", "p1", "p2", "p3-reborn"}
    assert new.counters["unexpected"] > 0  # it dropped pings meant for the old id instead of answering them


def test_dead_members_are_forgotten_after_retention():
    config = MembershipConfig(dead_retention_ms=5000)
    net = Net(6, config=config)
    cores = net.cluster(4)
    net.down.add(cores[3].self_addr)
    net.run_for(detection_bound_ms(config, 4))
    assert all(net.state_of(c, "p3") == "dead" for c in net.live())
    net.run_for(config.dead_retention_ms)
    assert all("p3" not in c.members() for c in net.live())


def _never_revived(net: Net) -> None:
    """Death is final: no observer ever sees a member it held dead come back with the same identity."""
    held_dead: dict[tuple, object] = {}
    for t, obs, e in net.events:
        key = (obs, e.peer_id)
        if e.state == "dead":
            held_dead[key] = (e.addr, e.meta)
        elif e.state in ("alive", "suspect") and key in held_dead:
            assert held_dead[key] != (e.addr, e.meta), f"{obs} saw {e.peer_id} come back from the dead at {t}"


def test_a_peer_cut_off_past_the_suspicion_timeout_is_fenced_when_the_network_heals():
    net = Net(7)
    cores = net.cluster(4)
    lone, rest = cores[3], cores[:3]
    net.blocked = {(lone.self_addr, c.self_addr) for c in rest} | {(c.self_addr, lone.self_addr) for c in rest}
    net.run_for(2 * detection_bound_ms(CFG, 4))
    assert alive_ids(cores[0]) == {"p0", "p1", "p2"} and alive_ids(lone) == {"p3"}
    net.blocked = set()
    net.run_for(10_000)  # reconnect attempts tell the lone peer it was declared dead: it is fenced, not back
    assert lone.fenced and lone.self_addr in {addr for t, addr, e in net.fenced}
    assert "declared peer p3 dead" in next(e.reason for t, addr, e in net.fenced if addr == lone.self_addr)
    assert lone.on_tick(net.now) == [] and lone.next_deadline_ns() > net.now + 10**15  # silent for good
    survivors = [c for c in rest if not c.fenced]
    assert survivors, "nobody survived a one-peer partition"
    for core in survivors:
        assert alive_ids(core) == {c.self_id for c in survivors}
        assert core.members()["p3"].state == "dead"
    _never_revived(net)


def test_after_a_split_in_halves_every_survivor_agrees_and_nobody_is_revived():
    # Both halves declare the other dead; on healing each tells the other so. Deaths being final, peers on
    # both sides may be fenced: what must hold is that the survivors agree and no death is undone.
    net = Net(8)
    cores = net.cluster(4)
    left, right = {c.self_addr for c in cores[:2]}, {c.self_addr for c in cores[2:]}
    net.blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    net.run_for(2 * detection_bound_ms(CFG, 4))
    assert alive_ids(cores[0]) == {"p0", "p1"} and alive_ids(cores[3]) == {"p2", "p3"}
    net.blocked = set()
    net.run_for(10_000 + detection_bound_ms(CFG, 4))
    assert net.fenced
    survivors = [c for c in cores if not c.fenced]
    for core in survivors:
        assert alive_ids(core) == {c.self_id for c in survivors}
    _never_revived(net)


def test_unanswered_join_is_retried_with_backoff():
    core = Membership("new", "tcp://new:1", config=CFG, rng=Random(1), now_ns=0)
    sends = [e for e in core.start(0, ["tcp://nobody:1", "tcp://nobody:2"]) if isinstance(e, Send)]
    assert [type(e.msg) for e in sends] == [Join, Join]
    join_times = []
    now = 0
    while now < 40_000 * MS:
        now = core.next_deadline_ns()
        if any(isinstance(e, Send) and isinstance(e.msg, Join) for e in core.on_tick(now)):
            join_times.append(now // MS)
    assert join_times == [1000, 3000, 7000, 15000, 31000]  # 1, 2, 4, 8, 16 s apart (capped at 16 s)
    assert not core.joined


# ---- merge rules --------------------------------------------------------------------------------------------

# (claim state, claim incarnation, resulting state, resulting incarnation), applied in order to member x.
PRECEDENCE = [
    (ALIVE, 1, "alive", 1),  # first learned
    (SUSPECT, 0, "alive", 1),  # stale
    (SUSPECT, 1, "suspect", 1),  # suspect beats alive at the same incarnation
    (ALIVE, 1, "suspect", 1),  # ...and a same-incarnation alive cannot undo it
    (ALIVE, 2, "alive", 2),  # only a refutation can
    (DEAD, 2, "dead", 2),  # dead beats alive
    (ALIVE, 2, "dead", 2),
    (SUSPECT, 2, "dead", 2),  # ...and suspect
    (LEFT, 2, "left", 2),  # left beats dead
    (DEAD, 2, "left", 2),
    (ALIVE, 3, "left", 2),  # the same process never comes back: a departure, like a death, is final
    (ALIVE, 3, "alive", 3, {"boot": 2}),  # a new process with the id (new meta) takes over
    (DEAD, 3, "dead", 3, {"boot": 2}),
    (ALIVE, 4, "dead", 3, {"boot": 2}),  # a refutation cannot undo a death either
]


def test_merge_precedence():
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0)
    core.start(0, [])
    for state, incarnation, want_state, want_incarnation, *meta in PRECEDENCE:
        rec = ("x", "tcp://x:1", state, incarnation, meta[0] if meta else {})
        core.on_message(1, "tcp://x:1", Gossip("y", (rec,), ()))
        m = core.members()["x"]
        assert (m.state, m.incarnation) == (want_state, want_incarnation), (state, incarnation)


@pytest.mark.parametrize("state,meta", [(SUSPECT, {}), (LEFT, {}), (DEAD, {"boot": 1})])
def test_a_suspicion_is_refuted_unless_we_left(state, meta):
    # A dead record with another meta is about an earlier process with our id: outbid it, as a suspicion.
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0, incarnation=4)
    core.start(0, [])
    effects = core.on_message(1, "tcp://x:1", Gossip("x", (("me", "tcp://me:1", state, 4, meta),), ()))
    assert core.incarnation == 5 and core.members()["me"].state == "alive" and not core.fenced
    replies = [e for e in effects if isinstance(e, Send)]
    assert replies and replies[0].to == "tcp://x:1" and replies[0].msg.updates[0][2:4] == (ALIVE, 5)
    core.leave(2)
    core.on_message(3, "tcp://x:1", Gossip("x", (("me", "tcp://me:1", DEAD, 9, {}),), ()))
    assert core.incarnation == 5 and core.members()["me"].state == "left" and not core.fenced


@pytest.mark.parametrize("incarnation", [3, 4, 7])  # below ours too: a death declared before our refutation
def test_a_peer_told_it_was_declared_dead_is_fenced_and_goes_silent(incarnation):
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0, incarnation=4)
    core.start(0, [])
    core.on_message(1, "tcp://x:1", Gossip("x", (("x", "tcp://x:1", ALIVE, 0, {}),), ()))
    ping = Ping(1, "x", "me", (("me", "tcp://me:1", DEAD, incarnation, {}),), ())
    effects = core.on_message(2, "tcp://x:1", ping)
    assert [type(e) for e in effects] == [Fenced]  # no refutation, not even the Ack the ping asked for
    assert effects[0].incarnation == incarnation and "declared peer me dead" in effects[0].reason
    assert core.fenced and core.incarnation == 4
    assert core.on_tick(10**12) == [] and core.next_deadline_ns() > 10**15
    assert core.on_message(3, "tcp://x:1", Ping(2, "x", "me", (), ())) == []
    assert core.start(4, ["tcp://x:1"]) == [] and core.leave(5) == []


def _knowing(peer_id: str, others: dict) -> Membership:
    """A started core that heard `others` (peer id -> state) by gossip; incarnations 0."""
    core = Membership(peer_id, f"tcp://{peer_id}:1", config=CFG, rng=Random(peer_id), now_ns=0)
    core.start(0, [])
    for pid in others:
        core.on_message(1, f"tcp://{pid}:1", Gossip(pid, ((pid, f"tcp://{pid}:1", ALIVE, 0, {}),), ()))
    for pid, state in others.items():
        if state != ALIVE:
            core.on_message(2, "tcp://z:1", Gossip("z", ((pid, f"tcp://{pid}:1", state, 0, {}),), ()))
    return core


def _deliver(src: Membership, effects: list, dst: Membership, now: int) -> list:
    """Hand `dst` what `src`'s effects send to it (through the codec); returns dst's effects."""
    out = []
    for e in effects:
        if isinstance(e, Send) and e.to == dst.self_addr:
            out += dst.on_message(now, src.self_addr, codec.decode(codec.encode(e.msg)))
    return out


def test_a_peer_that_missed_a_death_is_mended_by_the_next_probe_digest():
    """After heavy churn a peer may miss one death rumour; its own round-robin would find the dead member only
    within a cycle (N probe periods, minutes at 1,000 peers), the periodic sync within 160 s. The digest of
    live sets on every probe and ack finds the difference at the next probe and syncs with that peer."""
    stale = _knowing("a", {"b": ALIVE, "x": ALIVE, "y": ALIVE})       # missed x's death
    told = _knowing("b", {"a": ALIVE, "x": DEAD, "y": ALIVE})
    assert stale.members()["x"].state == "alive"
    ping = Ping(7, "b", "a", (), (), told._digest)
    effects = stale.on_message(10 * MS, told.self_addr, ping)
    snaps = [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, Snapshot)]
    assert snaps and snaps[0].want_reply and stale.counters["digest_syncs"] == 1
    assert [e.msg.digest for e in effects if isinstance(e.msg, Ack)] == [stale._digest]
    replies = _deliver(stale, effects, told, 11 * MS)                  # b answers with its own full state
    _deliver(told, replies, stale, 12 * MS)
    assert stale.members()["x"].state == "dead" and stale._digest == told._digest
    # Agreeing digests cost nothing: no sync.
    again = stale.on_message(13 * MS, told.self_addr, Ack(8, "b", (), (), told._digest))
    assert not any(isinstance(e.msg, Snapshot) for e in again if isinstance(e, Send))


def test_a_differing_digest_syncs_at_most_once_per_interval():
    a = _knowing("a", {"b": ALIVE, "x": ALIVE})
    first = a.on_message(1 * MS, "tcp://b:1", Ack(1, "b", (), (), id_hash("b") ^ id_hash("a")))
    assert any(isinstance(e.msg, Snapshot) for e in first if isinstance(e, Send))
    soon = a.on_message(2 * MS, "tcp://b:1", Ack(2, "b", (), (), id_hash("b") ^ id_hash("a")))
    assert not any(isinstance(e.msg, Snapshot) for e in soon if isinstance(e, Send))
    later = a.on_message(2 * MS + CFG.digest_sync_ms * MS, "tcp://b:1", Ack(3, "b", (), (), 12345))
    assert any(isinstance(e.msg, Snapshot) for e in later if isinstance(e, Send))
    assert a.counters["digest_syncs"] == 2
    # No digest (0) never asks for a sync.
    assert not any(isinstance(e.msg, Snapshot) for e in a.on_message(10**12, "tcp://b:1", Ack(4, "b", (), ()))
                   if isinstance(e, Send))


def test_a_death_declared_before_a_late_refutation_still_wins():
    """x refuted a suspicion (incarnation 1) after others had declared it dead at 0; they acted on it, so x
    fences itself when told. A peer that heard the refutation first must still take the death, or it holds a
    silent, fenced member alive until its own probes find it."""
    a = _knowing("a", {"x": ALIVE})
    a.on_message(1, "tcp://x:1", Gossip("x", (("x", "tcp://x:1", ALIVE, 1, {}),), ()))
    effects = a.on_message(2, "tcp://z:1", Gossip("z", (("x", "tcp://x:1", DEAD, 0, {}),), ()))
    m = a.members()["x"]
    assert (m.state, m.incarnation) == ("dead", 1)
    assert [(e.state, e.previous_state) for e in effects if isinstance(e, MemberChanged)] == [("dead", "alive")]
    # Not a death of an earlier process with this id (other meta) coming back: that one restarted, and lives.
    b = _knowing("b", {})
    b.on_message(1, "tcp://x:1", Gossip("x", (("x", "tcp://x:1", ALIVE, 3, {"boot": 2}),), ()))
    b.on_message(2, "tcp://z:1", Gossip("z", (("x", "tcp://x:1", DEAD, 2, {"boot": 1}),), ()))
    assert b.members()["x"].state == "alive"
    # Nor a stale suspicion.
    a2 = _knowing("c", {"x": ALIVE})
    a2.on_message(1, "tcp://x:1", Gossip("x", (("x", "tcp://x:1", ALIVE, 1, {}),), ()))
    a2.on_message(2, "tcp://z:1", Gossip("z", (("x", "tcp://x:1", SUSPECT, 0, {}),), ()))
    assert a2.members()["x"].state == "alive"


def test_the_digest_follows_the_live_set():
    a = _knowing("a", {"b": ALIVE, "x": ALIVE})
    assert a._digest == id_hash("a") ^ id_hash("b") ^ id_hash("x")
    a.on_message(5, "tcp://z:1", Gossip("z", (("x", "tcp://x:1", SUSPECT, 0, {}),), ()))
    assert a._digest == id_hash("a") ^ id_hash("b") ^ id_hash("x")   # a suspect is still live
    a.on_message(6, "tcp://z:1", Gossip("z", (("x", "tcp://x:1", DEAD, 0, {}),), ()))
    assert a._digest == id_hash("a") ^ id_hash("b")


def test_a_member_is_never_learned_from_a_suspicion():
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0)
    core.start(0, [])
    core.on_message(1, "tcp://x:1", Gossip("x", (("z", "tcp://z:1", SUSPECT, 0, {}),), ()))
    assert "z" not in core.members()


# ---- bad input and bounds -----------------------------------------------------------------------------------

GARBAGE = [
    None, "ping", b"\x00", 42, (1, 2), {"seq": 1},
    Ping("seq", "p1", "me", (), ()),  # wrong field types
    Ping(1, "p1", "me", [("p2", "a", 0, 0, {})], ()),  # a list where a tuple belongs
    Ack(True, "p1", (), ()),  # a bool is not a sequence number
    Gossip("p1", ("not a record", ("p2",), ("p2", "a", 7, 0, {}), ("p2", "a", 0, -1, {}), ("", "a", 0, 0, {}),
                  ([], "a", 0, 0, {}), ("p2", "a", 0, 0, None), ("p2", "a", True, 0, {})),
           (("p2",), ("p2", 0, 1, "not a dict"), ({}, 0, 1, {}), None)),
    Snapshot("p1", (("p3", 1, 2, 3, 4),), (1, 2, 3), False),
    Join("p4", "", 0, {}, {}, 0),  # no address to answer or record
    Join("p4", "tcp://p4:1", -1, {}, {}, 0),
    Ack(999, "p1", (), ()),  # answers nothing we asked
    Ping(1, "p1", "someone-else", (), ()),  # meant for another peer id
    PingReq(1, "p1", "p2", 5, (), ()),
]


@pytest.mark.parametrize("msg", GARBAGE, ids=lambda m: type(m).__name__)
def test_garbage_is_counted_and_ignored(msg):
    core = Membership("me", "tcp://me:1", config=CFG, rng=Random(1), now_ns=0)
    core.start(0, [])
    before = sum(core.counters.values())
    effects = core.on_message(1, "tcp://x:1", msg)
    assert not any(isinstance(e, (Send, MemberChanged)) for e in effects)
    assert set(core.members()) == {"me"} and core.incarnation == 0
    assert sum(core.counters.values()) > before or isinstance(msg, Ack)


def test_messages_stay_bounded_in_a_large_cluster():
    config = MembershipConfig(max_updates_per_msg=5, max_views_per_msg=4, max_snapshot_members=100)
    core = Membership("me", "tcp://me:1", config=config, rng=Random(1), now_ns=0)
    core.start(0, [])
    records = tuple((f"p{i}", f"tcp://p{i}:1", ALIVE, 0, {}) for i in range(1000))
    views = tuple((f"p{i}", 0, 1, {"CPU": i}) for i in range(1000))
    core.on_message(1, "tcp://p0:1", Gossip("p0", records, views))  # 1000 fresh rumours at once
    sends = []
    now = 1
    for _ in range(200):
        now = core.next_deadline_ns()
        sends += [e for e in core.on_tick(now) if isinstance(e, Send)]
    reply = [e for e in core.on_message(now, "tcp://p5:1", Snapshot("p5", (), (), True)) if isinstance(e, Send)]
    assert len(reply) == 11  # 1001 members in slices of 100
    sends += reply
    for e in sends:
        if isinstance(e.msg, Snapshot):
            assert len(e.msg.members) <= 100 and len(e.msg.views) <= 100
        else:
            assert len(e.msg.updates) <= 5 and len(e.msg.views) <= 4


def test_config_rejects_nonsense_and_says_which_field():
    with pytest.raises(InvalidArgumentError, match="probe_timeout_ms"):
        MembershipConfig(probe_interval_ms=500, probe_timeout_ms=500)
    with pytest.raises(InvalidArgumentError, match="gossip_fanout"):
        MembershipConfig(gossip_fanout=0)
    with pytest.raises(InvalidArgumentError, match="suspicion_mult"):
        MembershipConfig(suspicion_mult=2.5)
    with pytest.raises(InvalidArgumentError, match="self_id"):
        Membership("", "tcp://x:1", config=CFG, rng=Random(1), now_ns=0)


def test_detection_bounds():
    assert suspicion_timeout_ms(CFG, 4) == 2000 and suspicion_timeout_ms(CFG, 1000) == 6000
    assert detection_bound_ms(CFG, 4) == 2 * 3 * 500 + 2000
    assert detection_bound_ms(CFG, 1000) == 2 * 999 * 500 + 6000
    assert likely_detection_bound_ms(CFG, 4) == detection_bound_ms(CFG, 4)
    assert 10_000 < likely_detection_bound_ms(CFG, 1000) < 25_000


def test_the_same_seed_gives_the_same_run():
    def trace(seed):
        net = Net(seed)
        net.cluster(4)
        net.down.add("tcp://p2:1")
        net.run_for(6000)
        return [(t, obs, e.peer_id, e.state, e.incarnation) for t, obs, e in net.events], net.sent

    assert trace(11) == trace(11)
    assert trace(11) != trace(12)

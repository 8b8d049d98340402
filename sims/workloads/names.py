"""The `names` workload: racing name claims on the replicated metadata table (the real Raft core).

Every peer runs a `TableReplica`, as the table's design says; the first three peers bootstrap the table and
the others wait to be added by a leader. A replica hears from its own peer's membership which peers are
alive (`on_members`, every second, for replicas in their own replica set: only a leader acts on it), so a
replica that membership declares dead is replaced from live peers. Its `Persist` effects go to a
simulated disk kept per peer id: a peer restarted with `--restart-id same` recovers its replica from it; a
peer with a new id is a new, empty spare.

Drivers on `--submitters` of the peers each run a `TableClient` and claim names one at a time from a small
pool (so claims race): `("claim", name, value)` with a unique value. Clients learn the replica set and the
leader from replies and, once a second, from what the replicas published (`ReplicaSetChanged`) — the
simulator's stand-in for gossip.

Checks:
- `names_once`, at every reply: all successful replies about a name name the same holder, and at most one
  claim (one value) ever won it; at the end, the history of claims is checked for linearizability
  (`sims.linearizability`), and the replicas' names table must match the winners;
- `table_agreement`, after the quiet period: one leader, and every member of its replica set up, applied to
  the leader's commit index, with the same table state.

The fault schedule never takes down a peer whose replica is needed for a majority of the current set.
"""

from __future__ import annotations

import random

from p2pcompute.net.effects import Send, Timer
from p2pcompute.table.client import TableClient
from p2pcompute.table.effects import Persist, ReplicaSetChanged, Reply
from p2pcompute.table.messages import TIMEOUT
from p2pcompute.table.raft import TableReplica
from p2pcompute.table.storage import PersistentState
from sims.owner_driver import OwnerDriver
from sims.linearizability import Operation, check
from sims.workloads.base import Workload

S = 1_000_000_000
NEVER = 1 << 62


class _Replica:
    """The table replica of one peer incarnation, with its timer."""

    __slots__ = ("core", "timer_at")

    def __init__(self, core: TableReplica) -> None:
        self.core = core
        self.timer_at = NEVER


class NamesWorkload(Workload):
    name = "names"

    def __init__(self, cluster, share: float = 1.0, driver_index: int = 4) -> None:
        super().__init__(cluster)
        opts = cluster.opts
        self.rng = random.Random(cluster.rng_work.getrandbits(64))
        self._core_rng = random.Random(cluster.rng_work.getrandbits(64))
        self.driver_index = driver_index
        n_sub = max(1, round(opts.submitters * opts.peers))
        self.submitter_slots = set(self.rng.sample(range(opts.peers), n_sub))
        self.names = [f"name-{i}" for i in range(max(4, n_sub))]
        self.think_ns = int(S / max(0.1, 2 * share))  # each client: ~2 claims a second, one at a time
        self.bootstrap = {f"p{slot:05d}g000": f"sim://p{slot:05d}g000" for slot in range(min(3, opts.peers))}
        self.disks: dict[str, PersistentState] = {}
        self.published: tuple[dict, str | None, str | None] = (dict(self.bootstrap), None, None)
        self.drivers: list[OwnerDriver] = []
        self.history: list[Operation] = []
        self._counter = 0
        self.winners: dict[str, object] = {}  # name -> holder value, from the first successful reply
        self.won_by: dict[str, set] = {}  # name -> values whose claim reported claimed=True
        self.claims = 0
        self.timeouts = 0
        cluster.engine.at(S, self._membership_feed)
        cluster.engine.at(S, self._refresh_clients)

    # ---- replicas ----

    def on_peer_up(self, peer, restarted: bool) -> None:
        now = peer.local()
        rng = random.Random(self._core_rng.getrandbits(64))
        disk = self.disks.get(peer.peer_id)
        if disk is not None:
            core = TableReplica(peer.peer_id, peer.addr, rng=rng, now_ns=now,
                                persistent=PersistentState.from_plain(disk.to_plain()))
        else:
            self.disks[peer.peer_id] = PersistentState()
            boot = peer.peer_id in self.bootstrap and not restarted
            core = TableReplica(peer.peer_id, peer.addr, rng=rng, now_ns=now, bootstrap=boot,
                                peers=dict(self.bootstrap) if boot else None)
        peer.table = _Replica(core)
        self._replica_effects(peer, core.on_tick(now))
        if peer.slot in self.submitter_slots:
            d = OwnerDriver(peer, self.driver_index)
            d.state["wl"] = self
            replicas, leader_id, leader_addr = self.published
            d.state["client"] = TableClient(f"{d.proc_id}~{peer.key}", d.addr, rng=random.Random(
                self._core_rng.getrandbits(64)), now_ns=now, replicas=replicas)
            d.state["current"] = None
            d.state["timer_at"] = NEVER
            self.drivers.append(d)
            d.peer.later(int(self.rng.random() * self.think_ns), self._issue, d)

    def _replica_effects(self, peer, effects: list) -> None:
        rep = peer.table
        for e in effects:
            t = type(e)
            if t is Persist:
                self.disks[peer.peer_id].apply(e)
            elif t is Send:
                peer.net.send(peer.ep, e.to, e.msg)
            elif t is Timer:
                at = peer.to_global(e.at_ns)
                if at < rep.timer_at:
                    rep.timer_at = at
                    self.engine.at(at, peer._run_later, self._replica_tick, (peer, rep, at))
            elif t is ReplicaSetChanged:
                if e.leader_id == peer.peer_id:
                    self.published = (dict(e.replicas), e.leader_id, e.leader_addr)

    def _replica_tick(self, arg) -> None:
        peer, rep, at = arg
        if peer.table is not rep or at != rep.timer_at:
            return
        rep.timer_at = NEVER
        self._replica_effects(peer, rep.core.on_tick(peer.local()))

    def on_replica_message(self, peer, src: str, msg) -> None:
        self._replica_effects(peer, peer.table.core.on_message(peer.local(), src, msg))

    def _membership_feed(self, _a=None, _b=None) -> None:
        """Each second, replicas in their own replica set hear who their peer's membership sees alive."""
        for peer in list(self.cluster.up.values()):
            if peer.table is not None and not peer.paused and peer.peer_id in peer.table.core.replicas():
                alive = {m.peer_id: m.addr for m in peer.membership.alive()}
                self._replica_effects(peer, peer.table.core.on_members(peer.local(), alive))
        self.engine.at(self.engine.now + S, self._membership_feed)

    def may_take_down(self, peer) -> bool:
        """Only if every replica set in force keeps a majority up: the last published one, and each one a live
        replica has in its log now (a set grows before it is published, and a leader may have just added a
        peer that died before membership noticed)."""
        sets = [self.published[0]] + [p.table.core.replicas() for p in self.cluster.up.values()
                                      if getattr(p, "table", None) is not None]
        for replicas in sets:
            if peer.peer_id in replicas:
                up = sum(1 for pid in replicas if pid in self.cluster.up and pid != peer.peer_id)
                if 2 * up <= len(replicas):
                    return False
        return True

    def endpoints_of(self, peer) -> list:
        return []

    # ---- clients ----

    def _refresh_clients(self, _a=None, _b=None) -> None:
        replicas, leader_id, leader_addr = self.published
        leader = (leader_id, leader_addr) if leader_id else None
        for d in self.drivers:
            if d.alive and not d.peer.paused:
                self._client_effects(d, d.state["client"].update_replicas(d.peer.local(), replicas, leader))
        self.engine.at(self.engine.now + S, self._refresh_clients)

    def _issue(self, d: OwnerDriver) -> None:
        if not d.alive or d.state["current"] is not None or (self.stop_ns and self.engine.now >= self.stop_ns):
            return
        self._counter += 1
        name = self.rng.choice(self.names)
        value = f"{d.proc_id}:{self._counter}"
        op = ("claim", name, value)
        rec = {"op": op, "invoke": self._counter, "client": d.proc_id, "request_id": None}
        d.state["current"] = rec
        self.claims += 1
        request_id, effects = d.state["client"].submit(d.peer.local(), op, linearizable=True)
        rec["request_id"] = request_id
        self._client_effects(d, effects)

    def _client_effects(self, d: OwnerDriver, effects: list) -> None:
        for e in effects:
            t = type(e)
            if t is Send:
                d.peer.net.send(d.ep, e.to, e.msg)
            elif t is Timer:
                at = d.peer.to_global(e.at_ns)
                if at < d.state["timer_at"]:
                    d.state["timer_at"] = at
                    self.engine.at(at, d.peer._run_later, self._client_tick, (d, at))
            elif t is Reply:
                self._on_reply(d, e)

    def _client_tick(self, arg) -> None:
        d, at = arg
        if not d.alive or at != d.state["timer_at"]:
            return
        d.state["timer_at"] = NEVER
        self._client_effects(d, d.state["client"].on_tick(d.peer.local()))

    def on_driver_message(self, driver, src: str, msg) -> None:
        if 300 <= msg.TYPE < 400 and "client" in driver.state:
            self._client_effects(driver, driver.state["client"].on_message(driver.peer.local(), src, msg))

    def _on_reply(self, d: OwnerDriver, reply: Reply) -> None:
        rec = d.state["current"]
        if rec is None or reply.request_id != rec["request_id"]:
            return
        d.state["current"] = None
        self._counter += 1
        _, name, value = rec["op"]
        response = None if reply.error == TIMEOUT else self._counter
        self.history.append(Operation(("name", name), ("claim", value), reply.result if reply.ok else None,
                                      rec["invoke"], response if reply.ok or response is None else None,
                                      rec["client"]))
        if reply.error == TIMEOUT:
            self.timeouts += 1
        elif reply.ok:
            self._judge(name, value, reply.result)
        d.peer.later(int(self.rng.random() * self.think_ns), self._issue, d)

    def _judge(self, name: str, value: str, result) -> None:
        try:
            claimed, holder = result
        except (TypeError, ValueError):
            self.cluster.violations.add("names_once", f"claim of {name!r} answered {result!r}, not (claimed, holder)")
            return
        first = self.winners.setdefault(name, holder)
        if holder != first:
            self.cluster.violations.add("names_once", f"{name!r} is held by {first!r} per one reply and by "
                                                      f"{holder!r} per another")
        if claimed:
            if holder != value:
                self.cluster.violations.add("names_once", f"a claim of {name!r} with {value!r} won, but the "
                                                          f"holder is {holder!r}")
            won = self.won_by.setdefault(name, set())
            won.add(value)
            if len(won) > 1:
                self.cluster.violations.add("names_once", f"{name!r} was claimed more than once: {sorted(won)}")

    def on_process_gone(self, proc) -> None:
        if isinstance(proc, OwnerDriver) and proc.state.get("current") is not None:
            rec = proc.state["current"]
            proc.state["current"] = None
            _, name, value = rec["op"]
            self.history.append(Operation(("name", name), ("claim", value), None, rec["invoke"], None, rec["client"]))

    # ---- the end ----

    def idle(self) -> bool:
        return not any(d.alive and d.state["current"] is not None for d in self.drivers)

    def _leader(self):
        leaders = [p.table.core for p in self.cluster.up.values() if p.table is not None and p.table.core.is_leader()]
        return max(leaders, key=lambda r: r.term) if leaders else None

    def settled(self) -> bool:
        """One leader; every live member of its replica set applied all it committed; and no dead member is
        left in the set while a live peer could replace it (the replica set policy: dead replicas are
        replaced from live spares, and stay when there are none)."""
        leader = self._leader()
        if leader is None:
            return False
        replicas = leader.replicas()
        up = self.cluster.up
        for pid in replicas:
            peer = up.get(pid)
            if peer is None:
                if any(p not in replicas and not q.leaving for p, q in up.items()):
                    return False
                continue
            core = peer.table.core
            if not (core.last_applied == leader.commit_index == core.commit_index):
                return False
        return True

    def final_checks(self) -> None:
        v = self.cluster.violations
        result = check(self.history, max_states_per_key=200_000)
        if result.ok is False:
            v.add("names_once", "the claims are not linearizable: " + result.describe()[:2000])
        leader = self._leader()
        if not self.settled():
            v.add("table_agreement", "after the quiet period the table has no leader" if leader is None else
                  f"after the quiet period the replicas of leader {leader.node_id} (term {leader.term}, set "
                  f"{sorted(leader.replicas())}) have not all caught up, or a dead one was not replaced")
            return
        states = {}
        for pid in leader.replicas():
            if pid in self.cluster.up:
                states[pid] = self.cluster.up[pid].table.core.state.records()
        first = states[leader.node_id]
        for pid, records in states.items():
            if records != first:
                v.add("table_agreement", f"replica {pid}'s table differs from the leader {leader.node_id}'s")
        names = first.get("names", {})
        for name, holder in self.winners.items():
            if names.get(name) != holder:
                v.add("names_once", f"replies said {name!r} is held by {holder!r}; the table says {names.get(name)!r}")

    def metrics(self) -> dict:
        leader = self._leader()
        return {"claims": self.claims, "claim_timeouts": self.timeouts, "names_claimed": len(self.winners),
                "table_leader": leader.node_id if leader else None,
                "table_term": leader.term if leader else None,
                "replicas": sorted(leader.replicas()) if leader else []}

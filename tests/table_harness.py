"""A deterministic simulated cluster for the table cores: virtual time, a faulty network, crashes, restarts.

No sockets and no sleeps: one event queue ordered by virtual time (ties by insertion order), every random
choice from one seeded `random.Random`, so a run replays exactly from its seed.

- Network: each message is encoded with the real codec when sent and decoded when delivered (so everything
  the cores send must be plain data). It may be lost, duplicated, delayed by a random time (which reorders),
  or blocked by a partition. A partition puts addresses in numbered groups; an address in no group reaches
  everyone.
- Persistence: each replica has a "disk", a `PersistentState` the harness updates only from the replica's
  `Persist` effects. A crash drops the replica object (all volatile state, timers, messages in flight to
  it); a restart builds a new one from the disk. After every step the harness checks that the disk equals
  what the replica believes it persisted, so a missing `Persist` shows up at once.
- Membership: every `membership_interval_ms` each live replica's `on_members` gets the peers up right now.
- Safety invariants checked on every step and collected in `violations` (not raised, so that tests of the
  deliberately broken core can look at them): at most one leader per term, and no two replicas ever commit
  different entries at the same index.
- Workload: clients issue one operation at a time and the history (invocation and response, ordered by a
  global event counter) is kept for `sims.linearizability`.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from p2pcompute.net import codec
from p2pcompute.net.effects import Send, Timer
from p2pcompute.table.client import ClientConfig, TableClient
from p2pcompute.table.effects import Persist, Reply
from p2pcompute.table.messages import TIMEOUT
from p2pcompute.table.raft import RaftConfig, TableReplica
from p2pcompute.table.storage import PersistentState
from sims.linearizability import Operation

MS = 1_000_000


def addr_of(node_id: str) -> str:
    return f"tcp://{node_id}"


@dataclass
class Record:
    """One client operation in the history. Times are values of the cluster's event counter."""

    client: str
    op: tuple
    invoke: int
    response: int | None = None
    ok: bool | None = None
    result: Any = None
    error: str = ""
    cached: bool = False  # a read allowed to come from the client's cache: not linearizable, not checked


class Cluster:
    def __init__(self, seed: int, replica_ids: list[str], *, spare_ids: tuple[str, ...] = (),
                 bootstrap: str = "all", config: RaftConfig | None = None,
                 client_config: ClientConfig | None = None, loss: float = 0.0, duplicate: float = 0.0,
                 delay_ms: tuple[int, int] = (1, 5), membership_interval_ms: int | None = 200,
                 replica_class: type[TableReplica] = TableReplica) -> None:
        """`bootstrap="all"` starts a table whose first replica set is `replica_ids`; `"first"` bootstraps
        only the first of them, and the others (like the spares) wait to be added by the leader.
        `replica_class` may be a deliberately broken variant (sims/broken.py), to show the checks catch it."""
        self.rng = random.Random(seed)
        self.now_ns = 0
        self.config = config or RaftConfig()
        self.client_config = client_config or ClientConfig()
        self.loss, self.duplicate, self.delay_ms = loss, duplicate, delay_ms
        self.replica_class = replica_class
        self._queue: list = []
        self._seq = 0
        self.groups: dict[str, int] = {}
        self.nodes: dict[str, TableReplica | None] = {}
        self.disks: dict[str, PersistentState] = {}
        self.clients: dict[str, TableClient] = {}
        self.client_effects: list[tuple[str, Any]] = []  # (client, Reply or TableEvent), in order
        self.reply_listeners: list[Callable[[str, Reply], None]] = []
        self.violations: list[str] = []
        self.leaders_by_term: dict[int, str] = {}
        self.committed: dict[int, tuple] = {}
        self._checked_commit: dict[str, int] = {}
        self.event_counter = 0
        self.sent_messages = 0
        all_ids = list(replica_ids) + list(spare_ids)
        first_set = {rid: addr_of(rid) for rid in replica_ids}
        for node_id in all_ids:
            boots = (bootstrap == "all" and node_id in first_set) or (bootstrap == "first" and node_id == replica_ids[0])
            peers = first_set if bootstrap == "all" else {}
            self.disks[node_id] = PersistentState()
            self._start(node_id, self.replica_class(node_id, addr_of(node_id), config=self.config,
                                              rng=random.Random(self.rng.random()), now_ns=0,
                                              bootstrap=boots, peers=peers))
        if membership_interval_ms is not None:
            self._membership_interval_ns = membership_interval_ms * MS
            self.schedule(self._membership_interval_ns, self._feed_membership)

    # ---- running ----

    def schedule(self, at_ns: int, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at_ns, self._seq, action))

    def run_for(self, ms: float) -> None:
        self.run_until(lambda: False, ms)

    def run_until(self, condition: Callable[[], bool], timeout_ms: float) -> bool:
        """Run events until `condition()` holds (True) or `timeout_ms` of virtual time passed (False).

        A message storm (far more events than a healthy cluster makes) is recorded as a violation and ends
        the run, so that a livelock fails a test instead of hanging it."""
        deadline_ns = self.now_ns + int(timeout_ms * MS)
        budget = 10_000 + int(timeout_ms * 100)
        while not condition():
            if not self._queue or self._queue[0][0] > deadline_ns:
                self.now_ns = deadline_ns
                return condition()
            budget -= 1
            if budget < 0:
                self.violations.append(f"message storm: over {10_000 + int(timeout_ms * 100)} events "
                                       f"in {timeout_ms} ms at t={self.now_ns / 1e9:.3f}s")
                return False
            at_ns, _, action = heapq.heappop(self._queue)
            self.now_ns = max(self.now_ns, at_ns)
            action()
        return True

    # ---- replicas ----

    def _start(self, node_id: str, node: TableReplica) -> None:
        self.nodes[node_id] = node
        self._checked_commit[node_id] = node.commit_index
        self._replica_effects(node_id, node.on_tick(self.now_ns))

    def crash(self, node_id: str) -> None:
        self.nodes[node_id] = None

    def restart(self, node_id: str) -> None:
        if self.nodes[node_id] is None:
            stored = PersistentState.from_plain(self.disks[node_id].to_plain())
            self._start(node_id, self.replica_class(node_id, addr_of(node_id), config=self.config,
                                              rng=random.Random(self.rng.random()), now_ns=self.now_ns,
                                              persistent=stored))

    def live(self) -> dict[str, TableReplica]:
        return {node_id: node for node_id, node in self.nodes.items() if node is not None}

    def leader(self) -> TableReplica | None:
        """The live leader with the highest term, if any."""
        leaders = [node for node in self.live().values() if node.is_leader()]
        return max(leaders, key=lambda node: node.term) if leaders else None

    def _feed_membership(self) -> None:
        alive = {node_id: addr_of(node_id) for node_id in self.live()}
        for node_id in list(alive):
            node = self.nodes[node_id]
            if node is not None:
                self._replica_effects(node_id, node.on_members(self.now_ns, alive))
        self.schedule(self.now_ns + self._membership_interval_ns, self._feed_membership)

    def _replica_effects(self, node_id: str, effects: list) -> None:
        node = self.nodes[node_id]
        for effect in effects:
            if isinstance(effect, Persist):
                self.disks[node_id].apply(effect)
            elif isinstance(effect, Send):
                self._send(addr_of(node_id), effect)
            elif isinstance(effect, Timer):
                self.schedule(effect.at_ns, lambda n=node_id, inc=node: self._tick_replica(n, inc))
        if node is not None:
            self._check_replica(node_id, node)

    def _tick_replica(self, node_id: str, incarnation: TableReplica) -> None:
        if self.nodes[node_id] is incarnation:  # timers die with the process
            self._replica_effects(node_id, incarnation.on_tick(self.now_ns))

    def _check_replica(self, node_id: str, node: TableReplica) -> None:
        disk, mine = self.disks[node_id], node.persistent_state()
        assert (disk.term, disk.voted_for, disk.snapshot[:2], len(disk.entries), disk.entries[-1:]) == \
            (mine.term, mine.voted_for, mine.snapshot[:2], len(mine.entries), mine.entries[-1:]), \
            f"{node_id}: the disk differs from what the replica persisted"
        if node.is_leader():
            first = self.leaders_by_term.setdefault(node.term, node_id)
            if first != node_id:
                self.violations.append(f"two leaders in term {node.term}: {first} and {node_id}")
        checked = self._checked_commit[node_id]
        for index in range(max(checked, node.log.snapshot_index) + 1, node.commit_index + 1):
            entry = node.log.entry(index)
            first = self.committed.setdefault(index, entry)
            if first != entry:
                self.violations.append(f"index {index} committed as {first} and as {entry} (on {node_id})")
        self._checked_commit[node_id] = max(checked, node.commit_index)

    # ---- clients ----

    def add_client(self, name: str, *, subscribe: bool = False) -> TableClient:
        replicas = {node_id: addr_of(node_id) for node_id in self.nodes}
        client = TableClient(name, addr_of(name), rng=random.Random(self.rng.random()), now_ns=self.now_ns,
                             replicas=replicas, config=self.client_config)
        self.clients[name] = client
        if subscribe:
            self._client_effects(name, client.subscribe(self.now_ns))
        return client

    def submit(self, name: str, op: tuple, *, linearizable: bool = True) -> int:
        request_id, effects = self.clients[name].submit(self.now_ns, op, linearizable=linearizable)
        self._client_effects(name, effects)
        return request_id

    def reply(self, name: str, request_id: int) -> Reply | None:
        for client, effect in self.client_effects:
            if client == name and isinstance(effect, Reply) and effect.request_id == request_id:
                return effect
        return None

    def _client_effects(self, name: str, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(addr_of(name), effect)
            elif isinstance(effect, Timer):
                client = self.clients[name]
                self.schedule(effect.at_ns, lambda: self._client_effects(name, client.on_tick(self.now_ns)))
            else:
                self.client_effects.append((name, effect))
                if isinstance(effect, Reply):
                    for listener in self.reply_listeners:
                        listener(name, effect)

    # ---- network ----

    def partition(self, *groups: list[str]) -> None:
        """Cut the network between groups of node or client names (those in no group reach everyone)."""
        self.groups = {addr_of(name): number for number, group in enumerate(groups) for name in group}

    def heal(self) -> None:
        self.groups = {}

    def _send(self, source: str, send: Send) -> None:
        frame = codec.encode(send.msg)
        self.sent_messages += 1
        copies = 1 + (self.rng.random() < self.duplicate)
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            delay_ns = self.rng.randint(self.delay_ms[0] * MS, self.delay_ms[1] * MS)
            self.schedule(self.now_ns + delay_ns, lambda: self._deliver(source, send.to, frame))

    def _deliver(self, source: str, target: str, frame: bytes) -> None:
        a, b = self.groups.get(source), self.groups.get(target)
        if a is not None and b is not None and a != b:
            return
        msg = codec.decode(frame)
        name = target.removeprefix("tcp://")
        if name in self.nodes:
            node = self.nodes[name]
            if node is not None:
                self._replica_effects(name, node.on_message(self.now_ns, source, msg))
        elif name in self.clients:
            self._client_effects(name, self.clients[name].on_message(self.now_ns, source, msg))

    # ---- agreement after the faults ----

    def converged(self) -> bool:
        """True when there is one leader and every member of its set has applied all it committed."""
        leader = self.leader()
        if leader is None:
            return False
        members = [self.nodes.get(member) for member in leader.replicas()]
        return all(node is not None and node.last_applied == leader.commit_index == node.commit_index
                   for node in members)


@dataclass
class Workload:
    """Clients that each run one random operation at a time on a few keys and names, recording a history.

    Values are unique per operation, which makes a violation easy to see and the checker fast. With
    `cached_reads`, the clients subscribe and their reads may be served from the cache; those reads are left
    out of the linearizability check (see `session_violations` for what they do promise)."""

    cluster: Cluster
    rng: random.Random
    clients: list[str]
    keys: tuple[str, ...] = ("a", "b")
    names: tuple[str, ...] = ("n1", "n2")
    think_ms: tuple[int, int] = (0, 40)
    cached_reads: bool = False
    history: list[Record] = field(default_factory=list)
    running: bool = False
    _current: dict[str, tuple[int, Record]] = field(default_factory=dict)
    _last_seen: dict[tuple[str, str], Any] = field(default_factory=dict)
    _counter: int = 0

    def start(self) -> None:
        self.running = True
        self.cluster.reply_listeners.append(self._on_reply)
        for name in self.clients:
            if name not in self.cluster.clients:
                self.cluster.add_client(name, subscribe=self.cached_reads)
            self._schedule_next(name)

    def stop(self) -> None:
        self.running = False

    def idle(self) -> bool:
        return not self._current

    def _schedule_next(self, name: str) -> None:
        if self.running:
            delay_ns = self.rng.randint(self.think_ms[0] * MS, self.think_ms[1] * MS)
            self.cluster.schedule(self.cluster.now_ns + delay_ns, lambda: self._issue(name))

    def _issue(self, name: str) -> None:
        if not self.running or name in self._current:
            return
        self._counter += 1
        value = f"{name}.{self._counter}"
        key, label = self.rng.choice(self.keys), self.rng.choice(self.names)
        roll = self.rng.random()
        if roll < 0.25:
            op = ("put", key, value)
        elif roll < 0.55:
            op = ("get", key)
        elif roll < 0.75:
            op = ("cas", key, self._last_seen.get((name, key)), value)
        elif roll < 0.8:
            op = ("delete", key)
        else:
            op = ("claim", label, value)
        self.cluster.event_counter += 1
        cached = self.cached_reads and op[0] == "get"
        record = Record(name, op, invoke=self.cluster.event_counter, cached=cached)
        self.history.append(record)
        # A cached read is answered within submit() itself, before its request id is known here.
        self._current[name] = (None, record)
        request_id = self.cluster.submit(name, op, linearizable=not cached)
        if name in self._current:
            self._current[name] = (request_id, record)

    def _on_reply(self, name: str, reply: Reply) -> None:
        current = self._current.get(name)
        if current is None or current[0] not in (None, reply.request_id):
            return
        del self._current[name]
        record = current[1]
        self.cluster.event_counter += 1
        record.ok, record.result, record.error = reply.ok, reply.result, reply.error
        if reply.error != TIMEOUT:
            record.response = self.cluster.event_counter
        if record.op[0] == "get" and reply.ok:
            self._last_seen[(name, record.op[1])] = reply.result[0] if reply.result else None
        self._schedule_next(name)

    def operations(self) -> list[Operation]:
        """The history in the checker's terms: one register per key, one per name."""
        return [_to_operation(record) for record in self.history if not record.cached]

    def session_violations(self) -> list[str]:
        """Reads from a cache must still show a client its own writes and never go back in time: per client
        and key, a read returning a record must return one at least as new (its version is the log index of
        its write) as any record that client saw before in a reply."""
        seen: dict[tuple[str, str], int] = {}
        problems = []
        for r in self.history:  # in invocation order; each client has one operation at a time
            if r.response is None or not r.ok or r.op[0] not in ("put", "get", "cas"):
                continue
            key = (r.client, r.op[1])
            record = r.result if r.op[0] == "get" else r.result[1] if r.op[0] == "cas" else (r.op[2], r.result)
            if record is None:
                continue
            if r.op[0] == "get" and record[1] < seen.get(key, 0):
                problems.append(f"{r.client} read {record} of {r.op[1]!r} after seeing version {seen[key]}")
            seen[key] = max(seen.get(key, 0), record[1])
        return problems

    def errors(self) -> list[Record]:
        """Completed operations that failed for a reason other than a timeout (there should be none)."""
        return [r for r in self.history if r.response is not None and not r.ok]


def _to_operation(r: Record) -> Operation:
    kind = r.op[0]
    if kind == "claim":
        return Operation(("name", r.op[1]), ("claim", r.op[2]), r.result, r.invoke, r.response, r.client)
    key = ("kv", r.op[1])
    if kind == "put":
        return Operation(key, ("put", r.op[2]), None, r.invoke, r.response, r.client)
    if kind == "get":
        output = r.result[0] if r.result else None
        return Operation(key, ("get",), output, r.invoke, r.response, r.client)
    if kind == "cas":
        output = r.result[0] if r.result else None
        return Operation(key, ("cas", r.op[2], r.op[3]), output, r.invoke, r.response, r.client)
    assert kind == "delete"
    return Operation(key, ("delete",), r.result, r.invoke, r.response, r.client)

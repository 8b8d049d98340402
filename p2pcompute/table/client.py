"""The client side of the metadata table: routing, retries, and a read cache kept fresh by subscription.

Theory of operation. `TableClient` is pure, like the replicas: the driver calls `submit`, `on_message` and
`on_tick` and carries out the effects (`Send`, `Timer`, `Reply`, `TableEvent`).

- Routing. A request goes to the leader the client last heard of, else to a random known replica. A
  NOT_LEADER answer names the leader when the replica knows it; the client follows the hint at once, or
  tries another replica after a short backoff. A request unanswered for `request_timeout_ms` is resent to a
  different replica. After `give_up_after_ms` the caller gets `Reply(error=TIMEOUT)`: a write may or may not
  have been applied then, as with any timed-out remote call.
- At most once. Every retry of a request reuses its request id, and every request carries `acked_below`, the
  lowest id still awaiting its reply; the replicas' sessions return a retried write's first outcome instead
  of applying it again (see `state.py`). So `client_id` must be unique per client incarnation: a restarted
  process must not reuse an old id (put a random nonce in it).
- Reads. With `linearizable=True` a read goes to the leader, which answers it by ReadIndex. Otherwise, when
  the cache is usable it answers at once from the cache: the subscription is live, a replica that was itself
  current (a leader, or in touch with one) spoke within `cache_fresh_ms`, and the cache holds every index
  this client has already seen in a reply. Such a read is session-consistent — it sees this client's own
  acknowledged writes and never goes back in time — and at most about `cache_fresh_ms` plus an election
  timeout stale with respect to other clients' writes. When the cache is not usable it reads at the leader.
- Cache. `subscribe` asks a replica to push committed changes (`messages.TableUpdate`, or a whole
  `TableSnapshot` when it no longer holds what the cache misses). A gap means a push was lost: re-subscribe
  from the cache's index. The subscription is renewed every `subscription_renew_ms`, moving to another
  replica when the current one went quiet.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.net.effects import Effect, Send, Timer
from p2pcompute.table.effects import Reply, TableEvent
from p2pcompute.table.messages import (NOT_LEADER, TIMEOUT, ClientReply, ClientRequest, Subscribe, TableSnapshot,
                                       TableUpdate, replicas_ok, well_typed)
from p2pcompute.table.state import TableState, change_ok, is_read, op_problem

MS = 1_000_000


@dataclass
class ClientConfig:
    request_timeout_ms: int = 1000
    retry_backoff_ms: int = 50
    give_up_after_ms: int | None = 30_000
    cache_reads: bool = True
    cache_fresh_ms: int = 1000
    subscription_renew_ms: int = 3000  # must be well under the replicas' subscription_ttl_ms


@dataclass
class _Pending:
    op: tuple
    give_up_ns: int | None
    target: str | None       # where the last attempt went; None while waiting to pick a new one
    resend_at_ns: int
    refusals: int = 0        # NOT_LEADER answers in a row: stop following hints at once after a few


class TableClient:
    def __init__(self, client_id: str, addr: str, *, rng: random.Random, now_ns: int,
                 replicas: dict[str, str], config: ClientConfig | None = None) -> None:
        self.client_id, self.addr = client_id, addr
        self.rng = rng
        self.config = config or ClientConfig()
        self._replicas = dict(replicas)
        self._leader_addr: str | None = None
        self._next_request_id = 1
        self._pending: dict[int, _Pending] = {}
        # The highest log index any reply showed us: the cache must reach it before serving a read.
        self.session_index = 0
        self.cache = TableState()
        self.cache_index = 0
        self._subscribed = False
        self._sub_target: str | None = None
        self._sub_heard_ns = now_ns
        self._sub_renew_ns = 0
        self._fresh_until_ns = 0
        self._timer_at_ns: int | None = None
        self.stats: Counter[str] = Counter()

    # ---- requests ----

    def submit(self, now_ns: int, op: tuple, *, linearizable: bool = False) -> tuple[int, list[Effect]]:
        """Start `op`; its outcome comes back later as a `Reply` effect with the returned request id (at once
        for a read the cache can answer). Raises InvalidArgumentError for an op of the wrong shape."""
        problem = op_problem(op)
        if problem is not None:
            raise InvalidArgumentError(f"table operation {op!r}: {problem}")
        request_id = self._next_request_id
        self._next_request_id += 1
        if is_read(op) and not linearizable and self.cache_usable(now_ns):
            self.stats["cache_reads"] += 1
            return request_id, [Reply(request_id, *self.cache.read(op))]
        give_up = None if self.config.give_up_after_ms is None else now_ns + self.config.give_up_after_ms * MS
        pending = _Pending(op=op, give_up_ns=give_up, target=None, resend_at_ns=now_ns)
        self._pending[request_id] = pending
        out = self._send(now_ns, request_id, pending, self._pick(exclude=None))
        return request_id, self._finish(now_ns, out)

    def pending(self) -> list[int]:
        return sorted(self._pending)

    def fail_all(self, now_ns: int, error: str) -> list[Effect]:
        """Give up every pending request at once with `error` (the runtime knows no replica set can answer:
        a majority of the replicas is dead). A write may or may not have been applied, as with TIMEOUT."""
        out: list[Effect] = [Reply(request_id, False, None, error) for request_id in sorted(self._pending)]
        self._pending.clear()
        return self._finish(now_ns, out)

    def update_replicas(self, now_ns: int, replicas: dict[str, str],
                        leader: tuple[str, str] | None = None) -> list[Effect]:
        """What the runtime learned (gossip, a `ReplicaSetChanged`) about the replica set and its leader."""
        if replicas:
            self._replicas = dict(replicas)
        if leader is not None:
            self._leader_addr = leader[1]
        return self._finish(now_ns, [])

    def _send(self, now_ns: int, request_id: int, pending: _Pending, target: str | None) -> list[Send]:
        """(Re)send a request to `target`; with no target known yet, try again after the backoff."""
        pending.target = target
        if target is None:
            pending.resend_at_ns = now_ns + self.config.retry_backoff_ms * MS
            return []
        pending.resend_at_ns = now_ns + self.config.request_timeout_ms * MS
        acked_below = min(self._pending) if self._pending else self._next_request_id
        return [Send(target, ClientRequest(client_id=self.client_id, request_id=request_id,
                                           acked_below=acked_below, op=pending.op, reply_to=self.addr))]

    def _pick(self, exclude: str | None) -> str | None:
        """The leader if known, else a random replica other than `exclude` (or `exclude` if it is the only
        one); None while no replica is known at all."""
        if self._leader_addr is not None and self._leader_addr != exclude:
            return self._leader_addr
        addrs = sorted(set(self._replicas.values()) - {exclude})
        if not addrs:
            return exclude
        return self.rng.choice(addrs)

    def _on_reply(self, now_ns: int, m: ClientReply, out: list) -> None:
        pending = self._pending.get(m.request_id)
        if m.client_id != self.client_id or pending is None:
            self.stats["ignored_stale_reply"] += 1
            return
        if m.replicas:
            self._replicas = dict(m.replicas)
        if m.error == NOT_LEADER:
            pending.refusals += 1
            hint = m.leader_addr
            self._leader_addr = hint
            if hint is not None and hint != pending.target and pending.refusals <= len(self._replicas) + 1:
                out += self._send(now_ns, m.request_id, pending, hint)
            else:  # nobody knows a leader (an election is on): wait a little, then ask elsewhere
                self._leader_addr = None
                pending.target, pending.resend_at_ns = None, now_ns + self.config.retry_backoff_ms * MS
            return
        del self._pending[m.request_id]
        self._leader_addr = m.leader_addr
        if m.ok:
            self.session_index = max(self.session_index, m.index)
        out.append(Reply(m.request_id, m.ok, m.result, m.error))

    # ---- the read cache ----

    def subscribe(self, now_ns: int) -> list[Effect]:
        """Start keeping `cache` fresh (reads may then be served from it)."""
        self._subscribed = True
        self._sub_heard_ns = now_ns
        return self._finish(now_ns, self._subscribe_to(now_ns, self._pick(exclude=None)))

    def cache_usable(self, now_ns: int) -> bool:
        return (self.config.cache_reads and self._subscribed and now_ns < self._fresh_until_ns
                and self.cache_index >= self.session_index)

    def _subscribe_to(self, now_ns: int, target: str | None) -> list[Send]:
        self._sub_target = target
        if target is None:  # no replica known yet: try again soon
            self._sub_renew_ns = now_ns + self.config.retry_backoff_ms * MS
            return []
        self._sub_renew_ns = now_ns + self.config.subscription_renew_ms * MS
        return [Send(target, Subscribe(client_id=self.client_id, reply_to=self.addr,
                                       from_index=self.cache_index + 1))]

    def _on_update(self, now_ns: int, sender: str, m: TableUpdate, out: list) -> None:
        if not _events_ok(m.events):
            self.stats["ignored_malformed"] += 1
            return
        self._heard_from_replica(now_ns, sender, m.replicas, m.leader_addr, m.fresh)
        if m.first_index > self.cache_index + 1:
            self.stats["subscription_gaps"] += 1
            out += self._subscribe_to(now_ns, sender)
            return
        for index, changes in m.events:
            if index > self.cache_index:
                self.cache.apply_changes(changes)
                self.cache_index = index
                out.append(TableEvent(index, changes))
        self.cache_index = max(self.cache_index, m.last_index)
        if m.fresh:
            self._fresh_until_ns = now_ns + self.config.cache_fresh_ms * MS

    def _on_snapshot(self, now_ns: int, sender: str, m: TableSnapshot, out: list) -> None:
        self._heard_from_replica(now_ns, sender, m.replicas, m.leader_addr, m.fresh)
        if m.last_index <= self.cache_index:
            return  # a lagging replica: never move the cache back in time
        try:
            self.cache.load_records(m.records)
        except ValueError:
            self.stats["ignored_malformed"] += 1
            return
        self.cache_index = m.last_index
        out.append(TableEvent(m.last_index, None))
        if m.fresh:
            self._fresh_until_ns = now_ns + self.config.cache_fresh_ms * MS

    def _heard_from_replica(self, now_ns: int, sender: str, replicas: dict, leader_addr: str | None,
                            fresh: bool) -> None:
        # Only a current replica counts: one cut off from the leader is no better than silence.
        if sender == self._sub_target and fresh:
            self._sub_heard_ns = now_ns
        if replicas:
            self._replicas = dict(replicas)
        if leader_addr is not None:
            self._leader_addr = leader_addr

    # ---- driver entry points ----

    def on_message(self, now_ns: int, sender_addr: str, msg: Any) -> list[Effect]:
        out: list[Effect] = []
        handler = _HANDLERS.get(type(msg))
        if handler is None or not well_typed(msg) or not replicas_ok(msg.replicas):
            self.stats["ignored_malformed"] += 1
        elif handler is TableClient._on_reply:
            self._on_reply(now_ns, msg, out)
        elif self._subscribed:
            handler(self, now_ns, sender_addr, msg, out)
        return self._finish(now_ns, out)

    def on_tick(self, now_ns: int) -> list[Effect]:
        out: list[Effect] = []
        for request_id, pending in list(self._pending.items()):
            if pending.give_up_ns is not None and now_ns >= pending.give_up_ns:
                del self._pending[request_id]
                out.append(Reply(request_id, False, None, TIMEOUT))
            elif now_ns >= pending.resend_at_ns:
                if pending.target is not None and pending.target == self._leader_addr:
                    self._leader_addr = None  # the leader we believed in did not answer
                self.stats["retries"] += 1
                out += self._send(now_ns, request_id, pending, self._pick(exclude=pending.target))
        if self._subscribed and now_ns >= self._sub_renew_ns:
            target = self._sub_target
            if target is None or now_ns - self._sub_heard_ns > self.config.cache_fresh_ms * MS:
                target = self._pick(exclude=target)  # the current one went quiet or stale: move
                self._sub_heard_ns = now_ns
            out += self._subscribe_to(now_ns, target)
        return self._finish(now_ns, out)

    def _finish(self, now_ns: int, out: list) -> list[Effect]:
        deadlines = [p.resend_at_ns for p in self._pending.values()]
        deadlines += [p.give_up_ns for p in self._pending.values() if p.give_up_ns is not None]
        if self._subscribed:
            deadlines.append(self._sub_renew_ns)
        if deadlines:
            due_ns = min(deadlines)
            if self._timer_at_ns is None or due_ns < self._timer_at_ns or self._timer_at_ns <= now_ns:
                self._timer_at_ns = due_ns
                out.append(Timer(due_ns))
        return out


def _events_ok(events: list) -> bool:
    for event in events:
        if not (isinstance(event, tuple) and len(event) == 2 and type(event[0]) is int
                and isinstance(event[1], list)):
            return False
        if not all(change_ok(change) for change in event[1]):
            return False
    return True


_HANDLERS = {
    ClientReply: TableClient._on_reply,
    TableUpdate: TableClient._on_update,
    TableSnapshot: TableClient._on_snapshot,
}

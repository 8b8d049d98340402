"""SWIM membership and gossiped resource views: a pure core, with no sockets, no clock and no global RNG.

Theory of operation
-------------------
Every peer runs one `Membership`. The driver feeds it messages and ticks with the current `now_ns` and
carries out the effects it returns: `Send`, `Timer`, `MemberChanged` whenever another peer is first
learned or changes state (the runtime uses it, for example, to reclaim the leases of a dead peer), and
`Fenced` once, when this peer learns the cluster declared it dead (see "Death is final" below).

Failure detection (SWIM). Each probe period the peer pings the next member of a shuffled round-robin list,
so every member is probed within two cycles (time-bounded completeness). No Ack within `probe_timeout_ms`:
ask `indirect_checks` random members to ping it for us (PingReq), which rules out a bad path between just
the two of us. Still no Ack by the end of the period: the member becomes *suspect*. A suspect that does not
refute within the suspicion timeout, `suspicion_mult * max(1, log10 N) * probe_interval`, becomes *dead*.

Incarnations. A member's claims are ordered by its incarnation number, which only the member itself raises.
Hearing itself suspected, a peer raises its incarnation and spreads `alive`: the refutation. Merge rules, as
in SWIM and memberlist, for a claim at incarnation i against the current state at incarnation j: i < j is
stale; i > j wins; at i == j, suspect beats alive, dead beats both, left beats dead. An `alive` never beats
anything at the same incarnation, so a late rumour cannot undo a suspicion; only the member's own
refutation (with a higher incarnation) can. One exception, from the fence below: a death of the very same
process (same address and meta) wins at any incarnation.

Death is final (the fence). Peers act on a death at once: they reclaim the dead peer's leases, and owners
write off its processes' borrows and free what only they held. Undoing a death would leave live processes
holding refs to freed objects, so nothing undoes one. A suspicion can be refuted; a death cannot:
- a peer that learns it was declared dead (a `dead` record with its own address and meta, at any
  incarnation: the claim is about this very process) does not refute. It returns a `Fenced` effect and
  goes silent (no message, tick or timer under its id again); its driver stops the peer's processes, and
  the machine may come back only as a new peer, under a new id (Ray fences a raylet the GCS wrote off the
  same way);
- no claim brings a member we hold dead back under the same identity (address and meta); only a new
  process reusing the id (different meta, as the simulator's `--restart-id same` does) takes over.
The cost: a pause or partition longer than the suspicion timeout costs the written-off peer a restart,
and its processes' work is lost and redone, as after a crash.

Dissemination. Each accepted change becomes a rumour in a transmit-limited queue and rides on pings, acks
and gossip (to `gossip_fanout` random members every `gossip_interval_ms`), about
`retransmit_mult * log10(N + 1)` times. Resource views spread the same way, each stamped with its
owner's (incarnation, view_version): an older stamp never overwrites a newer one. Views are best effort and
churn with every task, so a gossip round that would carry only views goes to `view_gossip_fanout` members
and runs at most every `view_gossip_interval_ms` (probes and acks carry views whenever they go). Both queues send the
entries sent fewest times first, newest first among those, and a message carries at most
`max_updates_per_msg` and `max_views_per_msg` entries, so messages stay small at any cluster size.

Repair. Rumours reach everyone only with high probability, so a divergent peer is brought back by: a
member we hold suspect or dead that talks to us is told so, and refutes a suspicion (or sends the
refutation we missed) or, told it is dead, is fenced; every `reconnect_interval_ms` we tell one remembered
dead member that it is dead (after a partition this fences the peers written off across it, and it brings
back a restarted peer that reuses its id); a peer that hears a stale claim about itself sends its
current record straight back; probes and acks always carry the sender's own current view; and a periodic
push-pull of the full state with a random member (`sync_interval_ms`, longer in large clusters) mends the
rest. That periodic sync is slow at scale (160 s at 1,000 members), and after heavy churn a peer that missed
one death rumour would hold the dead member alive until its own round-robin probed it (up to a cycle, N
probe periods). So probes and acks also carry a digest of the sender's live set (alive and suspect members
and itself: an XOR of fixed 63-bit hashes of the ids, kept as members come and go): a peer that sees a
digest unlike its own pushes and pulls the full state with that sender at once, at most once per
`digest_sync_ms` (scaled like the periodic sync, but by N / 128). Once the cluster agrees, digests match and
this costs nothing; while it churns, each peer does one extra sync per interval at most.

Joining and leaving. A new peer sends Join to its seed addresses (any live members) until one answers with
a Snapshot of the full state; the member that answered spreads the newcomer. A peer that leaves spreads
`left` directly to several members and by gossip, so nobody waits for a timeout. Dead and left members are
remembered for `dead_retention_ms`, so stale rumours cannot bring them back, then forgotten.

Timing. `membership_config` holds the defaults and the detection-time formulas (`detection_bound_ms`).

Remote input is never trusted: a malformed or unexpected message is counted in `counters` and dropped.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.net.effects import Effect, Send, Timer
from p2pcompute.net.membership_config import (
    MembershipConfig, detection_bound_ms, likely_detection_bound_ms, suspicion_timeout_ms,
)
from p2pcompute.net.members import _NEVER, _NO_VIEW, Member, SharedStart, _SharedMember, id_hash
from p2pcompute.net.membership_messages import (
    ALIVE, DEAD, LEFT, SUSPECT, Ack, Gossip, Join, Ping, PingReq, Snapshot, parse_member,
)
from p2pcompute.net.messages import FIELD_TYPES
from p2pcompute.net.rumours import RumourQueue

if TYPE_CHECKING:
    from random import Random

__all__ = ["MembershipConfig", "Member", "SharedStart", "MemberChanged", "Fenced", "Membership", "suspicion_timeout_ms",
           "detection_bound_ms", "likely_detection_bound_ms"]

_MS = 1_000_000
_ABSENT = object()  # "no entry", where None means something
_MAX_FORWARDS = 1024  # relayed indirect probes remembered at once; caps what a flood of PingReqs can cost


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """Effect: another peer was first learned, changed state, or came back with a new address or meta."""

    peer_id: str
    addr: str
    state: str
    incarnation: int
    meta: dict
    previous_state: str | None  # None when first learned


@dataclass(frozen=True, slots=True)
class Fenced:
    """Effect: this peer learned that the cluster declared it dead. The core is silent from now on; the
    driver must end the peer's processes (their objects and leases are gone for the cluster) and may
    start again only as a new peer with a new id."""

    reason: str
    incarnation: int  # the incarnation the death was declared at


def _well_formed(msg) -> bool:
    """The codec's outer type check, repeated for drivers (like the simulator) that skip the codec."""
    for name, accepted in FIELD_TYPES[type(msg)]:
        value = getattr(msg, name)
        if not isinstance(value, accepted) or (type(value) is bool and bool not in accepted):
            return False
    return True


class Membership:
    """One peer's view of the cluster: who is in it, in what state, and each member's resource view.

    Pure: no sockets, no clock reads; randomness only through `rng`. See the module docstring.
    """

    def __init__(self, self_id: str, self_addr: str, *, config: MembershipConfig, rng: Random, now_ns: int,
                 incarnation: int = 0, meta: dict | None = None):
        if type(self_id) is not str or not self_id:
            raise InvalidArgumentError(f"self_id must be a non-empty string, not {self_id!r}")
        if type(self_addr) is not str or not self_addr:
            raise InvalidArgumentError(f"self_addr must be a non-empty string, not {self_addr!r}")
        if type(incarnation) is not int or incarnation < 0:
            raise InvalidArgumentError(f"incarnation must be an int >= 0, not {incarnation!r}")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidArgumentError(f"meta must be a dict of plain data, not {type(meta).__name__}")
        self.config = config
        self._rng = rng
        self.self_id = self_id
        self.self_addr = self_addr
        self._self = Member((self_id, self_addr, ALIVE, incarnation, dict(meta or {})),
                            (self_id, incarnation, 0, _NO_VIEW), last_heard_ns=now_ns, state_since_ns=now_ns)
        # Members by id: the ones this core made or changed. None: forgotten (a member of `_base`, which we
        # must not see through to). `_base` is a `SharedStart`'s members, read-only and shared with other
        # cores (empty unless `start_shared`): a member found only there is one we have not changed since.
        self._members: dict[str, Member | None] = {self_id: self._self}
        self._base: dict[str, Member] = {}
        # Other members that are alive or suspect, as a list for O(1) random picks (gossip, probes, sync).
        # Removing one is O(N) (a death: rare), which spares a position index of N entries per core.
        self._alive_ids: list[str] = []
        # XOR of `id_hash` over ourselves and `_alive_ids`: equal digests, (almost surely) equal live sets.
        self._digest = id_hash(self_id)
        self._next_digest_sync_ns = 0
        # Dead (not left) members still remembered: the ones we try to reach, to heal partitions. A dict,
        # not a set, so its order, and so the whole run, is the same for the same seed.
        self._dead_ids: dict[str, None] = {}
        self._probe_order: list[str] = []
        self._probe_pos = 0
        # Members that stopped being live during this cycle (cleared when a cycle starts), dropped when their
        # entry comes up. One that comes back while still listed is not queued again: no member is queued
        # twice in one cycle, so a cycle is never longer than the membership, which `detection_bound_ms`
        # relies on. (Live members are never queued twice: `_add_alive` queues only members that were not.)
        self._probe_gone: dict[str, None] = {}
        self._probe_target: str | None = None
        self._probe_seq = 0
        self._probe_incarnation = 0  # the target's incarnation when probed: a refutation since then wins
        self._probe_acked = False
        self._probe_indirect_sent = False
        self._probe_timeout_ns = _NEVER
        self._seq = 0
        self._forwards: dict[int, tuple[str, int, int]] = {}  # our seq -> (requester addr, its seq, expiry)
        self._suspicions: list[tuple[int, str, int]] = []  # heap of (deadline_ns, peer_id, incarnation)
        self._forgets: list[tuple[int, str, int]] = []  # heap of (due_ns, peer_id, state_since_ns)
        self._updates = RumourQueue()
        self._views = RumourQueue()
        self._limits_n = -1  # cluster size that `_retransmit_limit` and `_suspicion_ns` were computed for
        self._retransmit_limit = 0
        self._view_retransmit_limit = 0
        # False while merging the state that answers our Join: those members are news to us, not to the
        # cluster, and re-spreading all of them would cost every joiner N * retransmits messages for nothing.
        self._spreading = True
        self._suspicion_ns = 0
        self._started = False
        self._left = False
        self._fenced = False  # declared dead by the cluster: silent for good (see "Death is final")
        self._joined = False
        self._seeds: list[str] = []
        self._join_backoff_ms = 0
        self._join_retry_ns = _NEVER
        self._next_probe_ns = self._next_gossip_ns = self._next_sync_ns = _NEVER
        self._next_view_gossip_ns = 0  # a round that carries only views waits for this (view_gossip_interval_ms)
        self._pull_ns = _NEVER  # one state pull soon after joining
        self._next_reconnect_ns = 0
        self.counters = {"malformed": 0, "unexpected": 0, "refutations": 0, "digest_syncs": 0}

    # ---- the driver's interface ---------------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._self.incarnation

    @property
    def fenced(self) -> bool:
        """True once this peer learned it was declared dead: the core then ignores all input."""
        return self._fenced

    @property
    def joined(self) -> bool:
        """True once some member has sent us its state (or we started as the first peer)."""
        return self._joined

    def start(self, now_ns: int, seeds: list[str]) -> list[Effect]:
        """Begin probing and gossip, and join through `seeds` (addresses of any members; empty: first peer).

        Calling it again joins through the given seeds once more, for example to re-merge after a partition
        that outlasted `dead_retention_ms`.
        """
        cfg = self.config
        if self._fenced:
            return []
        if not self._started:
            self._started = True
            # Random phases keep peers that start together from probing and gossiping in lockstep.
            self._next_probe_ns = now_ns + self._rng.randrange(cfg.probe_interval_ms * _MS)
            self._next_gossip_ns = now_ns + self._rng.randrange(cfg.gossip_interval_ms * _MS)
            self._next_sync_ns = now_ns + self._sync_interval_ns()
            self._updates.put(self.self_id, self._record(self._self))
            self._views.put(self.self_id, self._view_record(self._self))
        out: list[Effect] = []
        self._seeds = [s for s in seeds if s != self.self_addr]
        if self._seeds:
            self._joined = False
            self._join_backoff_ms = cfg.join_retry_ms
            self._send_joins(now_ns, out)
        else:
            self._joined = True
        out.append(Timer(self.next_deadline_ns()))
        return out

    def start_shared(self, now_ns: int, shared: SharedStart) -> list[Effect]:
        """Start as if a seed had answered our Join with `shared` (the whole cluster), like `start` followed
        by that Snapshot, but reading `shared`'s member objects instead of copying them: every core started
        from the same `SharedStart` holds one copy of what they agree on, and copies a member only to change
        it. For many cores in one process (the simulator); the MemberChanged effects of the Snapshot are not
        returned (every member is news, and nobody needs told), and no state pull follows (see below)."""
        if self._started or self._fenced:
            raise InvalidArgumentError("start_shared must be the core's first start")
        effects = self.start(now_ns, [])
        self._base = shared.members
        ids = list(shared.ids)
        if self.self_id in shared.members:
            ids.remove(self.self_id)
            self._digest = shared.digest
        else:
            self._digest = shared.digest ^ id_hash(self.self_id)
        self._alive_ids = ids  # the probe order is drawn from these when the first cycle starts
        # What merging a Snapshot that answers a Join does (see `_on_snapshot`), but the pull: that is for
        # peers that joined at the same time through others, and a shared start holds the whole cluster.
        self._next_sync_ns = now_ns + self._sync_interval_ns()
        return [e for e in effects if type(e) is not Timer] + [Timer(self.next_deadline_ns())]

    def leave(self, now_ns: int) -> list[Effect]:
        """Leave gracefully: tell several members directly, then keep gossiping until the news is out."""
        if self._left or self._fenced or not self._started:
            return []
        self._left = True
        me = self._self
        me.rec, me.state_since_ns = (me.peer_id, me.addr, LEFT, me.incarnation, me.meta), now_ns
        rec = me.rec
        self._updates.put(self.self_id, rec)
        out: list[Effect] = []
        n = min(len(self._alive_ids), self.config.leave_fanout)
        for pid in self._rng.sample(self._alive_ids, n):
            out.append(Send(self._get(pid).addr, Gossip(self.self_id, (rec,), ())))
        out.append(Timer(self.next_deadline_ns()))
        return out

    def on_message(self, now_ns: int, sender_addr: str, msg) -> list[Effect]:
        """Handle one message. `sender_addr` is where the sender can be reached (a `Send.to` address)."""
        handler = _HANDLERS.get(type(msg))
        if handler is None or not _well_formed(msg):
            self.counters["malformed"] += 1
            return []
        if not self._started or self._left or self._fenced:
            self.counters["unexpected"] += 1
            return []
        out: list[Effect] = []
        idle = not (len(self._updates) or len(self._views))
        handler(self, now_ns, sender_addr, msg, out)
        if self._fenced:  # nothing more under this id: not even the answer the message asked for
            return [e for e in out if type(e) is Fenced]
        if idle and (len(self._updates) or len(self._views)):
            out.append(Timer(self.next_deadline_ns()))  # gossip rounds start again: they idle while nothing is new
        m = self._get(msg.src_id)
        if m is not None and m is not self._self:
            m = self._own(m)
            m.last_heard_ns = now_ns
            # A member we hold suspect or dead is talking to us: tell it, so that it refutes, or sends us the
            # refutation we missed. Rumours reach everyone only with high probability; this closes the gap.
            if SUSPECT <= m.rec[2] <= DEAD and now_ns - m.told_ns >= self.config.probe_interval_ms * _MS:
                m.told_ns = now_ns
                out.append(Send(sender_addr, Gossip(self.self_id, (m.rec,), ())))
        return out

    def on_tick(self, now_ns: int) -> list[Effect]:
        """Do whatever is due at `now_ns`; returns a Timer for the next deadline."""
        if not self._started or self._fenced:
            return []
        out: list[Effect] = []
        self._self.last_heard_ns = now_ns
        if not self._left:
            if (self._probe_target is not None and not self._probe_acked and not self._probe_indirect_sent
                    and now_ns >= self._probe_timeout_ns):
                self._send_ping_reqs(out)
            if now_ns >= self._next_probe_ns:
                self._probe_period(now_ns, out)
            while self._suspicions and self._suspicions[0][0] <= now_ns:
                self._suspicion_expired(now_ns, heapq.heappop(self._suspicions), out)
            while self._forgets and self._forgets[0][0] <= now_ns:
                self._forget(heapq.heappop(self._forgets))
            if now_ns >= self._join_retry_ns:
                self._send_joins(now_ns, out)
            if now_ns >= self._next_sync_ns:
                self._push_pull(now_ns, out)
            if now_ns >= self._pull_ns:
                self._pull(out)
        if now_ns >= self._next_gossip_ns:
            self._gossip(now_ns, out)
        deadline = self.next_deadline_ns()
        if deadline != _NEVER:
            out.append(Timer(deadline))
        return out

    def set_view(self, view: dict) -> None:
        """Replace this peer's own resource view (plain data) and give it the next version.

        It goes out with the next gossip round, which `next_deadline_ns()` now reports: a driver that only
        follows Timer effects sends it at the latest with the next probe, within `probe_interval_ms`.
        """
        if not isinstance(view, dict):
            raise InvalidArgumentError(f"a resource view must be a dict of plain data, not {type(view).__name__}")
        me = self._self
        me.view_rec = (self.self_id, me.view_rec[1], me.view_rec[2] + 1, dict(view))
        self._views.put(self.self_id, me.view_rec)

    def members(self) -> dict[str, Member]:
        """Every member we know, by peer id, this peer and remembered dead/left ones included."""
        return {m.rec[0]: m for m in self._all_members()}

    def member(self, peer_id: str) -> Member | None:
        """One member by id, without copying the whole table as `members()` does."""
        return self._get(peer_id)

    def alive_count(self) -> int:
        """len(alive()), without building the list."""
        return len(self._alive_ids) + 1

    def alive_ids(self) -> list[str]:
        """The ids of `alive()`, without looking members up: cheap enough to compare every peer's."""
        return [self.self_id] + self._alive_ids

    def suspect_ids(self) -> list[str]:
        """The members we hold suspect."""
        # A shared start's members are all alive: a suspect is always one of ours.
        return [pid for pid, m in self._members.items() if m is not None and m.rec[2] == SUSPECT]

    def alive(self) -> list[Member]:
        """This peer and every member that is alive or suspect (a suspect is still usable)."""
        own, base = self._members, self._base
        if not base:
            return [self._self] + [own[pid] for pid in self._alive_ids]
        return [self._self] + [own.get(pid) or base[pid] for pid in self._alive_ids]  # a live one is no tombstone

    def next_deadline_ns(self) -> int:
        """The earliest `now_ns` at which `on_tick` has work to do."""
        if not self._started or self._fenced:
            return _NEVER
        # Gossip rounds only run while there is something to spread: most of the time there is not, and a
        # thousand simulated peers should not wake up every 100 ms for nothing.
        if len(self._updates):
            gossip_ns = self._next_gossip_ns
        elif len(self._views):
            gossip_ns = max(self._next_gossip_ns, self._next_view_gossip_ns)
        else:
            gossip_ns = _NEVER
        if self._left:
            return gossip_ns if len(self._updates) else _NEVER
        t = min(self._next_probe_ns, gossip_ns, self._next_sync_ns, self._join_retry_ns, self._pull_ns)
        if self._probe_target is not None and not self._probe_acked and not self._probe_indirect_sent:
            t = min(t, self._probe_timeout_ns)
        if self._suspicions:
            t = min(t, self._suspicions[0][0])
        if self._forgets:
            t = min(t, self._forgets[0][0])
        return t

    # ---- message handlers -------------------------------------------------------------------------------

    def _on_ping(self, now_ns: int, sender: str, msg: Ping, out: list) -> None:
        self._absorb(now_ns, sender, msg.updates, msg.views, out)
        if msg.target_id != self.self_id:  # meant for a previous process at this address
            self.counters["unexpected"] += 1
            return
        ups, views = self._piggyback(own_view=True)
        out.append(Send(sender, Ack(msg.seq, self.self_id, ups, views, self._digest)))
        self._compare_digest(now_ns, sender, msg.digest, out)

    def _on_ack(self, now_ns: int, sender: str, msg: Ack, out: list) -> None:
        self._absorb(now_ns, sender, msg.updates, msg.views, out)
        self._compare_digest(now_ns, sender, msg.digest, out)
        relay = self._forwards.pop(msg.seq, None)
        if relay is not None:
            ups, views = self._piggyback()
            out.append(Send(relay[0], Ack(relay[1], self.self_id, ups, views, self._digest)))
        elif msg.seq == self._probe_seq and self._probe_target is not None:
            self._probe_acked = True

    def _on_ping_req(self, now_ns: int, sender: str, msg: PingReq, out: list) -> None:
        self._absorb(now_ns, sender, msg.updates, msg.views, out)
        ups, views = self._piggyback()
        if msg.target_id == self.self_id:  # asked to probe ourselves: we are evidently alive
            out.append(Send(sender, Ack(msg.seq, self.self_id, ups, views, self._digest)))
            return
        self._seq += 1
        self._forwards[self._seq] = (sender, msg.seq, now_ns + self.config.probe_interval_ms * _MS)
        if len(self._forwards) > _MAX_FORWARDS:
            del self._forwards[next(iter(self._forwards))]
        out.append(Send(msg.target_addr, Ping(self._seq, self.self_id, msg.target_id, ups, views, self._digest)))

    def _on_join(self, now_ns: int, sender: str, msg: Join, out: list) -> None:
        rec = parse_member((msg.src_id, msg.src_addr, ALIVE, msg.incarnation, msg.meta))
        if rec is None or not msg.src_addr:
            self.counters["malformed"] += 1
            return
        self._merge(now_ns, rec, sender, out)
        self._merge_view((msg.src_id, msg.incarnation, msg.view_version, msg.view), out)
        for snap in self._snapshots(want_reply=False):
            out.append(Send(msg.src_addr, snap))

    def _on_snapshot(self, now_ns: int, sender: str, msg: Snapshot, out: list) -> None:
        self._spreading = self._joined
        try:
            self._absorb(now_ns, sender, msg.members, msg.views, out)
        finally:
            self._spreading = True
        # Only an answer (want_reply False: the reply to our Join, or to a pull or push-pull of ours) joins
        # us. A pull *from* a peer that joined through us while we still wait for our own seeds says nothing
        # about the cluster: taking it as our answer would stop our joins and split the two off for good.
        if not self._joined and not msg.want_reply:
            # Peers that joined at the same time through other members may be missing from this state, and
            # their join rumours may be over before they reach us: ask someone else for its state, soon.
            self._pull_ns = now_ns + 2 * self.config.probe_interval_ms * _MS
            self._next_sync_ns = now_ns + self._sync_interval_ns()  # now that we know how big the cluster is
            self._joined = True
            self._join_retry_ns = _NEVER
        if msg.want_reply:
            for snap in self._snapshots(want_reply=False):
                out.append(Send(sender, snap))

    def _on_gossip(self, now_ns: int, sender: str, msg: Gossip, out: list) -> None:
        self._absorb(now_ns, sender, msg.updates, msg.views, out)

    # ---- merging what others say ------------------------------------------------------------------------

    def _absorb(self, now_ns: int, sender: str, updates: tuple, views: tuple, out: list) -> None:
        members, base, me = self._members, self._base, self._self
        for rec in updates:
            # Fast path, the common case: a rumour we already hold. Nothing in it is used, so it need not be
            # checked; all else is checked in full before it can change anything.
            if type(rec) is tuple and len(rec) == 5 and type(rec[0]) is str:
                m = members.get(rec[0], _ABSENT)
                if m is _ABSENT:
                    m = base.get(rec[0])
                if m is not None and m is not me:
                    held = m.rec
                    if held is rec or (held[3] == rec[3] and held[2] == rec[2]):
                        continue
            if parse_member(rec) is None:
                self.counters["malformed"] += 1
            else:
                self._merge(now_ns, rec, sender, out)
        for rec in views:
            # Fast path, most view records: one we hold (the very tuple, where cores share a process) or one
            # stamped no newer, from a well-formed record, which would change nothing. Hot: several a message.
            if type(rec) is tuple and len(rec) == 4 and type(rec[0]) is str:
                m = members.get(rec[0], _ABSENT)
                if m is _ABSENT:
                    m = base.get(rec[0])
                if m is not None and m is not me:
                    held = m.view_rec
                    if held is rec:
                        continue
                    inc, version = rec[1], rec[2]
                    if (type(inc) is int and type(version) is int and type(rec[3]) is dict
                            and (inc < held[1] or (inc == held[1] and version <= held[2]))):
                        continue
            self._merge_view(rec, out)

    def _merge(self, now_ns: int, rec: tuple, sender: str | None, out: list) -> None:
        """Apply one member record by the SWIM precedence rules (module docstring); spread it if accepted."""
        pid, addr, st, inc, meta = rec
        if pid == self.self_id:
            self._merge_about_self(rec, sender, out)
            return
        m = self._get(pid)
        if m is None:
            if st == SUSPECT:  # learn members from their own alive, never from a rumour of their failure
                return
            m = self._members[pid] = Member(rec, state_since_ns=now_ns)
            previous, was_live, identity_changed = None, False, False
        else:
            cur = m.state_code
            if inc < m.incarnation:
                if not (st == DEAD and cur <= SUSPECT and addr == m.addr and meta == m.meta):
                    return
                # This very process (same address and meta) was declared dead at an earlier incarnation: it
                # refuted a suspicion too late, and whoever declared it acted on the death. Deaths are final,
                # so the death wins whatever incarnation we hold (the process fences itself the same way).
                # Ignoring it left peers that had heard the late refutation holding a fenced, silent member
                # alive until their own probes found it: minutes at 1,000 peers.
                inc = m.incarnation
                rec = (pid, addr, st, inc, meta)
            if cur >= DEAD and st <= SUSPECT and addr == m.addr and meta == m.meta:
                return  # death is final: the same process never comes back (a new one with our id may)
            if inc == m.incarnation and (st == ALIVE or st == cur or (st == SUSPECT and cur != ALIVE)
                                         or (st == DEAD and cur == LEFT)):
                return
            previous, was_live = m.state, cur <= SUSPECT
            identity_changed = m.addr != addr or (m.meta is not meta and m.meta != meta)
            m = self._own(m)
            m.rec = rec
            if st != cur:
                m.state_since_ns = now_ns
        is_live = st <= SUSPECT
        if is_live and not was_live:
            self._add_alive(pid)
        elif was_live and not is_live:
            self._remove_alive(pid)
        if st == SUSPECT:
            self._refresh_limits()
            heapq.heappush(self._suspicions, (now_ns + self._suspicion_ns, pid, inc))
        elif st >= DEAD:
            heapq.heappush(self._forgets, (m.state_since_ns + self.config.dead_retention_ms * _MS, pid,
                                           m.state_since_ns))
            if st == DEAD:
                self._dead_ids[pid] = None
            else:
                self._dead_ids.pop(pid, None)
        if previous is not None or self._spreading:
            self._updates.put(pid, rec)
        if previous != m.state or identity_changed:
            out.append(MemberChanged(pid, addr, m.state, inc, meta, previous))

    def _merge_about_self(self, rec: tuple, sender: str | None, out: list) -> None:
        _, addr, st, inc, meta = rec
        me = self._self
        if self._left:  # we said goodbye; nothing about us needs defending any more
            return
        if st == DEAD and addr == me.addr and meta == me.meta:
            # This very process was declared dead (at any incarnation: a death declared just before our
            # refutation of the suspicion arrived is still a death someone acted on). Deaths are final.
            self._declared_dead(inc, sender, out)
            return
        if st == ALIVE:
            # Our own record echoing back is normal. A newer or different one comes from an earlier process
            # with our id (a restart): take over with a higher incarnation.
            if inc > me.incarnation or (inc == me.incarnation and (addr != me.addr or meta != me.meta)):
                self._refute(inc, None, out)
            return
        if inc < me.incarnation:  # a stale suspicion: whoever passed it on is behind, so correct it directly
            if sender is not None:
                out.append(Send(sender, Gossip(self.self_id, (self._record(me),), ())))
            return
        self._refute_suspicion(inc, sender, out)

    def _declared_dead(self, claimed_incarnation: int, sender: str | None, out: list) -> None:
        """We were declared dead: fenced, for good (a planted bug in sims/broken.py refutes instead)."""
        self._fenced = True
        self.counters["fenced"] = 1
        out.append(Fenced(f"the cluster declared peer {self.self_id} dead (incarnation {claimed_incarnation}; "
                          f"we are at {self._self.incarnation})", claimed_incarnation))

    def _refute_suspicion(self, claimed_incarnation: int, sender: str | None, out: list) -> None:
        """Someone suspects us, or declared an earlier process with our id dead: outbid it (a planted bug in
        sims/broken.py skips this)."""
        self._refute(claimed_incarnation, sender, out)

    def _refute(self, claimed_incarnation: int, sender: str | None, out: list) -> None:
        """Outbid a claim about us with a higher incarnation, spread it, and answer the claimant at once."""
        me = self._self
        inc = max(me.incarnation, claimed_incarnation) + 1
        me.rec = (self.self_id, me.addr, me.state_code, inc, me.meta)
        me.view_rec = (self.self_id, inc, me.view_version, me.view)
        self.counters["refutations"] += 1
        rec, view = me.rec, me.view_rec
        self._updates.put(self.self_id, rec)
        self._views.put(self.self_id, view)
        if sender is not None:
            out.append(Send(sender, Gossip(self.self_id, (rec,), (view,))))

    def _merge_view(self, rec: object, out: list) -> None:
        """Take a view record if it is well formed and newer than ours. Hot: one call per view received."""
        if type(rec) is not tuple or len(rec) != 4:
            self.counters["malformed"] += 1
            return
        pid, inc, version, view = rec
        if type(pid) is not str or type(inc) is not int or type(version) is not int or type(view) is not dict:
            self.counters["malformed"] += 1
            return
        m = self._get(pid)
        if m is None or m.rec[2] > SUSPECT:
            return
        held = m.view_rec
        if inc < held[1] or (inc == held[1] and version <= held[2]):
            return
        if m is self._self:
            # A view of ours stamped newer than ours is from an earlier process with our id. Jump past it,
            # or everyone would keep the old one.
            if inc > m.incarnation:
                self._refute(inc, None, out)
            else:
                m.view_rec = (pid, held[1], version + 1, held[3])
                self._views.put(pid, m.view_rec)
            return
        self._own(m).view_rec = rec
        if self._spreading:
            self._views.put(pid, rec)

    # ---- probing ----------------------------------------------------------------------------------------

    def _probe_period(self, now_ns: int, out: list) -> None:
        if self._probe_target is not None and not self._probe_acked:
            self._probe_failed(now_ns, out)
        self._probe_target = None
        interval_ns = self.config.probe_interval_ms * _MS
        expired = [seq for seq, relay in self._forwards.items() if relay[2] <= now_ns]
        for seq in expired:
            del self._forwards[seq]
        if self._dead_ids and now_ns >= self._next_reconnect_ns:
            self._next_reconnect_ns = now_ns + self.config.reconnect_interval_ms * _MS
            m = self._own(self._get(self._rng.choice(list(self._dead_ids))))
            m.told_ns = now_ns
            out.append(Send(m.addr, Gossip(self.self_id, (m.rec,), ())))
        pid = self._next_probe_target()
        if pid is not None:
            m = self._get(pid)
            self._seq += 1
            self._probe_target, self._probe_seq, self._probe_incarnation = pid, self._seq, m.incarnation
            self._probe_acked = self._probe_indirect_sent = False
            self._probe_timeout_ns = now_ns + self.config.probe_timeout_ms * _MS
            ups, views = self._piggyback(own_view=True)
            out.append(Send(m.addr, Ping(self._seq, self.self_id, pid, ups, views, self._digest)))
        self._next_probe_ns += interval_ns
        if self._next_probe_ns <= now_ns:  # the driver fell behind: skip missed periods, don't burst
            self._next_probe_ns = now_ns + interval_ns

    def _next_probe_target(self) -> str | None:
        for _ in range(2):
            order = self._probe_order
            gone = self._probe_gone
            while self._probe_pos < len(order):
                pid = order[self._probe_pos]
                self._probe_pos += 1
                if gone and pid in gone:
                    del gone[pid]
                    continue
                m = self._get(pid)
                if m is not None and m.rec[2] <= SUSPECT:
                    return pid
            if not self._alive_ids:
                return None
            # A cycle is over: a fresh random order, so every member is probed within two cycles.
            self._probe_order = list(self._alive_ids)
            self._rng.shuffle(self._probe_order)
            self._probe_gone = {}
            self._probe_pos = 0
        return None

    def _send_ping_reqs(self, out: list) -> None:
        self._probe_indirect_sent = True
        target = self._get(self._probe_target)
        if target is None:
            return
        k = self.config.indirect_checks
        helpers = self._rng.sample(self._alive_ids, min(len(self._alive_ids), k + 1))
        for pid in [h for h in helpers if h != target.peer_id][:k]:
            ups, views = self._piggyback()
            out.append(Send(self._get(pid).addr,
                            PingReq(self._probe_seq, self.self_id, target.peer_id, target.addr, ups, views)))

    def _probe_failed(self, now_ns: int, out: list) -> None:
        m = self._get(self._probe_target)
        if m is not None and m.state_code == ALIVE and m.incarnation == self._probe_incarnation:
            self._merge(now_ns, (m.peer_id, m.addr, SUSPECT, m.incarnation, m.meta), None, out)

    def _suspicion_expired(self, now_ns: int, entry: tuple[int, str, int], out: list) -> None:
        _, pid, inc = entry
        m = self._get(pid)
        if m is not None and m.state_code == SUSPECT and m.incarnation == inc:
            self._merge(now_ns, (pid, m.addr, DEAD, inc, m.meta), None, out)

    def _forget(self, entry: tuple[int, str, int]) -> None:
        _, pid, since_ns = entry
        m = self._get(pid)
        if m is not None and m.state_code >= DEAD and m.state_since_ns == since_ns:
            if pid in self._base:
                self._members[pid] = None  # forgotten: do not see through to the shared record
            else:
                del self._members[pid]
            self._dead_ids.pop(pid, None)
            self._updates.discard(pid)
            self._views.discard(pid)

    # ---- gossip, sync, join -----------------------------------------------------------------------------

    def _gossip(self, now_ns: int, out: list) -> None:
        cfg = self.config
        self._next_gossip_ns = now_ns + cfg.gossip_interval_ms * _MS
        if not self._alive_ids:
            return
        # Membership changes are urgent and must reach everyone; views are best effort, and while resources
        # churn there is always a new one, so view-only rounds go to fewer members, and less often, to bound
        # their cost (at 1,000 busy peers they were most of the membership's work).
        if len(self._updates):
            fanout = cfg.gossip_fanout
        elif len(self._views) and now_ns >= self._next_view_gossip_ns:
            fanout = cfg.view_gossip_fanout
        else:
            return
        self._next_view_gossip_ns = now_ns + cfg.view_gossip_interval_ms * _MS
        for pid in self._pick_others(fanout):
            ups, views = self._piggyback()
            if not ups and not views:
                break
            out.append(Send(self._get(pid).addr, Gossip(self.self_id, ups, views)))

    def _compare_digest(self, now_ns: int, sender: str, digest: int, out: list) -> None:
        """The sender's live set differs from ours: one of us missed a rumour. Sync with it now (see Repair)."""
        if digest == self._digest or not digest or now_ns < self._next_digest_sync_ns or self._left:
            return
        n = len(self._alive_ids) + 1
        self._next_digest_sync_ns = now_ns + self.config.digest_sync_ms * max(1, math.ceil(n / 128)) * _MS
        self.counters["digest_syncs"] += 1
        for snap in self._snapshots(want_reply=True):
            out.append(Send(sender, snap))

    def _push_pull(self, now_ns: int, out: list) -> None:
        self._next_sync_ns = now_ns + self._sync_interval_ns()
        if self._alive_ids:
            addr = self._get(self._rng.choice(self._alive_ids)).addr
            for snap in self._snapshots(want_reply=True):
                out.append(Send(addr, snap))

    def _pull(self, out: list) -> None:
        """Ask a random member for its full state, sending only our own record: a one-way sync."""
        self._pull_ns = _NEVER
        if self._alive_ids:
            me = self._self
            out.append(Send(self._get(self._rng.choice(self._alive_ids)).addr,
                            Snapshot(self.self_id, (me.rec,), (me.view_rec,), True)))

    def _send_joins(self, now_ns: int, out: list) -> None:
        if self._joined:
            self._join_retry_ns = _NEVER
            return
        me = self._self
        for addr in self._seeds:
            out.append(Send(addr, Join(self.self_id, self.self_addr, me.incarnation, me.meta, me.view,
                                       me.view_version)))
        self._join_retry_ns = now_ns + self._join_backoff_ms * _MS
        self._join_backoff_ms = min(self._join_backoff_ms * 2, self.config.join_retry_max_ms)

    def _snapshots(self, want_reply: bool) -> Iterator[Snapshot]:
        """Our full state cut into Snapshot messages; only the first asks for a reply, so a push-pull
        costs one state each way."""
        members = list(self._all_members())
        step = self.config.max_snapshot_members
        for i in range(0, len(members), step):
            part = members[i:i + step]
            views = tuple(m.view_rec for m in part if m.rec[2] <= SUSPECT and m.view_rec[1] >= 0)
            yield Snapshot(self.self_id, tuple(m.rec for m in part), views, want_reply and i == 0)

    # ---- bookkeeping ------------------------------------------------------------------------------------

    def _piggyback(self, own_view: bool = False) -> tuple[tuple, tuple]:
        """Rumours for one message. Probes and their acks also carry our own current view: rumours reach
        everyone only with high probability, while probes reach every member once per cycle, for sure."""
        self._refresh_limits()
        cfg = self.config
        ups = self._updates.take(cfg.max_updates_per_msg, self._retransmit_limit)
        if not own_view:
            return ups, self._views.take(cfg.max_views_per_msg, self._view_retransmit_limit)
        return ups, (self._view_record(self._self),) + self._views.take(cfg.max_views_per_msg - 1,
                                                                          self._view_retransmit_limit)

    def _refresh_limits(self) -> None:
        n = len(self._alive_ids) + 1
        if n != self._limits_n:
            self._limits_n = n
            # memberlist sends mult * ceil(log10(N + 1)) times, which jumps from 12 to 16 at N = 1,000; without the
            # rounding up, mult * log10(N + 1) is smoother and 13 there (never less than mult, for small clusters).
            log_n = math.log10(n + 1)
            cfg = self.config
            self._retransmit_limit = max(cfg.retransmit_mult, math.ceil(cfg.retransmit_mult * log_n))
            self._view_retransmit_limit = max(cfg.view_retransmit_mult, math.ceil(cfg.view_retransmit_mult * log_n))
            self._suspicion_ns = suspicion_timeout_ms(self.config, n) * _MS

    def _sync_interval_ns(self) -> int:
        # A full state costs O(N), so above 32 members the interval grows with N: each peer then spends the
        # same on syncs at any cluster size (160 s at 1,000 peers; memberlist's log scaling gives 180 s).
        n = len(self._alive_ids) + 1
        return self.config.sync_interval_ms * max(1, math.ceil(n / 32)) * _MS

    def _pick_others(self, k: int) -> list[str]:
        """Up to k distinct random members other than us; cheaper than `rng.sample` for a small k."""
        ids = self._alive_ids
        n = len(ids)
        if n <= k:
            return list(ids)
        picked: list[str] = []
        rand = self._rng.random
        while len(picked) < k:
            pid = ids[int(rand() * n)]
            if pid not in picked:
                picked.append(pid)
        return picked

    def _add_alive(self, pid: str) -> None:
        self._alive_ids.append(pid)
        self._digest ^= id_hash(pid)
        self._dead_ids.pop(pid, None)
        order = self._probe_order
        if self._probe_gone.pop(pid, _ABSENT) is not _ABSENT and pid in order[self._probe_pos:]:
            return  # back before its entry in this cycle came up: it keeps that place (O(N), but rare)
        # At a random place in what is left of this cycle: probed soon, but not by everyone at once.
        order.insert(self._probe_pos + int(self._rng.random() * (len(order) - self._probe_pos + 1)), pid)

    def _remove_alive(self, pid: str) -> None:
        self._digest ^= id_hash(pid)
        ids = self._alive_ids
        i = ids.index(pid)
        last = ids.pop()
        if last != pid:
            ids[i] = last
        if self._probe_pos < len(self._probe_order):
            self._probe_gone[pid] = None  # its entry may still be ahead in this cycle: skip it there
        self._views.discard(pid)

    def _get(self, pid: str) -> Member | None:
        """The member we hold for `pid`, ours or (not changed by us yet) the shared start's; None if none."""
        m = self._members.get(pid, _ABSENT)
        if m is _ABSENT:
            return self._base.get(pid)
        return m

    def _own(self, m: Member) -> Member:
        """`m` ready to be changed: a shared start's member is copied into ours first (copy on write)."""
        if type(m) is _SharedMember:
            m = Member(m.rec, m.view_rec, m.last_heard_ns, m.state_since_ns, m.told_ns)
            self._members[m.rec[0]] = m
        return m

    def _all_members(self) -> Iterator[Member]:
        own = self._members
        for m in own.values():
            if m is not None:
                yield m
        for pid, m in self._base.items():
            if pid not in own:
                yield m

    @staticmethod
    def _record(m: Member) -> tuple:
        return m.rec

    @staticmethod
    def _view_record(m: Member) -> tuple:
        return m.view_rec


_HANDLERS = {Ping: Membership._on_ping, Ack: Membership._on_ack, PingReq: Membership._on_ping_req,
             Join: Membership._on_join, Snapshot: Membership._on_snapshot, Gossip: Membership._on_gossip}

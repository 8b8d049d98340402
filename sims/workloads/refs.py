"""References in the simulation: the real `ReferenceTable` in every process, and a ground truth to judge it.

Theory of operation
-------------------
Drivers and workers that handle references each own a `ReferenceTable` (or, with `--break refcount`, the
planted-bug variant from `sims.broken`). `RefOps` performs each action the way the runtime does — create a
value, drop a local ref, send refs in a message, receive them, consume the message, adopt refs contained in a
returned value — and mirrors it in `RefTruth`, which counts, independently of every table, who can still
reach each object:

- a *direct hold* is a live process holding a ref: a local `ObjectRef`, an argument of a task it submitted
  and that has not ended, a ref in a message it received and has not consumed yet; or a message on the wire
  to a live process (held by `("wire", destination)`);
- an object is *reachable* when it has a direct hold, or when the value of a reachable object whose owner is
  alive contains it (`contains`), so reachability follows values transitively, as in
  tests/property/test_refcount_props.py. The counts are kept incrementally (values only contain older
  objects, so there are no cycles).

When an owner's table emits `Free(oid)` for a reachable object, that is a `refs_safe` violation; a
borrower freeing what it still holds is one too. A process that dies releases all it held, and the wire
holds addressed to it; the values it owned vanish (their readers get `OwnerDiedError`, which the API allows).

The table's protocol needs two things of its driver besides messages. A receiver confirms a forwarded ref
with the owner, naming the process that sent it: `receive` and `adopt` take the sender's address, or find it
(the task message the worker is starting, else the latest `send` of that ref to that process — a guess that
can only cost a leak, never safety: the owner counts one registration per confirmation whatever it names).
And a dead process's holds outlive the news by a grace period that `on_tick` ends: tables told of a death
without a time get ticked here, every `_TICK_NS`, on their peer's clock.
"""

from __future__ import annotations

from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership.messages import AddBorrower, BorrowConfirmed, BorrowerAdded, RemoveBorrower
from p2pcompute.ownership.refcount import Free, ReferenceTable, owner_id_of

REF_MESSAGES = (AddBorrower, BorrowerAdded, RemoveBorrower, BorrowConfirmed)

_TICK_NS = 1_000_000_000  # how often tables in a death's grace period are ticked (it lasts seconds)


def proc_of_addr(addr: str) -> str:
    """'sim://<process id>~<incarnation>' -> '<process id>'."""
    return addr[6:].split("~", 1)[0]


class RefTruth:
    def __init__(self, violations) -> None:
        self.violations = violations
        self.direct: dict[str, int] = {}  # object id -> number of direct holds
        self.holds: dict = {}  # holder -> {object id: count}
        self.holders: dict[str, dict] = {}  # object id -> {holder: count}
        self.contains: dict[str, tuple] = {}  # object id -> refs its value holds, while its owner has the value
        self.contained: dict[str, int] = {}  # object id -> reachable values that contain it
        self.freed: set[str] = set()
        self.dead: set[str] = set()  # dead processes (by incarnation: "<process id>~<n>")
        self.owner_of: dict[str, str] = {}  # object id -> the owning process incarnation
        self.created = 0
        self.frees = 0
        self.written_off_frees = 0  # freed while held only by processes the owner was told are dead
        self.zombie_uses = 0  # refs used by a process its owner wrote off, before its peer was fenced

    def reachable(self, oid: str) -> bool:
        return self.direct.get(oid, 0) > 0 or self.contained.get(oid, 0) > 0

    # ---- holds ----

    def hold(self, holder, oid: str, n: int = 1) -> None:
        was = self.reachable(oid)
        h = self.holds.setdefault(holder, {})
        h[oid] = h.get(oid, 0) + n
        by = self.holders.setdefault(oid, {})
        by[holder] = by.get(holder, 0) + n
        self.direct[oid] = self.direct.get(oid, 0) + n
        if not was:
            self._became(oid, True)

    def release(self, holder, oid: str, n: int = 1, strict: bool = True) -> None:
        h = self.holds.get(holder)
        if not h or h.get(oid, 0) < n:
            if strict:
                raise AssertionError(f"simulator bug: {holder} releases {oid}, which it does not hold")
            return
        h[oid] -= n
        if not h[oid]:
            del h[oid]
        self._unhold(holder, oid, n)

    def _unhold(self, holder, oid: str, n: int) -> None:
        by = self.holders[oid]
        by[holder] -= n
        if not by[holder]:
            del by[holder]
            if not by:
                del self.holders[oid]
        self.direct[oid] -= n
        if not self.reachable(oid):
            self._became(oid, False)

    def release_all(self, holder) -> None:
        h = self.holds.pop(holder, None)
        if h:
            for oid, n in h.items():
                self._unhold(holder, oid, n)

    def _became(self, oid: str, reachable: bool) -> None:
        """Propagate a change of reachability through the value of `oid`, if its owner holds one."""
        stack = [(oid, reachable)]
        while stack:
            o, up = stack.pop()
            for inner in self.contains.get(o, ()):
                before = self.reachable(inner)
                self.contained[inner] = self.contained.get(inner, 0) + (1 if up else -1)
                after = self.reachable(inner)
                if before != after:
                    stack.append((inner, after))

    # ---- values ----

    def set_value(self, oid: str, inner: tuple) -> None:
        """The owner now holds the value of `oid`, which contains `inner`."""
        self.created += 1
        if not inner or oid in self.contains:
            return
        self.contains[oid] = tuple(inner)
        if self.reachable(oid):
            for i in inner:
                before = self.reachable(i)
                self.contained[i] = self.contained.get(i, 0) + 1
                if not before:
                    self._became(i, True)

    def drop_value(self, oid: str) -> None:
        inner = self.contains.pop(oid, None)
        if inner and self.reachable(oid):
            for i in inner:
                self.contained[i] -= 1
                if not self.reachable(i):
                    self._became(i, False)

    # ---- judgements ----

    def on_free(self, tid: str, oid: str, written_off) -> None:
        """`proc_id`'s table freed `oid`. `written_off(holder)`: the freeing process was told that holder died
        (a peer declared dead while it was only cut off or paused lives on, but the system wrote it off).

        Refs on the wire are judged when they arrive (`used`): a message that is then discarded (a reply
        to a call that already failed) never gives anyone the freed object."""
        if self.owner_of.get(oid) == tid:
            self.frees += 1
            if self.reachable(oid):
                holders = [h for h in self.holders.get(oid, {}) if not isinstance(h, tuple)]
                live = [h for h in holders if not written_off(h)]
                if live or self.contained.get(oid, 0) > 0:
                    self.violations.add("refs_safe", f"owner {tid} freed {oid} while it is still reachable "
                                                     f"(held by {sorted(live)[:4] or 'a reachable value'})")
                elif holders:
                    self.written_off_frees += 1
            self.freed.add(oid)
            self.drop_value(oid)
        elif self.holds.get(tid, {}).get(oid):
            self.violations.add("refs_safe", f"borrower {tid} forgot {oid} while it still holds it")

    def used(self, tid: str, oid: str, hint=None) -> None:
        """Live process `tid` now holds a ref to `oid` (a message arrived, a value was read)."""
        if oid in self.freed and self.owner_of.get(oid) not in self.dead:
            self.freed.discard(oid)  # report each freed object once
            why = hint() if hint is not None else ""
            self.violations.add("refs_safe", f"{tid} got a ref to {oid} after its owner freed it{why}")

    def process_died(self, tid: str) -> None:
        self.dead.add(tid)
        self.release_all(tid)
        self.release_all(("wire", tid))
        for oid in [o for o in self.contains if self.owner_of.get(o) == tid]:
            self.drop_value(oid)


class RefOps:
    """The runtime's reference actions, each applied to a process's table and mirrored in the truth."""

    def __init__(self, cluster, truth: RefTruth, table_cls=ReferenceTable) -> None:
        self.cluster = cluster
        self.truth = truth
        self.table_cls = table_cls
        self.procs: dict = {}  # process id -> driver or worker with a table
        # With --unreliable-streams a data message may be lost or arrive twice: the truth cannot follow it.
        self.lossy = cluster.opts.unreliable_streams
        # (destination incarnation, object id) -> process ids that sent it the ref, oldest first: who a
        # receiver names in its confirmation when its caller does not say
        self._senders: dict[tuple[str, str], list[str]] = {}
        self._ticking = False

    def table(self, proc) -> ReferenceTable:
        if proc.refs is None:
            proc.refs = self.table_cls(_pid(proc), proc.addr)
            self.procs[_pid(proc)] = proc
        if not self._ticking:
            self._ticking = True
            self.cluster.engine.at(self.cluster.engine.now + _TICK_NS, self._tick_all)
        return proc.refs

    def _tick_all(self, _a=None, _b=None) -> None:
        """Tick every live table whose deaths are in their grace period (see the module's docstring)."""
        for proc in list(self.procs.values()):
            table = proc.refs
            if table is not None and proc.alive and table.in_grace() and not proc.peer.paused:
                self.run(proc, [e for e in table.on_tick(proc.peer.local()) if type(e) is not Timer])
        self.cluster.engine.at(self.cluster.engine.now + _TICK_NS, self._tick_all)

    def _used(self, proc, tid: str, oid: str) -> None:
        """`proc` now holds a ref to `oid`; judged unless its owner wrote `proc` off. Deaths are final: a process
        of a peer declared dead runs on only until its peer learns it and is fenced (a paused peer resuming
        works through its backlog first); nothing it does reaches the cluster, which holds it dead. Should
        such a process live on instead, `membership_agreement` fails; should it pass the ref to a live
        process, that process's use is judged."""
        owner = self.procs.get(owner_id_of(oid))
        if owner is not None and written_off(owner, tid):
            self.truth.zombie_uses += 1
            return
        self.truth.used(tid, oid, lambda: self._hint(proc, oid))

    def _hint(self, proc, oid: str) -> str:
        """Why a process could get a freed object: usually a false death declaration, which the reference
        tables treat as final while membership lets the peer come back."""
        up = self.cluster.up
        false: set[str] = set()
        for p in (self.procs.get(owner_id_of(oid)), proc):
            for dead in getattr(p, "told_dead", ()) or ():
                pid = dead.split("-", 1)[0]
                if pid in up and up[pid].gen == self.cluster.gens[up[pid].slot]:
                    false.add(pid)
        if false:
            return (f" (after false death declarations: {sorted(false)[:3]} were declared dead, which the "
                    f"reference tables treat as final, yet live on)")
        return ""

    def run(self, proc, effects: list) -> None:
        for e in effects:
            t = type(e)
            if t is Send:
                proc.peer.net.send(proc.ep, e.to, e.msg)
            elif t is Free:
                self.truth.on_free(_tid(proc), e.object_id, lambda holder: written_off(proc, holder))
            elif t is Timer:
                proc.peer.engine.at(proc.peer.to_global(e.at_ns), self._tick_one, proc)

    def _tick_one(self, proc, _b=None) -> None:
        if proc.alive and proc.refs is not None:
            if proc.peer.paused:  # a paused process ticks when it resumes; the sweep will get it
                return
            self.run(proc, [e for e in proc.refs.on_tick(proc.peer.local()) if type(e) is not Timer])

    def create(self, proc, oid: str, inner: tuple = ()) -> None:
        """`put`: a new owned object with one local ref; its value holds `inner` (refs the creator holds)."""
        table = self.table(proc)
        table.add_local(oid, proc.addr)
        self.truth.owner_of[oid] = _tid(proc)
        self.truth.hold(_tid(proc), oid)
        self.truth.set_value(oid, tuple(i for i, _ in inner))
        if inner:
            self.run(proc, table.set_contains(oid, inner))

    def add_local(self, proc, oid: str, owner_addr: str) -> None:
        """A new local ObjectRef: a task's return ref (owned), or a ref read out of a value."""
        self.table(proc).add_local(oid, owner_addr)
        tid = _tid(proc)
        if owner_addr == proc.addr:
            self.truth.owner_of.setdefault(oid, tid)
        self.truth.hold(tid, oid)
        self._used(proc, tid, oid)

    def drop_local(self, proc, oid: str) -> None:
        self.truth.release(_tid(proc), oid)
        self.run(proc, self.table(proc).remove_local(oid))

    def pin(self, proc, oid: str, owner_addr: str) -> None:
        """A submitted task holds its arguments until it ends."""
        self.table(proc).pin(oid, owner_addr)
        self.truth.hold(_tid(proc), oid)

    def unpin(self, proc, oid: str) -> None:
        self.truth.release(_tid(proc), oid)
        self.run(proc, self.table(proc).unpin(oid))

    def send(self, proc, dest_addr: str, refs: list) -> None:
        """Refs leave `proc` in a data message to the process at `dest_addr`: registration happens now."""
        table, dest = self.table(proc), dest_addr[6:]
        dest_id = dest.split("~", 1)[0]
        for oid, owner_addr in refs:
            self.run(proc, table.on_sent(oid, owner_addr, dest_id))
            if dest not in self.truth.dead:
                self.truth.hold(("wire", dest), oid)
                self._senders.setdefault((dest, oid), []).append(_pid(proc))

    def _sender(self, proc, oid: str, refs: list, sender_addr: str | None) -> str:
        """The process that sent `proc` the message carrying `refs` (see the module's docstring)."""
        if sender_addr is None:
            running = getattr(proc, "running", None)
            if running is not None and running.refs is refs:
                sender_addr = running.owner_addr
        key = (_tid(proc), oid)
        sent = self._senders.get(key)
        if sender_addr is not None:
            sender = proc_of_addr(sender_addr)
            if sent and sender in sent:
                sent.remove(sender)
        elif sent:
            sender = sent.pop()
        elif self.lossy:
            sender = owner_id_of(oid)  # a duplicate of a message already taken in: nothing left to confirm
        else:
            raise AssertionError(f"simulator bug: {_tid(proc)} received {oid} from nobody")
        if sent is not None and not sent:
            del self._senders[key]
        return sender

    def receive(self, proc, refs: list, sender_addr: str | None = None) -> None:
        """A data message carrying `refs` arrived from `sender_addr` (None: found, see the module's
        docstring): each is pinned until the message is consumed."""
        table, tid = self.table(proc), _tid(proc)
        for oid, owner_addr in refs:
            self.run(proc, table.on_received(oid, owner_addr, self._sender(proc, oid, refs, sender_addr)))
            self.truth.release(("wire", tid), oid, strict=not self.lossy)
            self.truth.hold(tid, oid)
            self._used(proc, tid, oid)

    def consume(self, proc, refs: list) -> None:
        """The message is consumed (its task finished, its value was read): release its pins."""
        for oid, _ in refs:
            self.unpin(proc, oid)

    def adopt(self, proc, outer: str, refs: list, sender_addr: str | None = None) -> None:
        """A value of `outer` holding `refs` arrived from `sender_addr` (a task's return; None: found, see the
        module's docstring): the refs live as long as it does."""
        table, tid = self.table(proc), _tid(proc)
        if outer in table:
            self.truth.set_value(outer, tuple(oid for oid, _ in refs))
            for oid, _ in refs:
                self._used(proc, tid, oid)
        for oid, _ in refs:
            self.truth.release(("wire", tid), oid, strict=not self.lossy)
        senders = [self._sender(proc, oid, refs, sender_addr) for oid, _ in refs]  # one message: one sender
        self.run(proc, table.adopt_contained(outer, [tuple(r) for r in refs], senders[0] if senders else ""))

    def discard(self, proc, refs: list, sender_addr: str | None = None) -> None:
        """Refs arrived in a value nobody wants (a duplicate reply): settle their registrations at once."""
        self.adopt(proc, f"{_pid(proc)}.discarded", refs, sender_addr)

    def on_message(self, proc, src: str, msg) -> None:
        table, t = self.table(proc), type(msg)
        if t is AddBorrower:
            self.run(proc, table.on_add_borrower(msg))
        elif t is BorrowerAdded:
            self.run(proc, table.on_borrower_added(msg))
        elif t is RemoveBorrower:
            self.run(proc, table.on_remove_borrower(proc_of_addr(src), msg))
        elif t is BorrowConfirmed:
            self.run(proc, table.on_borrow_confirmed(proc_of_addr(src), msg))

    def died(self, proc) -> None:
        self.truth.process_died(_tid(proc))
        tid = _tid(proc)
        for key in [k for k in self._senders if k[0] == tid]:
            del self._senders[key]


def written_off(proc, holder: str) -> bool:
    """Was `proc` told that the process `holder` ("<process id>~<n>"), or its whole peer, died?"""
    dead = getattr(proc, "told_dead", None)
    holder_id = holder.split("~", 1)[0]
    return bool(dead) and (holder_id in dead or holder_id.split("-", 1)[0] + "-" in dead)


def _tid(proc) -> str:
    """A process incarnation, for the truth: process ids repeat after a same-id restart; addresses don't."""
    return proc.addr[6:]


def _pid(proc) -> str:
    return getattr(proc, "proc_id", None) or proc.worker_id

"""Distributed reference counting: who can still reach an object, and when it may be freed.

Theory of operation
-------------------
Every process keeps one `ReferenceTable` for the refs it knows: the ones it owns (it created them) and the
ones it borrows (they reached it inside a message). For an owned object the table counts

- `local`: live `ObjectRef` instances in this process;
- `pins`: in-flight uses that must keep it alive — a submitted task carrying it as an argument, an owned
  object whose value contains it, a forwarded copy whose registration is not yet acknowledged;
- `borrowers`: per other process, how many messages carrying the ref it received (signed, see below).

The owner frees an object when all three are zero. Borrowers keep their own count and, when it drops to
zero, send `RemoveBorrower(n)` where n is the number of registrations they received, so the owner's count
for them returns to zero exactly.

A ref sent by its owner is registered on the spot: the owner adds the receiver to `borrowers`, no message
needed. A ref *forwarded* by a borrower b to a receiver c is registered from both ends, because either end
may die on the way:
- b pins its own copy and announces `AddBorrower(X, c)`; only the owner's `BorrowerAdded` releases the pin,
  so the owner hears of c before b can let go;
- c, on receipt, confirms with `BorrowConfirmed(X, b)`, so the owner hears of c even if b died before its
  announcement left.
The owner counts c once, from whichever of the two arrives first: `pending[(b, c)]` is a signed counter,
+1 per announcement, -1 per confirmation, and only a move away from zero changes `borrowers[c]`. A
registration announced but not yet confirmed is *tentative*. c's `RemoveBorrower` may overtake either
message — the count briefly goes negative — but b's pin holds the object until b's announcement is in.

Deaths. A dead process's holds do not vanish at once: a receiver's confirmation naming it may still be on
its way (b forwarded X to c, then died before its announcement reached the owner, so the owner knows only
b). For `grace_ms` after the owner learns of a death (`on_process_died`, `on_peer_died`), the dead process's
`borrowers` count, and the tentative registrations it announced, still hold the object, and new
registrations naming it still count; at the deadline (`on_tick`) its count goes, and so do its tentative
registrations that nobody confirmed: their data message died with it. The grace period must outlast the
time from a forwarder's death to its last message's receiver confirming — message delays plus the longest
pause a process survives without being declared dead; a confirmation later than that is the one case this
protocol does not cover. A receiver that learned of a forwarder's death ignores that forwarder's later
messages (the runtime's job, not the table's).

Cost, against Ray's one-way borrower protocol: one extra message per ref forwarded by a non-owner, and
objects a dead process borrowed are freed `grace_ms` late. Refs owned by a dead process are reported so
`get` can raise `OwnerDiedError`.

Pure: no I/O, no clock reads: time comes in as `now_ns`. Effects are `Send`, `Free` and `Timer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from p2pcompute.net.effects import Send, Timer
from p2pcompute.ownership.messages import AddBorrower, BorrowConfirmed, BorrowerAdded, RemoveBorrower

# How long a dead process's holds outlive the news of its death (see the theory of operation): longer than a
# message delay plus the time a live receiver takes to confirm what it received (its I/O thread's lag, a GC or
# GIL stall, a short pause). Longer is safer against stalls but keeps a dead borrower's objects longer.
GRACE_MS = 5_000


def owner_id_of(object_id: str) -> str:
    """Object ids are '<owner process id>.<n>': the owner is part of the name."""
    return object_id.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Free:
    """Effect: this process no longer reaches the object. For an owned object nobody does: drop its value
    and tell its holders; for a borrowed one, drop any cached copy."""

    object_id: str


class _Entry:
    __slots__ = ("owner_addr", "owned", "local", "pins", "acks", "borrowers", "pending", "regs", "contains")

    def __init__(self, owner_addr: str, owned: bool):
        self.owner_addr = owner_addr
        self.owned = owned
        self.local = 0
        self.pins = 0
        # forwards waiting for the owner's BorrowerAdded: pins a dead owner must release, kept apart
        self.acks = 0
        # owner side: process id -> registrations not yet removed (may go briefly negative)
        self.borrowers: dict[str, int] | None = None
        # owner side: (forwarder, receiver) -> announcements minus confirmations of forwarded copies; > 0:
        # tentative registrations (already in `borrowers`), < 0: confirmations whose announcement is due
        self.pending: dict[tuple[str, str], int] | None = None
        # borrower side: registrations received that we must hand back with RemoveBorrower
        self.regs = 0
        # objects whose value holds refs keep those refs pinned until the object itself goes
        self.contains: tuple[str, ...] = ()

    def in_use(self) -> bool:
        if self.local > 0 or self.pins > 0 or self.acks > 0:
            return True
        if self.borrowers:
            for n in self.borrowers.values():
                if n > 0:
                    return True
        return False


class ReferenceTable:
    def __init__(self, self_id: str, self_addr: str, grace_ms: int = GRACE_MS):
        self.self_id = self_id
        self.self_addr = self_addr
        self.grace_ns = grace_ms * 1_000_000
        self._entries: dict[str, _Entry] = {}
        self._freed = 0
        # Processes known dead, and peers (every process of a dead peer is dead): refs they own can no longer
        # be acknowledged, and nothing is registered for a ref sent to them.
        self._dead: set[str] = set()
        self._dead_peers: set[str] = set()
        # Deaths in their grace period: ("proc" | "peer", id) -> deadline (None: set at the next tick, for a
        # driver that told us without a time). What the dead held still counts until then.
        self._dying: dict[tuple[str, str], int | None] = {}
        # Deaths past their grace period: nothing naming them counts any more.
        self._gone: set[str] = set()
        self._gone_peers: set[str] = set()

    # ---- queries ------------------------------------------------------------------------------------

    def __contains__(self, object_id: str) -> bool:
        return object_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def is_owned(self, object_id: str) -> bool:
        return owner_id_of(object_id) == self.self_id

    def counts(self, object_id: str) -> dict | None:
        entry = self._entries.get(object_id)
        if entry is None:
            return None
        return {"owned": entry.owned, "local": entry.local, "pins": entry.pins, "acks": entry.acks,
                "borrowers": dict(entry.borrowers or {}), "pending": dict(entry.pending or {}),
                "regs": entry.regs, "contains": list(entry.contains)}

    def owner_of(self, object_id: str) -> str | None:
        """The owner's address of an object this process holds a ref to, or None if it holds none."""
        entry = self._entries.get(object_id)
        return entry.owner_addr if entry is not None else None

    def object_ids(self) -> list[str]:
        return list(self._entries)

    @property
    def freed_count(self) -> int:
        return self._freed

    def in_grace(self) -> bool:
        """Some death's grace period is running: the driver must keep calling `on_tick`."""
        return bool(self._dying)

    # ---- local changes ------------------------------------------------------------------------------

    def _entry(self, object_id: str, owner_addr: str) -> _Entry:
        entry = self._entries.get(object_id)
        if entry is None:
            entry = _Entry(owner_addr, owner_id_of(object_id) == self.self_id)
            self._entries[object_id] = entry
        return entry

    def add_local(self, object_id: str, owner_addr: str) -> None:
        self._entry(object_id, owner_addr).local += 1

    def remove_local(self, object_id: str) -> list:
        entry = self._entries.get(object_id)
        if entry is None or entry.local <= 0:
            return []  # a double release is a bug upstream; never let it free someone else's object
        entry.local -= 1
        return self._maybe_release(object_id, entry)

    def pin(self, object_id: str, owner_addr: str) -> None:
        self._entry(object_id, owner_addr).pins += 1

    def unpin(self, object_id: str) -> list:
        entry = self._entries.get(object_id)
        if entry is None or entry.pins <= 0:
            return []
        entry.pins -= 1
        return self._maybe_release(object_id, entry)

    def set_contains(self, object_id: str, contained: Iterable[tuple[str, str]]) -> list:
        """The value of `object_id` holds these refs: keep them while it lives.

        Used by the creator of a value (`put`), which holds the inner refs itself.
        """
        entry = self._entries.get(object_id)
        ids = []
        for inner_id, inner_owner in contained:
            self.pin(inner_id, inner_owner)
            ids.append(inner_id)
        if entry is None:
            return self._release_ids(ids)
        entry.contains = entry.contains + tuple(ids)
        return []

    def adopt_contained(self, object_id: str, contained: Iterable[tuple[str, str]], sender_id: str) -> list:
        """A value of `object_id` holding these refs arrived in a message from process `sender_id`: the refs
        live as long as the value does.

        Registers the arrival of each inner ref (see `on_received`); the message pin becomes the value's.
        """
        effects: list = []
        ids = []
        for inner_id, inner_owner in contained:
            effects += self.on_received(inner_id, inner_owner, sender_id)
            ids.append(inner_id)
        entry = self._entries.get(object_id)
        if entry is None:
            return effects + self._release_ids(ids)  # the value is already unreachable; so are its refs
        entry.contains = entry.contains + tuple(ids)
        return effects

    def _release_ids(self, ids: list[str]) -> list:
        effects: list = []
        for inner_id in ids:
            effects += self.unpin(inner_id)
        return effects

    # ---- refs crossing process boundaries -----------------------------------------------------------

    def is_dead(self, proc_id: str) -> bool:
        return proc_id in self._dead or proc_id.split("-", 1)[0] in self._dead_peers

    def _is_gone(self, proc_id: str) -> bool:
        """Dead, and past its grace period: a message naming it registers nothing."""
        return proc_id in self._gone or proc_id.split("-", 1)[0] in self._gone_peers

    def on_sent(self, object_id: str, owner_addr: str, dest_id: str) -> list:
        """We put a ref to `object_id` in a message to process `dest_id` (possibly ourselves: a self-send
        registers like any other, and its arrival's `on_received` balances it)."""
        if self.is_dead(dest_id):
            return []
        entry = self._entry(object_id, owner_addr)
        if entry.owned:
            self._add_borrower(entry, dest_id, 1)
            return []
        if self.is_dead(owner_id_of(object_id)):
            return []  # nobody left to register with: the object is lost anyway
        entry.acks += 1
        return [Send(entry.owner_addr, AddBorrower(object_id, dest_id, self.self_addr, self.self_id))]

    def on_received(self, object_id: str, owner_addr: str, sender_id: str) -> list:
        """A message from process `sender_id` carrying a ref to `object_id` reached us. The owner registered
        us if it sent the ref; if a borrower forwarded it, we confirm the registration with the owner.

        The message itself pins the ref until the runtime has consumed it (deserialized the value, finished
        the task) and calls `unpin`; otherwise a ref could be freed between arrival and first use.
        """
        entry = self._entry(object_id, owner_addr)
        entry.pins += 1
        if entry.owned:
            # A borrower forwarded our own object back to us: this arrival is our confirmation, and the
            # registration it confirms passes at once to the message's pin (counts are signed: the
            # forwarder's announcement may not have reached us yet).
            if sender_id != self.self_id:
                self._confirm(entry, sender_id, self.self_id)
            self._add_borrower(entry, self.self_id, -1)
            return []
        entry.regs += 1
        owner_id = owner_id_of(object_id)
        if sender_id == owner_id or self.is_dead(owner_id):
            return []
        return [Send(entry.owner_addr, BorrowConfirmed(object_id, sender_id))]

    def on_add_borrower(self, msg: AddBorrower) -> list:
        entry = self._entries.get(msg.object_id)
        if (entry is not None and entry.owned and not self._is_gone(msg.borrower_id)
                and not self._is_gone(msg.forwarder_id)):
            self._announce(entry, msg.forwarder_id, msg.borrower_id)
        # Ack even for an unknown object: the forwarder's pin must not leak because we already freed it.
        return [Send(msg.reply_to, BorrowerAdded(msg.object_id))]

    def on_borrow_confirmed(self, sender_id: str, msg: BorrowConfirmed) -> list:
        """Process `sender_id` received a ref to our object from `msg.forwarder_id`."""
        entry = self._entries.get(msg.object_id)
        if entry is not None and entry.owned and not self._is_gone(sender_id):
            self._confirm(entry, msg.forwarder_id, sender_id)
        return []  # a confirmation only ever adds a registration

    def on_borrower_added(self, msg: BorrowerAdded) -> list:
        entry = self._entries.get(msg.object_id)
        if entry is None or entry.acks <= 0:
            return []
        entry.acks -= 1
        return self._maybe_release(msg.object_id, entry)

    def on_remove_borrower(self, sender_id: str, msg: RemoveBorrower) -> list:
        entry = self._entries.get(msg.object_id)
        if entry is None or not entry.owned or msg.count <= 0 or self._is_gone(sender_id):
            return []
        self._add_borrower(entry, sender_id, -msg.count)
        return self._maybe_release(msg.object_id, entry)

    def _announce(self, entry: _Entry, forwarder: str, receiver: str) -> None:
        """`forwarder` says it sent the ref to `receiver`: count it, unless the receiver confirmed first."""
        k = self._pending(entry, forwarder, receiver)
        if k >= 0:
            self._add_borrower(entry, receiver, 1)
        self._set_pending(entry, forwarder, receiver, k + 1)

    def _confirm(self, entry: _Entry, forwarder: str, receiver: str) -> None:
        """`receiver` says it got the ref from `forwarder`: count it, unless the forwarder announced first."""
        if self._is_gone(forwarder):
            self._add_borrower(entry, receiver, 1)  # its announcements are settled: nothing left to match
            return
        k = self._pending(entry, forwarder, receiver)
        if k <= 0:
            self._add_borrower(entry, receiver, 1)
        self._set_pending(entry, forwarder, receiver, k - 1)

    @staticmethod
    def _pending(entry: _Entry, forwarder: str, receiver: str) -> int:
        return entry.pending.get((forwarder, receiver), 0) if entry.pending else 0

    @staticmethod
    def _set_pending(entry: _Entry, forwarder: str, receiver: str, k: int) -> None:
        if k:
            if entry.pending is None:
                entry.pending = {}
            entry.pending[(forwarder, receiver)] = k
        elif entry.pending:
            entry.pending.pop((forwarder, receiver), None)

    @staticmethod
    def _add_borrower(entry: _Entry, proc_id: str, delta: int) -> None:
        if entry.borrowers is None:
            entry.borrowers = {}
        count = entry.borrowers.get(proc_id, 0) + delta
        if count:
            entry.borrowers[proc_id] = count
        else:
            entry.borrowers.pop(proc_id, None)

    # ---- deaths -------------------------------------------------------------------------------------

    def on_process_died(self, proc_id: str, now_ns: int | None = None) -> list:
        """A process died: stop waiting for its acknowledgements now, and forget what it held once its grace
        period is over (`now_ns` None: counted from the next `on_tick`)."""
        self._dead.add(proc_id)
        return self._start_grace(("proc", proc_id), now_ns, proc_id.__eq__)

    def on_peer_died(self, peer_id: str, now_ns: int | None = None) -> list:
        """Every process of a dead peer is dead: process ids start with their peer's id."""
        self._dead_peers.add(peer_id)
        prefix = peer_id + "-"
        return self._start_grace(("peer", peer_id), now_ns, lambda p: p.startswith(prefix))

    def on_tick(self, now_ns: int) -> list:
        """Forget what dead processes held once their grace period is over; asks for the next tick."""
        effects: list = []
        next_ns = None
        for key, deadline in list(self._dying.items()):
            if deadline is None:
                deadline = self._dying[key] = now_ns + self.grace_ns
            if deadline <= now_ns:
                del self._dying[key]
                effects += self._expire(key)
            elif next_ns is None or deadline < next_ns:
                next_ns = deadline
        if next_ns is not None:
            effects.append(Timer(next_ns))
        return effects

    def _start_grace(self, key: tuple[str, str], now_ns: int | None, dead: Callable[[str], bool]) -> list:
        effects: list = []
        for object_id, entry in list(self._entries.items()):
            if entry.acks and not entry.owned and dead(owner_id_of(object_id)):
                entry.acks = 0  # the owner will never acknowledge
                effects += self._maybe_release(object_id, entry)
        gone = self._gone_peers if key[0] == "peer" else self._gone
        if key in self._dying or key[1] in gone:
            return effects  # a repeated notice keeps the first deadline
        deadline = None if now_ns is None else now_ns + self.grace_ns
        self._dying[key] = deadline
        if deadline is not None:
            effects.append(Timer(deadline))
        return effects

    def _expire(self, key: tuple[str, str]) -> list:
        """The grace period of a death is over: drop the dead's counts, and the registrations it announced
        that nobody confirmed (their message died with it)."""
        kind, dead_id = key
        if kind == "peer":
            self._gone_peers.add(dead_id)
            prefix = dead_id + "-"
            dead: Callable[[str], bool] = lambda p: p.startswith(prefix)  # noqa: E731
        else:
            self._gone.add(dead_id)
            dead = dead_id.__eq__
        effects: list = []
        for object_id, entry in list(self._entries.items()):
            changed = False
            if entry.pending:
                for (forwarder, receiver), k in list(entry.pending.items()):
                    if dead(forwarder) or dead(receiver):
                        del entry.pending[(forwarder, receiver)]
                        if k > 0 and not dead(receiver):
                            self._add_borrower(entry, receiver, -k)
                            changed = True
            if entry.borrowers:
                for proc in [p for p in entry.borrowers if dead(p)]:
                    del entry.borrowers[proc]
                    changed = True
            if changed and object_id in self._entries:
                effects += self._maybe_release(object_id, entry)
        return effects

    def borrowed_from(self, owner_id: str) -> list[str]:
        return [oid for oid, e in self._entries.items() if not e.owned and owner_id_of(oid) == owner_id]

    def drop(self, object_id: str) -> list:
        """Forget a borrowed ref whose owner is dead; releases what its value pinned."""
        entry = self._entries.pop(object_id, None)
        if entry is None:
            return []
        return self._release_contents(entry)

    # ---- release ------------------------------------------------------------------------------------

    def _maybe_release(self, object_id: str, entry: _Entry) -> list:
        if entry.in_use():
            return []
        del self._entries[object_id]
        effects: list = []
        if entry.owned:
            self._freed += 1
            effects.append(Free(object_id))
        else:
            if entry.regs > 0 and not self.is_dead(owner_id_of(object_id)):
                effects.append(Send(entry.owner_addr, RemoveBorrower(object_id, entry.regs)))
            effects.append(Free(object_id))
        effects += self._release_contents(entry)
        return effects

    def _release_contents(self, entry: _Entry) -> list:
        return self._release_ids(list(entry.contains)) if entry.contains else []

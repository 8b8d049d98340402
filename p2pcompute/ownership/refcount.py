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

Registration happens when a ref is *sent*, never when it is received, so the owner always hears of a new
borrower before the sender can drop its own hold:
- the owner sends it: it adds the receiver to `borrowers` on the spot, no message needed;
- a borrower forwards it: it pins its own copy and asks the owner to `AddBorrower`; only the owner's
  `BorrowerAdded` releases the pin. The receiver's `RemoveBorrower` may overtake the `AddBorrower` — the
  count briefly goes negative — but the forwarder's pin holds the object until both have arrived.

A process that dies loses its borrows (`on_process_died`); refs owned by a dead process are reported so
`get` can raise `OwnerDiedError`.

Pure: no I/O. Effects are `Send` and `Free`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from p2pcompute.net.effects import Send
from p2pcompute.ownership.messages import AddBorrower, BorrowerAdded, RemoveBorrower


def owner_id_of(object_id: str) -> str:
    """Object ids are '<owner process id>.<n>': the owner is part of the name."""
    return object_id.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Free:
    """Effect: this process no longer reaches the object. For an owned object nobody does: drop its value
    and tell its holders; for a borrowed one, drop any cached copy."""

    object_id: str


class _Entry:
    __slots__ = ("owner_addr", "owned", "local", "pins", "acks", "borrowers", "regs", "contains")

    def __init__(self, owner_addr: str, owned: bool):
        self.owner_addr = owner_addr
        self.owned = owned
        self.local = 0
        self.pins = 0
        # forwards waiting for the owner's BorrowerAdded: pins a dead owner must release, kept apart
        self.acks = 0
        # owner side: process id -> registrations not yet removed (may go briefly negative)
        self.borrowers: dict[str, int] | None = None
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
    def __init__(self, self_id: str, self_addr: str):
        self.self_id = self_id
        self.self_addr = self_addr
        self._entries: dict[str, _Entry] = {}
        self._freed = 0
        # Processes known dead, and peers (every process of a dead peer is dead): a late AddBorrower must
        # not register them, and refs they own can no longer be acknowledged.
        self._dead: set[str] = set()
        self._dead_peers: set[str] = set()

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
                "borrowers": dict(entry.borrowers or {}), "regs": entry.regs, "contains": list(entry.contains)}

    def owner_of(self, object_id: str) -> str | None:
        """The owner's address of an object this process holds a ref to, or None if it holds none."""
        entry = self._entries.get(object_id)
        return entry.owner_addr if entry is not None else None

    def object_ids(self) -> list[str]:
        return list(self._entries)

    @property
    def freed_count(self) -> int:
        return self._freed

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

    def adopt_contained(self, object_id: str, contained: Iterable[tuple[str, str]]) -> list:
        """A value of `object_id` holding these refs arrived in a message: the refs live as long as it does.

        Registers the arrival of each inner ref (see `on_received`); the message pin becomes the value's.
        """
        ids = []
        for inner_id, inner_owner in contained:
            self.on_received(inner_id, inner_owner)
            ids.append(inner_id)
        entry = self._entries.get(object_id)
        if entry is None:
            return self._release_ids(ids)  # the value is already unreachable; so are its refs
        entry.contains = entry.contains + tuple(ids)
        return []

    def _release_ids(self, ids: list[str]) -> list:
        effects: list = []
        for inner_id in ids:
            effects += self.unpin(inner_id)
        return effects

    # ---- refs crossing process boundaries -----------------------------------------------------------

    def is_dead(self, proc_id: str) -> bool:
        return proc_id in self._dead or proc_id.split("-", 1)[0] in self._dead_peers

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
        return [Send(entry.owner_addr, AddBorrower(object_id, dest_id, self.self_addr))]

    def on_received(self, object_id: str, owner_addr: str) -> None:
        """A message carrying a ref to `object_id` reached us; its sender registered us with the owner.

        The message itself pins the ref until the runtime has consumed it (deserialized the value, finished
        the task) and calls `unpin`; otherwise a ref could be freed between arrival and first use.
        """
        entry = self._entry(object_id, owner_addr)
        entry.pins += 1
        if entry.owned:
            # A borrower forwarded our own object back to us and registered us with AddBorrower; this
            # arrival settles that registration (which may not have reached us yet: counts are signed).
            self._add_borrower(entry, self.self_id, -1)
        else:
            entry.regs += 1

    def on_add_borrower(self, msg: AddBorrower) -> list:
        entry = self._entries.get(msg.object_id)
        if entry is not None and entry.owned and not self.is_dead(msg.borrower_id):
            self._add_borrower(entry, msg.borrower_id, 1)
        # Ack even for an unknown object: the forwarder's pin must not leak because we already freed it.
        return [Send(msg.reply_to, BorrowerAdded(msg.object_id))]

    def on_borrower_added(self, msg: BorrowerAdded) -> list:
        entry = self._entries.get(msg.object_id)
        if entry is None or entry.acks <= 0:
            return []
        entry.acks -= 1
        return self._maybe_release(msg.object_id, entry)

    def on_remove_borrower(self, sender_id: str, msg: RemoveBorrower) -> list:
        entry = self._entries.get(msg.object_id)
        if entry is None or not entry.owned or msg.count <= 0:
            return []
        self._add_borrower(entry, sender_id, -msg.count)
        return self._maybe_release(msg.object_id, entry)

    @staticmethod
    def _add_borrower(entry: _Entry, proc_id: str, delta: int) -> None:
        if entry.borrowers is None:
            entry.borrowers = {}
        count = entry.borrowers.get(proc_id, 0) + delta
        if count:
            entry.borrowers[proc_id] = count
        else:
            entry.borrowers.pop(proc_id, None)

    def on_process_died(self, proc_id: str) -> list:
        """Forget what a dead process borrowed, and stop waiting for acknowledgements from it."""
        self._dead.add(proc_id)
        return self._forget_dead(lambda p: p == proc_id)

    def on_peer_died(self, peer_id: str) -> list:
        """Every process of a dead peer is dead: process ids start with their peer's id."""
        self._dead_peers.add(peer_id)
        prefix = peer_id + "-"
        return self._forget_dead(lambda p: p.startswith(prefix))

    def _forget_dead(self, dead) -> list:
        effects: list = []
        for object_id, entry in list(self._entries.items()):
            changed = False
            if entry.borrowers:
                for proc in [p for p in entry.borrowers if dead(p)]:
                    del entry.borrowers[proc]
                    changed = True
            if entry.acks and not entry.owned and dead(owner_id_of(object_id)):
                entry.acks = 0  # the owner will never acknowledge
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

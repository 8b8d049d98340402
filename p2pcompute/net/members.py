"""A membership core's record of one member, and the shared start many cores can read at once.

`Member` is compact, because a core holds one per member and the simulator runs thousands of cores: the
member's record and its view record are the very tuples that came over the wire (shared by every core that
accepted them, never copied). `SharedStart` is the state a whole cluster starts from, read by every core
started from it until one changes a member (copy on write: `Membership._own`).
"""

from __future__ import annotations

import hashlib

from p2pcompute.errors import InvalidArgumentError
from p2pcompute.net.membership_messages import ALIVE, STATE_NAMES, parse_member

_NEVER = 1 << 62  # "no deadline": later than any real now_ns


def id_hash(peer_id: str) -> int:
    """A peer id's share of a live-set digest: the same in every process (unlike `hash`), never 0."""
    return (int.from_bytes(hashlib.blake2b(peer_id.encode(), digest_size=8).digest(), "little") >> 1) or 1


class Member:
    """What this peer knows about one member. Owned by the core: read it, never change it.

    Compact, because a core holds one per member and the simulator runs thousands of cores: the member's
    record and its view record are the very tuples that came over the wire (shared by every core that
    accepted them, never copied), and the other fields are read through them.
    """

    __slots__ = ("rec", "view_rec", "last_heard_ns", "state_since_ns", "told_ns")

    def __init__(self, rec: tuple, view_rec: tuple | None = None, last_heard_ns: int = 0, state_since_ns: int = 0,
                 told_ns: int = -_NEVER) -> None:
        self.rec = rec  # (peer_id, addr, state code, incarnation, meta): the claim we hold
        # (peer_id, view_incarnation, view_version, view): the latest view we know; incarnation -1: none yet
        self.view_rec = view_rec if view_rec is not None else (rec[0], -1, 0, _NO_VIEW)
        self.last_heard_ns = last_heard_ns  # when a message from this peer last arrived (0: never directly)
        self.state_since_ns = state_since_ns
        self.told_ns = told_ns  # last time we told this member we hold it suspect or dead; limits how often

    peer_id = property(lambda self: self.rec[0])
    addr = property(lambda self: self.rec[1])
    state_code = property(lambda self: self.rec[2])  # `state` as its wire code, for the merge rules
    state = property(lambda self: STATE_NAMES[self.rec[2]])  # 'alive' | 'suspect' | 'dead' | 'left'
    incarnation = property(lambda self: self.rec[3])
    meta = property(lambda self: self.rec[4])  # static per incarnation: the process addresses, host, version, ...
    view_incarnation = property(lambda self: self.view_rec[1])
    view_version = property(lambda self: self.view_rec[2])
    view = property(lambda self: self.view_rec[3])  # the peer's latest resource view we know

    def __repr__(self) -> str:
        return (f"Member({self.peer_id!r}, {self.addr!r}, {self.state!r}, incarnation={self.incarnation}, "
                f"view_version={self.view_version})")


class _SharedMember(Member):
    """A member of a `SharedStart`: one object read by every core started from it, so it must never change.
    A core copies it (`Membership._own`) before its first change; a change made by mistake raises."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"a shared member record is read-only ({name}); copy it first")


_NO_VIEW: dict = {}  # the view of a member whose view we have not heard yet (shared: never change it)


class SharedStart:
    """The state a whole cluster starts from, for many cores in one process: the simulator's pre-joined start.

    `Membership.start_shared` takes it as if a seed had answered the core's Join with it, but every core
    reads the same member objects until it changes one (copy on write), so a thousand cores hold one copy of
    the members they agree on rather than a thousand. Only alive members; views are optional.
    """

    __slots__ = ("members", "ids", "digest")

    def __init__(self, records: tuple, views: tuple = ()) -> None:
        view_of = {}
        for v in views:
            if type(v) is not tuple or len(v) != 4 or type(v[3]) is not dict:
                raise InvalidArgumentError(f"not a view record: {v!r}")
            view_of[v[0]] = v
        self.members: dict[str, Member] = {}
        self.digest = 0
        for rec in records:
            if parse_member(rec) is None or rec[2] != ALIVE:
                raise InvalidArgumentError(f"a shared start holds well-formed alive members only, not {rec!r}")
            m = object.__new__(_SharedMember)
            for name, value in (("rec", rec), ("view_rec", view_of.get(rec[0], (rec[0], -1, 0, _NO_VIEW))),
                                ("last_heard_ns", 0), ("state_since_ns", 0), ("told_ns", -_NEVER)):
                object.__setattr__(m, name, value)
            self.members[rec[0]] = m
            self.digest ^= id_hash(rec[0])
        self.ids = list(self.members)

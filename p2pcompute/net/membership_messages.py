"""Wire messages of the membership protocol (type codes 1-99) and the records they carry.

Two kinds of record ride on these messages, both plain tuples so the codec can carry them as they are:

    member record   (peer_id: str, addr: str, state: int, incarnation: int, meta: dict)
    view record     (peer_id: str, incarnation: int, view_version: int, view: dict)

`state` is one of ALIVE, SUSPECT, DEAD, LEFT below. A member record is a claim "peer_id was in `state` at
`incarnation`"; the receiver merges it by the SWIM precedence rules (see membership.py). A view record is a
peer's resource view stamped with (incarnation, view_version); a newer stamp always wins.

The codec checks only a field's outer type, so a remote can still put anything inside `updates` or
`views`. Every record is checked before use (`parse_member` here; view records where they are merged, in
the core's hot loop); a malformed one is skipped and counted, because a bad record is the sender's fault
and must never crash the core.

Codes are append-only: never renumber or reuse one.
"""

from __future__ import annotations

from p2pcompute.net.messages import message

ALIVE, SUSPECT, DEAD, LEFT = 0, 1, 2, 3
STATE_NAMES = ("alive", "suspect", "dead", "left")


@message(1)
class Ping:
    """Are you alive? Answered by an Ack with the same `seq`, sent back to the sender's address.

    `target_id` names the peer the prober means: a process that now listens on the address under another
    peer id (a restart with a new id) must not answer for the old one, or the old id would live forever.
    """

    seq: int
    src_id: str
    target_id: str
    updates: tuple  # member records to piggyback
    views: tuple  # view records to piggyback
    digest: int = 0  # the sender's live-set digest (see membership.py, "Repair"); 0: none


@message(2)
class Ack:
    """The answer to a Ping, or an indirect probe's answer relayed by the helper that ran it."""

    seq: int
    src_id: str
    updates: tuple
    views: tuple
    digest: int = 0  # the sender's live-set digest; 0: none


@message(3)
class PingReq:
    """Please ping `target_id` at `target_addr` for me and relay its Ack (with my `seq`) back to me."""

    seq: int
    src_id: str
    target_id: str
    target_addr: str
    updates: tuple
    views: tuple


@message(4)
class Join:
    """A new (or restarted) peer asks a member for the full state; the member answers with Snapshot(s)."""

    src_id: str
    src_addr: str
    incarnation: int
    meta: dict
    view: dict
    view_version: int


@message(5)
class Snapshot:
    """A slice of the sender's full state: the answer to a Join, or one half of a periodic push-pull sync.

    A large state is cut into several Snapshots; each slice merges on its own, in any order. With
    `want_reply` the receiver answers with its own state (push-pull anti-entropy), which repairs whatever
    rumours were lost.
    """

    src_id: str
    members: tuple  # member records, including the sender's own and those of dead/left peers
    views: tuple  # view records of the live members in `members`
    want_reply: bool


@message(6)
class Gossip:
    """Rumours pushed to a few random members every gossip interval, and direct corrections."""

    src_id: str
    updates: tuple
    views: tuple


def parse_member(rec: object) -> tuple | None:
    """`rec` if it is a well-formed member record, else None."""
    if type(rec) is not tuple or len(rec) != 5:
        return None
    peer_id, addr, state, incarnation, meta = rec
    if (type(peer_id) is not str or not peer_id or type(addr) is not str or type(state) is not int
            or not 0 <= state <= 3 or type(incarnation) is not int or incarnation < 0 or type(meta) is not dict):
        return None
    return rec

